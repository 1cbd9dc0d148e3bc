# Stage 4: DCE-CT perfusion. results/patients/{pid}/{ingest,register,segment} -> .../perfusion
# (AIF, parametric maps on the planning CT, tumour summaries).


rule perfusion:
    input:
        ingest=f"{RESULTS}/patients/{{pid}}/ingest",
        register=f"{RESULTS}/patients/{{pid}}/register",
        segment=f"{RESULTS}/patients/{{pid}}/segment",
    output:
        stage=report(
            directory(f"{RESULTS}/patients/{{pid}}/perfusion"),
            patterns=["qc/{name}.png"],
            caption="../report/qc.rst",
            category="Per-patient QC",
            subcategory="{pid}",
        ),
    params:
        settings=config.get("perfusion", {}),
    log:
        f"{RESULTS}/logs/perfusion/{{pid}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/perfusion/{{pid}}.tsv"
    threads: 1
    resources:
        mem_mb=stage_mem_mb,
        runtime=30,
    group:
        "patient"
    conda:
        "../../envs/isotox.yaml"
    script:
        "../scripts/perfusion.py"
