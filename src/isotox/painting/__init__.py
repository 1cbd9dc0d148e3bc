"""Dose painting and biologically guided escalation: prescription maps from FDG SUV / HX4 TBR,
plans that follow them, their plan quality (Q, QVH), a hypoxia-aware TCP, and the per-patient
comparison of strategies at the isotoxic limit (``isotox.painting.stage``)."""
