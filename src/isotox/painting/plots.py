"""Figures of the strategies stage: a patient's dose maps side by side with the QVH, and the
cohort's TCP gain per strategy at the isotoxic limit."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from numpy.typing import NDArray  # noqa: E402


def strategy_figure(ct_hu: NDArray[np.floating], doses_gy: dict[str, NDArray[np.floating]], gtv: NDArray[np.bool_],
                    qvhs: dict[str, pd.DataFrame], path: str | Path, title: str) -> None:
    """Axial slice through the GTV centre: CT with each strategy's dose (same colour scale) and the
    GTV outline; last panel the QVHs (percentage of the GTV with D_plan/D_prescribed >= q)."""
    k = int(round(np.argwhere(gtv)[:, 0].mean()))
    rows = np.flatnonzero(gtv[k].any(axis=1))
    cols = np.flatnonzero(gtv[k].any(axis=0))
    pad = 25
    r0, r1 = max(rows.min() - pad, 0), min(rows.max() + pad, gtv.shape[1] - 1)
    c0, c1 = max(cols.min() - pad, 0), min(cols.max() + pad, gtv.shape[2] - 1)
    vmax = max(float(np.percentile(d[gtv], 99.5)) for d in doses_gy.values())
    n = len(doses_gy) + 1
    fig, axes = plt.subplots(1, n, figsize=(3.0 * n + 1.5, 3.4), gridspec_kw={"width_ratios": [1.0] * (n - 1) + [1.5], "wspace": 0.3})
    image = None
    for ax, (name, dose) in zip(axes, doses_gy.items()):
        ax.imshow(ct_hu[k, r0:r1, c0:c1], cmap="gray", vmin=-1000, vmax=400)
        image = ax.imshow(np.ma.masked_less(dose[k, r0:r1, c0:c1], 5.0), cmap="jet", vmin=0, vmax=vmax, alpha=0.55)
        ax.contour(gtv[k, r0:r1, c0:c1], levels=[0.5], colors="white", linewidths=0.8)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if image is not None:
        fig.colorbar(image, ax=axes[:-1].tolist(), orientation="horizontal", fraction=0.05, pad=0.03, aspect=60, label="Gy")
    ax = axes[-1]
    for name, curve in qvhs.items():
        ax.plot(curve["q"], curve["volume_percent"], label=name)
    ax.axvline(1.0, color="k", lw=0.5)
    ax.set_xlabel("D plan / D prescribed")
    ax.set_ylabel("GTV volume (%)")
    ax.set_title("QVH", fontsize=9)
    ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def cohort_gain_figure(table: pd.DataFrame, path: str | Path, reference: str = "uniform_66") -> None:
    """TCP gain over ``reference`` per strategy (one point per patient, median bar)."""
    gains = table.pivot(index="patient_id", columns="strategy", values="tcp")
    gains = gains.sub(gains[reference], axis=0).drop(columns=[reference])
    fig, ax = plt.subplots(figsize=(1.4 * max(len(gains.columns), 3) + 1, 3.6))
    for x, name in enumerate(gains.columns):
        values = gains[name].dropna().to_numpy()
        ax.scatter(np.full(values.size, x) + np.linspace(-0.1, 0.1, values.size), 100 * values, s=12)
        if values.size:
            ax.hlines(100 * np.median(values), x - 0.3, x + 0.3, color="k")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xticks(range(len(gains.columns)), gains.columns, rotation=30, ha="right")
    ax.set_ylabel(f"TCP - TCP({reference}) (percentage points)")
    ax.set_title("TCP gain per strategy at the isotoxic limit")
    fig.savefig(path, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
