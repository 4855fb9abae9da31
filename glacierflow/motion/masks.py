"""Ice and stable ground: the ice mask (an outline raster or the NDSI climatology) and stable-ground offsets."""

from __future__ import annotations

import json
import math

import dask.array as da
import numpy as np
import xarray as xr

from glacierflow.errors import GlacierflowError
from glacierflow.motion.pairs import check_cube, grid_step
from glacierflow.specs import FlowSpec
from glacierflow.storage import store

MIN_STABLE = 50  # stable-ground pixels a pair needs for its offset and error
MAD_SIGMA = 1.4826  # MAD -> 1-sigma of a normal distribution

def ice_from_climatology(cube: xr.Dataset, spec: FlowSpec) -> xr.DataArray:
    """Lazy ice mask ``(y, x)``: snow or ice (``ndsi > 0``) in at least ``ice_fraction`` of the observed periods."""
    check_cube(cube, need_pairs=False)
    nd = cube["ndsi"]
    if "interpolated" in cube:
        interp = np.asarray(cube["interpolated"].compute(scheduler="sync").values, bool)
        nd = nd.isel(time=np.flatnonzero(~interp))
    snowy = (nd > 0).where(np.isfinite(nd)).mean("time")
    return (snowy >= spec.ice_fraction).rename("ice").reset_coords(drop=True)


def read_ice_mask(path: str, cube: xr.Dataset) -> xr.DataArray:
    """An ice mask from a user file on the cube grid: a raster (non-zero = ice) or GeoJSON outlines.

    Rasters are reprojected onto the cube grid (nearest); GeoJSON polygons (e.g. RGI outlines, lon/lat
    or with a ``crs``) are rasterised onto it. Read eagerly: a user's mask is small.
    """
    import rasterio
    from rasterio.features import rasterize
    from rasterio.transform import from_origin
    from rasterio.warp import Resampling, reproject, transform_geom

    x, y = cube["x"].values, cube["y"].values
    dx, dy = grid_step(cube["x"], "x"), grid_step(cube["y"], "y")
    transform = from_origin(x[0] - dx / 2, y[0] - dy / 2, dx, -dy)
    epsg = store.epsg_of(cube)
    shape = (len(y), len(x))
    try:
        if str(path).lower().endswith((".json", ".geojson")):
            with open(path) as f:
                doc = json.load(f)
            crs = doc.get("crs", {}).get("properties", {}).get("name", "EPSG:4326")
            feats = doc.get("features", [doc] if "geometry" in doc else [])
            geoms = [transform_geom(crs, f"EPSG:{epsg}", ft["geometry"]) for ft in feats if ft.get("geometry")]
            mask = rasterize(geoms, out_shape=shape, transform=transform, fill=0, default_value=1) if geoms \
                else np.zeros(shape, np.uint8)
        else:
            with rasterio.open(path) as src:
                mask = np.zeros(shape, np.float32)
                reproject(rasterio.band(src, 1), mask, dst_transform=transform, dst_crs=f"EPSG:{epsg}",
                          resampling=Resampling.nearest, dst_nodata=0)
    except (OSError, rasterio.errors.RasterioError, json.JSONDecodeError, KeyError) as err:
        raise GlacierflowError(f"cannot read --outline {path!r} ({err}); give GeoJSON outlines (e.g. RGI 7.0; a "
                               "Shapefile converts with `ogr2ogr -f GeoJSON out.geojson in.shp`) or a raster "
                               "mask") from None
    ice = np.asarray(mask) != 0
    if not ice.any():
        raise GlacierflowError(f"--outline {path!r} has no ice over the cube; check its extent and CRS")
    return xr.DataArray(ice, dims=("y", "x"), coords={"y": cube["y"], "x": cube["x"]}, name="ice")


def stable_ground(ice: xr.DataArray, margin: int) -> xr.DataArray:
    """Lazy stable-ground mask: off ice and at least ``margin`` pixels from it."""
    def far(block: np.ndarray) -> np.ndarray:
        from scipy import ndimage

        if not block.any():
            return np.ones(block.shape, bool)
        return ndimage.distance_transform_edt(~block) >= max(margin, 1)

    data = ice.data if isinstance(ice.data, da.Array) else da.from_array(np.asarray(ice.data))
    data = data.astype(bool).rechunk(-1)
    return xr.DataArray(data.map_blocks(far, dtype=bool), dims=("y", "x"), name="stable")


def stable_offset(cols: np.ndarray, rows: np.ndarray, stable: np.ndarray) -> tuple[float, float, float, float, int]:
    """Median stable-ground displacement and its robust spread (px): ``(col, row, sd_col, sd_row, n)``."""
    ok = stable & np.isfinite(cols) & np.isfinite(rows)
    n = int(ok.sum())
    if n < MIN_STABLE:
        return 0.0, 0.0, math.nan, math.nan, n
    c, r = cols[ok].astype(np.float64), rows[ok].astype(np.float64)
    mc, mr = float(np.median(c)), float(np.median(r))
    return mc, mr, MAD_SIGMA * float(np.median(np.abs(c - mc))), MAD_SIGMA * float(np.median(np.abs(r - mr))), n
