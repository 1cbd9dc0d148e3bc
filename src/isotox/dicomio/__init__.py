"""DICOM input/output: writing image series and RT objects, (later) reading and classifying them."""
