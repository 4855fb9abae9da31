"""The twin's synthetic Landsat world: terrain, glaciers, motion, snow, surface reflectance.

Everything is defined by static fields on the scene grid (elevation, glacier coordinates, velocity,
surface texture) that are *sampled* at arbitrary pixel coordinates. That makes the ground truth exact:
a scene shifted by ``(shift_x, shift_y)`` is the same world sampled at ``(r - shift_y, c - shift_x)``,
so ``scene[r, c] = truth[r - shift_y, c - shift_x]`` (the cube store's convention), and moving ice
is the texture sampled upstream, ``T(p, t) = T0(p - D(p) (t - t_ref))`` with ``D`` the true velocity
in pixels per year.

Reflectances (green, red, nir08, swir16) are typical values for snow, ice, debris, rock, vegetation
and water, giving NDSI of ~0.8 (snow), ~0.65 (clean ice), ~-0.2 (debris, rock) and ~0.7 (water). Snow
and ice are bright in the visible and near infrared and dark in SWIR-1, so the texture a tracker needs
(debris, dust, crevasses) shows in red/NIR and hardly in SWIR.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

PIXEL = 30.0  # metres
# (green, swir16) surface reflectance
SNOW = (0.88, 0.08)
ICE = (0.50, 0.10)
DEBRIS = (0.14, 0.20)
ROCK = (0.12, 0.22)
VEG = (0.07, 0.15)
WATER = (0.06, 0.012)
BANDS = ("green", "red", "nir08", "swir16")
# surface reflectance per class in BANDS order (green and swir16 as above)
REFLECTANCE: dict[str, tuple[float, float, float, float]] = {
    "snow": (SNOW[0], 0.85, 0.74, SNOW[1]),
    "ice": (ICE[0], 0.44, 0.30, ICE[1]),
    "debris": (DEBRIS[0], 0.17, 0.22, DEBRIS[1]),
    "rock": (ROCK[0], 0.15, 0.21, ROCK[1]),
    "veg": (VEG[0], 0.05, 0.30, VEG[1]),
    "water": (WATER[0], 0.04, 0.02, WATER[1]),
}


def band_reflectance(name: str) -> dict[str, float]:
    """Band -> surface reflectance of class ``name`` (a key of :data:`REFLECTANCE`)."""
    return dict(zip(BANDS, REFLECTANCE[name], strict=True))


def noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth Gaussian noise with unit standard deviation and correlation length ``sigma`` pixels."""
    if sigma >= 4:
        # generate at a coarser resolution and zoom: same look, a fraction of the cost
        f = int(sigma // 2)
        small = (shape[0] // f + 3, shape[1] // f + 3)
        n = ndimage.gaussian_filter(rng.standard_normal(small), sigma / f, mode="wrap")
        n = ndimage.zoom(n, f, order=1)[: shape[0], : shape[1]]
    else:
        n = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return ((n - n.mean()) / (n.std() + 1e-12)).astype(np.float32)


@dataclass(frozen=True)
class GlacierShape:
    """One glacier: a centreline in normalised image coordinates and its size and speed."""

    rows: tuple[float, float]  # normalised row of head and terminus
    cols: tuple[float, float, float]  # normalised col of head, middle, terminus (quadratic curve)
    half_width: float  # normalised half-width at the head
    vmax: float  # m/yr on the centreline at the fastest point
    terminus: float  # normalised position of the terminus along the centreline at t_ref (0..1)


GLACIER_SHAPES = (
    GlacierShape(rows=(0.06, 0.86), cols=(0.30, 0.55, 0.47), half_width=0.045, vmax=150.0, terminus=0.95),
    GlacierShape(rows=(0.12, 0.52), cols=(0.86, 0.78, 0.62), half_width=0.028, vmax=70.0, terminus=0.9),
)


@dataclass(frozen=True)
class GlacierFields:
    """Where each grid pixel sits relative to its nearest glacier, and how that glacier flows there.

    Speed and flow direction are set on the ice only (``ratio < 1``) and are 0 elsewhere.
    """

    along: np.ndarray  # s: pixels along the centreline from the head (inf where no glacier is nearest)
    ratio: np.ndarray  # distance from the centreline / local half-width
    term: np.ndarray  # terminus position (pixels along) at t_ref
    speed: np.ndarray  # m/yr
    dir_r: np.ndarray  # unit flow direction: rows component
    dir_c: np.ndarray  # unit flow direction: cols component
    glacier_id: np.ndarray  # int8 index into the shapes of the nearest glacier


@dataclass(frozen=True)
class Centreline:
    """One glacier's coordinates and flow at every grid pixel, as if it were the only glacier."""

    along: np.ndarray  # pixels along the centreline from the head, at the nearest centreline point
    ratio: np.ndarray  # distance from the centreline / local half-width
    length: float  # centreline length in pixels
    speed: np.ndarray  # m/yr: parabolic across, rising from the head, slowing towards the terminus
    dir_r: np.ndarray  # unit tangent of the centreline at the nearest point: rows component
    dir_c: np.ndarray  # unit tangent: cols component


def centreline(
    g: GlacierShape, shape: tuple[int, int], pts: np.ndarray, min_half_width: float
) -> Centreline:
    """Project every pixel ``pts`` (``(row, col)`` pairs) onto the quadratic centreline of glacier ``g``."""
    h, w = shape
    size = float(min(h, w))
    s = np.linspace(0, 1, 800)
    cr = (g.rows[0] + (g.rows[1] - g.rows[0]) * s) * h
    cc_ = (1 - s) ** 2 * g.cols[0] + 2 * s * (1 - s) * g.cols[1] + s**2 * g.cols[2]
    cc_ = cc_ * w
    seg = np.hypot(np.diff(cr), np.diff(cc_))
    arclen = np.concatenate([[0], np.cumsum(seg)])
    tr = np.gradient(cr)
    tc = np.gradient(cc_)
    tn = np.hypot(tr, tc)
    dist, idx = cKDTree(np.stack([cr, cc_], axis=1)).query(pts, workers=1)
    dist = dist.reshape(shape).astype(np.float32)
    idx = idx.reshape(shape)
    hw = np.maximum(g.half_width * size * (1 - 0.4 * s[idx]), min_half_width)
    rat = dist / hw
    frac = s[idx]
    prof = np.clip(np.sin(np.pi * np.clip(frac / g.terminus, 0, 1)) ** 0.6, 0, 1)
    return Centreline(
        along=arclen[idx].astype(np.float32),
        ratio=rat,
        length=arclen[-1],
        speed=g.vmax * prof * np.clip(1 - rat**2, 0, 1),
        dir_r=tr[idx] / tn[idx],
        dir_c=tc[idx] / tn[idx],
    )


def glacier_fields(
    shape: tuple[int, int], shapes: tuple[GlacierShape, ...], min_half_width: float
) -> GlacierFields:
    """Each pixel takes the coordinates of the glacier whose centreline is nearest (relative to its width)."""
    h, w = shape
    rr, cc = np.mgrid[0:h, 0:w].astype(np.float32)
    pts = np.stack([rr.ravel(), cc.ravel()], axis=1)
    along = np.full(shape, np.inf, np.float32)
    ratio = np.full(shape, np.inf, np.float32)
    term = np.zeros(shape, np.float32)
    speed = np.zeros(shape, np.float32)
    dir_r = np.zeros(shape, np.float32)
    dir_c = np.zeros(shape, np.float32)
    gid = np.zeros(shape, np.int8)
    for k, g in enumerate(shapes):
        line = centreline(g, shape, pts, min_half_width)
        closer = line.ratio < ratio
        on = closer & (line.ratio < 1)
        along = np.where(closer, line.along, along)
        ratio = np.where(closer, line.ratio, ratio)
        term = np.where(closer, g.terminus * line.length, term)
        speed = np.where(on, line.speed, speed)
        gid = np.where(closer, k, gid).astype(np.int8)
        dir_r = np.where(on, line.dir_r, dir_r)
        dir_c = np.where(on, line.dir_c, dir_c)
    return GlacierFields(along, ratio, term, speed, dir_r, dir_c, gid)


class World:
    """Static fields of a synthetic glacier valley on a ``(height, width)`` grid.

    Parameters
    ----------
    shape
        Grid size in pixels ``(rows, cols)``.
    seed
        Random seed: the same seed gives the same world.
    t_ref
        Decimal year at which the texture sits at its reference position.
    retreat
        Terminus retreat in metres per year.
    shapes
        The glaciers (default: today's valley glacier and tributary).
    min_half_width
        Narrowest half-width in pixels a glacier tapers to.
    """

    def __init__(
        self,
        shape: tuple[int, int],
        seed: int = 0,
        t_ref: float = 2017.0,
        retreat: float = 25.0,
        shapes: tuple[GlacierShape, ...] = GLACIER_SHAPES,
        min_half_width: float = 3.0,
    ):
        self.shape = shape
        self.t_ref = t_ref
        self.retreat = retreat
        rng = np.random.default_rng(seed)
        h, w = shape
        rr, cc = np.mgrid[0:h, 0:w].astype(np.float32)
        size = float(min(h, w))

        # --- glaciers: along-flow coordinate s (pixels from head), transverse ratio, flow direction
        glaciers = glacier_fields(shape, shapes, min_half_width)
        self.along = glaciers.along
        self.ratio = glaciers.ratio
        self.term = glaciers.term  # terminus position (pixels along) at t_ref
        self.glacier_id = glaciers.glacier_id  # index into ``shapes`` of the nearest glacier
        # true velocity: m/yr, +u east (+col), +v north (-row); zero off the ice at t_ref
        ice_ref = (self.ratio < 1) & (self.along <= self.term)
        self.u = np.where(ice_ref, glaciers.speed * glaciers.dir_c, 0).astype(np.float32)
        self.v = np.where(ice_ref, -glaciers.speed * glaciers.dir_r, 0).astype(np.float32)
        self.glacier_mask = ice_ref
        # displacement in pixels per year along rows / cols
        self.d_row = (-self.v / PIXEL).astype(np.float32)
        self.d_col = (self.u / PIXEL).astype(np.float32)
        self._moving = ndimage.binary_dilation(self.u**2 + self.v**2 > 0, iterations=2)

        # --- terrain: a valley along the main glacier, ridges away from it, height falling downstream
        main_rat = np.minimum(self.ratio, 6.0)
        downstream = rr / h
        self.elevation = (
            5600.0 - 1700.0 * downstream + 140.0 * main_rat + 120.0 * noise(shape, size / 16, rng)
        ).astype(np.float32)
        self.snow_noise = (90.0 * noise(shape, size / 40, rng) + 40 * noise(shape, 2.0, rng)).astype(
            np.float32
        )
        # --- surface texture of the ice: debris patches and transverse ogive bands (advected)
        blobs = noise(shape, 2.2, rng) + 0.6 * noise(shape, 5.0, rng)
        ogive = np.sin(2 * np.pi * self.along / max(12.0, size / 18)) * 0.5
        ogive = np.where(np.isfinite(ogive), ogive, 0)
        self.debris = np.clip(0.35 + 0.28 * blobs + 0.12 * ogive, 0, 1).astype(np.float32)
        # --- off-ice land cover
        self.rock = noise(shape, 3.0, rng)
        self.veg = noise(shape, size / 20, rng)
        # steep rock outcrops (cliffs, ridges) where snow does not stick: static texture all year
        self.outcrop = np.clip(
            (noise(shape, size / 30, rng) + 0.6 * noise(shape, 2.5, rng) - 0.9) * 2.0, 0, 1
        ).astype(np.float32) * (self.ratio >= 1.3)
        lake_r, lake_c = 0.93 * h, 0.50 * w
        self.lake = (np.hypot((rr - lake_r) / (0.03 * size + 2), (cc - lake_c) / (0.06 * size + 3)) < 1) & ~(
            self.ratio < 1
        )

    # ------------------------------------------------------------------------------------------
    def snowline(self, t: float) -> float:
        """Snowline elevation (m) at decimal year ``t``: low in late winter, high in late summer, rising."""
        doy = (t % 1.0) * 365.25
        return 4800.0 + 500.0 * np.sin(2 * np.pi * (doy - 160.0) / 365.25) + 8.0 * (t - 2013.0)

    def terminus_shift(self, t: float) -> float:
        """Terminus position change (pixels along the centreline) relative to ``t_ref``; negative = retreat."""
        return -self.retreat * (t - self.t_ref) / PIXEL

    def _trace_back(
        self, rr: np.ndarray, cc: np.ndarray, dt: float, max_step: float = 0.5
    ) -> tuple[np.ndarray, np.ndarray]:
        """Where the ice now at ``(rr, cc)`` was ``dt`` years earlier (steady flow, midpoint steps <= max_step px).

        Integrating along the flow (rather than ``p - v(p) dt``) keeps the motion visible between any
        two images equal to the true velocity field, however far they are from ``t_ref``.
        """
        moving = self._moving
        if dt == 0 or not moving.any():
            return rr, cc
        near = ndimage.map_coordinates(moving.astype(np.float32), [rr, cc], order=1, mode="nearest") > 0
        r, c = rr[near].astype(np.float64), cc[near].astype(np.float64)
        vmax = float(np.hypot(self.d_row, self.d_col).max())
        n = max(1, int(np.ceil(vmax * abs(dt) / max_step)))
        h = -dt / n
        for _ in range(n):
            dr = ndimage.map_coordinates(self.d_row, [r, c], order=1, mode="nearest")
            dc = ndimage.map_coordinates(self.d_col, [r, c], order=1, mode="nearest")
            mr, mc = r + 0.5 * h * dr, c + 0.5 * h * dc
            r = r + h * ndimage.map_coordinates(self.d_row, [mr, mc], order=1, mode="nearest")
            c = c + h * ndimage.map_coordinates(self.d_col, [mr, mc], order=1, mode="nearest")
        out_r, out_c = rr.copy(), cc.copy()
        out_r[near], out_c[near] = r, c
        return out_r, out_c

    def reflectance(
        self, t: float, shift: tuple[float, float] = (0.0, 0.0), snow_jitter: np.ndarray | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Clean surface reflectance at decimal year ``t``, sampled with a geolocation shift.

        Parameters
        ----------
        t
            Decimal year.
        shift
            ``(shift_x, shift_y)`` in pixels: the scene's content sits ``shift_x`` columns right and
            ``shift_y`` rows down of the truth grid.
        snow_jitter
            Optional per-acquisition snowline perturbation field (metres) on the grid.

        Returns
        -------
        bands
            :data:`BANDS` -> float32 reflectance arrays on the grid.
        classes
            Boolean maps ``snow``, ``water`` for the QA band.
        """
        h, w = self.shape
        sx, sy = shift
        rr, cc = np.mgrid[0:h, 0:w].astype(np.float32)
        rr -= np.float32(sy)
        cc -= np.float32(sx)

        def at(field: np.ndarray, r: np.ndarray = rr, c: np.ndarray = cc, order: int = 1) -> np.ndarray:
            if sx == 0 and sy == 0 and r is rr:
                return field
            return ndimage.map_coordinates(field, [r, c], order=order, mode="nearest")

        src_r, src_c = self._trace_back(rr, cc, float(t - self.t_ref))
        debris = ndimage.map_coordinates(self.debris, [src_r, src_c], order=1, mode="mirror")
        ice = (at(self.ratio) < 1) & (at(self.along) <= at(self.term) + self.terminus_shift(t))
        snow_field = at(self.snow_noise)
        if snow_jitter is not None:
            snow_field = snow_field + at(snow_jitter)
        elev = at(self.elevation)
        snow_frac = np.clip((elev + snow_field - self.snowline(t)) / 120.0 + 0.5, 0, 1) * (1 - at(self.outcrop))
        lake = at(self.lake.astype(np.float32)) > 0.5
        # land: vegetation below ~4300 m where the veg field is high, rock elsewhere
        veg_frac = np.clip((4300.0 - elev) / 300.0, 0, 1) * np.clip(0.5 + 0.5 * at(self.veg), 0, 1)
        rock_scale = 0.75 + 0.25 * np.clip(at(self.rock), -2, 2)
        f = np.clip((debris - 0.25) * 1.6, 0, 1)  # ice: clean ice mixed with debris by the advected texture
        bands = {}
        for k, band in enumerate(BANDS):
            r = {name: values[k] for name, values in REFLECTANCE.items()}
            b = (1 - veg_frac) * r["rock"] * rock_scale + veg_frac * r["veg"]
            b = np.where(ice, (1 - f) * r["ice"] + f * r["debris"], b)
            b = np.where(lake, r["water"], b)
            # snow on top (not on the lake in summer; a frozen lake takes snow)
            bands[band] = ((1 - snow_frac) * b + snow_frac * r["snow"]).astype(np.float32)
        classes = {"snow": snow_frac > 0.5, "water": lake & (snow_frac <= 0.5)}
        return bands, classes


def ndsi_snow(green: np.ndarray, swir: np.ndarray, threshold: float = 0.3) -> np.ndarray:
    """The paper's snow mask: NDSI where NDSI >= threshold, else 0 (NaN where undefined)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        n = (green - swir) / (green + swir)
    return np.where(n >= threshold, n, np.where(np.isnan(n), np.nan, 0)).astype(np.float32)
