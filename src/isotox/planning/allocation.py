"""The PET-boost allocation a plan applies, read from the cohort sheet.

The trial allocates an arm at registration and applies it only when the initial plan shows that the
whole-tumour boost to ``boost.test_total_gy`` (72 Gy) keeps every constraint; otherwise the patient
is not randomized (66 Gy or less, isotoxic) and followed (seed 000). So the plan needs the recorded
allocation, and the allocation must be one list: the cohort sheet's ``arm`` column (a real cohort's
``config/cohort.tsv``, or a sample patient's ``enrolment.tsv``, its row of the sample's cohort sheet,
written with its DICOM from the same value as ``clinical.tsv``). A second draw anywhere else would
give the plan and the outcome tables two different randomisations.

Values: ``A`` / ``B`` (allocated; applied when the test passes), ``not_randomized`` (the trial's
record: the plan follows it) and blank (before randomisation: a randomizable patient is then
awaiting randomisation and gets no prescribed plan).
"""

from __future__ import annotations

from pathlib import Path

from isotox.errors import InputDataError
from isotox.settings import read_cohort_sheet

ARMS = ("A", "B")
NOT_RANDOMIZED = "not_randomized"


def recorded_arm(sheet: str | Path, patient: str) -> str | None:
    """The cohort sheet's arm for ``patient``: 'A', 'B', 'not_randomized', or None when blank.

    The sheet is validated against ``config/schemas/cohort.schema.yaml`` (an unknown arm value is a
    ConfigError naming the line); a patient without a row is an InputDataError naming the sheet."""
    table = read_cohort_sheet(sheet)
    if patient not in table.index:
        raise InputDataError(patient, sheet, "the patient has no row in the cohort sheet, so its PET-boost allocation is unknown",
                             "add the patient's row (arm A, B, not_randomized, or blank before randomisation), or re-run the sample rule")
    value = str(table.loc[patient].get("arm", "") or "").strip()
    return value or None
