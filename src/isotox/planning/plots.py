"""Planning figures: the prescribed plan's cumulative DVHs, and every constraint against the dose
the search tried (value / limit, so all constraints share one axis and 1 is the limit)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from isotox.dose.dvh import Dvh  # noqa: E402


def dvh_plot(dvhs: dict[str, Dvh], path: str | Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for name, dvh in sorted(dvhs.items()):
        if not dvh.total_cc:
            continue
        curve = dvh.cumulative(0.1)
        style = "-" if name.startswith(("PTV", "GTV", "CTV")) else "--"
        ax.plot(curve["dose_gy"], curve["volume_percent"], style, label=f"{name} ({dvh.total_cc:.0f} cc)", linewidth=1.4)
    ax.set(xlabel="dose (Gy, physical, total)", ylabel="volume (%)", title=title, ylim=(0, 102))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def constraint_plot(scan: pd.DataFrame, constraints: list[dict[str, Any]], chosen_gy: float | None, path: str | Path, title: str) -> None:
    """One line per constraint: value / limit against the target dose of each candidate tried."""
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for label, part in scan.groupby("scan", sort=False):
        marker = "o" if len(part) == 1 else None
        for c in constraints:
            if c["id"] in part and part[c["id"]].notna().any():
                ax.plot(part["target_gy"], part[c["id"]] / c["limit"], marker=marker, linestyle="-" if marker is None else "none",
                        label=f"{c['id']} ({label})" if len(scan["scan"].unique()) > 1 else c["id"])
    ax.axhline(1.0, color="k", linewidth=1.0, linestyle=":", label="limit")
    if chosen_gy is not None:
        ax.axvline(chosen_gy, color="r", linewidth=1.0, linestyle="--", label=f"prescribed {chosen_gy:g} Gy")
    ax.set(xlabel="target dose of the candidate (Gy)", ylabel="constraint value / limit", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
