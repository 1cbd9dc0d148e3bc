"""Reference data vendored in tests/data (licences and derivation beside the files).

Why vendored: a user who clones the repository has no ../shared, and a reference test that
skips when its data is missing is a check that silently vanishes. Everything the tests compare
against lives in tests/data (a few MB, gzip-compressed; ``tests/data/make_reference_subsets.py``
rebuilds it from the full sets).
"""

from __future__ import annotations

import gzip
import shutil
import tarfile
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
BREAST = DATA / "rt_breast_example"
DCE = DATA / "dce_reference"
SUV_DRO = DATA / "suv_dro"
ALL_DROS = ["DRO_0_0", "DRO_1_0", "DRO_2_0", "DRO_2_1", "DRO_2_2", "DRO_2_3", "DRO_2_4", "DRO_2_5", "DRO_3_0",
            "DRO_3_1", "DRO_3_2", "DRO_3_3", "DRO_3_4", "DRO_4_0", "DRO_4_1", "DRO_4_2", "DRO_5_0"]


def unpack_breast_example(folder: Path) -> Path:
    """Decompress the clinical RT example (rtss.dcm, rtdose.dcm, rtplan.dcm, ct.0.dcm) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for packed in sorted(BREAST.glob("*.dcm.gz")):
        with gzip.open(packed, "rb") as src, (folder / packed.name[:-3]).open("wb") as dst:
            shutil.copyfileobj(src, dst)
    return folder


def dce_csv(name: str) -> Path:
    """Path of an OSIPI reference table (``name`` as in the OSIPI repository, e.g. 'patlak_sd_0.02_delay_0.csv')."""
    return DCE / f"{name}.gz"


def unpack_dro(name: str, folder: Path) -> Path:
    """Extract one SUV digital reference object (PT series + NIfTI mask) and return its folder."""
    with tarfile.open(SUV_DRO / f"{name}.tar.gz") as tar:
        tar.extractall(folder, filter="data")
    return folder / name
