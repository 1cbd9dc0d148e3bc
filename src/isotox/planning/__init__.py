"""Stage 5, planning: unit plans (TPS dose or the built-in engine), the protocol's isotoxic search,
NTCP, and the export of the prescribed plan as DICOM RTSTRUCT + RTDOSE."""
