# Helpers shared by every rules file: config and cohort validation, patient ids, target lists.
# Nothing here runs a job; rules files only call these functions.
import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import update_config

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
from isotox.settings.documents import load_validated_yaml  # noqa: E402


def _config_file_names():
    return ", ".join(str(f) for f in workflow.configfiles) or "the config"


def _yaml_typed(value):
    """A nested ``--config`` value as a config file would type it: Snakemake reads
    ``--config 'sample={"patients": 3}'`` with YAML's BaseLoader, so every nested scalar arrives as a
    string ('3') and the schema refuses it. Numbers, booleans and null are re-read with safe_load;
    anything else (names, paths, dates) stays the string that was typed."""
    if isinstance(value, dict):
        return {k: _yaml_typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_yaml_typed(v) for v in value]
    if isinstance(value, str):
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        return parsed if parsed is None or isinstance(parsed, (bool, int, float)) else value
    return value


# Top-level --config values are already typed by Snakemake (int, float, bool); only nested ones need it.
update_config(config, {k: _yaml_typed(v) for k, v in workflow.config_settings.config.items() if isinstance(v, (dict, list))})

try:
    validate_document(config, "config", _config_file_names())
    PROTOCOL = load_protocol(config["protocol"])
    RoiNameMap.from_yaml(config["roi_names"])
    load_validated_yaml(config.get("painting", str(Path(workflow.basedir) / "config" / "painting.yaml")), "painting")
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


def ingest_input(wildcards):
    """The ingest rule's input: ingest_source, except a dicom_dir that does not exist is no input
    (else Snakemake refuses the whole cohort): that patient's ingest job then fails alone, exit
    code 2, 'DICOM folder not found', and the others go on (--keep-going)."""
    folder = ingest_source(wildcards)
    return folder if is_sample() or Path(folder).is_dir() else []


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
    feasible. Sample patients get '' here: their record is the enrolment file the sample rule writes
    into the patient's folder (allocation_record), because it does not exist before that rule ran."""
    if is_sample() or "arm" not in COHORT.columns:
        return ""
    value = str(COHORT.loc[wildcards.pid, "arm"])
    return value if value in ("A", "B", "not_randomized") else ""


def allocation_record(wildcards):
    """A sample patient's enrolment record as a plan input: its own folder (enrolment.tsv, the row
    of the sample's cohort sheet, written once with the DICOM and read by the plan, never drawn a
    second time). Per patient, so the plan does not wait for the whole cohort and a patient's stages
    stay one group job on a cluster. A real cohort's sheet is parsed at load time (patient_arm):
    making it an input would re-plan every patient whenever any cell of the sheet changes."""
    return {"allocation": f"{SAMPLE_DIR}/{wildcards.pid}"} if is_sample() else {}


def planning_beam_data():
    """Beam data of the built-in engine (a tracked input: new beam data re-plans every patient)."""
    return config.get("planning", {}).get("beam_data", str(Path(workflow.basedir) / "config" / "beams" / "generic_6mv.yaml"))


def painting_file():
    """The dose-painting strategies and TCP model (config 'painting'; a tracked input of the strategies rule)."""
    return config.get("painting", str(Path(workflow.basedir) / "config" / "painting.yaml"))


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


def known_failures():
    """Patients that cannot start, known before any job runs: pid -> the reason (a cohort-sheet
    dicom_dir that is not a folder). The cohort table lists them as failed without waiting."""
    if is_sample():
        return {}
    return {pid: f"DICOM folder {folder!r} not found -> check dicom_dir in the cohort sheet"
            for pid, folder in COHORT["dicom_dir"].items() if not Path(folder).is_dir()}


def cohort_table_patients():
    """The patients the cohort table waits for: all but those that cannot start (known_failures)
    and those whose last attempt at a stage failed (its failure record next to the rule log, see
    isotox.runlog). So `--keep-going` with a bad patient still gives the table on a rerun, with
    that patient marked failed, and a fixed patient rejoins it once a run has no record of it."""
    from isotox.runlog import read_failure

    skip = set(known_failures())
    failed = {pid for pid in PATIENTS for stage in ("ingest", "register", "segment", "perfusion", "plan")
              if read_failure(f"{RESULTS}/logs/{stage}/{pid}.log") is not None}
    return [pid for pid in PATIENTS if pid not in skip | failed]


def sample_patient_dirs():
    return expand(f"{SAMPLE_DIR}/{{pid}}", pid=PATIENTS)


def cohort_targets():
    """Everything `rule all` asks for; the results, then their provenance (which needs them all)."""
    return result_targets() + [f"{RESULTS}/provenance"]


def result_targets():
    """Every per-patient stage and cohort table; stage rules extend this as they arrive."""
    targets = expand(f"{RESULTS}/patients/{{pid}}/{{stage}}", pid=PATIENTS, stage=["ingest", "register", "segment", "perfusion", "plan"])
    if is_sample():
        targets += [f"{SAMPLE_DIR}/{name}.tsv" for name in ("cohort", "clinical", "qol")]
    if clinical_table():
        targets.append(f"{RESULTS}/cohort/outcomes/summary.json")
    targets.append(f"{RESULTS}/cohort/strategies/summary.tsv")  # dose painting (workflow/rules/strategies.smk)
    return targets


def patient_input_dirs():
    """Patient id -> the folder of its input files (the sample's synthesised folder or dicom_dir).
    A dicom_dir that does not exist is left out (known_failures): as an input it would make Snakemake
    refuse the whole run before any job (MissingInputException), not fail that patient alone."""
    missing = known_failures()
    return {pid: ingest_source(SimpleNamespace(pid=pid)) for pid in PATIENTS if pid not in missing}


def provenance_files(wildcards):
    """Files the run read, by role, copied into results/provenance/files/."""
    files = {"protocol": config["protocol"], "beam_data": planning_beam_data(), "roi_names": config["roi_names"],
             "cohort_sheet": f"{SAMPLE_DIR}/cohort.tsv" if is_sample() else config["cohort"]["sheet"]}
    files.update({role: path for role, path in outcome_inputs(wildcards).items() if path})
    return files



def _cohort_table_after_failure():
    """When a run ends with failed jobs (--keep-going), write the cohort table anyway, in this run:
    the rule itself waited for a patient that failed. Every patient is listed, a failed one with its
    stage and first error line (its failure record). If every patient is either finished or failed,
    the table is final (what the rule would write, as it no longer waits for failed patients) and
    goes to patients.tsv. If some patient is merely unfinished (a partial target list, a stage not
    reached), it goes to patients.incomplete.tsv instead, never to patients.tsv, which a rerun would
    take as finished; the rule's next run replaces it."""
    from isotox.planning.summary import cohort_table, write_table

    if not Path(f"{RESULTS}/patients").is_dir():
        return
    table = cohort_table([Path(f"{RESULTS}/patients/{pid}") for pid in PATIENTS], f"{RESULTS}/logs", known_failures())
    final = not (table["status"] == "incomplete").any()
    path = Path(f"{RESULTS}/cohort/patients.tsv" if final else f"{RESULTS}/cohort/patients.incomplete.tsv")
    write_table(path, table)
    if final:
        Path(f"{RESULTS}/cohort/patients.incomplete.tsv").unlink(missing_ok=True)
    failed = ", ".join(table.loc[table["status"] == "failed", "patient_id"])
    logger.warning(f"some jobs failed ({failed or 'no patient stage'}): {path} lists every patient, the failed ones with the error")


onerror:
    _cohort_table_after_failure()
