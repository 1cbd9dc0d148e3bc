"""Rule provenance: what the results were made from (isotox.provenance.write_provenance)."""

from pathlib import Path

from isotox.provenance import ProvenanceInputs, write_provenance
from isotox.runlog import log_to_file

log = log_to_file(snakemake.log[0])  # noqa: F821 - injected by Snakemake
files = {role: Path(snakemake.input[role]) for role in snakemake.params.file_roles}  # noqa: F821
doc = write_provenance(
    snakemake.output.folder,  # noqa: F821
    ProvenanceInputs(
        config=snakemake.params.config,  # noqa: F821
        files=files,
        patient_inputs=dict(zip(snakemake.params.patient_ids, map(Path, snakemake.input.patients))),  # noqa: F821
        results=Path(snakemake.params.results),  # noqa: F821
        workflow_dir=Path(snakemake.params.workflow_dir),  # noqa: F821
    ),
)
log.info("provenance: %d patients, %d result tables, workflow %s", len(doc["patients"]), doc["tables"], doc["workflow"]["commit"])
