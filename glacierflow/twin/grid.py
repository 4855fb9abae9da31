"""The twin's grid: the scene grid around a site, COG writing, footprints, delivery in a neighbouring UTM zone."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from pyproj import Transformer
from rasterio.transform import Affine

from glacierflow.geo.glaciers import Site
from glacierflow.twin import stac_items

SIZES: dict[str, dict[str, Any]] = {
    # px = square side (None: the glacier's whole bbox); years = default span
    "tiny": {"px": 128, "start": "2019-01-01", "end": "2020-12-31"},
    "small": {"px": 400, "start": "2018-01-01", "end": "2021-12-31"},
    "full": {"px": None, "start": "2013-03-18", "end": "2021-12-31"},
}
MARGIN = 12  # pixels of scene beyond the AOI on each side


@dataclass(frozen=True)
class Grid:
    """The twin's scene grid (shared by all acquisitions, as a WRS path/row is)."""

    epsg: int
    shape: tuple[int, int]
    transform: tuple[float, float, float, float, float, float]
    aoi: tuple[float, float, float, float]  # lon/lat bbox to use for cubes

    @property
    def affine(self) -> Affine:
        """Rasterio affine transform."""
        return Affine(*self.transform)

    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-centre ``y``, ``x`` coordinates (UTM metres)."""
        a = self.affine
        h, w = self.shape
        x = a.c + a.a * (np.arange(w) + 0.5)
        y = a.f + a.e * (np.arange(h) + 0.5)
        return y, x


def make_grid(site: Site, size: str) -> Grid:
    """Grid for a site and size, snapped to the Landsat grid (pixel corners at odd multiples of 15 m)."""
    fwd = Transformer.from_crs(4326, site.epsg, always_xy=True)
    inv = Transformer.from_crs(site.epsg, 4326, always_xy=True)
    px = SIZES[size]["px"]
    if px is None:
        xmin, ymin, xmax, ymax = fwd.transform_bounds(*site.bbox)
        xmin, ymin, xmax, ymax = xmin - MARGIN * 30, ymin - MARGIN * 30, xmax + MARGIN * 30, ymax + MARGIN * 30
    else:
        cx, cy = fwd.transform(*site.centre)
        half = px * 15.0
        xmin, xmax, ymin, ymax = cx - half, cx + half, cy - half, cy + half
    x0 = np.floor((xmin - 15) / 30) * 30 + 15
    y1 = np.ceil((ymax - 15) / 30) * 30 + 15
    w = int(np.ceil((xmax - x0) / 30))
    h = int(np.ceil((y1 - ymin) / 30))
    if px is None:
        aoi = site.bbox
    else:
        # the largest lon/lat box inside the grid less its margin
        ix0, ix1 = x0 + MARGIN * 30, x0 + (w - MARGIN) * 30
        iy0, iy1 = y1 - (h - MARGIN) * 30, y1 - MARGIN * 30
        lon, lat = inv.transform([ix0, ix0, ix1, ix1], [iy0, iy1, iy0, iy1])
        aoi = (max(lon[0], lon[1]), max(lat[0], lat[2]), min(lon[2], lon[3]), min(lat[1], lat[3]))
        aoi = tuple(round(v, 6) for v in aoi)  # type: ignore[assignment]
        aoi = (aoi[0] + 1e-6, aoi[1] + 1e-6, aoi[2] - 1e-6, aoi[3] - 1e-6)
    return Grid(site.epsg, (h, w), (30.0, 0.0, float(x0), 0.0, -30.0, float(y1)), aoi)


def write_cog(path: Path, data: np.ndarray, grid: Grid, nodata: int, scaled: bool) -> None:
    """Write ``data`` as a Cloud-Optimized GeoTIFF on ``grid`` (uint16 DN; Landsat scale/offset tags if ``scaled``)."""
    profile = {
        "driver": "COG",
        "width": grid.shape[1],
        "height": grid.shape[0],
        "count": 1,
        "dtype": "uint16",
        "crs": f"EPSG:{grid.epsg}",
        "transform": grid.affine,
        "nodata": nodata,
        "compress": "DEFLATE",
        "blocksize": 256 if min(grid.shape) >= 512 else 64,  # small grids still get overviews
        "overview_resampling": "nearest",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
        if scaled:
            dst.scales = (stac_items.SCALE,)
            dst.offsets = (stac_items.OFFSET,)


def footprint(valid: np.ndarray, grid: Grid) -> tuple[dict[str, Any], list[float]]:
    """Lon/lat polygon (convex hull of the valid pixels' corners) and bbox."""
    from scipy.spatial import ConvexHull

    rows = np.flatnonzero(valid.any(axis=1))
    if rows.size == 0:
        rows = np.array([0, grid.shape[0] - 1])
        valid = np.ones_like(valid)
    # boundary pixels of each row: leftmost and rightmost valid columns
    pts = []
    step = max(1, rows.size // 64)
    for r in rows[::step].tolist() + [int(rows[-1])]:
        c = np.flatnonzero(valid[r])
        if c.size:
            pts += [(c[0], r), (c[-1] + 1, r), (c[0], r + 1), (c[-1] + 1, r + 1)]
    pts_a = np.array(pts, float)
    hull = pts_a[ConvexHull(pts_a).vertices]
    a = grid.affine
    xs = a.c + a.a * hull[:, 0]
    ys = a.f + a.e * hull[:, 1]
    lon, lat = Transformer.from_crs(grid.epsg, 4326, always_xy=True).transform(xs, ys)
    ring = [[round(float(x), 7), round(float(y), 7)] for x, y in zip(lon, lat, strict=True)]
    ring.append(ring[0])
    bbox = [min(lon), min(lat), max(lon), max(lat)]
    return {"type": "Polygon", "coordinates": [ring]}, [round(float(v), 7) for v in bbox]


def zone_grid(grid: Grid, epsg: int) -> Grid:
    """The grid covering ``grid`` in another UTM zone, on that zone's Landsat lattice (corners at 15 + k 30 m)."""
    from rasterio.warp import transform_bounds

    a = grid.affine
    h, w = grid.shape
    xmin, ymin, xmax, ymax = transform_bounds(grid.epsg, epsg, a.c, a.f + a.e * h, a.c + a.a * w, a.f)
    x0 = np.floor((xmin - 15) / 30) * 30 + 15
    y1 = np.ceil((ymax - 15) / 30) * 30 + 15
    shape = (int(np.ceil((y1 - ymin) / 30)), int(np.ceil((xmax - x0) / 30)))
    return Grid(epsg, shape, (30.0, 0.0, float(x0), 0.0, -30.0, float(y1)), grid.aoi)


def deliver_in_zone(res: dict[str, Any], grid: Grid, epsg: int) -> tuple[dict[str, Any], Grid]:
    """Reproject a rendered scene into a neighbouring UTM zone.

    Planetary Computer delivers a scene in the zone of its centre, so near a zone edge some scenes of a
    site come in the neighbouring zone. Reflectance cubic, QA nearest, nodata outside the original tile.
    """
    from rasterio.warp import Resampling, reproject

    dst = zone_grid(grid, epsg)
    out = dict(res)
    bands = [k for k in stac_items.REFLECTANCE_ASSETS if k in res]
    for key, nodata, how in [(k, 0, Resampling.cubic) for k in bands] + [("qa_pixel", 1, Resampling.nearest)]:
        band = np.full(dst.shape, nodata, np.uint16)
        reproject(res[key], band, src_transform=grid.affine, src_crs=f"EPSG:{grid.epsg}", src_nodata=nodata,
                  dst_transform=dst.affine, dst_crs=f"EPSG:{epsg}", dst_nodata=nodata, resampling=how)
        out[key] = band
    fill = (out["qa_pixel"] & 1) == 1
    for key in bands:
        fill |= out[key] == 0
    for key in bands:
        out[key][fill] = 0
    out["qa_pixel"][fill] = 1
    out["valid"] = ~fill
    return out, dst
