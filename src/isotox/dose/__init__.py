"""Stage 5: dose-volume histograms, radiobiology (EQD2, gEUD, LKB NTCP) and the isotoxic search."""
