"""One acquisition of the twin: what is drawn for it up front, QA/defect bits, and the ``basic`` renderer.

The ``basic`` renderer is today's world kept bit for bit (quick unit tests rely on its tolerances);
the ``himalaya`` renderer lives in :mod:`glacierflow.twin.himalaya` and shares this module's scene steps
(footprint gaps, cloud layer, cloud blend and sensor noise, QA band, cloud cover).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from glacierflow.twin import stac_items
from glacierflow.twin.world import World, ndsi_snow, noise

QA_FILL, QA_DILATED, QA_CIRRUS, QA_CLOUD, QA_SHADOW, QA_SNOW, QA_CLEAR, QA_WATER = (1 << i for i in range(8))
# truth ``defects`` bits; 8, 16 and 32 occur only in the realistic worlds
DEFECT_GAP, DEFECT_CLOUD, DEFECT_SHADOW = 1, 2, 4
DEFECT_TERRAIN_SHADOW, DEFECT_QA_OMISSION, DEFECT_QA_COMMISSION = 8, 16, 32


@dataclass(frozen=True)
class Acquisition:
    """Everything random about one acquisition, drawn up front from the seed."""

    index: int
    item_id: str
    product_id: str
    platform: str
    datetime: str
    year: float
    shift_x: float
    shift_y: float
    cloud_target: float  # fraction of the scene under cloud (0..1)
    valid_target: float  # fraction of the scene inside the footprint (0..1)
    stripes: int
    seed: int
    wrs_path: int = 0
    wrs_row: int = 0
    category: str = "T1"  # landsat:collection_category
    sun_elevation: float = 45.0  # degrees
    sun_azimuth: float = 150.0  # degrees clockwise from north
    view_tan: float = 0.0  # tan of the signed off-nadir view angle at the site (terrain parallax)
    epsg: int | None = None  # delivery CRS when not the grid's (a neighbouring UTM zone)


def sun_angles(year: float) -> tuple[float, float]:
    """``(elevation, azimuth)`` in degrees at the site's ~10:30 overpass on decimal year ``year``."""
    doy = (year % 1) * 365.25
    azimuth = 140.0 + 15 * np.cos(2 * np.pi * doy / 365.25)
    elevation = 58.0 - 24 * np.cos(2 * np.pi * (doy + 10) / 365.25)
    return float(elevation), float(azimuth)


def to_dn(refl: np.ndarray, gap: np.ndarray) -> np.ndarray:
    """Reflectance -> uint16 DN (scale 2.75e-5, offset -0.2), DN 0 (nodata) in the gaps."""
    d = np.clip(np.round((refl - stac_items.OFFSET) / stac_items.SCALE), 1, 65535).astype(np.uint16)
    d[gap] = 0
    return d


