"""Rule perfusion: stage 4 for one patient (isotox.perfusion.stage.perfusion_patient)."""

from pathlib import Path

from isotox.perfusion.stage import PerfusionSettings, perfusion_patient
from isotox.runlog import log_to_file

log = log_to_file(snakemake.log[0])  # noqa: F821 - injected by Snakemake
perfusion_patient(
    Path(snakemake.output.stage).parent,  # noqa: F821
    PerfusionSettings.from_config(dict(snakemake.params.settings)),  # noqa: F821
    patient_id=snakemake.wildcards.pid,  # noqa: F821
)
