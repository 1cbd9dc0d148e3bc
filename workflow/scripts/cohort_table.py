"""Rule cohort_table: one row per patient of the cohort (isotox.planning.summary.write_cohort_table).

Every patient gets a row, also one whose data failed a stage (status, stage, first error line):
the rule waits only for the patients not known to have failed (common.smk: cohort_table_patients).
"""

from pathlib import Path

from isotox.planning.summary import write_cohort_table
from isotox.runlog import log_to_file

log = log_to_file(snakemake.log[0])  # noqa: F821 - injected by Snakemake
table = write_cohort_table(
    snakemake.output.table,  # noqa: F821
    [Path(d) for d in snakemake.params.patient_dirs],  # noqa: F821
    snakemake.params.log_root,  # noqa: F821
    dict(snakemake.params.known_failures),  # noqa: F821
)
log.info("cohort table: %d patients, %d failed", len(table), int((table["status"] == "failed").sum()))
Path(snakemake.output.table).with_name("patients.incomplete.tsv").unlink(missing_ok=True)  # noqa: F821 - the failed run's stand-in
