"""One acquisition of the twin: what is drawn for it up front, QA/defect bits, and the ``basic`` renderer.

The ``basic`` renderer is today's world kept bit for bit (quick unit tests rely on its tolerances);
the ``himalaya`` renderer lives in :mod:`glacierflow.twin.himalaya`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from glacierflow.twin import stac_items
from glacierflow.twin.world import World, _noise, ndsi_snow

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


def render_basic(world: World, acq: Acquisition) -> dict[str, Any]:
    """The ``basic`` world: DN arrays, QA band, defects and the clean truth NDSI for one acquisition."""
    rng = np.random.default_rng(acq.seed)
    h, w = world.shape
    size = min(h, w)
    jitter = (40.0 * _noise(world.shape, size / 25, rng)).astype(np.float32)
    g0, s0, _ = world.reflectance(acq.year, (0.0, 0.0), jitter)
    truth = ndsi_snow(g0, s0)
    green, swir, cls = world.reflectance(acq.year, (acq.shift_x, acq.shift_y), jitter)

    # footprint: a straight scene edge leaving valid_target of the tile inside
    rr, cc = np.mgrid[0:h, 0:w].astype(np.float32)
    gap = np.zeros((h, w), bool)
    if acq.valid_target < 1.0:
        theta = rng.uniform(0, 2 * np.pi)
        proj = (cc - w / 2) * np.cos(theta) + (rr - h / 2) * np.sin(theta)
        gap |= proj > np.quantile(proj, acq.valid_target)
    # scattered missing pixels and stripes (SLC-off-like wedges on Landsat-7)
    gap |= rng.random((h, w)) < 0.002
    for _ in range(acq.stripes):
        r0 = int(rng.integers(0, h))
        gap[r0 : r0 + int(rng.integers(1, 4))] = True
    if acq.platform == "landsat-7":
        gap |= ((rr * 0.2 + cc) % 37) < 2.5

    # clouds with soft edges, their dilation and shadows
    cloud = np.zeros((h, w), bool)
    alpha = np.zeros((h, w), np.float32)
    if acq.cloud_target > 0.002:
        n = _noise(world.shape, size / 14, rng)
        thr = np.quantile(n, 1 - acq.cloud_target)
        cloud = n > thr
        alpha = np.clip((n - thr) / 0.5 + 0.6, 0, 1) * (n > thr - 0.3)
    dilated = ndimage.binary_dilation(cloud, iterations=3) & ~cloud
    sdr, sdc = int(size * 0.03) + 2, -(int(size * 0.04) + 2)
    shadow = np.roll(np.roll(cloud, sdr, 0), sdc, 1) & ~cloud & ~dilated
    green = np.where(shadow, green * 0.45, green)
    swir = np.where(shadow, swir * 0.45, swir)
    green = (1 - alpha) * green + alpha * 0.75
    swir = (1 - alpha) * swir + alpha * 0.45
    # sensor noise
    green = green + rng.normal(0, 0.003, (h, w)).astype(np.float32)
    swir = swir + rng.normal(0, 0.003, (h, w)).astype(np.float32)

    qa = np.full((h, w), QA_CLEAR | (1 << 8) | (1 << 10) | (1 << 12) | (1 << 14), np.uint16)
    qa = np.where(cls["snow"], (qa | QA_SNOW | (3 << 12)) & ~np.uint16(1 << 12), qa).astype(np.uint16)
    qa = np.where(cls["water"], qa | QA_WATER, qa).astype(np.uint16)
    notclear = ~np.uint16(QA_CLEAR)
    qa = np.where(cloud, (qa & notclear) | QA_CLOUD | (3 << 8), qa).astype(np.uint16)
    qa = np.where(dilated, (qa & notclear) | QA_DILATED, qa).astype(np.uint16)
    qa = np.where(shadow, (qa & notclear) | QA_SHADOW | (3 << 10), qa).astype(np.uint16)
    qa[gap] = QA_FILL
    valid = ~gap
    cloud_cover = 100.0 * float((cloud & valid).sum()) / max(1, int(valid.sum()))
    defects = (gap * DEFECT_GAP | (cloud | dilated) * DEFECT_CLOUD | shadow * DEFECT_SHADOW).astype(np.uint8)
    return {
        "green": to_dn(green, gap),
        "swir16": to_dn(swir, gap),
        "qa_pixel": qa,
        "truth": truth,
        "defects": defects,
        "valid": valid,
        "cloud_cover": round(cloud_cover, 2),
        "valid_fraction": float(valid.mean()),
    }
