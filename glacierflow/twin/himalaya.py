"""The ``himalaya`` world: the defects of real Himalayan Landsat scenes that the ``basic`` world leaves out.

On top of the basic valley (same random draws, so the same rock, vegetation and lake):

- **relief**: steep valley walls and ridged crests; illumination from the DEM and each scene's sun
  elevation/azimuth (cosine of incidence, self and cast shadow by ray marching towards the sun) and a
  diffuse, bluish sky term, so shadowed snow reads *higher* NDSI and shadowed debris can pass as snow;
- **snow**: episodic snowfall events (:class:`~glacierflow.twin.climate.SnowClimate`), winter snow to the
  valley floor in severe years, fresh snow on outcrops and steep faces in winter;
- **ice**: a debris-covered lower tongue (NDSI < 0.3) and clean ice above, whose texture (dust, debris
  patches, crevasses, melt features) is advected by the true velocity, strong in red/NIR and weak in
  SWIR-1, and decorrelates partly (a persistent part plus generations that cross-fade every quarter
  year: r ~ 0.77 a year apart, :meth:`HimalayaWorld.texture_correlation`); fresh snow on it is flat;
- **relief on the ice moves with the ice**: hummocks and ogive swells are a Lagrangian field added to a
  smooth glacier surface, so their shading is advected; only the valley walls' and stable ground's
  shading (and the rock texture there) is static;
- **velocity**: a narrow western tributary, ``max_speed`` / ``glacier_width`` options, a seasonal
  speed-up (:class:`~glacierflow.twin.climate.SpeedSeason`), stable ground exactly 0;
- **misregistration**: the per-scene translation plus terrain parallax (DEM error x tan(view angle),
  opposite for the two WRS paths), applied by resampling the rendered ground with a cubic spline
  (the aligner uses bilinear, so no inverse crime);
- **clouds and QA**: cloud shadow cast away from the sun that removes the direct light (NDSI biased,
  not unchanged), QA omission (cloud over snow left clear) and commission (bright snow flagged cloud).

Geometry: ``scene[r, c] = ground[r - shift_y - terrain_dy[r, c], c - shift_x - terrain_dx[r, c]]``, with
``ground`` the clean illuminated image on the truth grid (the truth store's ``ndsi``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from glacierflow.twin.climate import SnowClimate, SpeedSeason
from glacierflow.twin.scene import (
    DEFECT_CLOUD,
    DEFECT_GAP,
    DEFECT_QA_COMMISSION,
    DEFECT_QA_OMISSION,
    DEFECT_SHADOW,
    DEFECT_TERRAIN_SHADOW,
    Acquisition,
    cloud_cover,
    cloud_layer,
    footprint_gaps,
    qa_band,
    through_cloud,
    to_dn,
)
from glacierflow.twin.world import PIXEL, REFLECTANCE, GlacierShape, World, band_reflectance, ndsi_snow, noise

# sky (diffuse) share of the irradiance per band: bluish sky light
DIFFUSE = {"green": 0.20, "red": 0.15, "nir08": 0.10, "swir16": 0.07}
# relative amplitude of the clean-ice albedo texture per band (crevasses, dust, melt features: strong in the
# visible and NIR, where ice is bright; weak in SWIR-1, where ice is dark whatever its surface)
ICE_TEXTURE = {"green": 0.18, "red": 0.22, "nir08": 0.25, "swir16": 0.03}
DEBRIS_TEXTURE = 0.15  # relative albedo variation of the debris cover, every band
ICE_RELIEF = 12.0  # metres: std of the hummocks and ogive swells on the ice (advected with it)
DEM_ERROR_RMS = 110.0  # metres: DEM error behind the terrain parallax (larger on steep slopes)
WALL_HEIGHT, RIDGE_HEIGHT = 800.0, 500.0  # metres above the basic valley (scaled by grid size / 400 px)
TEXTURE_PERSISTENT = 0.88  # amplitude share of the ice texture that never decorrelates (r ~ 0.77 a year apart)
TEXTURE_GENERATION = 0.25  # years between independent texture generations


def himalaya_shapes(size: int, max_speed: float, glacier_width: float | None) -> tuple[GlacierShape, ...]:
    """Main glacier, eastern tributary and a narrow western tributary, scaled by speed and width."""
    hw = 0.045 if glacier_width is None else glacier_width / 2.0 / size
    return (
        GlacierShape(rows=(0.06, 0.86), cols=(0.30, 0.55, 0.47), half_width=hw, vmax=max_speed, terminus=0.95),
        GlacierShape(rows=(0.12, 0.52), cols=(0.86, 0.78, 0.62), half_width=0.6 * hw, vmax=0.47 * max_speed,
                     terminus=0.9),
        GlacierShape(rows=(0.16, 0.47), cols=(0.06, 0.20, 0.42), half_width=0.3 * hw, vmax=0.3 * max_speed,
                     terminus=0.92),
    )


def cast_shadow(elev: np.ndarray, sun_elevation: float, sun_azimuth: float) -> np.ndarray:
    """Pixels whose horizon towards the sun is above the sun (ray marching, one pixel per step)."""
    h, w = elev.shape
    az, el = np.radians(sun_azimuth), np.radians(sun_elevation)
    dr, dc = -np.cos(az), np.sin(az)  # towards the sun in (row, col); rows grow southwards
    tan_el = np.tan(el)
    relief = float(elev.max() - elev.min())
    kmax = int(min(np.ceil(relief / (PIXEL * tan_el)) + 1, h + w))
    pad = kmax + 1
    padded = np.pad(elev, pad, mode="edge")
    shadow = np.zeros((h, w), bool)
    seen = set()
    for k in range(1, kmax + 1):
        oi, oj = int(round(k * dr)), int(round(k * dc))
        if (oi, oj) in seen:
            continue
        seen.add((oi, oj))
        rise = np.hypot(oi, oj) * PIXEL * tan_el
        shadow |= padded[pad + oi : pad + oi + h, pad + oj : pad + oj + w] > elev + rise
    return shadow


class HimalayaWorld(World):
    """The basic world's static fields plus relief, DEM error, debris tongue and changing texture.

    Parameters
    ----------
    shape
        Grid size in pixels ``(rows, cols)``.
    seed
        Random seed.
    max_speed
        Centreline speed of the main glacier at its fastest point (m/yr, annual mean).
    glacier_width
        Width of the main glacier at its head in pixels (default: 9 % of the grid).
    """

    def __init__(self, shape: tuple[int, int], seed: int = 0, max_speed: float = 150.0,
                 glacier_width: float | None = None):
        size = min(shape)
        super().__init__(shape, seed, shapes=himalaya_shapes(size, max_speed, glacier_width), min_half_width=1.5)
        rng = np.random.default_rng([seed, 101])
        self.seed = seed
        rat = np.minimum(self.ratio, 8.0)
        ridged = 1.0 - np.abs(noise(shape, size / 12, rng))  # sharp crests
        walls = np.clip((rat - 1.0) / 2.5, 0, 1) ** 0.7
        relief = float(np.clip(size / 400.0, 0.3, 1.5))  # the valley scales with the grid: so do its walls
        rise = WALL_HEIGHT * walls + RIDGE_HEIGHT * ridged * np.clip(rat - 1.2, 0, 1)
        rise = ndimage.gaussian_filter(rise, 1.5) + 40.0 * noise(shape, max(size / 60, 5.0), rng)  # no facets
        self.elevation = (5000.0 + (self.elevation - 5000.0) * relief + relief * (rise - 500.0)).astype(np.float32)
        self._ice_surface(size)
        gy, gx = np.gradient(self.elevation.astype(np.float64), PIXEL)  # per row (south), per col (east)
        norm = np.sqrt(gx**2 + gy**2 + 1.0)
        self.normal = ((-gx / norm).astype(np.float32), (gy / norm).astype(np.float32), (1 / norm).astype(np.float32))
        self.tan_slope = np.hypot(gx, gy).astype(np.float32)
        self.sky_view = ((1.0 + self.normal[2]) / 2.0).astype(np.float32)
        steep = np.clip((np.degrees(np.arctan(self.tan_slope)) - 48.0) / 15.0, 0, 1)
        self.steep = np.maximum(self.outcrop, steep).astype(np.float32)
        err = noise(shape, size / 30, rng) * (0.4 + np.clip(self.tan_slope, 0, 1.5))
        self.dem_error = (err * DEM_ERROR_RMS / np.sqrt(np.mean(err**2))).astype(np.float32)
        # debris-covered lower tongue of the main glacier (at t_ref), clean ice above
        tongue = np.clip((self.along / np.maximum(self.term, 1.0) - 0.52) / 0.08, 0, 1)
        self.tongue = np.where((self.glacier_id == 0) & np.isfinite(self.along), tongue, 0).astype(np.float32)
        self.debris_mask = self.glacier_mask & (self.tongue >= 0.99)
        ogive = np.sin(2 * np.pi * self.along / max(12.0, size / 18)) * 0.5
        self.texture_persistent = (noise(shape, 4.0, rng) + np.where(np.isfinite(ogive), ogive, 0)).astype(np.float32)
        self.snow_climate = SnowClimate(seed)
        self.speed_season = SpeedSeason()
        self._generations: dict[int, np.ndarray] = {}

    def _ice_surface(self, size: int) -> None:
        """A smooth static glacier surface and the Lagrangian relief on it (hummocks, ogive swells)."""
        rng = np.random.default_rng([self.seed, 103])
        self.ice_weight = np.clip((1.25 - self.ratio) / 0.25, 0, 1).astype(np.float32)  # 0 where no glacier
        smooth = ndimage.gaussian_filter(self.elevation, max(3.0, size / 60))
        self.elevation = (self.elevation + self.ice_weight * (smooth - self.elevation)).astype(np.float32)
        ogive = np.sin(2 * np.pi * self.along / max(12.0, size / 18))
        ogive = np.where(np.isfinite(ogive), ogive, 0)
        self.ice_relief = (ICE_RELIEF * (noise(self.shape, 2.5, rng) + 0.5 * ogive) / 1.06).astype(np.float32)

    def lagrangian(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Where the ice at each grid pixel at decimal year ``t`` sat at ``t_ref`` (the texture's coordinates)."""
        h, w = self.shape
        rr, cc = np.mgrid[0:h, 0:w].astype(np.float32)
        return self._trace_back(rr, cc, self.speed_season.elapsed(self.t_ref, t), max_step=1.0)

    def terrain(self, src: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """Elevation at one acquisition: the static terrain plus the ice relief carried to ``src``'s pixels."""
        relief = ndimage.map_coordinates(self.ice_relief, list(src), order=1, mode="mirror")
        return (self.elevation + self.ice_weight * relief).astype(np.float32)

    def texture_correlation(self, lag_days: np.ndarray) -> np.ndarray:
        """Correlation of the ice texture between two acquisitions ``lag_days`` apart (averaged over the start).

        ``P^2 + (1 - P^2) c``: the persistent share ``P`` never decorrelates; ``c`` is the overlap of the
        cross-fading generations (``cos``/``sin`` weights of generations ``k`` and ``k + 1``).
        """
        x1 = np.linspace(0, 4, 801)[:-1, None]  # start phases (generations), averaged over
        x2 = x1 + np.asarray(lag_days, np.float64)[None, :] / 365.25 / TEXTURE_GENERATION
        k1, k2 = np.floor(x1), np.floor(x2)
        p1, p2 = (x1 - k1) * np.pi / 2, (x2 - k2) * np.pi / 2
        same = np.where(k1 == k2, np.cos(p1) * np.cos(p2) + np.sin(p1) * np.sin(p2), 0.0)
        next_ = np.where(k2 == k1 + 1, np.sin(p1) * np.cos(p2), 0.0)
        c = (same + next_).mean(axis=0)
        return (TEXTURE_PERSISTENT**2 + (1 - TEXTURE_PERSISTENT**2) * c).astype(np.float32)

    def _generation(self, k: int) -> np.ndarray:
        if k not in self._generations:
            if len(self._generations) > 4:
                self._generations.pop(next(iter(self._generations)))
            self._generations[k] = noise(self.shape, 2.2, np.random.default_rng([self.seed, 500, k]))
        return self._generations[k]

    def ice_texture(self, t: float, src_r: np.ndarray, src_c: np.ndarray) -> np.ndarray:
        """Unit-variance ice texture at decimal year ``t`` at Lagrangian coordinates ``(src_r, src_c)``."""
        phase = (t - 2000.0) / TEXTURE_GENERATION
        k = int(np.floor(phase))
        phi = (phase - k) * np.pi / 2
        coords = [src_r, src_c]
        pers = ndimage.map_coordinates(self.texture_persistent, coords, order=1, mode="mirror")
        g0 = ndimage.map_coordinates(self._generation(k), coords, order=1, mode="mirror")
        g1 = ndimage.map_coordinates(self._generation(k + 1), coords, order=1, mode="mirror")
        b = np.sqrt(1 - TEXTURE_PERSISTENT**2)
        pers = pers / (np.std(self.texture_persistent) + 1e-9)
        return (TEXTURE_PERSISTENT * pers + b * (np.cos(phi) * g0 + np.sin(phi) * g1)).astype(np.float32)

    def surface(self, t: float, snow_jitter: np.ndarray,
                src: tuple[np.ndarray, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Flat-terrain surface reflectance per band on the truth grid, and class maps.

        ``src`` are the Lagrangian coordinates of the ice at ``t`` (:meth:`lagrangian`).
        """
        tex = self.ice_texture(t, *src)
        tongue = ndimage.map_coordinates(self.tongue, list(src), order=1, mode="nearest")
        ice = (self.ratio < 1) & (self.along <= self.term + self.terminus_shift(t))
        fresh = self.snow_climate.outcrop_snow(t)
        snow_frac = np.clip((self.elevation + self.snow_noise + snow_jitter - self.snow_climate.snowline(t)) / 120.0
                            + 0.5, 0, 1) * (1 - self.steep * (1 - fresh))
        veg_frac = np.clip((4300.0 - self.elevation) / 300.0, 0, 1) * np.clip(0.5 + 0.5 * self.veg, 0, 1)
        rock_scale = 0.75 + 0.25 * np.clip(self.rock, -2, 2)  # static rock texture
        f_clean = np.clip((0.06 + 0.12 * tex) * 1.6, 0, 1)  # dust and debris patches on clean ice
        f = (1 - tongue) * f_clean + tongue * np.clip(0.85 + 0.1 * tex, 0.7, 1)
        t3 = np.clip(tex, -3, 3)
        bands = {}
        for band, r in ((b, band_reflectance_all(b)) for b in DIFFUSE):
            land = (1 - veg_frac) * r["rock"] * rock_scale + veg_frac * r["veg"]
            ice_b = r["ice"] * (1 + ICE_TEXTURE[band] * t3)
            debris_b = r["debris"] * (1 + DEBRIS_TEXTURE * t3)
            out = np.where(ice, (1 - f) * ice_b + f * debris_b, land)
            out = np.where(self.lake, r["water"], out)
            bands[band] = ((1 - snow_frac) * out + snow_frac * r["snow"]).astype(np.float32)  # fresh snow: flat
        classes = {"snow": snow_frac > 0.5, "water": self.lake & (snow_frac <= 0.5)}
        return bands, classes

    def illumination(self, sun_elevation: float, sun_azimuth: float,
                     elevation: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Direct-light factor relative to flat terrain (0 in shadow), terrain-shadow mask and sky view.

        ``elevation`` is the acquisition's terrain (:meth:`terrain`: the ice relief moves with the ice).
        """
        gy, gx = np.gradient(elevation.astype(np.float64), PIXEL)  # per row (south), per col (east)
        norm = np.sqrt(gx**2 + gy**2 + 1.0)
        az, el = np.radians(sun_azimuth), np.radians(sun_elevation)
        sun = (np.sin(az) * np.cos(el), np.cos(az) * np.cos(el), np.sin(el))  # east, north, up
        cos_i = (-gx * sun[0] + gy * sun[1] + sun[2]) / norm
        shadow = cast_shadow(elevation, sun_elevation, sun_azimuth) | (cos_i <= 0)
        direct = np.where(shadow, 0.0, np.maximum(cos_i, 0) / np.sin(el)).astype(np.float32)
        return direct, shadow, ((1.0 + 1.0 / norm) / 2.0).astype(np.float32)

    def parallax(self, view_tan: float) -> tuple[np.ndarray, np.ndarray]:
        """Terrain misregistration ``(terrain_dx, terrain_dy)`` in pixels: DEM error x tan(view angle).

        The displacement is across track (orbit heading ~192 deg at the site: across track is east,
        12 deg towards north), quantised to 1/256 px (exact in float32, compresses well).
        """
        beta = np.radians(12.0)
        d = self.dem_error * view_tan / PIXEL
        dx = np.round(d * np.cos(beta) * 256) / 256
        dy = np.round(-d * np.sin(beta) * 256) / 256
        return dx.astype(np.float32), dy.astype(np.float32)


def band_reflectance_all(band: str) -> dict[str, float]:
    """Class -> surface reflectance in ``band``."""
    return {name: band_reflectance(name)[band] for name in REFLECTANCE}


def _lit(bands: dict[str, np.ndarray], direct: np.ndarray, sky: np.ndarray) -> dict[str, np.ndarray]:
    """Each band under the direct light ``direct`` and the sky light ``sky`` (its diffuse share)."""
    return {k: b * ((1 - DIFFUSE[k]) * direct + DIFFUSE[k] * sky) for k, b in bands.items()}


def _clouds(world: HimalayaWorld, acq: Acquisition, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """True cloud, its opacity, and its shadow cast away from the sun."""
    size = min(world.shape)
    cloud, alpha = cloud_layer(world.shape, acq.cloud_target, rng)
    dist = min(0.15 * size, (0.04 * size + 2) / np.tan(np.radians(acq.sun_elevation)))
    az = np.radians(acq.sun_azimuth)
    shadow = ndimage.shift(cloud.astype(np.uint8), (dist * np.cos(az), -dist * np.sin(az)), order=0, cval=0) > 0
    return cloud, alpha, shadow & ~cloud


@dataclass(frozen=True)
class QaFlags:
    """The cloud masks the QA band carries, and where they are wrong."""

    flagged: np.ndarray  # flagged cloud: true cloud less the omissions, plus the commissions
    dilated: np.ndarray  # dilated-cloud ring around the flagged cloud
    shadow: np.ndarray  # flagged cloud shadow
    omission: np.ndarray  # cloud the QA leaves clear
    commission: np.ndarray  # clear (snow) pixels the QA flags as cloud


def qa_flags(cloud: np.ndarray, snow: np.ndarray, cloud_shadow: np.ndarray, rng: np.random.Generator) -> QaFlags:
    """QA omission (cloud over snow left clear) and commission (bright snow flagged as cloud)."""
    size = min(cloud.shape)
    n_om = noise(cloud.shape, size / 40, rng)
    omission = cloud & (n_om > np.where(snow, 1.0, 1.8))
    n_cm = noise(cloud.shape, size / 50, rng)
    commission = ~cloud & snow & (n_cm > 1.3) & (rng.random() < 0.5)
    flagged = (cloud & ~omission) | commission
    dilated = ndimage.binary_dilation(flagged, iterations=3) & ~flagged
    omission &= ~dilated  # the dilation caught those: an omission is cloud the QA leaves clear
    return QaFlags(flagged=flagged, dilated=dilated, shadow=cloud_shadow & ~flagged & ~dilated,
                   omission=omission, commission=commission)


def misregistration_coords(acq: Acquisition, tdx: np.ndarray, tdy: np.ndarray) -> list[np.ndarray]:
    """Where each scene pixel samples the ground: the scene's translation plus the terrain parallax."""
    h, w = tdx.shape
    rr, cc = np.mgrid[0:h, 0:w].astype(np.float32)
    return [rr - np.float32(acq.shift_y) - tdy, cc - np.float32(acq.shift_x) - tdx]


def resample_masks(
    masks: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], coords: list[np.ndarray]
) -> tuple[np.ndarray, ...]:
    """Four boolean masks sampled at ``coords`` (nearest neighbour), packed as bits for one resampling."""
    a, b, c, d = masks
    bits = (a * 1 | b * 2 | c * 4 | d * 8).astype(np.uint8)
    bits = ndimage.map_coordinates(bits, coords, order=0, mode="nearest")
    return tuple((bits & bit) > 0 for bit in (1, 2, 4, 8))


def himalaya_defects(gap: np.ndarray, cloud: np.ndarray, cloud_shadow: np.ndarray, shade: np.ndarray,
                     flags: QaFlags) -> np.ndarray:
    """Truth ``defects`` bits of a scene: gaps, cloud, shadows and the QA's errors inside the footprint."""
    valid = ~gap
    return (gap * DEFECT_GAP | (cloud | flags.dilated) * DEFECT_CLOUD | cloud_shadow * DEFECT_SHADOW
            | shade * DEFECT_TERRAIN_SHADOW | (flags.omission & valid) * DEFECT_QA_OMISSION
            | (flags.commission & valid) * DEFECT_QA_COMMISSION).astype(np.uint8)


def render_himalaya(world: HimalayaWorld, acq: Acquisition) -> dict[str, Any]:
    """DN arrays, QA band, defects and the truth layers for one acquisition of the ``himalaya`` world."""
    rng = np.random.default_rng(acq.seed)
    jitter = (40.0 * noise(world.shape, min(world.shape) / 25, rng)).astype(np.float32)
    src = world.lagrangian(acq.year)
    surf, cls = world.surface(acq.year, jitter, src)
    direct, terrain_shadow, sky = world.illumination(acq.sun_elevation, acq.sun_azimuth, world.terrain(src))
    lit = _lit(surf, direct, sky)
    cloud, alpha, cloud_shadow = _clouds(world, acq, rng)
    # cloud shadow: only the (bluish) sky light is left, so its NDSI is biased too
    sky_lit = _lit(surf, np.zeros(world.shape, np.float32), sky)
    # misregistration: translation + terrain parallax; the ground is resampled with a cubic spline
    tdx, tdy = world.parallax(acq.view_tan)
    coords = misregistration_coords(acq, tdx, tdy)
    obs = {k: ndimage.map_coordinates(np.where(cloud_shadow, sky_lit[k], lit[k]), coords, order=3, mode="nearest")
           for k in lit}
    snow, water, shade, cloud_shadow = resample_masks((cls["snow"], cls["water"], terrain_shadow, cloud_shadow),
                                                      coords)
    cloud_shadow &= ~cloud
    obs = {k: np.maximum(b, 0.001) for k, b in through_cloud(obs, alpha, rng).items()}

    gap = footprint_gaps(acq, world.shape, rng)
    flags = qa_flags(cloud, snow, cloud_shadow, rng)
    valid = ~gap
    factor = world.speed_season.factor(acq.year)
    return {
        **{k: to_dn(b, gap) for k, b in obs.items()},
        "qa_pixel": qa_band(snow, water, flags.flagged, flags.dilated, flags.shadow, gap),
        "truth": _quantised(ndsi_snow(lit["green"], lit["swir16"])),
        "defects": himalaya_defects(gap, cloud, cloud_shadow, shade, flags),
        "valid": valid,
        "cloud_cover": cloud_cover(flags.flagged, valid),
        "valid_fraction": float(valid.mean()),
        "extra": {
            "ndsi_surface": _quantised(ndsi_snow(surf["green"], surf["swir16"])),
            "red_clean": _quantised(lit["red"]),
            "u_t": _quantised(world.u * factor, 256),
            "v_t": _quantised(world.v * factor, 256),
            "terrain_dx": tdx,
            "terrain_dy": tdy,
        },
    }


def _quantised(a: np.ndarray, steps: int = 4096) -> np.ndarray:
    """Round to multiples of 1/steps (exact in float32): far below the DN quantisation, compresses well."""
    return (np.round(a * steps) / steps).astype(np.float32)

