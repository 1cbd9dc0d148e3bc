"""Figures of the strategies stage: a patient's dose maps side by side with the QVH, and the
cohort's TCP gain per strategy at the isotoxic limit and at equal toxicity."""

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
    """TCP gain over ``reference`` per strategy (one point per patient, median bar): at each
    strategy's isotoxic/ceiling limit (left) and at the patient's common toxicity level (right)."""
    panels = [("tcp", "at the isotoxic / ceiling limit")]
    if "eqtox_tcp_gain" in table and table["eqtox_tcp_gain"].notna().any():
        measure = ", ".join(map(str, table["eqtox_measure"].dropna().unique()))
        panels.append(("eqtox_tcp_gain", f"at equal toxicity ({measure})"))
    strategies = [s for s in dict.fromkeys(table["strategy"]) if s != reference]
    fig, axes = plt.subplots(1, len(panels), figsize=(len(panels) * (1.4 * max(len(strategies), 3) + 1), 3.6), sharey=True, squeeze=False)
    for ax, (column, title) in zip(axes[0], panels):
        values = table.pivot(index="patient_id", columns="strategy", values=column).apply(pd.to_numeric, errors="coerce")
        gains = values.sub(values[reference], axis=0) if column == "tcp" else values
        for x, name in enumerate(strategies):
            v = gains[name].dropna().to_numpy() if name in gains else np.zeros(0)
            ax.scatter(np.full(v.size, x) + np.linspace(-0.1, 0.1, v.size), 100 * v, s=12)
            if v.size:
                ax.hlines(100 * np.median(v), x - 0.3, x + 0.3, color="k")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xticks(range(len(strategies)), strategies, rotation=30, ha="right")
        ax.set_title(f"TCP gain {title}", fontsize=9)
    axes[0][0].set_ylabel(f"TCP - TCP({reference}) (percentage points)")
    fig.savefig(path, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
