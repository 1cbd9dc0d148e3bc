"""The whole sample cohort: patients, the cohort sheet, clinical follow-up and QoL tables."""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from isotox.atomic import write_text
from isotox.sample.clinical import simulate_clinical
from isotox.sample.patient import ENROLMENT_FILE, patient_id, write_sample_patient

if TYPE_CHECKING:
    import pandas as pd


def write_cohort_tables(out_dir: str | Path, truth_files: list[str | Path], seed: int) -> dict[str, Path]:
    """From the patients' ``ground_truth.json`` write cohort.tsv, clinical.tsv, qol.tsv, clinical_model.json."""
    out_dir = Path(out_dir)
    truths = [json.loads(Path(f).read_text(encoding="utf-8")) for f in truth_files]
    clinical, qol, model_truth = simulate_clinical(truths, seed)
    # the cohort sheet is the patients' own enrolment records (the rows the plans read), in index order
    order = sorted(range(len(truths)), key=lambda k: truths[k]["index"])
    import pandas as pd  # here: a patient job (isotox.sample.write_sample_patient) never loads pandas (0.5 s CPU)

    sheet = pd.concat([_enrolment_row(Path(truth_files[k]).parent) for k in order], ignore_index=True)
    if list(sheet["arm"]) != list(clinical["arm"]):
        raise RuntimeError(f"enrolment records disagree with the clinical simulation's arms ({out_dir}): regenerate the sample patients")
    paths = {name: out_dir / f"{name}.tsv" for name in ("cohort", "clinical", "qol")}
    for name, table in (("cohort", sheet), ("clinical", clinical), ("qol", qol)):
        write_text(paths[name], table.to_csv(sep="\t", index=False, lineterminator="\n"))
    paths["model"] = out_dir / "clinical_model.json"
    write_text(paths["model"], json.dumps(model_truth, indent=2, sort_keys=True) + "\n")
    return paths


def _enrolment_row(patient_dir: Path) -> pd.DataFrame:
    """A sample patient's enrolment record (written with its DICOM by write_sample_patient)."""
    path = patient_dir / ENROLMENT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the sample patient predates enrolment records; delete {patient_dir} and rerun")
    import pandas as pd

    row = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    row["dicom_dir"] = [str(patient_dir / d) for d in row["dicom_dir"]]  # the record's folder-relative path, as the sheet's
    return row


def write_sample_cohort(out_dir: str | Path, patients: int, seed: int, preset: str = "small", jobs: int = 1) -> dict[str, Any]:
    """Write ``patients`` patients (``OUTDIR/SAMPLE001/...``) and the cohort tables."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = [(out_dir / patient_id(i), i) for i in range(1, patients + 1)]
    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(write_sample_patient, [t for t, _ in targets], [i for _, i in targets], [seed] * patients, [preset] * patients))
    else:
        for target, index in targets:
            write_sample_patient(target, index, seed, preset)
    paths = write_cohort_tables(out_dir, [t / "ground_truth.json" for t, _ in targets], seed)
    return {"patients": [patient_id(i) for i in range(1, patients + 1)], **{k: str(v) for k, v in paths.items()}}


__all__ = ["write_cohort_tables", "write_sample_cohort"]
