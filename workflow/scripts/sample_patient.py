"""Rule sample_patient: synthesise one patient of the sample cohort (DICOM + ground truth)."""

from isotox.runlog import log_to_file
from isotox.sample import write_sample_patient

log = log_to_file(snakemake.log[0])  # noqa: F821 - injected by Snakemake
write_sample_patient(snakemake.output.patient, snakemake.params.index, snakemake.params.seed, snakemake.params.preset)  # noqa: F821
