"""isotox: NSCLC DICOM studies to isotoxic radiotherapy prescriptions and trial outcome tables.

The package holds the science; the Snakemake workflow in ``workflow/`` only wires it together.
Nothing in here imports Snakemake, so every function can be used (and tested) on its own.
"""

__version__ = "0.1.0"
