"""STAC items -> lazy ``(time, band, y, x)`` cube with stackstac.

Two jobs:

* :func:`normalise_items` turns search results (plain dicts or pystac Items) into the plain dicts
  stackstac 0.5.1 reads: ``proj:epsg`` restored from pystac's ``proj:code``, only the needed assets,
  only allowed platforms (Landsat 4/5/7 share ``landsat-c2-l2`` with other band numbers), links dropped
  (stackstac would otherwise try to resolve the API root through pystac).
* :func:`build_cube` stacks them on an explicit UTM grid and returns a lazy float32 cube.

Grid convention
---------------
The grid is aligned to the Landsat Collection 2 grid: pixel *corners* sit at ``anchor + k * resolution``
(15 m + k * 30 m for Landsat UTM products, see ``proj:transform`` in the items), so pixel *centres* are whole
multiples of 30 m and the reprojection is a pure copy for scenes already in the target zone. The cube's
``x``/``y`` coordinates are pixel **centres** (DESIGN.md's store contract), ``y`` decreasing.

Values
------
Reflectance assets: ``DN * scale + offset`` from each asset's ``raster:bands`` (2.75e-5, -0.2 for Landsat C2),
DN 0 (``raster:bands.nodata``, which stackstac ignores) -> NaN. Bitfield assets (``qa_pixel``): raw bits
kept as float32 (exact for uint16), fill bit 0 set -> NaN. Pixels outside a scene's footprint are NaN.

stackstac 0.5.1 with numpy 2 refuses ``rescale=True`` with ``dtype=float32`` ("safe casting cannot be
completed between asset scale value 2.75e-05 and output dtype float32"), so the cube is stacked raw
(``rescale=False``) and scale/offset are applied here, lazily, per item and asset.

Read errors
-----------
With ``on_read_error="nan"`` (default) a missing file (HTTP 404, local "No such file"), a server error that
outlived GDAL's retries (HTTP 5xx) or a corrupt TIFF becomes an asset window full of ``-inf``
(:data:`READ_ERROR_VALUE`) instead of killing a long run, so the error is *in the data*:
:func:`glacierflow.preprocess.qa.read_errors` finds it inside the graph, every mask treats it as missing, and
the cube builder reports the scene (``read error``). It is also logged on the ``glacierflow.ingest.cube`` logger.
HTTP 401/403 (an expired or missing signature) always raise: every later read
would fail the same way. ``on_read_error="raise"`` makes every read error fatal.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import dask.array as da
import numpy as np
import pandas as pd
import stackstac
import xarray as xr
from pyproj import CRS, Transformer
from rasterio.enums import Resampling
from stackstac.rio_env import LayeredEnv

from glacierflow.errors import GlacierflowError
from glacierflow.ingest.items import DEFAULT_ASSETS, DEFAULT_PLATFORMS, normalise_items_with_report
from glacierflow.ingest.readers import GDAL_ENV, READ_ERRORS_AS_NODATA, ReportingRioReader
from glacierflow.storage import store

logger = logging.getLogger(__name__)

BBox = tuple[float, float, float, float]

#: Assets holding bit fields: never rescaled, fill bit (bit 0) -> NaN.
BITFIELD_ASSETS: frozenset[str] = frozenset({"qa_pixel"})
#: Item properties kept as ``time`` coordinates (besides ``id`` and ``time``).
TIME_PROPERTIES: tuple[str, ...] = ("platform", "eo:cloud_cover")
#: Landsat C2 UTM grids put pixel corners at 15 m + k * 30 m.
LANDSAT_GRID_ANCHOR = 15.0


#: Resampling when the cube grid is not the asset's grid (another UTM zone, another pixel grid):
#: reflectance bilinear, bit fields nearest (an interpolated bit field means nothing).
RESAMPLING: dict[str, str] = {"reflectance": "bilinear", "bitfield": "nearest"}


# --------------------------------------------------------------------------------------------- items


# ---------------------------------------------------------------------------------------------- grid


def snapped_bounds(
    bbox_lonlat: BBox, epsg: int, resolution: float = 30, anchor: float = LANDSAT_GRID_ANCHOR
) -> BBox:
    """Bounds in ``epsg`` covering ``bbox_lonlat``, with edges on ``anchor + k * resolution``.

    Parameters
    ----------
    bbox_lonlat
        ``(west, south, east, north)`` in degrees.
    epsg
        Target CRS.
    resolution
        Pixel size in CRS units.
    anchor
        Offset of pixel corners from multiples of ``resolution`` (15 m for Landsat C2 UTM grids).

    Returns
    -------
    tuple
        ``(minx, miny, maxx, maxy)``, expanded outwards to the grid.
    """
    w, s, e, n = bbox_lonlat
    if not (w < e and s < n):
        raise GlacierflowError(f"invalid bbox {tuple(bbox_lonlat)}: need west < east and south < north")
    to_crs = Transformer.from_crs(CRS.from_epsg(4326), CRS.from_epsg(int(epsg)), always_xy=True)
    minx, miny, maxx, maxy = to_crs.transform_bounds(w, s, e, n, densify_pts=21)
    if not all(np.isfinite([minx, miny, maxx, maxy])):
        raise GlacierflowError(f"bbox {tuple(bbox_lonlat)} cannot be projected to EPSG:{epsg}; check --epsg")

    def down(v: float) -> float:
        return float(np.floor((v - anchor) / resolution) * resolution + anchor)

    def up(v: float) -> float:
        return float(np.ceil((v - anchor) / resolution) * resolution + anchor)

    return down(minx), down(miny), up(maxx), up(maxy)


# ---------------------------------------------------------------------------------------------- cube


def _odd(dn: np.ndarray) -> np.ndarray:
    """Whether bit 0 (the QA fill bit) of a float-held bit field is set; False for NaN and -inf.

    Integer arithmetic (about 10x faster than ``fmod`` on float32): exact for the uint16 values QA holds.
    """
    finite = np.isfinite(dn)
    with np.errstate(invalid="ignore"):
        return finite & ((np.where(finite, dn, 0).astype(np.int64) & 1) == 1)


def _values(dn: da.Array, scale: np.ndarray, offset: np.ndarray, bits: bool) -> da.Array:
    """One asset's ``(time, 1, y, x)`` DN as float32 values: reflectance (DN 0 -> NaN) or bits (fill -> NaN).

    NaN and -inf (unreadable) stay what they are.
    """
    if bits:
        return da.map_blocks(_bits_block, dn, dtype=np.float32)
    reflectance = dn * scale[:, None, None, None] + offset[:, None, None, None]
    return da.where(dn == 0, np.float32(np.nan), reflectance).astype(np.float32)


def _bits_block(dn: np.ndarray) -> np.ndarray:
    return np.where(_odd(dn), np.float32(np.nan), dn).astype(np.float32, copy=False)


def _scale_offset(items: Sequence[Mapping[str, Any]], assets: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(time, band)`` float32 scale and offset from each asset's ``raster:bands`` (1, 0 for bit fields)."""
    scale = np.ones((len(items), len(assets)), dtype=np.float32)
    offset = np.zeros((len(items), len(assets)), dtype=np.float32)
    for t, item in enumerate(items):
        for b, key in enumerate(assets):
            if key in BITFIELD_ASSETS:
                continue
            bands = item["assets"][key].get("raster:bands") or [{}]
            scale[t, b] = bands[0].get("scale", 1.0)
            offset[t, b] = bands[0].get("offset", 0.0)
    return scale, offset


