"""Rule strategies: dose-painting strategies for one patient (isotox.painting.stage.strategies_patient,
the function `isotox strategies` calls too)."""

from pathlib import Path

from isotox.painting.stage import strategies_patient
from isotox.planning.settings import PlanningSettings
from isotox.runlog import log_to_file

log = log_to_file(snakemake.log[0])  # noqa: F821 - injected by Snakemake
settings = PlanningSettings.from_config(dict(snakemake.params.settings))  # noqa: F821
settings.beam_data = snakemake.input.beam_data  # noqa: F821 - the tracked input, as in the plan rule
strategies_patient(
    Path(snakemake.output.stage).parent,  # noqa: F821
    snakemake.input.protocol,  # noqa: F821
    snakemake.input.painting,  # noqa: F821
    settings=settings,
    patient_id=snakemake.wildcards.pid,  # noqa: F821
    out_dir=snakemake.output.stage,  # noqa: F821
)
