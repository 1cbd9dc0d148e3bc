"""Stage 6 (cohort level): endpoints, survival, toxicity, Simon monitoring, quality of life, report tables."""
