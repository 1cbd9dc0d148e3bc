"""Rule register: stage 2 for one patient (isotox.registration.stage.register_patient)."""

from pathlib import Path

from isotox.registration.rigid import RegistrationSettings
from isotox.registration.stage import register_patient
from isotox.runlog import log_to_file

log = log_to_file(snakemake.log[0])  # noqa: F821 - injected by Snakemake
register_patient(
    Path(snakemake.output.stage).parent,  # noqa: F821
    RegistrationSettings.from_config(dict(snakemake.params.settings), threads=snakemake.threads),  # noqa: F821
    patient_id=snakemake.wildcards.pid,  # noqa: F821
)
