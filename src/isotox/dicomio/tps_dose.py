"""Can a TPS RTDOSE serve as the patient's base plan? The checks a physicist makes first.

Why here and not in planning: every one of these is a property of the exported files (what the
dose is a sum of, its units and type, its frame of reference, what the plan prescribes), so the
ingest stage refuses a file that cannot be used and says why, naming the patient, the file and
the fix, instead of planning from the wrong dose. Coverage of the structures is measured here
and enforced by planning, which knows which structures the protocol constrains.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset

from isotox.dicomio.rtdose import DoseGrid
from isotox.errors import InputDataError
from isotox.geometry import ImageGrid

#: Largest plausible plan maximum (Gy): above it the file's scaling is wrong (x1000 scaling, a cGy grid
#: labelled GY). 150 Gy exceeds any external-beam plan's hot spot, including SBRT (60 Gy x 1.5).
MAX_PLAUSIBLE_PLAN_GY = 150.0
#: Largest plausible maximum of one fraction (SBRT single fractions reach 34 Gy; x1.5 hot spot).
MAX_PLAUSIBLE_FRACTION_GY = 51.0

#: Summation types that are the dose of a whole plan (or one fraction of it) and so can be a base plan.
USABLE_SUMMATION = {"PLAN": "the whole plan", "FRACTION": "one fraction of the plan (the plan's shape is used, normalised to the PTV)"}
_REFUSED_SUMMATION = {
    "BEAM": "the dose of one beam", "CONTROL_POINT": "the dose of one control point", "MULTI_PLAN": "a sum of several plans",
    "PLAN_SUM": "a sum of several plans", "RECORD": "a delivered (recorded) dose", "BRACHY": "a brachytherapy dose",
}


def check_tps_dose(dose: DoseGrid, patient: str, path: str | Path, *, planning_frame: str, accept_effective: bool = False) -> list[str]:
    """Refuse (``InputDataError``) a dose that is not a physical plan dose in Gy on the planning CT's
    frame of reference; return notes for what is accepted with a caveat."""
    notes: list[str] = []
    summation = dose.summation_type.upper()
    if summation in _REFUSED_SUMMATION:
        raise InputDataError(patient, path, f"DoseSummationType {summation} is {_REFUSED_SUMMATION[summation]}, not the plan dose",
                             "export the PLAN dose (all beams summed) of the base plan from the TPS")
    if summation not in USABLE_SUMMATION:
        raise InputDataError(patient, path, f"DoseSummationType {summation or '(missing)'} is not PLAN or FRACTION",
                             "export the PLAN dose of the base plan from the TPS")
    if summation != "PLAN":
        notes.append(f"DoseSummationType {summation}: {USABLE_SUMMATION[summation]}")
    dose_type = dose.dose_type.upper()
    if dose_type == "EFFECTIVE" and not accept_effective:
        raise InputDataError(patient, path, "DoseType EFFECTIVE (a biologically weighted dose): the protocol's constraints are physical or EQD2 of physical dose",
                             "export the PHYSICAL dose, or set ingest.accept_effective_dose: true if you know what the weighting is")
    if dose_type not in ("PHYSICAL", "EFFECTIVE"):
        raise InputDataError(patient, path, f"DoseType {dose_type or '(missing)'} is not PHYSICAL (ERROR is an uncertainty map, not a dose)",
                             "export the PHYSICAL dose")
    if dose_type == "EFFECTIVE":
        notes.append("DoseType EFFECTIVE accepted by ingest.accept_effective_dose")
    peak = float(dose.dose_gy.max()) if dose.dose_gy.size else 0.0
    ceiling = MAX_PLAUSIBLE_FRACTION_GY if summation == "FRACTION" else MAX_PLAUSIBLE_PLAN_GY
    if not peak > 0:
        raise InputDataError(patient, path, "the RTDOSE is zero everywhere", "export the calculated dose of the plan")
    if peak > ceiling:
        raise InputDataError(patient, path, f"the RTDOSE maximum is {peak:,.1f} Gy, above the plausible {ceiling:g} Gy for a {summation} dose "
                             "(DoseGridScaling wrong by a factor, or cGy labelled GY)", "export the RTDOSE again from the TPS, in Gy")
    if dose.frame_of_reference and planning_frame and dose.frame_of_reference != planning_frame:
        raise InputDataError(patient, path, f"the RTDOSE is on frame of reference {dose.frame_of_reference}, the planning CT on {planning_frame}",
                             "export the dose calculated on this planning CT (or name the right CT with series_roles=planning_ct=UID)")
    return notes


def check_plan_has_no_boost(plan: Dataset, patient: str, path: str | Path) -> None:
    """A base plan that already holds a boost would be boosted twice by the PET-boost rule: refuse it."""
    groups = plan.get("FractionGroupSequence") or []
    if len(groups) > 1:
        raise InputDataError(patient, path, f"the RTPLAN has {len(groups)} fraction groups (a sequential or integrated boost is already planned)",
                             "export the base plan alone (isotox adds the boost), or set planning.dose_source: engine")
    doses = {round(float(r.TargetPrescriptionDose), 3) for r in plan.get("DoseReferenceSequence") or []
             if str(r.get("DoseReferenceType", "")).upper() == "TARGET" and r.get("TargetPrescriptionDose") not in (None, "")}
    if len(doses) > 1:
        raise InputDataError(patient, path, f"the RTPLAN prescribes different target doses ({', '.join(f'{d:g}' for d in sorted(doses))} Gy): it already holds a boost",
                             "export the base plan alone (isotox adds the boost), or set planning.dose_source: engine")


def covered_fraction(mask: NDArray[np.bool_], grid: ImageGrid, dose_grid: ImageGrid) -> float:
    """Fraction of the structure's voxels whose centres lie inside the dose grid (1.0: fully covered).

    Outside the grid a TPS dose is unknown, not zero: a dose metric over a partly covered organ
    would be computed as if the missing part received nothing."""
    k, j, i = np.nonzero(mask)
    if k.size == 0:
        return 1.0
    points = grid.index_to_physical(np.column_stack([i, j, k]).astype(float))
    index = dose_grid.physical_to_index(points)
    size = np.asarray(dose_grid.size, dtype=float)
    inside = np.all((index >= -0.5) & (index <= size - 0.5), axis=1)
    return float(inside.mean())
