"""Rule plan: stage 5 for one patient (isotox.planning.stage.plan_patient)."""

from pathlib import Path

from isotox.planning.allocation import recorded_arm
from isotox.planning.settings import PlanningSettings
from isotox.planning.stage import plan_patient
from isotox.runlog import log_to_file

log = log_to_file(snakemake.log[0])  # noqa: F821 - injected by Snakemake
settings = PlanningSettings.from_config(dict(snakemake.params.settings))  # noqa: F821
settings.beam_data = snakemake.input.beam_data  # noqa: F821 - the tracked input, not a second copy of the path
# the PET-boost record: a sample patient's enrolment row (its folder is an input), else the cohort sheet's arm (a param)
sample_dir = getattr(snakemake.input, "allocation", None)  # noqa: F821
if sample_dir:
    from isotox.sample.patient import ENROLMENT_FILE

    arm = recorded_arm(Path(sample_dir) / ENROLMENT_FILE, snakemake.wildcards.pid)  # noqa: F821
else:
    arm = snakemake.params.arm or None  # noqa: F821
plan_patient(
    Path(snakemake.output.stage).parent,  # noqa: F821
    snakemake.input.protocol,  # noqa: F821
    arm=arm,
    settings=settings,
    patient_id=snakemake.wildcards.pid,  # noqa: F821
)
