"""Rule ingest: stage 1 for one patient (isotox.ingest.ingest_patient)."""

from pathlib import Path

from isotox.ingest import ingest_patient
from isotox.runlog import log_to_file

log = log_to_file(snakemake.log[0])  # noqa: F821 - injected by Snakemake
ingest_patient(
    snakemake.params.dicom_dir,  # noqa: F821
    Path(snakemake.output.stage).parent,  # noqa: F821
    patient_id=snakemake.wildcards.pid,  # noqa: F821
    roi_names=snakemake.params.roi_names,  # noqa: F821
    series_roles=snakemake.params.series_roles,  # noqa: F821
    irregular=snakemake.params.irregular,  # noqa: F821
    accept_effective_dose=snakemake.params.accept_effective_dose,  # noqa: F821
)
