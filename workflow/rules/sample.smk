# The embedded sample cohort: deterministic synthetic DICOM studies with ground truth, and the
# clinical follow-up and quality-of-life tables of the cohort.


rule sample_patient:
    output:
        patient=directory(f"{SAMPLE_DIR}/{{pid}}"),
    params:
        index=sample_index,
        seed=config.get("sample", {}).get("seed", 0),
        preset=config.get("sample", {}).get("preset", "small"),
    log:
        f"{RESULTS}/logs/sample_patient/{{pid}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/sample_patient/{{pid}}.tsv"
    threads: 1
    resources:
        mem_mb=sample_mem_mb,
        runtime=30,
    group:
        "patient"
    conda:
        "../../envs/isotox.yaml"
    script:
        "../scripts/sample_patient.py"


rule sample_cohort_tables:
    input:
        patients=sample_patient_dirs(),
    output:
        cohort=f"{SAMPLE_DIR}/cohort.tsv",
        clinical=f"{SAMPLE_DIR}/clinical.tsv",
        qol=f"{SAMPLE_DIR}/qol.tsv",
        model=f"{SAMPLE_DIR}/clinical_model.json",
    params:
        seed=config.get("sample", {}).get("seed", 0),
    log:
        f"{RESULTS}/logs/sample_cohort_tables.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../envs/isotox.yaml"
    script:
        "../scripts/sample_cohort_tables.py"
