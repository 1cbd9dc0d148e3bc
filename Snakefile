# isotox: NSCLC DICOM studies -> isotoxic radiotherapy prescriptions -> trial outcome tables.
# Thin entry point: the stages live in workflow/rules/, the science in src/isotox/.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/register.smk"
include: "workflow/rules/segment.smk"
include: "workflow/rules/perfusion.smk"
include: "workflow/rules/plan.smk"
include: "workflow/rules/outcomes.smk"
include: "workflow/rules/strategies.smk"
include: "workflow/rules/provenance.smk"


# Cohort-level steps are seconds of work on small tables: on a cluster they run in the main
# Snakemake process instead of each waiting in the queue for a job of its own.
localrules:
    all,
    sample_cohort_tables,
    cohort_table,
    outcomes,
    strategies_cohort,
    provenance,


rule all:
    input:
        cohort_targets(),
    default_target: True
