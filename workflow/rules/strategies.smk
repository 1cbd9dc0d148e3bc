# Dose painting and biologically guided escalation (issue 19): per patient, every strategy of
# config/painting.yaml next to the trial arms, each at the protocol's isotoxic limit and all at the
# patient's common toxicity level (equal mean lung dose); then the cohort table and the TCP-gain
# figure. The rule script calls the function `isotox strategies` calls.
# results/patients/{pid}/{ingest,register,segment,plan} -> results/patients/{pid}/strategies.

STRATEGIES = f"{RESULTS}/cohort/strategies"


rule strategies:
    input:
        ingest=f"{RESULTS}/patients/{{pid}}/ingest",
        register=f"{RESULTS}/patients/{{pid}}/register",
        segment=f"{RESULTS}/patients/{{pid}}/segment",
        plan=f"{RESULTS}/patients/{{pid}}/plan",
        protocol=config["protocol"],
        painting=painting_file(),
        beam_data=planning_beam_data(),
    output:
        stage=report(
            directory(f"{RESULTS}/patients/{{pid}}/strategies"),
            patterns=["qc/{name}.png"],
            category="Dose painting",
            subcategory="{pid}",
        ),
    params:
        settings=config.get("planning", {}),
    log:
        f"{RESULTS}/logs/strategies/{{pid}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/strategies/{{pid}}.tsv"
    threads: 1
    resources:
        mem_mb=stage_mem_mb,
        runtime=30,
    group:
        "patient"
    conda:
        "../../envs/isotox.yaml"
    script:
        "../scripts/strategies.py"


rule strategies_cohort:
    input:
        patients=expand(f"{RESULTS}/patients/{{pid}}/strategies", pid=PATIENTS),
    output:
        table=f"{STRATEGIES}/strategies.tsv",
        summary=report(f"{STRATEGIES}/summary.tsv", category="Dose painting"),
        figure=report(f"{STRATEGIES}/tcp_gain.png", category="Dose painting"),
        page=report(f"{STRATEGIES}/strategies_report.html", category="Dose painting"),
    log:
        f"{RESULTS}/logs/strategies_cohort.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../envs/isotox.yaml"
    script:
        "../scripts/strategies_cohort.py"
