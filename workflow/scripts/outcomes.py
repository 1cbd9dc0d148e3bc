"""Rule outcomes: stage 6 for the cohort (isotox.outcomes.tabulate.tabulate_outcomes)."""

from pathlib import Path

from isotox.outcomes.tabulate import tabulate_outcomes
from isotox.runlog import log_to_file
from isotox.settings import load_protocol

log = log_to_file(snakemake.log[0])  # noqa: F821 - injected by Snakemake
tabulate_outcomes(
    snakemake.input.clinical,  # noqa: F821
    Path(snakemake.output.summary).parent,  # noqa: F821
    load_protocol(snakemake.input.protocol),  # noqa: F821
    qol=snakemake.input.get("qol"),  # noqa: F821
    patients=snakemake.input.patients,  # noqa: F821
)
