# Stage 3: tumour volumes (GTV_PET, boost, hypoxic), CTV/PTV margins, organs at risk.
# results/patients/{pid}/{ingest,register} -> results/patients/{pid}/segment.


rule segment:
    input:
        ingest=f"{RESULTS}/patients/{{pid}}/ingest",
        register=f"{RESULTS}/patients/{{pid}}/register",
        protocol=config["protocol"],
    output:
        stage=report(
            directory(f"{RESULTS}/patients/{{pid}}/segment"),
            patterns=["qc/{name}.png"],
            caption="../report/qc.rst",
            category="Per-patient QC",
            subcategory="{pid}",
        ),
    params:
        settings=config.get("segmentation", {}),
        histology=patient_histology,
        seed_point=patient_seed_point,
    log:
        f"{RESULTS}/logs/segment/{{pid}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/segment/{{pid}}.tsv"
    threads: 1
    resources:
        mem_mb=stage_mem_mb,
        runtime=30,
    group:
        "patient"
    conda:
        "../../envs/isotox.yaml"
    script:
        "../scripts/segment.py"
