"""Rule sample_cohort_tables: cohort sheet, clinical follow-up and QoL tables of the sample cohort."""

from pathlib import Path

from isotox.runlog import log_to_file
from isotox.sample.cohort import write_cohort_tables

log = log_to_file(snakemake.log[0])  # noqa: F821 - injected by Snakemake
out_dir = Path(snakemake.output.cohort).parent  # noqa: F821
paths = write_cohort_tables(out_dir, [Path(p) / "ground_truth.json" for p in snakemake.input.patients], snakemake.params.seed)  # noqa: F821
log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
