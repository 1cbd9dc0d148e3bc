"""The fault corpus: broken copies of good inputs, one builder function per fault.

Each builder takes a good input (a patient's DICOM folder, a cohort sheet, a config, a protocol,
a clinical TSV) and writes a broken copy at a new path, leaving the good input untouched. The
registry (:mod:`tests.faults.registry`) says for every case which input type it breaks and what
isotox must do with it: refuse it with a clear error (exit code 2 from the CLI, naming the
patient, file or tag and the fix) or handle it (the run goes on, with a warning recorded in the
stage's metadata and shown in the cohort table). Never a traceback, never a silent wrong answer.
"""

from tests.faults.registry import CASES, EXISTING, FaultCase

__all__ = ["CASES", "EXISTING", "FaultCase"]
