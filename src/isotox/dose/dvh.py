"""Cumulative dose-volume histograms with sub-voxel sampling, and the metrics protocols use.

A structure is a binary mask on its own grid (the planning CT, or a fine raster of the RTSTRUCT
contours). Each structure voxel is split into s x s x s_z sub-voxels and the dose is sampled at
their centres by trilinear interpolation on the dose grid, so partial volumes at the dose-grid
scale are honoured and the structure volume is the mask's (it never depends on the dose grid's
extent; sub-voxels outside the dose grid get dose 0 and are counted in ``outside_fraction``).

Metric conventions (as in the QUANTEC/ICRU literature and dicompyler-core):
``Vx`` = volume receiving >= x Gy (percent, or cc with ``Vxcc``); ``Dx`` = minimum dose to the
hottest x % of the volume; ``Dxcc`` = minimum dose to the hottest x cc (D0.03cc: "near-max");
``Dmax``/``Dmin`` = highest/lowest sub-voxel dose; ``Dmean``; gEUD = (sum v_i D_i^a)^(1/a).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import IO, TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from isotox.geometry import ImageGrid

if TYPE_CHECKING:  # pandas and scipy are imported where used: ``isotox dvh`` starts without them (~0.5 s, ~100 MB)
    import pandas as pd


@dataclass
class Dvh:
    """Dose samples of one structure, each with the volume it stands for."""

    name: str
    dose_gy: NDArray[np.float64]  # sorted descending
    volume_cc: NDArray[np.float64]  # per sample, same order
    outside_fraction: float = 0.0

    @classmethod
    def from_samples(cls, name: str, dose: NDArray[np.float64], volume: NDArray[np.float64], outside_fraction: float = 0.0) -> "Dvh":
        order = np.argsort(-dose, kind="stable")
        return cls(name, np.asarray(dose, float)[order], np.asarray(volume, float)[order], outside_fraction)

    @property
    def total_cc(self) -> float:
        return float(self.volume_cc.sum())

    def scaled(self, factor: float) -> "Dvh":
        return Dvh(self.name, self.dose_gy * factor, self.volume_cc, self.outside_fraction)

    def mean(self) -> float:
        return float(np.dot(self.dose_gy, self.volume_cc) / self.total_cc) if self.total_cc else float("nan")

    def max(self) -> float:
        return float(self.dose_gy[0]) if self.dose_gy.size else float("nan")

    def min(self) -> float:
        return float(self.dose_gy[-1]) if self.dose_gy.size else float("nan")

    def v_cc(self, dose_gy: float) -> float:
        return float(self.volume_cc[self.dose_gy >= dose_gy].sum())

    def v_percent(self, dose_gy: float) -> float:
        return 100.0 * self.v_cc(dose_gy) / self.total_cc if self.total_cc else float("nan")

    @cached_property
    def _cumulative_cc(self) -> NDArray[np.float64]:
        """Volume of the hottest n samples; computed once, as every Dx of a table needs it (BODY: 3 M samples)."""
        return np.cumsum(self.volume_cc)

    def d_cc(self, volume_cc: float) -> float:
        """Minimum dose of the hottest ``volume_cc`` (the dose at which the cumulative volume reaches it)."""
        if not self.dose_gy.size:
            return float("nan")
        cumulative = self._cumulative_cc
        index = int(np.searchsorted(cumulative, min(volume_cc, self.total_cc) - 1e-12))
        return float(self.dose_gy[min(index, self.dose_gy.size - 1)])

    def d_percent(self, percent: float) -> float:
        return self.d_cc(percent / 100.0 * self.total_cc)

    def geud(self, a: float) -> float:
        """Generalised EUD, a = 1/n of the LKB model (a = 1: mean dose; a -> inf: max)."""
        weights = self.volume_cc / self.total_cc
        dose = np.maximum(self.dose_gy, 0.0)
        return float(np.dot(weights, dose**a) ** (1.0 / a))

    def eqd2(self, fractions: int, alpha_beta_gy: float) -> "Dvh":
        """The same structure with every sample converted to EQD2 (LQ model, dose per fraction D/n)."""
        d = self.dose_gy
        return Dvh(self.name, d * (d / fractions + alpha_beta_gy) / (2.0 + alpha_beta_gy), self.volume_cc, self.outside_fraction)

    def metric(self, text: str) -> float:
        """A metric by its protocol name: Dmean, Dmax, Dmin, D95, D2, D0.03cc, V20, V5cc, gEUD_a=8."""
        return metric_value(self, text)

    def cumulative(self, step_gy: float = 0.1) -> pd.DataFrame:
        """The cumulative DVH curve: dose bins and the volume (cc, %) receiving at least that dose."""
        import pandas as pd

        top = self.max() if self.dose_gy.size else 0.0
        bins = np.arange(0.0, top + step_gy, step_gy)
        n_at_least = np.searchsorted(-self.dose_gy, -bins, side="right")  # samples (sorted descending) with dose >= bin
        vol = np.concatenate([[0.0], np.cumsum(self.volume_cc)])[n_at_least]
        return pd.DataFrame({"dose_gy": bins, "volume_cc": vol, "volume_percent": 100.0 * vol / self.total_cc if self.total_cc else np.nan})


_METRIC = re.compile(r"^(?:(Dmean|Dmax|Dmin|MLD)|D(\d+(?:\.\d+)?)(cc)?|V(\d+(?:\.\d+)?)(cc)?|gEUD_a=(-?\d+(?:\.\d+)?))$")


def parse_metric(text: str) -> tuple[str | None, str | None, str | None, str | None, str | None, str | None]:
    """(named, D value, D cc, V value, V cc, gEUD a) of a protocol metric name; shared by ``Dvh`` and
    the search's sort-free evaluation (``isotox.dose.candidate_metrics``) so both read a name alike."""
    m = _METRIC.match(text.strip())
    if not m:
        raise ValueError(f"unknown DVH metric {text!r} (Dmean, Dmax, Dmin, D95, D2, D0.03cc, V20, V20cc, gEUD_a=8)")
    return m.groups()  # type: ignore[return-value]


