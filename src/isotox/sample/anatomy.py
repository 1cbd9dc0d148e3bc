"""The analytic thorax of one synthetic patient, evaluated at any physical points.

Every modality (planning CT, PET/CT sessions in other poses, DCE-CT) samples this one model,
so the truth is known exactly: structure volumes, tumour shape, where the hypoxic sub-volume
lies. Patient coordinates are LPS mm with the origin on the body axis near the carina.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
from numpy.polynomial import legendre
from numpy.typing import NDArray

from isotox.sample import levelsets as ls

Points = NDArray[np.float64]
LevelSet = NDArray[np.float64]


class Tissue(IntEnum):
    """Tissue classes; painting order is the enum order (later classes overwrite earlier ones)."""

    AIR = 0
    SOFT = 1
    FAT = 2
    MEDIASTINAL_FAT = 3
    LUNG = 4
    RIB = 5
    MYOCARDIUM = 6
    BLOOD = 7
    AIRWAY_WALL = 8
    AIRWAY_LUMEN = 9
    ESOPHAGUS = 10
    VERTEBRA = 11
    DISC = 12
    POSTERIOR_ELEMENTS = 13
    CANAL = 14
    CORD = 15
    NODE = 16
    TUMOUR_VIABLE = 17
    TUMOUR_NECROTIC = 18
    TUMOUR_HYPOXIC = 19
    BLOOD_VENOUS = 20  # superior vena cava: the contrast arrives here first, from the arm vein
    BLOOD_RIGHT = 21  # right heart chambers and pulmonary arteries (before the pulmonary transit)
    HUMERUS = 22  # upper-arm bone: only in a scan with the arms down by the sides


TUMOUR_TISSUES = (Tissue.TUMOUR_VIABLE, Tissue.TUMOUR_NECROTIC, Tissue.TUMOUR_HYPOXIC)
#: Blood pools with their own enhancement curve in the DCE series (arterial: BLOOD).
BLOOD_TISSUES = (Tissue.BLOOD, Tissue.BLOOD_VENOUS, Tissue.BLOOD_RIGHT)


@dataclass(frozen=True)
class TumourShape:
    """Star-shaped lobulated tumour: radius ``r0 (1 + sum a_k P_lk(u . v_k))`` along unit direction u."""

    centre: tuple[float, float, float]
    r0: float
    amplitudes: tuple[float, ...]
    degrees: tuple[int, ...]
    axes: tuple[tuple[float, float, float], ...]

    def radius(self, u: NDArray[np.float64]) -> NDArray[np.float64]:
        r = np.ones(u.shape[:-1])
        for a, l, v in zip(self.amplitudes, self.degrees, self.axes):
            coef = np.zeros(l + 1)
            coef[l] = 1.0
            r = r + a * legendre.legval(u @ np.asarray(v), coef)
        return self.r0 * r

    def max_radius(self) -> float:
        """An upper bound of the radius in any direction (|P_l| <= 1)."""
        return self.r0 * (1.0 + float(np.sum(np.abs(self.amplitudes))))

    def normalised_radius(self, p: Points) -> NDArray[np.float64]:
        """|p - c| / R(direction): < 1 inside, 0 at the centre."""
        d = p - np.asarray(self.centre)
        dist = np.linalg.norm(d, axis=-1)
        u = d / np.maximum(dist, 1e-9)[..., None]
        return dist / self.radius(u)

    def levelset(self, p: Points) -> NDArray[np.float64]:
        d = p - np.asarray(self.centre)
        dist = np.linalg.norm(d, axis=-1)
        u = d / np.maximum(dist, 1e-9)[..., None]
        return dist - self.radius(u)

    def levelset_and_rho(self, p: Points) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """:meth:`levelset` and :meth:`normalised_radius` from one radius evaluation (the
        harmonics are most of their cost, and the anatomy needs both at the same points)."""
        d = p - np.asarray(self.centre)
        dist = np.linalg.norm(d, axis=-1)
        u = d / np.maximum(dist, 1e-9)[..., None]
        r = self.radius(u)
        return dist - r, dist / r

    def volume_cc(self, n_dirs: int = 40000) -> float:
        """Exact volume by quadrature over directions: V = (4 pi / 3) mean(R^3)."""
        i = np.arange(n_dirs) + 0.5
        phi = np.arccos(1 - 2 * i / n_dirs)
        theta = np.pi * (1 + 5**0.5) * i
        u = np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], axis=-1)
        return float(4.0 / 3.0 * np.pi * np.mean(self.radius(u) ** 3) / 1000.0)


@dataclass(frozen=True)
class AnatomyParams:
    """Everything that varies between synthetic patients (all lengths in mm)."""

    body_a: float
    body_b: float
    lung_scale: float
    heart_centre: tuple[float, float, float]
    heart_radii: tuple[float, float, float]
    tumour: TumourShape
    histology: str
    necrotic_fraction: float  # radius fraction of the necrotic core (0 = none)
    hypoxic_centre: tuple[float, float, float]
    hypoxic_radius: float
    node_centre: tuple[float, float, float] | None
    node_radius: float
    observer_gtv: TumourShape  # the GTV as the clinician contoured it (not the true tumour)
    texture_waves: NDArray[np.float64] = field(repr=False)  # (n, 5): kx, ky, kz, phase, amplitude


def _unit(rng: np.random.Generator) -> tuple[float, float, float]:
    v = rng.normal(size=3)
    v /= np.linalg.norm(v)
    return (float(v[0]), float(v[1]), float(v[2]))


def lung_ellipsoids(body_a: float, body_b: float, scale: float) -> dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]]:
    """Centres and radii of the raw right/left lung ellipsoids (before carving)."""
    return {
        "LUNG_R": ((-0.47 * body_a, 0.02 * body_b, 8.0), (0.36 * body_a * scale, 0.74 * body_b * scale, 100.0 * scale)),
        "LUNG_L": ((0.49 * body_a, 0.05 * body_b, 4.0), (0.33 * body_a * scale, 0.70 * body_b * scale, 96.0 * scale)),
    }


def draw_anatomy(rng: np.random.Generator, histology: str, with_node: bool) -> AnatomyParams:
    """Draw one patient's anatomy; the tumour sits inside a lung, away from the chest wall."""
    body_a = float(rng.uniform(150, 180))
    body_b = float(rng.uniform(100, 120))
    lung_scale = float(rng.uniform(0.92, 1.06))
    heart_centre = (float(0.12 * body_a + rng.uniform(-5, 5)), float(-0.30 * body_b), float(rng.uniform(-60, -45)))
    heart_radii = (float(rng.uniform(52, 62)), float(rng.uniform(42, 50)), float(rng.uniform(46, 56)))

    side = "LUNG_R" if rng.random() < 0.55 else "LUNG_L"
    centre, radii = lung_ellipsoids(body_a, body_b, lung_scale)[side]
    volume_cc = float(np.clip(rng.lognormal(np.log(28.0), 0.55), 6.0, 120.0))
    r0 = (3 * volume_cc * 1000 / (4 * np.pi)) ** (1 / 3)
    while True:  # a point inside the lung with room for the tumour (rejection sampling)
        q = rng.uniform(-1, 1, size=3) * np.array([0.45, 0.5, 0.45])
        c = np.asarray(centre) + q * np.asarray(radii)
        c[2] = np.clip(c[2], -25.0, 55.0)
        margin = np.asarray(radii) - np.abs(c - np.asarray(centre)) - 1.3 * r0
        if np.all(margin[:2] > 0) and np.linalg.norm((c - np.asarray(centre)) / np.asarray(radii)) < 0.7:
            break
    if histology == "adenocarcinoma":
        amps, degs = (0.10, 0.08, 0.06, 0.035, 0.03), (2, 3, 4, 8, 10)
        necrotic = 0.0
    elif histology == "squamous":
        amps, degs = (0.08, 0.05), (2, 3)
        necrotic = float(rng.uniform(0.35, 0.5))
    else:
        amps, degs = (0.09, 0.06, 0.04), (2, 3, 5)
        necrotic = float(rng.uniform(0.0, 0.4)) if rng.random() < 0.5 else 0.0
    signs = rng.choice([-1.0, 1.0], size=len(amps))
    tumour = TumourShape(
        centre=(float(c[0]), float(c[1]), float(c[2])),
        r0=float(r0),
        amplitudes=tuple(float(a * s) for a, s in zip(amps, signs)),
        degrees=degs,
        axes=tuple(_unit(rng) for _ in amps),
    )
    # the observer's contour: the true outline, 1-3 mm out or in along smooth low-order harmonics,
    # a small set-wide bias and a shift of up to 2 mm (inter-observer variation in lung GTVs)
    bias = float(rng.uniform(-1.5, 1.5))
    dev_mm = rng.uniform(1.0, 3.0, size=2) * rng.choice([-1.0, 1.0], size=2)
    shift = rng.normal(size=3)
    shift *= float(rng.uniform(0.5, 2.0)) / np.linalg.norm(shift)
    r_obs = r0 + bias
    observer = TumourShape(
        centre=(float(c[0] + shift[0]), float(c[1] + shift[1]), float(c[2] + shift[2])),
        r0=float(r_obs),
        amplitudes=tuple(float(a * sg * r0 / r_obs) for a, sg in zip(amps, signs)) + tuple(float(d / r_obs) for d in dev_mm),
        degrees=degs + (1, 2),
        axes=tumour.axes + (_unit(rng), _unit(rng)),
    )
    hyp_dir = np.asarray(_unit(rng))
    hypoxic_centre = tuple(float(v) for v in c + hyp_dir * 0.3 * r0)
    node_centre = None
    if with_node:
        node_centre = (float(np.sign(c[0]) * 32.0 + rng.uniform(-3, 3)), float(18.0 + rng.uniform(-4, 4)), float(rng.uniform(-2, 12)))
    waves = np.column_stack([
        rng.normal(scale=2 * np.pi / 25.0, size=(16, 3)),
        rng.uniform(0, 2 * np.pi, size=16),
        rng.uniform(0.5, 1.0, size=16),
    ])
    return AnatomyParams(
        body_a=body_a, body_b=body_b, lung_scale=lung_scale,
        heart_centre=heart_centre, heart_radii=heart_radii,
        tumour=tumour, histology=histology, necrotic_fraction=necrotic,
        hypoxic_centre=hypoxic_centre,  # type: ignore[arg-type]
        hypoxic_radius=float(rng.uniform(0.55, 0.75) * r0),
        node_centre=node_centre, node_radius=float(rng.uniform(7.5, 10.5)),
        observer_gtv=observer, texture_waves=waves,
    )


