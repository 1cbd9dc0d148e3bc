"""Deterministic synthetic NSCLC cohort: DICOM studies with known ground truth.

The embedded sample cohort lets the whole workflow run with no data download, and gives the
tests something to measure against: every image is sampled from one analytic patient model
(:mod:`isotox.sample.anatomy`) whose volumes, uptakes, kinetics and poses are known exactly.
"""

from isotox.sample.cohort import write_sample_cohort
from isotox.sample.patient import write_sample_patient

__all__ = ["write_sample_cohort", "write_sample_patient"]