def footprint_gaps(acq: Acquisition, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Missing pixels: the scene edge, scattered pixels, stripes and Landsat-7 SLC-off wedges.

    The scene edge is a straight line leaving ``acq.valid_target`` of the tile inside.
    """
    h, w = shape
    rr, cc = np.mgrid[0:h, 0:w].astype(np.float32)
    gap = np.zeros((h, w), bool)
    if acq.valid_target < 1.0:
        theta = rng.uniform(0, 2 * np.pi)
        proj = (cc - w / 2) * np.cos(theta) + (rr - h / 2) * np.sin(theta)
        gap |= proj > np.quantile(proj, acq.valid_target)
    gap |= rng.random((h, w)) < 0.002
    for _ in range(acq.stripes):
        r0 = int(rng.integers(0, h))
        gap[r0 : r0 + int(rng.integers(1, 4))] = True
    if acq.platform == "landsat-7":
        gap |= ((rr * 0.2 + cc) % 37) < 2.5
    return gap


def cloud_layer(shape: tuple[int, int], cloud_target: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Cloud mask covering ``cloud_target`` of the scene and its opacity (soft edges reaching past the mask).

    No cloud (and no random draw) when ``cloud_target`` is at most 0.002.
    """
    h, w = shape
    cloud = np.zeros((h, w), bool)
    alpha = np.zeros((h, w), np.float32)
    if cloud_target > 0.002:
        n = noise(shape, min(h, w) / 14, rng)
        thr = np.quantile(n, 1 - cloud_target)
        cloud = n > thr
        alpha = np.clip((n - thr) / 0.5 + 0.6, 0, 1) * (n > thr - 0.3)
    return cloud, alpha


CLOUD_REFLECTANCE = {"green": 0.75, "red": 0.73, "nir08": 0.68, "swir16": 0.45}
NOISE_ORDER = ("green", "swir16", "red", "nir08")  # the draw order of the sensor noise (green, swir16 first)


def through_cloud(bands: dict[str, np.ndarray], alpha: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Blend the ground with the cloud's own brightness by its opacity ``alpha``, then add sensor noise."""
    out = {}
    for key in sorted(bands, key=NOISE_ORDER.index):
        b = (1 - alpha) * bands[key] + alpha * CLOUD_REFLECTANCE[key]
        out[key] = b + rng.normal(0, 0.003, b.shape).astype(np.float32)
    return out


def qa_band(
    snow: np.ndarray, water: np.ndarray, cloud: np.ndarray, dilated: np.ndarray, shadow: np.ndarray, gap: np.ndarray
) -> np.ndarray:
    """The ``qa_pixel`` band (uint16) from the masks the QA flags: cloud, dilated cloud and shadow clear a pixel."""
    qa = np.full(snow.shape, QA_CLEAR | (1 << 8) | (1 << 10) | (1 << 12) | (1 << 14), np.uint16)
    qa = np.where(snow, (qa | QA_SNOW | (3 << 12)) & ~np.uint16(1 << 12), qa).astype(np.uint16)
    qa = np.where(water, qa | QA_WATER, qa).astype(np.uint16)
    notclear = ~np.uint16(QA_CLEAR)
    qa = np.where(cloud, (qa & notclear) | QA_CLOUD | (3 << 8), qa).astype(np.uint16)
    qa = np.where(dilated, (qa & notclear) | QA_DILATED, qa).astype(np.uint16)
    qa = np.where(shadow, (qa & notclear) | QA_SHADOW | (3 << 10), qa).astype(np.uint16)
    qa[gap] = QA_FILL
    return qa


def cloud_cover(flagged: np.ndarray, valid: np.ndarray) -> float:
    """Percentage of the valid pixels that the QA flags as cloud (``eo:cloud_cover``), to 2 decimals."""
    return round(100.0 * float((flagged & valid).sum()) / max(1, int(valid.sum())), 2)


def render_basic(world: World, acq: Acquisition) -> dict[str, Any]:
    """The ``basic`` world: DN arrays, QA band, defects and the clean truth NDSI for one acquisition."""
    rng = np.random.default_rng(acq.seed)
    size = min(world.shape)
    jitter = (40.0 * noise(world.shape, size / 25, rng)).astype(np.float32)
    clean, _ = world.reflectance(acq.year, (0.0, 0.0), jitter)
    truth = ndsi_snow(clean["green"], clean["swir16"])
    bands, cls = world.reflectance(acq.year, (acq.shift_x, acq.shift_y), jitter)
    gap = footprint_gaps(acq, world.shape, rng)

    # clouds with soft edges, their dilation and shadows
    cloud, alpha = cloud_layer(world.shape, acq.cloud_target, rng)
    dilated = ndimage.binary_dilation(cloud, iterations=3) & ~cloud
    sdr, sdc = int(size * 0.03) + 2, -(int(size * 0.04) + 2)
    shadow = np.roll(np.roll(cloud, sdr, 0), sdc, 1) & ~cloud & ~dilated
    bands = through_cloud({k: np.where(shadow, b * 0.45, b) for k, b in bands.items()}, alpha, rng)

    valid = ~gap
    defects = (gap * DEFECT_GAP | (cloud | dilated) * DEFECT_CLOUD | shadow * DEFECT_SHADOW).astype(np.uint8)
    return {
        **{k: to_dn(b, gap) for k, b in bands.items()},
        "qa_pixel": qa_band(cls["snow"], cls["water"], cloud, dilated, shadow, gap),
        "truth": truth,
        "defects": defects,
        "valid": valid,
        "cloud_cover": cloud_cover(cloud, valid),
        "valid_fraction": float(valid.mean()),
        "extra": {"red_clean": (np.round(clean["red"] * 4096) / 4096).astype(np.float32)},  # the bound's input
    }
