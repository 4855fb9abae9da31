"""Cloud-Optimised GeoTIFFs from any store (``glacierflow export STORE --cog DIR``), for QGIS and GIS users.

One COG per variable and time step (GDAL's COG driver through rasterio: tiled, DEFLATE, overviews), with the
store's CRS, the north-up geotransform of its pixel-centre ``x``/``y`` coordinates, a nodata value, and the
variable's ``units``/``long_name`` and the time as GeoTIFF tags. Exported by default: every data variable on
``(T, y, x)`` (T a datetime dimension: ``time``, ``mid_date``, ...) or ``(y, x)``, every time step. Files are
``<var>_<YYYY-MM-DD>.tif`` (``<var>_<YYYY-MM-DDTHHMMSS>.tif`` where two steps share a day) and ``<var>.tif``.

Nodata: NaN for floating variables; for integers the variable's ``_FillValue`` if it has one, else the type's
largest value when the data never reach it (a count of 255 in a uint8 store would otherwise read as missing),
else none; booleans are written as uint8 0/1 without nodata.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from glacierflow.errors import GlacierflowError, did_you_mean


def raster_variables(ds: xr.Dataset) -> list[str]:
    """Data variables a COG can hold: on ``(T, y, x)`` with T a datetime dimension, or on ``(y, x)``."""
    return [str(n) for n, v in ds.data_vars.items() if _time_dim(ds, v) is not None or v.dims == ("y", "x")]


def _time_dim(ds: xr.Dataset, var: xr.DataArray) -> str | None:
    if var.ndim == 3 and var.dims[1:] == ("y", "x"):
        t = var.dims[0]
        if t in ds.coords and np.issubdtype(ds[t].dtype, np.datetime64):
            return str(t)
    return None


def export_cogs(ds: xr.Dataset, out_dir: str | Path, variables: Sequence[str] = (),
                times: Sequence[str] = ()) -> list[Path]:
    """Write one COG per variable and time step of ``ds`` into ``out_dir``; returns the paths written.

    Parameters
    ----------
    ds
        A store opened with :func:`glacierflow.storage.store.open_store` (``spatial_ref`` grid mapping,
        ``x``/``y`` pixel centres); read one 2-D slice at a time.
    out_dir
        Folder to write into (created).
    variables
        Names to export (default: :func:`raster_variables`); an unknown name is one error line.
    times
        Dates (``YYYY-MM-DD``) or timestamps to export (default: all); each must match a time step.
    """
    names = _chosen(ds, variables)
    crs, transform = _georef(ds)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        var = ds[name]
        tdim = _time_dim(ds, var)
        if tdim is None:
            written.append(_write(var, out / f"{name}.tif", crs, transform, None))
            continue
        stamps = pd.DatetimeIndex(ds[tdim].values)
        daily = stamps.normalize().has_duplicates
        for i in _time_indices(stamps, times, tdim):
            label = f"{stamps[i]:%Y-%m-%dT%H%M%S}" if daily else f"{stamps[i]:%Y-%m-%d}"
            written.append(_write(var.isel({tdim: i}), out / f"{name}_{label}.tif", crs, transform, stamps[i]))
    return written


def _chosen(ds: xr.Dataset, variables: Sequence[str]) -> list[str]:
    allowed = raster_variables(ds)
    if not allowed:
        raise GlacierflowError("the store has no variable on (time, y, x) or (y, x) to export as a GeoTIFF")
    for name in variables:
        if name not in allowed:
            raise GlacierflowError(f"--var {name!r}: not a gridded variable of the store{did_you_mean(name, allowed)}"
                                   f"; choose from: {', '.join(allowed)}")
    return list(dict.fromkeys(variables)) or allowed


def _time_indices(stamps: pd.DatetimeIndex, times: Sequence[str], tdim: str) -> list[int]:
    if not times:
        return list(range(len(stamps)))
    chosen = []
    for text in times:
        try:
            when = pd.Timestamp(text)
        except ValueError:
            raise GlacierflowError(f"--time {text!r}: not a date; use YYYY-MM-DD") from None
        exact = np.flatnonzero(stamps == when)
        hits = exact if len(exact) else np.flatnonzero(stamps.normalize() == when.normalize())
        if not len(hits):
            shown = ", ".join(f"{t:%Y-%m-%d}" for t in stamps[:12]) + (", ..." if len(stamps) > 12 else "")
            raise GlacierflowError(f"--time {text}: no {tdim} step on that date; the store has {shown}")
        chosen.extend(int(i) for i in hits)
    return list(dict.fromkeys(chosen))


def _georef(ds: xr.Dataset) -> tuple[Any, Any]:
    """The CRS (from the ``spatial_ref`` grid mapping) and the north-up affine transform of the pixel corners."""
    from rasterio.crs import CRS  # deferred: rasterio
    from rasterio.transform import from_origin

    if "spatial_ref" not in ds.variables:
        raise GlacierflowError("the store has no spatial_ref grid mapping: its CRS is unknown, no GeoTIFF written")
    attrs = ds["spatial_ref"].attrs
    crs = CRS.from_wkt(attrs.get("crs_wkt") or attrs["spatial_ref"])
    x, y = ds["x"].values, ds["y"].values
    if len(x) < 2 or len(y) < 2:
        raise GlacierflowError("the store's grid has fewer than 2 pixels along x or y; no GeoTIFF written")
    dx, dy = float(x[1] - x[0]), float(abs(y[1] - y[0]))
    return crs, from_origin(float(x.min()) - dx / 2, float(y.max()) + dy / 2, dx, dy)


def _nodata(var: xr.DataArray, data: np.ndarray) -> float | int | None:
    if np.issubdtype(data.dtype, np.floating):
        return float("nan")
    if not np.issubdtype(data.dtype, np.integer):
        return None
    fill = var.encoding.get("_FillValue", var.attrs.get("_FillValue"))
    if fill is not None:
        return int(fill)
    top = np.iinfo(data.dtype).max
    return int(top) if data.size == 0 or data.max() < top else None


def _write(var: xr.DataArray, path: Path, crs: Any, transform: Any, when: pd.Timestamp | None) -> Path:
    """One 2-D slice as a COG (north up: rows flipped when ``y`` ascends)."""
    import rasterio  # deferred: rasterio

    data = np.asarray(var.values)
    if data.dtype == bool:
        data = data.astype(np.uint8)
    if var["y"].values[0] < var["y"].values[-1]:
        data = data[::-1]
    nodata = _nodata(var, data)
    profile = {"driver": "COG", "width": data.shape[1], "height": data.shape[0], "count": 1,
               "dtype": data.dtype, "crs": crs, "transform": transform, "nodata": nodata,
               "compress": "DEFLATE", "blocksize": 256, "overview_resampling": "nearest"}
    tags = {k: str(var.attrs[k]) for k in ("units", "long_name", "standard_name") if k in var.attrs}
    if when is not None:
        tags["time"] = when.isoformat()
    tmp = path.with_name(f".{path.name}.partial")
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data, 1)
        dst.update_tags(**tags)
        dst.set_band_description(1, str(var.name))
    tmp.replace(path)
    return path
