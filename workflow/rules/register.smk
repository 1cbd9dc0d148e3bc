# Stage 2: PET/CT (FDG, HX4 2 h and 4 h) and DCE-CT onto the planning CT.
# results/patients/{pid}/ingest -> results/patients/{pid}/register (transforms, resampled PET, QC).


rule register:
    input:
        ingest=f"{RESULTS}/patients/{{pid}}/ingest",
    output:
        stage=report(
            directory(f"{RESULTS}/patients/{{pid}}/register"),
            patterns=["qc/{name}.png"],
            caption="../report/qc.rst",
            category="Per-patient QC",
            subcategory="{pid}",
        ),
    params:
        settings=config.get("registration", {}),
    log:
        f"{RESULTS}/logs/register/{{pid}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/register/{{pid}}.tsv"
    threads: 2
    resources:
        mem_mb=stage_mem_mb,
        runtime=60,
    group:
        "patient"
    conda:
        "../../envs/isotox.yaml"
    script:
        "../scripts/register.py"
