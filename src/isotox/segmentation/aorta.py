"""The descending aorta from a contrast-enhanced planning CT, for the HX4 blood activity.

Used when the RTSTRUCT has no AORTA. Candidate vessel cross-sections are the connected regions
of enhanced blood (100-600 HU after a 3 x 3 median); brightness does not separate the aorta from
the vertebral body (arterial-phase aortas reach 150-400 HU, vertebrae 200-450 HU), so the choice
among them is anatomical (:mod:`isotox.vessels`): round, vessel-sized, just left of the spine,
the longest straight chain through the slices. Returns an empty mask when nothing qualifies
(e.g. a CT without contrast): the caller flags it rather than guessing.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from scipy import ndimage

from isotox.vessels import AortaFinding, find_descending_aorta as _find_by_anatomy

#: Bone for locating the spine: above any soft tissue, including non-enhanced blood.
BONE_HU = 150.0


def find_descending_aorta(ct: sitk.Image, body: NDArray[np.bool_], min_length_mm: float = 40.0) -> NDArray[np.bool_]:
    """Mask (k, j, i) of the descending aorta on ``ct``, empty when none is found."""
    return locate_descending_aorta(ct, body, min_length_mm).mask


def locate_descending_aorta(ct: sitk.Image, body: NDArray[np.bool_], min_length_mm: float = 40.0) -> AortaFinding:
    """The descending aorta on ``ct`` with what it was chosen by (for the QC record)."""
    hu = ndimage.median_filter(sitk.GetArrayFromImage(ct).astype(np.float32), size=(1, 3, 3))
    blood = np.zeros(hu.shape, bool)
    for k in range(hu.shape[0]):
        blood[k] = ndimage.binary_opening((hu[k] > 100.0) & (hu[k] < 600.0) & body[k])
    return _find_by_anatomy(blood, hu > BONE_HU, body, ct, min_length_mm)
