# Helpers shared by every rules file: config and cohort validation, patient ids, target lists.
# Nothing here runs a job; rules files only call these functions.
import os
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

# The workflow uses the isotox library of this checkout, installed or not, in this process and in
# the rule scripts (which Snakemake runs as separate Python processes).
_SRC = str(Path(workflow.basedir) / "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)
# (Set, not read: the workflow requires no environment variable from the user; cluster jobs re-parse
# this file on the node and set it there too.)
os.environ.update(PYTHONPATH=os.pathsep.join(p for p in (_SRC, os.environ.get("PYTHONPATH", "")) if p))

from isotox.errors import ConfigError  # noqa: E402
from isotox.sample.patient import patient_id as sample_patient_id  # noqa: E402
from isotox.sample.patient import sample_histology  # noqa: E402
from isotox.settings import load_protocol, read_cohort_sheet, validate_document  # noqa: E402
from isotox.settings.roi_names import RoiNameMap  # noqa: E402


def _config_file_names():
    return ", ".join(str(f) for f in workflow.configfiles) or "the config"


try:
    validate_document(config, "config", _config_file_names())
    PROTOCOL = load_protocol(config["protocol"])
    RoiNameMap.from_yaml(config["roi_names"])
    if config["cohort"]["source"] == "sheet":
        if "sheet" not in config["cohort"]:
            raise ConfigError(_config_file_names(), "cohort.source is 'sheet' but cohort.sheet is not set", "cohort.sheet")
        COHORT = read_cohort_sheet(config["cohort"]["sheet"])
    else:
        if "sample" not in config:
            raise ConfigError(_config_file_names(), "cohort.source is 'sample' but there is no 'sample' section", "sample")
        _ids = [sample_patient_id(i) for i in range(1, config["sample"]["patients"] + 1)]
        COHORT = None
except ConfigError as exc:
    raise WorkflowError(f"Invalid configuration: {exc}") from None

RESULTS = config["results"].rstrip("/")
SAMPLE_DIR = f"{RESULTS}/sample"
PATIENTS = list(COHORT.index) if COHORT is not None else _ids


wildcard_constraints:
    pid="|".join(re.escape(p) for p in PATIENTS),


def is_sample():
    return config["cohort"]["source"] == "sample"


def sample_index(wildcards):
    """1-based index of a sample patient id (SAMPLE007 -> 7)."""
    return int(wildcards.pid.removeprefix("SAMPLE"))


def sample_mem_mb(wildcards, attempt):
    """Memory of one synthetic patient: the realistic preset holds 512x512 volumes in float64."""
    return (1500 if config["sample"]["preset"] == "small" else 9000) * attempt


def ingest_source(wildcards):
    """The DICOM input of a patient: the synthesised sample folder, or the cohort sheet's dicom_dir."""
    if is_sample():
        return f"{SAMPLE_DIR}/{wildcards.pid}"
    return COHORT.loc[wildcards.pid, "dicom_dir"]


def ingest_dicom_dir(wildcards):
    return f"{SAMPLE_DIR}/{wildcards.pid}/dicom" if is_sample() else COHORT.loc[wildcards.pid, "dicom_dir"]


def series_roles(wildcards):
    if is_sample() or "series_roles" not in COHORT.columns:
        return ""
    return COHORT.loc[wildcards.pid, "series_roles"]


def ingest_mem_mb(wildcards, attempt):
    """Ingestion holds a few volumes at once; clinical matrices (512x512x200, DCE 4-D) need several GB."""
    preset = config.get("sample", {}).get("preset", "small") if is_sample() else "realistic"
    return (2000 if preset == "small" else 8000) * attempt


def stage_mem_mb(wildcards, attempt):
    """Registration / segmentation / perfusion: a few planning-CT-sized float volumes at once."""
    preset = config.get("sample", {}).get("preset", "small") if is_sample() else "realistic"
    return (1500 if preset == "small" else 8000) * attempt


def patient_histology(wildcards):
    """Histology (selects the protocol's CTV margin): the sample generator's, or the cohort sheet's."""
    if is_sample():
        return sample_histology(sample_index(wildcards), config["sample"]["seed"])
    return COHORT.loc[wildcards.pid, "histology"]


def patient_seed_point(wildcards):
    """Optional 'x,y,z' search-region seed from the cohort sheet ('' when absent)."""
    if is_sample() or "seed_point_mm" not in COHORT.columns:
        return ""
    value = COHORT.loc[wildcards.pid, "seed_point_mm"]
    return "" if value is None or str(value) in ("", "nan") else str(value)


def patient_arm(wildcards):
    """A real cohort's PET-boost record from the cohort sheet's ``arm`` column: A, B, not_randomized,
    or empty (before randomisation). The plan applies A/B only when the 72 Gy whole-tumour boost is
    feasible. Sample patients get '' here: their record is the sample's cohort sheet, an input of the
    plan rule (allocation_sheet), because it does not exist before the sample rule has run."""
    if is_sample() or "arm" not in COHORT.columns:
        return ""
    value = str(COHORT.loc[wildcards.pid, "arm"])
    return value if value in ("A", "B", "not_randomized") else ""


def allocation_sheet(wildcards):
    """The sample's cohort sheet as a plan input: the one allocation, written once by the sample rule
    (with clinical.tsv, from the same value) and read by the plan, never drawn a second time.
    A real cohort's sheet is already parsed at load time (patient_arm); making it an input would
    re-plan every patient whenever any cell of the sheet changes."""
    return {"allocation": f"{SAMPLE_DIR}/cohort.tsv"} if is_sample() else {}


def plan_group():
    """The plan's job group: 'patient' (batched with the patient's other stages) for a real cohort;
    none for the sample, whose plans wait for the sample's cohort sheet. That sheet needs every
    sample patient, so a per-patient group would depend on itself through it (Snakemake refuses)."""
    return None if is_sample() else "patient"


def planning_beam_data():
    """Beam data of the built-in engine (a tracked input: new beam data re-plans every patient)."""
    return config.get("planning", {}).get("beam_data", str(Path(workflow.basedir) / "config" / "beams" / "generic_6mv.yaml"))


def clinical_table():
    """The clinical follow-up TSV: the sample's, or cohort.clinical (None when a sheet run has none yet:
    imaging stages run before follow-up exists; the outcome tables are then skipped, with a note)."""
    if is_sample():
        return f"{SAMPLE_DIR}/clinical.tsv"
    path = config["cohort"].get("clinical")
    if path and not Path(path).is_file():
        logger.warning(f"cohort.clinical ({path}) not found: the outcome tables (stage 6) are skipped")
        return None
    return path


def outcome_inputs(wildcards):
    """Inputs of the outcomes rule: the clinical table and, when there is one, the QoL table."""
    inputs = {"clinical": clinical_table()}
    qol = f"{SAMPLE_DIR}/qol.tsv" if is_sample() else config["cohort"].get("qol")
    if qol:
        inputs["qol"] = qol
    return inputs


def sample_patient_dirs():
    return expand(f"{SAMPLE_DIR}/{{pid}}", pid=PATIENTS)


def cohort_targets():
    """Everything `rule all` asks for; stage rules extend this as they arrive."""
    targets = expand(f"{RESULTS}/patients/{{pid}}/{{stage}}", pid=PATIENTS, stage=["ingest", "register", "segment", "perfusion", "plan"])
    if is_sample():
        targets += [f"{SAMPLE_DIR}/{name}.tsv" for name in ("cohort", "clinical", "qol")]
    if clinical_table():
        targets.append(f"{RESULTS}/cohort/outcomes/summary.json")
    return targets
