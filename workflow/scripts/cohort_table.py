"""Rule cohort_table: one row per patient from the imaging stages (isotox.outcomes.patients)."""

from pathlib import Path

from isotox.atomic import write_text
from isotox.outcomes.patients import cohort_patient_table
from isotox.planning.summary import add_boost_columns
from isotox.runlog import log_to_file

log = log_to_file(snakemake.log[0])  # noqa: F821 - injected by Snakemake
patient_dirs = [Path(d).parent for d in snakemake.input.segment]  # noqa: F821
table = add_boost_columns(cohort_patient_table(patient_dirs), patient_dirs)  # arm recorded/applied, boost reached per arm and what stopped it
write_text(snakemake.output.table, table.to_csv(sep="\t", index=False, float_format="%.5g"))  # noqa: F821