def metric_value(dvh: Dvh, text: str) -> float:
    named, d_val, d_cc, v_val, v_cc, a = parse_metric(text)
    if named:
        return {"Dmean": dvh.mean, "MLD": dvh.mean, "Dmax": dvh.max, "Dmin": dvh.min}[named]()
    if d_val is not None:
        return dvh.d_cc(float(d_val)) if d_cc else dvh.d_percent(float(d_val))
    if v_val is not None:
        return dvh.v_cc(float(v_val)) if v_cc else dvh.v_percent(float(v_val))
    return dvh.geud(float(a))


def sample_dose(dose: NDArray[np.float64], dose_grid: ImageGrid, points_mm: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Trilinear dose at LPS points; (dose, inside) with dose 0 outside the grid."""
    from scipy import ndimage

    ijk = dose_grid.physical_to_index(points_mm)
    size = np.asarray(dose_grid.size)
    inside = np.all((ijk >= -0.5) & (ijk <= size - 0.5), axis=1)
    coords = np.clip(ijk, 0, size - 1)[:, ::-1].T  # (k, j, i) for map_coordinates
    values = ndimage.map_coordinates(dose, coords, order=1, mode="nearest")
    return np.where(inside, values, 0.0), inside


@dataclass
class StructureSamples:
    """Sub-voxel sample points of one structure with the dose of one or more plans at each point,
    so plans can be combined voxel by voxel (the DVH of a sum is not the sum of DVHs)."""

    name: str
    doses: list[NDArray[np.float64]]  # one array per plan, same points
    volume_cc: NDArray[np.float64]
    outside_fraction: float
    #: the search's per-structure memo (sorted unit doses, metric values), shared by views of the
    #: same samples (``planning.prescription.plans_view``) so a candidate is never evaluated twice
    cache: dict[object, object] = field(default_factory=dict, repr=False, compare=False)

    def dvh(self, weights: tuple[float, ...] | None = None) -> Dvh:
        """DVH of sum_p weights[p] x dose_p (default: the first plan alone)."""
        weights = weights or (1.0,)
        total = sum(w * d for w, d in zip(weights, self.doses) if w)
        total = total if isinstance(total, np.ndarray) else np.zeros_like(self.volume_cc)
        return Dvh.from_samples(self.name, total, self.volume_cc, self.outside_fraction)


def sample_structure(name: str, mask: NDArray[np.bool_], mask_grid: ImageGrid, doses: list[tuple[NDArray[np.float64], ImageGrid]],
                     supersample: tuple[int, int, int] = (2, 2, 2), chunk: int = 2_000_000) -> StructureSamples:
    """Split every voxel of ``mask`` into sub-voxels and sample each dose (trilinear) at their centres."""
    kji = np.argwhere(mask)
    si, sj, sk = supersample
    offsets = np.stack(np.meshgrid(*((np.arange(s) + 0.5) / s - 0.5 for s in (si, sj, sk)), indexing="ij"), axis=-1).reshape(-1, 3)
    sub_volume = mask_grid.voxel_volume_mm3 / 1000.0 / len(offsets)
    values: list[list[NDArray[np.float64]]] = [[] for _ in doses]
    inside_count, total = 0, 0
    per_chunk = max(1, chunk // len(offsets))
    for start in range(0, len(kji), per_chunk):
        ijk = kji[start:start + per_chunk, ::-1].astype(float)
        points = mask_grid.index_to_physical((ijk[:, None, :] + offsets[None, :, :]).reshape(-1, 3))
        for n, (dose, grid) in enumerate(doses):
            v, inside = sample_dose(dose, grid, points)
            values[n].append(v)
            if n == 0:
                inside_count += int(inside.sum())
                total += inside.size
    arrays = [np.concatenate(v) if v else np.zeros(0) for v in values]
    return StructureSamples(name, arrays, np.full(total, sub_volume), 1.0 - inside_count / total if total else 0.0)


def dvh_from_mask(name: str, mask: NDArray[np.bool_], mask_grid: ImageGrid, dose: NDArray[np.float64], dose_grid: ImageGrid,
                  supersample: tuple[int, int, int] = (2, 2, 2)) -> Dvh:
    """DVH of ``mask`` (k, j, i on ``mask_grid``) in ``dose`` (k, j, i on ``dose_grid``)."""
    return sample_structure(name, mask, mask_grid, [(dose, dose_grid)], supersample).dvh()


STANDARD_COLUMNS = ("volume_cc", "Dmean", "Dmin", "Dmax", "D95", "D5", "D2", "D0.03cc", "V5", "V20")


def dvh_rows(dvhs: list[Dvh], extra: tuple[str, ...] = ()) -> list[dict[str, object]]:
    """One row per structure: name, volume, the standard metrics (and ``extra``), share outside the dose grid."""
    rows = []
    for dvh in dvhs:
        row: dict[str, object] = {"structure": dvh.name, "volume_cc": dvh.total_cc}
        for name in (*STANDARD_COLUMNS[1:], *extra):
            row[name] = dvh.metric(name) if dvh.total_cc else float("nan")
        row["outside_dose_grid_percent"] = 100.0 * dvh.outside_fraction
        rows.append(row)
    return rows


def dvh_table(dvhs: list[Dvh], extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """The tidy table of :func:`dvh_rows` as a DataFrame (the plan stage's dvh.tsv)."""
    import pandas as pd

    return pd.DataFrame(dvh_rows(dvhs, extra))


def write_tsv(rows: list[dict[str, object]], out: IO[str], float_format: str = "%.4f") -> None:
    """Rows as a tab-separated table, as pandas' ``to_csv(sep="\\t", index=False)`` writes it (NaN empty).

    Why not pandas: importing it was a third of ``isotox dvh``'s CPU time for ten lines of output."""
    def cell(value: object) -> object:
        if isinstance(value, (float, np.floating)):
            return "" if np.isnan(value) else float_format % value
        return value

    writer = csv.writer(out, delimiter="\t", lineterminator="\n")
    if rows:
        writer.writerow(list(rows[0]))
    writer.writerows([cell(v) for v in row.values()] for row in rows)