def texture_field(points: Points, waves: NDArray[np.float64], gain: NDArray[np.float64] | None = None) -> NDArray[np.float64]:
    """Smooth zero-mean field in [-1, 1] (lung vessels, soft-tissue texture): 16 cosine waves.

    ``gain`` (one factor per wave) scales the amplitudes: the mean of a cosine over a point set
    symmetric about ``p`` is its value at ``p`` times the mean of cos(k . offset), which is how
    :func:`isotox.sample.scanner.render` gets a voxel's partial-volume texture from its centre.
    """
    amplitude = waves[:, 4] if gain is None else waves[:, 4] * gain
    return np.cos(points @ waves[:, :3].T + waves[:, 3]) @ amplitude / waves[:, 4].sum()


@dataclass
class AnatomySample:
    """The model evaluated at a set of points.

    ``texture`` (16 cosine waves per point) is computed on first use: only the CT painters need it.
    ``texture_of``, when set, computes it instead (the scanner's voxel-mean texture of a voxel
    sampled at its centre). ``clearance`` (only when asked for, :meth:`Anatomy.evaluate`) is a
    lower bound (mm) on the distance from each point to the nearest point whose tissue or
    structure membership differs.
    """

    tissue: NDArray[np.uint8]
    rho: NDArray[np.float64]  # normalised tumour radius (FDG heterogeneity)
    structures: dict[str, NDArray[np.float64]]  # level sets of the contoured structures
    points: NDArray[np.float64] = field(repr=False)
    waves: NDArray[np.float64] = field(repr=False)
    clearance: NDArray[np.float64] | None = field(default=None, repr=False)
    texture_of: Callable[[], NDArray[np.float64]] | None = field(default=None, repr=False)

    @functools.cached_property
    def texture(self) -> NDArray[np.float64]:
        """Smooth zero-mean field in [-1, 1] (lung vessels, soft-tissue texture)."""
        if self.texture_of is not None:
            return self.texture_of()
        return texture_field(self.points, self.waves)


