"""Rule segment: stage 3 for one patient (isotox.segmentation.stage.segment_patient)."""

from pathlib import Path

from isotox.cli import parse_point
from isotox.runlog import log_to_file
from isotox.segmentation.stage import SegmentationSettings, segment_patient
from isotox.settings import load_protocol

log = log_to_file(snakemake.log[0])  # noqa: F821 - injected by Snakemake
settings = SegmentationSettings.from_config(
    dict(snakemake.params.settings), load_protocol(snakemake.input.protocol), snakemake.params.histology  # noqa: F821
)
segment_patient(
    Path(snakemake.output.stage).parent,  # noqa: F821
    settings,
    patient_id=snakemake.wildcards.pid,  # noqa: F821
    seed_point_mm=parse_point(snakemake.params.seed_point),  # noqa: F821
)
