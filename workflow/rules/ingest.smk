# Stage 1: DICOM ingestion. One patient's DICOM folder -> results/patients/{pid}/ingest/
# (NIfTI images in HU / SUVbw, masks on the planning CT, dose, series.tsv, metadata.json).


rule ingest:
    input:
        dicom=ingest_input,
    output:
        stage=directory(f"{RESULTS}/patients/{{pid}}/ingest"),
    params:
        dicom_dir=ingest_dicom_dir,
        roi_names=config["roi_names"],
        series_roles=series_roles,
        irregular=config.get("ingest", {}).get("irregular", "resample"),
        accept_effective_dose=config.get("ingest", {}).get("accept_effective_dose", False),
    log:
        f"{RESULTS}/logs/ingest/{{pid}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/ingest/{{pid}}.tsv"
    threads: 1
    resources:
        mem_mb=ingest_mem_mb,
        runtime=30,
    group:
        "patient"
    conda:
        "../../envs/isotox.yaml"
    script:
        "../scripts/ingest.py"
