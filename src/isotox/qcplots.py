"""QC figures: an image (CT) with an overlay (PET, a parametric map) and contours, in three planes.

One function, used by registration (fused PET/CT), segmentation (contours) and perfusion (maps),
so every stage's PNG reads the same way: axial, coronal and sagittal through one point.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
from numpy.typing import NDArray  # noqa: E402

CONTOUR_COLOURS = ("#00e5ff", "#ff4081", "#76ff03", "#ffea00", "#e040fb", "#ff9100", "#ffffff", "#2979ff")


def _planes(volume: NDArray, index: tuple[int, int, int]) -> list[NDArray[np.float64]]:
    """The axial, coronal and sagittal planes through ``index`` (i, j, k), as floats.

    Why planes first, floats after: converting whole volumes (the CT and each contour mask) to
    float64 before slicing made a realistic patient's segmentation QC figure peak at 4.8 GB."""
    i, j, k = index
    return [np.asarray(p, dtype=float) for p in (volume[k], volume[:, j, :][::-1], volume[:, :, i][::-1])]


def _voxel_index(image: sitk.Image, point_mm: tuple[float, float, float] | NDArray) -> tuple[int, int, int]:
    """The voxel (i, j, k) nearest ``point_mm``, clamped into the image."""
    index = image.TransformPhysicalPointToIndex(tuple(float(v) for v in point_mm))
    return tuple(int(np.clip(v, 0, n - 1)) for v, n in zip(index, image.GetSize()))  # type: ignore[return-value]


def three_planes(ct: sitk.Image, point_mm: tuple[float, float, float] | NDArray, path: str | Path, title: str,
                 overlay: sitk.Image | None = None, overlay_label: str = "SUV", overlay_max: float | None = None,
                 contours: dict[str, NDArray[np.bool_]] | None = None, ct_window: tuple[float, float] = (-1000.0, 400.0)) -> None:
    """Write a PNG: CT in grey, ``overlay`` (same grid) in colour, ``contours`` (same grid) as lines."""
    index = _voxel_index(ct, point_mm)
    hu_planes = _planes(sitk.GetArrayViewFromImage(ct), index)
    sx, sy, sz = ct.GetSpacing()
    aspects = [sy / sx, sz / sx, sz / sy]
    over = sitk.GetArrayViewFromImage(overlay) if overlay is not None else None
    vmax = overlay_max if overlay_max is not None else (float(np.nanpercentile(over, 99.9)) if over is not None else 1.0)
    over_planes = _planes(over, index) if over is not None else None
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.8))
    for n, (ax, name) in enumerate(zip(axes, ("axial", "coronal", "sagittal"))):
        ax.imshow(hu_planes[n], cmap="gray", vmin=ct_window[0], vmax=ct_window[1], aspect=aspects[n], interpolation="nearest")
        if over_planes is not None:
            plane = over_planes[n]
            shown = np.ma.masked_less(plane, 0.1 * vmax)
            im = ax.imshow(shown, cmap="hot", vmin=0, vmax=vmax, alpha=0.55, aspect=aspects[n], interpolation="nearest")
        for c, (label, mask) in enumerate((contours or {}).items()):
            plane = _planes(mask, index)[n]
            if plane.any():
                ax.contour(plane, levels=[0.5], colors=CONTOUR_COLOURS[c % len(CONTOUR_COLOURS)], linewidths=1.0)
                ax.plot([], [], color=CONTOUR_COLOURS[c % len(CONTOUR_COLOURS)], label=label)
        ax.set_title(name)
        ax.set_axis_off()
    if contours:
        axes[0].legend(loc="lower left", fontsize=7, framealpha=0.6)
    if over is not None:
        fig.colorbar(im, ax=axes, shrink=0.7, label=overlay_label)
    fig.suptitle(title)
    fig.savefig(path, dpi=90)
    plt.close(fig)
