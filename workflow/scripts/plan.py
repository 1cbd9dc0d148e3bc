"""Rule plan: stage 5 for one patient (isotox.planning.stage.plan_patient)."""

from pathlib import Path

from isotox.planning.settings import PlanningSettings
from isotox.planning.stage import plan_patient
from isotox.runlog import log_to_file

log = log_to_file(snakemake.log[0])  # noqa: F821 - injected by Snakemake
settings = PlanningSettings.from_config(dict(snakemake.params.settings))  # noqa: F821
settings.beam_data = snakemake.input.beam_data  # noqa: F821 - the tracked input, not a second copy of the path
plan_patient(
    Path(snakemake.output.stage).parent,  # noqa: F821
    snakemake.input.protocol,  # noqa: F821
    arm=snakemake.params.arm or None,  # noqa: F821
    settings=settings,
    patient_id=snakemake.wildcards.pid,  # noqa: F821
)
