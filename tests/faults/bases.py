"""The good inputs every fault starts from, built once per test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import yaml

from isotox.dicomio.image_series import CtFrame, write_ct_series
from isotox.dicomio.modules import SeriesInfo
from tests.clinical_patient import CT_GRID, PLANNING_FOR, WHO, build_patient, sphere

REPO = Path(__file__).resolve().parents[2]
DCE_TIMES = ("083000", "083003", "083006", "083009", "083012", "083015")

#: Six patients of a follow-up table, every column of clinical.schema.yaml used at least once.
CLINICAL_TSV = """\
patient_id\tarm\tstage\thistology\tchemotherapy\tregistration_date\trt_start_date\trt_end_date\tlocal_progression_date\tregional_progression_date\tdistant_progression_date\tdeath_date\tlast_followup_date\tpneumonitis_grade\tpneumonitis_date\tesophagitis_grade\tesophagitis_date\trt_interruption_days
CLIN01\tA\tIIIA\tadenocarcinoma\tconcurrent\t2024-01-08\t2024-01-22\t2024-03-01\t2024-11-04\t\t\t\t2025-06-30\t1\t2024-04-10\t2\t2024-02-20\t0
CLIN02\tB\tIIIB\tsquamous\tsequential\t2024-02-05\t2024-02-19\t2024-03-29\t\t\t2024-09-16\t2025-01-20\t2025-01-20\t0\t\t1\t2024-03-15\t0
CLIN03\tA\tIIIA\tsquamous\tconcurrent\t2024-03-04\t2024-03-18\t2024-04-26\t\t\t\t\t2025-06-30\t2\t2024-06-01\t3\t2024-04-15\t4
CLIN04\tB\tIIB\tadenocarcinoma\tnone\t2024-04-01\t2024-04-15\t2024-05-24\t2025-02-10\t2025-02-10\t\t\t2025-06-30\t0\t\t0\t\t0
CLIN05\tA\tIIIC\tlarge_cell\tconcurrent\t2024-05-06\t2024-05-20\t2024-06-28\t\t\t\t2024-12-02\t2024-12-02\t3\t2024-08-12\t2\t2024-06-10\t0
CLIN06\tB\tIIIA\tnsclc_nos\tsequential\t2024-06-03\t2024-06-17\t2024-07-26\t\t\t\t\t2025-06-30\t1\t2024-09-01\t1\t2024-07-01\t0
"""


def write_dce(patient: Path) -> None:
    """Six DCE-CT frames (3 s apart) of the sphere phantom on the planning frame of reference."""
    hu = np.where(sphere(CT_GRID), 40.0, -800.0)
    frames = [CtFrame(hu + 10.0 * f, t) for f, t in enumerate(DCE_TIMES)]
    write_ct_series(patient / "dce", CT_GRID, frames, WHO, SeriesInfo("CT", "1.2.826.0.1.77.70", 7, "DCE", "20250301", DCE_TIMES[0], PLANNING_FOR),
                    uid_key=("clin", "dce"))


def build_good_inputs(root: Path) -> dict[str, Path]:
    """Every good input under ``root``: name -> file or folder (the bases of the fault registry)."""
    patient = build_patient(root / "patient")
    patient_dce = build_patient(root / "patient_dce", dose=False)
    write_dce(patient_dce)
    cohort = root / "cohort.tsv"
    cohort.write_text("patient_id\tdicom_dir\thistology\tarm\tseries_roles\tnotes\n"
                      f"CLIN01\t{patient}\tadenocarcinoma\tA\t\tplanning CT with RTDOSE\n"
                      f"CLIN02\t{patient_dce}\tsquamous\tB\tplanning_ct=1.2.826.0.1.77.10\twith DCE\n")
    protocol = root / "pet_boost.yaml"
    shutil.copy2(REPO / "config" / "protocols" / "pet_boost.yaml", protocol)
    config_doc = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config_doc.update(protocol=str(protocol), roi_names=str(REPO / "config" / "roi_names.yaml"), results=str(root / "results"))
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(config_doc, sort_keys=False))
    clinical = root / "clinical.tsv"
    clinical.write_text(CLINICAL_TSV)
    return {"patient": patient, "patient_dce": patient_dce, "cohort": cohort, "config": config, "protocol": protocol, "clinical": clinical}
