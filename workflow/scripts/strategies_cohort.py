"""Rule strategies_cohort: the cohort table, summary and TCP-gain figure (isotox.painting.cohort)."""

from isotox.painting.cohort import cohort_strategies
from isotox.runlog import log_to_file

log = log_to_file(snakemake.log[0])  # noqa: F821 - injected by Snakemake
cohort_strategies(
    list(snakemake.input.patients),  # noqa: F821
    snakemake.output.table,  # noqa: F821
    snakemake.output.summary,  # noqa: F821
    snakemake.output.figure,  # noqa: F821
    snakemake.output.page,  # noqa: F821
)
