# Stage 5: unit plans (TPS dose or the built-in engine), the protocol's isotoxic search, NTCP,
# and the DICOM export of the prescribed plan.
# results/patients/{pid}/{ingest,segment} -> results/patients/{pid}/plan.


rule plan:
    input:
        unpack(allocation_record),
        ingest=f"{RESULTS}/patients/{{pid}}/ingest",
        segment=f"{RESULTS}/patients/{{pid}}/segment",
        protocol=config["protocol"],
        beam_data=planning_beam_data(),
    output:
        stage=report(
            directory(f"{RESULTS}/patients/{{pid}}/plan"),
            patterns=["qc/{name}.png"],
            caption="../report/plan.rst",
            category="Per-patient QC",
            subcategory="{pid}",
        ),
    params:
        settings=config.get("planning", {}),
        arm=patient_arm,
    log:
        f"{RESULTS}/logs/plan/{{pid}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/plan/{{pid}}.tsv"
    threads: 1
    resources:
        mem_mb=stage_mem_mb,
        runtime=30,
    group:
        "patient"
    conda:
        "../../envs/isotox.yaml"
    script:
        "../scripts/plan.py"
