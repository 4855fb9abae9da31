"""The ``himalaya`` world: the defects of real Himalayan Landsat scenes that the ``basic`` world leaves out.

On top of the basic valley (same random draws, so the same rock, vegetation and lake):

- **relief**: steep valley walls and ridged crests; illumination from the DEM and each scene's sun
  elevation/azimuth (cosine of incidence, self and cast shadow by ray marching towards the sun) and a
  diffuse, bluish sky term, so shadowed snow reads *higher* NDSI and shadowed debris can pass as snow;
- **snow**: episodic snowfall events (:class:`~glacierflow.twin.climate.SnowClimate`), winter snow to the
  valley floor in severe years, fresh snow on outcrops and steep faces in winter;
- **ice**: a debris-covered lower tongue (NDSI < 0.3) and clean ice above, whose texture is advected
  by the true velocity but decorrelates over a few months (a persistent part plus generations that
  cross-fade every quarter year);
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
from glacierflow.twin.world import DEBRIS, ICE, PIXEL, ROCK, SNOW, VEG, WATER, GlacierShape, World, ndsi_snow, noise

DIFFUSE = (0.20, 0.07)  # sky (diffuse) share of the irradiance in (green, swir16): bluish sky light
DEM_ERROR_RMS = 110.0  # metres: DEM error behind the terrain parallax (larger on steep slopes)
WALL_HEIGHT, RIDGE_HEIGHT = 800.0, 500.0  # metres above the basic valley (scaled by grid size / 400 px)
TEXTURE_PERSISTENT = 0.7  # amplitude share of the ice texture that never decorrelates (r ~ 0.49 a year apart)
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

    def surface(self, t: float, snow_jitter: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Flat-terrain surface reflectance (green, swir16) on the truth grid and class maps."""
        h, w = self.shape
        rr, cc = np.mgrid[0:h, 0:w].astype(np.float32)
        src_r, src_c = self._trace_back(rr, cc, self.speed_season.elapsed(self.t_ref, t), max_step=1.0)
        tex = self.ice_texture(t, src_r, src_c)
        tongue = ndimage.map_coordinates(self.tongue, [src_r, src_c], order=1, mode="nearest")
        ice = (self.ratio < 1) & (self.along <= self.term + self.terminus_shift(t))
        fresh = self.snow_climate.outcrop_snow(t)
        snow_frac = np.clip((self.elevation + self.snow_noise + snow_jitter - self.snow_climate.snowline(t)) / 120.0
                            + 0.5, 0, 1) * (1 - self.steep * (1 - fresh))
        veg_frac = np.clip((4300.0 - self.elevation) / 300.0, 0, 1) * np.clip(0.5 + 0.5 * self.veg, 0, 1)
        rock_scale = 0.75 + 0.25 * np.clip(self.rock, -2, 2)
        green = (1 - veg_frac) * ROCK[0] * rock_scale + veg_frac * VEG[0]
        swir = (1 - veg_frac) * ROCK[1] * rock_scale + veg_frac * VEG[1]
        f_clean = np.clip((0.1 + 0.28 * tex) * 1.6, 0, 1)
        f_tongue = np.clip(0.85 + 0.1 * tex, 0.7, 1)
        f = (1 - tongue) * f_clean + tongue * f_tongue
        green = np.where(ice, (1 - f) * ICE[0] + f * DEBRIS[0], green)
        swir = np.where(ice, (1 - f) * ICE[1] + f * DEBRIS[1], swir)
        green = np.where(self.lake, WATER[0], green)
        swir = np.where(self.lake, WATER[1], swir)
        green = (1 - snow_frac) * green + snow_frac * SNOW[0]
        swir = (1 - snow_frac) * swir + snow_frac * SNOW[1]
        classes = {"snow": snow_frac > 0.5, "water": self.lake & (snow_frac <= 0.5)}
        return green.astype(np.float32), swir.astype(np.float32), classes

    def illumination(self, sun_elevation: float, sun_azimuth: float) -> tuple[np.ndarray, np.ndarray]:
        """Direct-light factor relative to flat terrain (0 in shadow) and the terrain-shadow mask."""
        az, el = np.radians(sun_azimuth), np.radians(sun_elevation)
        sun = (np.sin(az) * np.cos(el), np.cos(az) * np.cos(el), np.sin(el))  # east, north, up
        cos_i = self.normal[0] * sun[0] + self.normal[1] * sun[1] + self.normal[2] * sun[2]
        shadow = cast_shadow(self.elevation, sun_elevation, sun_azimuth) | (cos_i <= 0)
        direct = np.where(shadow, 0.0, np.maximum(cos_i, 0) / np.sin(el)).astype(np.float32)
        return direct, shadow

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


def _lit(green: np.ndarray, swir: np.ndarray, direct: np.ndarray, sky: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    eg = (1 - DIFFUSE[0]) * direct + DIFFUSE[0] * sky
    es = (1 - DIFFUSE[1]) * direct + DIFFUSE[1] * sky
    return green * eg, swir * es


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
    g_surf, s_surf, cls = world.surface(acq.year, jitter)
    direct, terrain_shadow = world.illumination(acq.sun_elevation, acq.sun_azimuth)
    g_lit, s_lit = _lit(g_surf, s_surf, direct, world.sky_view)
    cloud, alpha, cloud_shadow = _clouds(world, acq, rng)
    # cloud shadow: only the (bluish) sky light is left, so its NDSI is biased too
    g_sky, s_sky = _lit(g_surf, s_surf, np.zeros(world.shape, np.float32), world.sky_view)
    g_obs, s_obs = np.where(cloud_shadow, g_sky, g_lit), np.where(cloud_shadow, s_sky, s_lit)
    # misregistration: translation + terrain parallax; the ground is resampled with a cubic spline
    tdx, tdy = world.parallax(acq.view_tan)
    coords = misregistration_coords(acq, tdx, tdy)
    green = ndimage.map_coordinates(g_obs, coords, order=3, mode="nearest")
    swir = ndimage.map_coordinates(s_obs, coords, order=3, mode="nearest")
    snow, water, shade, cloud_shadow = resample_masks((cls["snow"], cls["water"], terrain_shadow, cloud_shadow),
                                                      coords)
    cloud_shadow &= ~cloud
    green, swir = through_cloud(green, swir, alpha, rng)
    green, swir = np.maximum(green, 0.001), np.maximum(swir, 0.001)

    gap = footprint_gaps(acq, world.shape, rng)
    flags = qa_flags(cloud, snow, cloud_shadow, rng)
    valid = ~gap
    factor = world.speed_season.factor(acq.year)
    return {
        "green": to_dn(green, gap),
        "swir16": to_dn(swir, gap),
        "qa_pixel": qa_band(snow, water, flags.flagged, flags.dilated, flags.shadow, gap),
        "truth": _quantised(ndsi_snow(g_lit, s_lit)),
        "defects": himalaya_defects(gap, cloud, cloud_shadow, shade, flags),
        "valid": valid,
        "cloud_cover": cloud_cover(flags.flagged, valid),
        "valid_fraction": float(valid.mean()),
        "extra": {
            "ndsi_surface": _quantised(ndsi_snow(g_surf, s_surf)),
            "u_t": _quantised(world.u * factor, 256),
            "v_t": _quantised(world.v * factor, 256),
            "terrain_dx": tdx,
            "terrain_dy": tdy,
        },
    }


def _quantised(a: np.ndarray, steps: int = 4096) -> np.ndarray:
    """Round to multiples of 1/steps (exact in float32): far below the DN quantisation, compresses well."""
    return (np.round(a * steps) / steps).astype(np.float32)