# One piece on purpose (one of three): the stackstac call, the grid it is built on and the per-asset
# scale/offset/nodata fix-ups share a dozen local facts; split, each helper would take most of them back.
def build_cube(
    items: Iterable[Any],
    *,
    bbox_lonlat: BBox,
    epsg: int,
    resolution: float = 30,
    assets: Sequence[str] = DEFAULT_ASSETS,
    platforms: Sequence[str] | None = DEFAULT_PLATFORMS,
    anchor: float = LANDSAT_GRID_ANCHOR,
    on_read_error: Literal["nan", "raise"] = "nan",
    reader: type[ReportingRioReader] = ReportingRioReader,
    env: LayeredEnv = GDAL_ENV,
) -> xr.DataArray:
    """Lazy float32 cube ``(time, band, y, x)`` of the items over ``bbox_lonlat`` on an explicit grid.

    Parameters
    ----------
    items
        STAC item dicts or pystac Items (see :func:`normalise_items`).
    bbox_lonlat
        ``(west, south, east, north)`` in degrees.
    epsg
        Output CRS; explicit, so items from several UTM zones are reprojected onto one grid.
    resolution
        Pixel size in metres.
    assets
        Asset keys, in band order; those in :data:`BITFIELD_ASSETS` keep raw bits.
    platforms
        Allowed platforms; others are dropped (recorded in ``attrs["dropped_items"]``).
    anchor
        Grid anchor, see :func:`snapped_bounds`.
    on_read_error
        ``"nan"``: missing/corrupt files become NaN and are reported (see the module notes); ``"raise"``.
    reader
        stackstac reader class; :class:`SigningRioReader` signs hrefs at read time (pass unsigned items).
    env
        GDAL options of every open and read (:func:`gdal_env`: HTTP timeout and retries).

    Returns
    -------
    xarray.DataArray
        Dims ``(time, band, y, x)``, float32, chunks ``(1, 1, full y, full x)`` (one asset of one scene per
        chunk). Coordinates: ``time`` (sorted; items with equal datetimes are all kept, ordered by id),
        ``id``, ``platform``, ``eo:cloud_cover`` along ``time``; ``band`` = asset keys; ``x``/``y`` pixel
        centres in metres; ``spatial_ref`` (CF grid mapping with ``crs_wkt`` and ``epsg``). Attrs: ``epsg``,
        ``resolution``, ``transform`` (GDAL order, pixel corners), ``dropped_items`` (id -> reason),
        ``resampling`` (asset -> ``bilinear`` | ``nearest``, used wherever the grids differ). An unreadable
        asset window is ``-inf`` (see the module notes).
    """
    if on_read_error not in ("nan", "raise"):
        raise GlacierflowError(f"unknown on_read_error {on_read_error!r}; use 'nan' or 'raise'")
    if isinstance(epsg, bool) or not isinstance(epsg, int | np.integer) or epsg <= 0:
        raise GlacierflowError(f"invalid epsg {epsg!r}: pass the UTM EPSG code of the site, e.g. 32643")
    plain, dropped = normalise_items_with_report(items, assets=assets, platforms=platforms)
    if not plain:
        why = f" (dropped: {'; '.join(sorted(set(dropped.values())))})" if dropped else ""
        raise GlacierflowError(f"no usable items for the cube{why}; widen the search or check --platform")
    plain.sort(key=lambda it: (pd.Timestamp(it["properties"]["datetime"]), str(it.get("id"))))
    bounds = snapped_bounds(bbox_lonlat, epsg, resolution, anchor)

    def stack(keys: list[str], resampling: str) -> xr.DataArray:
        return stackstac.stack(
            plain,
            assets=keys,
            epsg=int(epsg),
            resolution=resolution,
            bounds=bounds,
            snap_bounds=False,
            chunksize=(1, 1, -1, -1),
            dtype=np.dtype("float32"),
            fill_value=np.float32(np.nan),
            rescale=False,
            sortby_date=False,
            xy_coords="center",
            properties=list(TIME_PROPERTIES),
            band_coords=False,
            gdal_env=env,
            errors_as_nodata=READ_ERRORS_AS_NODATA if on_read_error == "nan" else (),
            reader=reader,
            resampling=Resampling[resampling],
        )

    # one stack per resampling kind (bilinear reflectance, nearest bit fields), joined along band in the
    # asset order; on the assets' own grid neither resamples (direct window reads)
    kinds = {a: RESAMPLING["bitfield" if a in BITFIELD_ASSETS else "reflectance"] for a in assets}
    parts, run = [], []
    for a in assets:
        if run and kinds[run[-1]] != kinds[a]:
            parts.append(stack(run, kinds[run[-1]]))
            run = []
        run.append(a)
    parts.append(stack(run, kinds[run[-1]]))
    raw = parts[0] if len(parts) == 1 else xr.concat(parts, dim="band", coords="minimal", compat="override",
                                                     join="override")

    kept_ids = [str(i) for i in np.atleast_1d(raw["id"].values)]  # metadata only: no pixels read
    by_id = {str(it["id"]): it for it in plain}
    for item_id in by_id.keys() - set(kept_ids):
        dropped[item_id] = "no overlap with the bbox"
    if not kept_ids:
        raise GlacierflowError(
            f"none of the {len(plain)} items overlaps bbox {tuple(bbox_lonlat)}; check the bbox or the search"
        )
    scale, offset = _scale_offset([by_id[i] for i in kept_ids], assets)
    is_bits = [a in BITFIELD_ASSETS for a in assets]
    data = da.concatenate([_values(raw.data[:, b : b + 1], scale[:, b], offset[:, b], bits)
                           for b, bits in enumerate(is_bits)], axis=1)

    cube = xr.DataArray(data, coords=raw.coords, dims=raw.dims, name="reflectance")
    # stackstac collapses constant properties to scalars: rebuild them along time from the items.
    cube = cube.drop_vars([c for c in cube.coords if c not in {"time", "band", "y", "x"}])
    kept = [by_id[i] for i in kept_ids]
    cube = cube.assign_coords(
        id=("time", np.array(kept_ids, dtype=str)),
        platform=("time", np.array([str(it["properties"].get("platform", "")) for it in kept], dtype=str)),
        **{
            "eo:cloud_cover": (
                "time",
                np.array([float(it["properties"].get("eo:cloud_cover", np.nan)) for it in kept], np.float32),
            )
        },
    )
    cube = cube.assign_coords(spatial_ref=store.spatial_ref(int(epsg)))
    minx, _, _, maxy = bounds
    cube.attrs = {
        "epsg": int(epsg),
        "resolution": float(resolution),
        "transform": [float(resolution), 0.0, minx, 0.0, -float(resolution), maxy],
        "grid_mapping": "spatial_ref",
        "dropped_items": dict(dropped),
        "resampling": {a: kinds[a] for a in assets},
    }
    return cube
