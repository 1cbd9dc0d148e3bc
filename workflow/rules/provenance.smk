# Last step: what the results were made from. The resolved config, the protocol, beam data, ROI map and
# cohort sheet the run read, a checksum of every patient input file, package versions, the git commit,
# and the sha256 of every result table -> results/provenance/ (nothing time- or host-dependent).


rule provenance:
    input:
        unpack(provenance_files),
        patients=list(patient_input_dirs().values()),
        results=result_targets(),
    output:
        folder=directory(f"{RESULTS}/provenance"),
    params:
        config=config,
        file_roles=lambda wildcards: sorted(provenance_files(wildcards)),
        patient_ids=list(patient_input_dirs()),
        results=lambda wildcards, output: str(Path(output.folder).parent),
        workflow_dir=workflow.basedir,
    log:
        f"{RESULTS}/logs/provenance.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../envs/isotox.yaml"
    script:
        "../scripts/provenance.py"
