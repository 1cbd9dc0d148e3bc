# Stage 6 (cohort level): the per-patient summary table, then endpoints, survival, toxicity,
# the Simon monitor, quality of life. Figures and tables are tagged for `snakemake --report`.

OUTCOMES = f"{RESULTS}/cohort/outcomes"


rule cohort_table:
    input:
        segment=expand(f"{RESULTS}/patients/{{pid}}/segment", pid=cohort_table_patients()),
        perfusion=expand(f"{RESULTS}/patients/{{pid}}/perfusion", pid=cohort_table_patients()),
        plan=expand(f"{RESULTS}/patients/{{pid}}/plan", pid=cohort_table_patients()),
    output:
        table=report(f"{RESULTS}/cohort/patients.tsv", caption="../report/patients.rst", category="Cohort tables"),
    params:
        patient_dirs=expand(f"{RESULTS}/patients/{{pid}}", pid=PATIENTS),
        log_root=f"{RESULTS}/logs",
        known_failures=known_failures(),
    log:
        f"{RESULTS}/logs/cohort_table.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../envs/isotox.yaml"
    script:
        "../scripts/cohort_table.py"


rule outcomes:
    input:
        unpack(outcome_inputs),
        protocol=config["protocol"],
        patients=f"{RESULTS}/cohort/patients.tsv",
    output:
        summary=f"{OUTCOMES}/summary.json",
        report_page=report(f"{OUTCOMES}/outcomes_report.html", caption="../report/outcomes_report.rst", category="Primary endpoint"),
        primary=report(f"{OUTCOMES}/primary_endpoint.tsv", caption="../report/primary.rst", category="Primary endpoint"),
        local_failure=report(f"{OUTCOMES}/local_failure.tsv", caption="../report/local_failure.rst", category="Survival"),
        survival=report(f"{OUTCOMES}/survival.tsv", caption="../report/survival.rst", category="Survival"),
        km_lpfs=report(f"{OUTCOMES}/km_LPFS.png", caption="../report/km.rst", category="Survival", subcategory="Kaplan-Meier", labels={"endpoint": "LPFS (primary)"}),
        km_os=report(f"{OUTCOMES}/km_OS.png", caption="../report/km.rst", category="Survival", subcategory="Kaplan-Meier", labels={"endpoint": "OS"}),
        km_pfs=report(f"{OUTCOMES}/km_PFS.png", caption="../report/km.rst", category="Survival", subcategory="Kaplan-Meier", labels={"endpoint": "PFS"}),
        km_ttp=report(f"{OUTCOMES}/km_TTP.png", caption="../report/km.rst", category="Survival", subcategory="Kaplan-Meier", labels={"endpoint": "TTP"}),
        km_lc=report(f"{OUTCOMES}/km_LC.png", caption="../report/km.rst", category="Survival", subcategory="Kaplan-Meier", labels={"endpoint": "local control"}),
        logrank=f"{OUTCOMES}/logrank.tsv",
        toxicity=report(f"{OUTCOMES}/toxicity.png", caption="../report/toxicity.rst", category="Toxicity"),
        toxicity_fits=f"{OUTCOMES}/toxicity_fits.tsv",
        toxicity_ntcp=report(f"{OUTCOMES}/toxicity_ntcp.tsv", caption="../report/toxicity_ntcp.rst", category="Toxicity"),
        evaluability=report(f"{OUTCOMES}/toxicity_evaluability.tsv", caption="../report/evaluability.rst", category="Simon monitor"),
        simon=report(f"{OUTCOMES}/simon.tsv", caption="../report/simon.rst", category="Simon monitor"),
        feasibility=report(f"{OUTCOMES}/feasibility.tsv", caption="../report/feasibility.rst", category="Cohort tables"),
        qol=report(f"{OUTCOMES}/qol.png", caption="../report/qol.rst", category="Quality of life"),
        problems=report(f"{OUTCOMES}/problems.tsv", caption="../report/problems.rst", category="Cohort tables"),
    log:
        f"{RESULTS}/logs/outcomes.log",
    benchmark:
        f"{RESULTS}/benchmarks/outcomes.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    conda:
        "../../envs/isotox.yaml"
    script:
        "../scripts/outcomes.py"