class _Extent:
    """The bounding box of the points one evaluation sees (a slice, a sub-slice stack, a raster).

    A compact shape whose box, grown by ``CULL_MM``, misses it is 'far outside' (1e4) at every
    point, as :func:`levelsets.tube` treats far points: the CSG and the contouring only need the
    level sets' signs and their values near the surface, and no CSG offset exceeds 11 mm.
    """

    CULL_MM = 20.0

    def __init__(self, p: Points) -> None:
        flat = p.reshape(-1, 3)
        self.shape = p.shape[:-1]
        # per column: numpy's axis-0 reduction of an (n, 3) array is ~10x slower
        self.lo = np.array([flat[:, i].min() for i in range(3)])
        self.hi = np.array([flat[:, i].max() for i in range(3)])

    def meets(self, centre: tuple[float, float, float] | NDArray[np.float64], half: float | tuple[float, float, float]) -> bool:
        c, h = np.asarray(centre, dtype=float), np.asarray(half, dtype=float) + self.CULL_MM
        return bool(np.all(c + h >= self.lo) and np.all(c - h <= self.hi))

    def far(self) -> NDArray[np.float64]:
        return np.full(self.shape, 1e4)

    def local(self, p: Points, centre: tuple[float, float, float], half: float | tuple[float, float, float],
              field_at: Callable[[Points], NDArray[np.float64]]) -> NDArray[np.float64]:
        """``field_at`` on the points inside the shape's grown box only, 1e4 elsewhere (a tumour
        is ~1 % of a slice, so this is most of the cost of the compact shapes saved)."""
        return self.local_pair(p, centre, half, lambda q: (field_at(q),))[0]

    def local_pair(self, p: Points, centre: tuple[float, float, float], half: float | tuple[float, float, float],
                   fields_at: Callable[[Points], tuple[NDArray[np.float64], ...]]) -> tuple[NDArray[np.float64], ...]:
        """:meth:`local` for several fields computed together at the same points."""
        if not self.meets(centre, half):
            return (self.far(), self.far())
        c, h = np.asarray(centre, dtype=float), np.asarray(half, dtype=float) + self.CULL_MM
        flat = p.reshape(-1, 3)
        near = ls.points_in_box(flat, c - h, c + h)
        outs = []
        for values in fields_at(flat[near]):
            out = self.far()
            out.reshape(-1)[near] = values
            outs.append(out)
        return tuple(outs)


@dataclass(frozen=True)
class ArmsDown:
    """Both upper arms by the patient's sides (a diagnostic PET/CT without the radiotherapy
    immobilisation; the planning CT has them raised above the head, out of the thorax).

    Each arm is an elliptic cylinder along z, ``gap_mm`` lateral of the trunk (the arms touch the
    skin at 0 mm, which joins them to the body mask), with a humerus inside. Lengths in mm."""

    gap_mm: float
    radii_mm: tuple[float, float] = (38.0, 42.0)
    humerus_radius_mm: float = 11.0

    def centres(self, body_a: float, body_b: float) -> list[tuple[float, float]]:
        x = body_a + self.gap_mm + self.radii_mm[0]
        return [(-x, 0.1 * body_b), (x, 0.1 * body_b)]


class Anatomy:
    """Evaluates one patient's :class:`AnatomyParams` at physical points (LPS mm); ``arms`` is
    the scan's arm position (None: raised, out of the thorax, as on the planning CT)."""

    #: RTSTRUCT structures (canonical names) and their RT ROI interpreted types.
    CONTOURED = {
        "BODY": "EXTERNAL", "LUNG_L": "ORGAN", "LUNG_R": "ORGAN", "SPINAL_CORD": "ORGAN",
        "ESOPHAGUS": "ORGAN", "HEART": "ORGAN", "AORTA": "ORGAN", "GTV": "GTV", "GTV_NODE": "GTV",
    }

    def __init__(self, params: AnatomyParams, arms: ArmsDown | None = None) -> None:
        self.p = params
        self.arms = arms
        a, b = params.body_a, params.body_b
        # posterior structures are placed relative to the back of the body (y = b)
        self.y_vertebra, self.y_canal, self.y_posterior = b - 58.0, b - 31.0, b - 21.0
        y_desc, y_eso = b - 74.0, b - 82.0
        arch_centre_y, arch_radius = (y_desc - 30.0) / 2.0, (y_desc + 30.0) / 2.0
        arch = ls.arc((0.0, arch_centre_y, 30.0), arch_radius, 0.0, 180.0, "yz")  # posterior over the top to anterior
        arch[:, 0] = np.linspace(28.0, 6.0, len(arch))
        self.aorta_line = np.vstack([[[28.0, y_desc, -200.0]], arch, [[6.0, -30.0, params.heart_centre[2] + 20.0]]])
        hz = params.heart_centre[2]
        # superior vena cava: right of the midline, anterior, entering the right atrium
        self.svc_line = np.array([[-24.0, -18.0, 200.0], [-24.0, -20.0, 40.0], [-20.0, -26.0, hz + 30.0]])
        # pulmonary trunk from the right ventricle (anterior) up and back to its bifurcation,
        # then the left and right pulmonary arteries towards the hila (behind the ascending aorta)
        bif = (10.0, -8.0, 8.0)
        self.pulmonary_lines = [
            np.array([[8.0, -48.0, hz + 22.0], [14.0, -30.0, -5.0], bif]),
            np.array([bif, [26.0, 0.0, 10.0], [36.0, 6.0, 8.0]]),
            np.array([bif, [-12.0, -2.0, 12.0], [-32.0, 2.0, 10.0]]),
        ]
        self.trachea_line = np.array([[0.0, 2.0, 200.0], [0.0, 6.0, 22.0]])
        self.bronchi = [np.array([[0.0, 6.0, 22.0], [-48.0, 12.0, -8.0]]), np.array([[0.0, 6.0, 22.0], [48.0, 14.0, -10.0]])]
        self.esophagus_line = np.array([[-8.0, y_eso - 6, 200.0], [-6.0, y_eso, 20.0], [2.0, y_eso + 2, -60.0], [12.0, y_eso - 10, -200.0]])
        self.lungs = lung_ellipsoids(a, b, params.lung_scale)

    #: Lipschitz bound (mm per mm) of every level set the labels are painted from, except the
    #: lobulated tumour and GTV shapes (see :meth:`clearance`): 1 for the distance-like
    #: primitives and their min/max, sqrt(0.6^2 + 1) = 1.17 for the right-heart half-space.
    LIPSCHITZ = 1.2
    #: Culled shapes read 1e4 beyond ``_Extent.CULL_MM`` (20 mm) of their box and CSG offsets stay
    #: under 11 mm, so a level set's value only bounds the distance to its surface up to ~9 mm.
    MAX_CLEARANCE_MM = 7.0

    def evaluate(self, p: Points, clearance: bool = False) -> AnatomySample:
        """The model at points ``p``; with ``clearance`` also :attr:`AnatomySample.clearance`."""
        P = self.p
        a, b = P.body_a, P.body_b
        extent = _Extent(p)

        def compact_ellipsoid(centre: tuple[float, float, float], radii: tuple[float, float, float]) -> LevelSet:
            return extent.local(p, centre, radii, lambda q: ls.ellipsoid(q, centre, radii))

        def compact_tumour(shape: TumourShape) -> LevelSet:
            return extent.local(p, shape.centre, shape.max_radius(), shape.levelset)

        body = ls.elliptic_cylinder(p, 0.0, 0.0, a, b)
        inner = ls.elliptic_cylinder(p, 0.0, 0.0, a - 14.0, b - 14.0)
        chest_wall = ls.elliptic_cylinder(p, 0.0, 0.0, a - 24.0, b - 22.0)
        mediastinum = ls.elliptic_cylinder(p, 4.0, 8.0, 30.0, 0.62 * b)
        heart = compact_ellipsoid(P.heart_centre, P.heart_radii)
        chambers = compact_ellipsoid(P.heart_centre, tuple(r - 11.0 for r in P.heart_radii))  # type: ignore[arg-type]
        aorta = ls.tube(p, self.aorta_line, 12.0)
        svc = ls.tube(p, self.svc_line, 9.0)
        pulmonary = ls.union(ls.tube(p, self.pulmonary_lines[0], 12.0), *(ls.tube(p, line, 8.5) for line in self.pulmonary_lines[1:]))
        # right heart: the anterior-right part of the chambers (right atrium and ventricle)
        cx, cy = P.heart_centre[0], P.heart_centre[1]
        right_half = 0.6 * (p[..., 0] - cx) + (p[..., 1] - cy)
        # wall and lumen share their centrelines: one distance each, measured as far as the wall's
        # tube would (beyond the lumen's own reach it is a true distance > 20 mm instead of 1e4:
        # the same sign, and a clearance far above its cap)
        airways = [ls.polyline_distance(p, self.trachea_line, 30.0), *(ls.polyline_distance(p, br, 27.5) for br in self.bronchi)]
        trachea = ls.union(airways[0] - 10.0, *(d - 7.5 for d in airways[1:]))
        lumen = ls.union(airways[0] - 8.0, *(d - 5.5 for d in airways[1:]))
        esophagus = ls.tube(p, self.esophagus_line, 8.0)
        vertebra = ls.elliptic_cylinder(p, 0.0, self.y_vertebra, 21.0, 18.0)
        canal = ls.elliptic_cylinder(p, 0.0, self.y_canal, 9.0, 9.0)
        cord = ls.elliptic_cylinder(p, 0.0, self.y_canal, 5.0, 5.5)
        posterior = ls.subtract(ls.elliptic_cylinder(p, 0.0, self.y_posterior, 26.0, 11.0), canal)
        discs = ls.intersect(vertebra, ls.z_bands(p, 27.0, 5.0, phase=3.0))
        rib_ring = ls.subtract(ls.elliptic_cylinder(p, 0.0, 0.0, 0.93 * a, 0.93 * b), ls.elliptic_cylinder(p, 0.0, 0.0, 0.93 * a - 9, 0.93 * b - 9))
        ribs = ls.intersect(rib_ring, ls.z_bands(p, 26.0, 10.0), p[..., 1] + 0.45 * b)  # no ribs anteriorly (cartilage)
        diaphragm = compact_ellipsoid((0.0, 0.0, -175.0), (a, b, 100.0))
        tumour, tumour_layers, rho = self._tumour_layers(p, extent)
        node = compact_ellipsoid(P.node_centre, (P.node_radius,) * 3) if P.node_centre else extent.far()
        carve = ls.union(mediastinum, heart - 4.0, aorta - 3.0, svc - 3.0, pulmonary - 3.0, trachea - 3.0, esophagus - 3.0, diaphragm, vertebra - 4.0)
        lung_r = ls.subtract(ls.intersect(ls.ellipsoid(p, *self.lungs["LUNG_R"]), chest_wall), carve, tumour, node)
        lung_l = ls.subtract(ls.intersect(ls.ellipsoid(p, *self.lungs["LUNG_L"]), chest_wall), carve, tumour, node)


        tissue = np.zeros(p.shape[:-1], dtype=np.uint8)
        paint = [
            (Tissue.SOFT, body), (Tissue.FAT, ls.subtract(body, inner)),
            (Tissue.MEDIASTINAL_FAT, ls.intersect(mediastinum, inner)),
            (Tissue.LUNG, ls.union(lung_l, lung_r)), (Tissue.RIB, ls.intersect(ribs, body)),
            (Tissue.MYOCARDIUM, heart), (Tissue.BLOOD, ls.union(chambers, aorta)),
            (Tissue.BLOOD_RIGHT, ls.union(ls.intersect(chambers, right_half), ls.intersect(pulmonary, inner))),
            (Tissue.BLOOD_VENOUS, ls.intersect(svc, inner)),
            (Tissue.AIRWAY_WALL, ls.intersect(trachea, inner)), (Tissue.AIRWAY_LUMEN, ls.intersect(lumen, inner)),
            (Tissue.ESOPHAGUS, esophagus), (Tissue.VERTEBRA, vertebra), (Tissue.DISC, discs),
            (Tissue.POSTERIOR_ELEMENTS, posterior), (Tissue.CANAL, canal), (Tissue.CORD, cord),
            (Tissue.NODE, node), *tumour_layers,
        ]
        if self.arms is not None:
            paint[2:2] = self._arm_layers(p)  # after the trunk's skin and fat, before everything inside the trunk
        for label, field_ in paint:
            tissue[field_ < 0] = label

        structures = {
            "BODY": body, "LUNG_L": lung_l, "LUNG_R": lung_r, "SPINAL_CORD": cord,
            "ESOPHAGUS": ls.subtract(esophagus, vertebra), "HEART": heart, "AORTA": aorta,
            "GTV": compact_tumour(P.observer_gtv), "GTV_TRUE": tumour,
            "GTV_NODE": node, "HYPOXIC": tumour_layers[1][1],
        }
        sample = AnatomySample(tissue=tissue, rho=rho, structures=structures, points=p, waves=P.texture_waves)
        if clearance:
            sample.clearance = self.clearance(p, [f for _, f in paint] + list(structures.values()))
        return sample

    def _arm_layers(self, p: Points) -> list[tuple[Tissue, LevelSet]]:
        """The arms' painted layers: soft tissue, a subcutaneous fat ring (8 mm) and the humerus."""
        assert self.arms is not None
        (rx, ry), rh = self.arms.radii_mm, self.arms.humerus_radius_mm
        arms, inner, bone = [], [], []
        for cx, cy in self.arms.centres(self.p.body_a, self.p.body_b):
            arms.append(ls.elliptic_cylinder(p, cx, cy, rx, ry))
            inner.append(ls.elliptic_cylinder(p, cx, cy, rx - 8.0, ry - 8.0))
            bone.append(ls.elliptic_cylinder(p, cx, cy, rh, rh))
        arm, arm_inner = ls.union(*arms), ls.union(*inner)
        return [(Tissue.SOFT, arm), (Tissue.FAT, ls.subtract(arm, arm_inner)), (Tissue.HUMERUS, ls.union(*bone))]

    def _tumour_layers(self, p: Points, extent: _Extent) -> tuple[LevelSet, list[tuple[Tissue, LevelSet]], NDArray[np.float64]]:
        """The tumour's level set, its painted layers (viable, hypoxic, necrotic: the last three
        in painting order) and rho."""
        P = self.p
        # only tumour voxels read rho (FDG heterogeneity); elsewhere it only has to exceed 1
        tumour, rho = extent.local_pair(p, P.tumour.centre, P.tumour.max_radius(), P.tumour.levelset_and_rho)
        hyp = extent.local(p, P.hypoxic_centre, P.hypoxic_radius, lambda q: ls.ellipsoid(q, P.hypoxic_centre, (P.hypoxic_radius,) * 3))
        necrotic = ls.intersect(tumour, rho - P.necrotic_fraction) if P.necrotic_fraction > 0 else np.full(p.shape[:-1], 1e4)
        layers = [(Tissue.TUMOUR_VIABLE, tumour), (Tissue.TUMOUR_HYPOXIC, ls.intersect(tumour, hyp)), (Tissue.TUMOUR_NECROTIC, necrotic)]
        return tumour, layers, rho

    def evaluate_tumour(self, p: Points) -> AnatomySample:
        """The tumour alone: its tissues (0 elsewhere) and rho, no structures.

        The tumour is painted last, so wherever ``tissue`` is a tumour tissue it equals
        :meth:`evaluate`'s, as do rho and the FDG uptake there. Why: the 0.5 mm truth raster
        over the tumour (1.8 M points) cost 1.5 s through the whole thorax.
        """
        tissue = np.zeros(p.shape[:-1], dtype=np.uint8)
        _, layers, rho = self._tumour_layers(p, _Extent(p))
        for label, field_ in layers:
            tissue[field_ < 0] = label
        return AnatomySample(tissue=tissue, rho=rho, structures={}, points=p, waves=self.p.texture_waves)

    def clearance(self, p: Points, fields: list[LevelSet]) -> NDArray[np.float64]:
        """A lower bound (mm) on the distance from ``p`` to any point where a sign of ``fields``
        (this model's level sets evaluated at ``p``) differs.

        Tissue and structure membership are the signs of ``fields``, min/max combinations of
        primitives. Where every primitive is Lipschitz-``LIPSCHITZ`` a sign cannot change within
        ``|field| / LIPSCHITZ`` mm. The lobulated tumour and observer GTV are not (their radial
        harmonics up to degree 10 tilt the level set by 2x and more), and rho (normalised) is no
        distance: they keep one sign outside their bounding balls, so the distance to each ball
        bounds the clearance too (zero inside: tumour voxels always get the full partial volume).
        """
        out = np.full(p.shape[:-1], self.MAX_CLEARANCE_MM)
        for f in fields:
            np.minimum(out, np.abs(f) * (1.0 / self.LIPSCHITZ), out=out)
        for shape in (self.p.tumour, self.p.observer_gtv):
            d = p - np.asarray(shape.centre)
            ball = np.sqrt(d[..., 0] ** 2 + d[..., 1] ** 2 + d[..., 2] ** 2) - shape.max_radius()
            np.minimum(out, np.maximum(ball, 0.0), out=out)
        return out
