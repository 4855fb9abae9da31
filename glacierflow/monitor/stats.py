"""What shrinks: per glacier and period, the snow/ice-covered area inside its outline, its fraction and trend.

For each outline (:mod:`glacierflow.geo.outlines`, reprojected to the cube's CRS and rasterised by pixel
centre) and each period of a cube store:

* a pixel is **snow- or ice-covered** when the period's ``ndsi`` (the mean of the snow-mask NDSI, 0 where a
  scene was below the threshold) is at least the cube's ``ndsi_threshold`` (its ``preprocess_spec``): snowy
  in most of the period's scenes, as the paper's mask reads it;
* ``observed_fraction``: the outline's pixels with a value that period (NaN: never observed, outside the
  footprint);
* ``snow_fraction`` = snow-covered / observed pixels inside the outline;
* ``snow_area_km2`` = ``snow_fraction`` x the outline's pixels x the pixel area (``|dx dy|`` of the cube's
  grid in its projected CRS): the snow-covered pixels' area where the outline is fully observed, scaled to
  the whole outline where part of it is not;
* ``snow_area_trend`` (km²/yr) and its 95 % interval: the seasonal Theil–Sen slope of ``snow_area_km2``
  (:mod:`glacierflow.monitor.trend`) over the periods that are observed (not ``interpolated``) with at least
  :data:`MIN_OBSERVED` of the outline observed.

Areas are planar in the cube's projected CRS (UTM: within 0.1 % of the ellipsoidal area near the central
meridian); ``outline_area_km2`` is the polygon's own area there, ``outline_pixels`` its rasterised size on
the cube, ``cube_covers`` the fraction of the outline inside the cube (the statistics describe that part).
:func:`glacier_areas` is lazy; :func:`glacier_stats` computes (small reductions) and adds the trends.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from glacierflow.errors import GlacierflowError
from glacierflow.geo.outlines import Outline, outline_masks, read_outlines
from glacierflow.monitor.trend import METHOD, decimal_years, seasonal_sen
from glacierflow.storage import store
from glacierflow.storage.cubes import open_cube

#: a period enters the trend only when at least this fraction of the outline was observed
MIN_OBSERVED = 0.5
TABLE_VARS = ("snow_area_km2", "snow_fraction", "observed_fraction")
TREND_VARS = ("snow_area_trend", "snow_area_trend_low", "snow_area_trend_high")


def grid_of(cube: xr.Dataset) -> tuple[Any, tuple[int, int], float]:
    """The cube's affine transform (pixel corners), shape and pixel area (m²) from its pixel-centre coordinates."""
    from rasterio.transform import from_origin

    x, y = np.asarray(cube["x"].values, np.float64), np.asarray(cube["y"].values, np.float64)
    if x.size < 2 or y.size < 2:
        raise GlacierflowError("the cube has fewer than 2 pixels along x or y; rebuild it over a larger bbox")
    dx, dy = np.diff(x), np.diff(y)
    if not (np.allclose(dx, dx[0]) and np.allclose(dy, dy[0])):
        raise GlacierflowError("the cube's x/y coordinates are not a regular grid; rebuild the cube store")
    transform = from_origin(x[0] - dx[0] / 2, y[0] - dy[0] / 2, dx[0], -dy[0])
    return transform, (y.size, x.size), float(abs(dx[0] * dy[0]))


def _check_projected(epsg: int) -> None:
    from pyproj import CRS

    crs = CRS.from_epsg(epsg)
    if not crs.is_projected or crs.axis_info[0].unit_name not in ("metre", "meter"):
        raise GlacierflowError(f"the cube's CRS EPSG:{epsg} is not projected in metres; areas need a projected "
                               "grid (build the cube with --epsg of a UTM zone)")


def glacier_areas(cube: xr.Dataset, outlines: list[Outline], threshold: float) -> xr.Dataset:
    """Lazy per-glacier, per-period snow-covered area, fraction and observed fraction (module notes).

    Returns a Dataset on (``glacier``, ``time``) with ``snow_area_km2``, ``snow_fraction``,
    ``observed_fraction``, per glacier ``outline_area_km2``, ``outline_pixels`` and the coordinates ``rgi_id``
    (the ``glacier`` index), ``name`` and ``interpolated`` (per period, False where the cube has none).
    """
    epsg = store.epsg_of(cube)
    _check_projected(epsg)
    transform, shape, pixel = grid_of(cube)
    masks, areas = outline_masks(outlines, epsg, transform, shape)
    inside = masks.reshape(len(outlines), -1).sum(1)
    if not inside.any():
        raise GlacierflowError("no outline covers a pixel of the cube; check that the outlines and the cube "
                               "are of the same place (and the outlines' CRS)")
    m = xr.DataArray(masks.astype(np.float32), dims=("glacier", "y", "x"))
    nd = cube["ndsi"].reset_coords(drop=True).drop_vars(["y", "x"])
    snow = xr.dot((nd >= threshold).astype(np.float32), m, dim=("y", "x"))
    observed = xr.dot(np.isfinite(nd).astype(np.float32), m, dim=("y", "x"))
    frac = (snow / observed.where(observed > 0)).transpose("glacier", "time")
    obs_frac = (observed / xr.DataArray(np.maximum(inside, 1), dims="glacier")).transpose("glacier", "time")
    area = frac * xr.DataArray(inside * pixel / 1e6, dims="glacier")
    interp = cube["interpolated"].reset_coords(drop=True) if "interpolated" in cube else \
        xr.zeros_like(cube["time"], dtype=bool)
    ds = xr.Dataset(
        {"snow_area_km2": area.astype(np.float64), "snow_fraction": frac.astype(np.float64),
         "observed_fraction": obs_frac.astype(np.float64),
         "outline_area_km2": ("glacier", areas / 1e6), "outline_pixels": ("glacier", inside.astype(np.int64)),
         "cube_covers": ("glacier", np.minimum(inside * pixel / np.maximum(areas, 1e-9), 1.0))},
        coords={"glacier": [o.id for o in outlines], "name": ("glacier", [o.name for o in outlines]),
                "time": cube["time"].values, "interpolated": ("time", interp.data)},
    )
    ds.attrs.update(ndsi_threshold=float(threshold), pixel_area_m2=pixel, epsg=int(epsg))
    return ds


def add_trends(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` (computed :func:`glacier_areas`) with the seasonal Theil–Sen trend of each glacier's area."""
    times = pd.DatetimeIndex(ds["time"].values)
    t, season = decimal_years(times), times.month.values
    use = ~np.asarray(ds["interpolated"].values, bool)
    out = {k: np.full(ds.sizes["glacier"], np.nan) for k in (*TREND_VARS, "trend_intercept")}
    n = np.zeros(ds.sizes["glacier"], np.int64)
    for k in range(ds.sizes["glacier"]):
        area = np.asarray(ds["snow_area_km2"].values[k], np.float64)
        ok = use & (np.asarray(ds["observed_fraction"].values[k]) >= MIN_OBSERVED)
        tr = seasonal_sen(t[ok], area[ok], season[ok])
        out["snow_area_trend"][k], out["snow_area_trend_low"][k], out["snow_area_trend_high"][k] = \
            tr.slope, tr.low, tr.high
        out["trend_intercept"][k], n[k] = tr.intercept, tr.n_periods
    ds = ds.assign({**{k: ("glacier", v) for k, v in out.items()}, "trend_periods": ("glacier", n)})
    ds.attrs["trend_method"] = METHOD
    return ds.assign_coords(decimal_year=("time", t, {"units": "yr", "long_name": "the trend's time axis: year + "
                                                     "(month - 1 + (day - 1) / days in the month) / 12"}))


_ATTRS = {
    "snow_area_km2": ("km2", "snow- and ice-covered area inside the outline (NDSI >= threshold)"),
    "snow_fraction": ("1", "snow- and ice-covered fraction of the observed outline"),
    "observed_fraction": ("1", "fraction of the outline's pixels observed in the period"),
    "outline_area_km2": ("km2", "outline polygon area in the cube's projected CRS"),
    "outline_pixels": ("1", "cube pixels whose centre lies inside the outline"),
    "snow_area_trend": ("km2 yr-1", "trend of snow_area_km2: seasonal Theil-Sen slope"),
    "snow_area_trend_low": ("km2 yr-1", "lower bound of the 95% interval of snow_area_trend"),
    "snow_area_trend_high": ("km2 yr-1", "upper bound of the 95% interval of snow_area_trend"),
    "cube_covers": ("1", "fraction of the outline's area inside the cube (outline_pixels x pixel area / "
                          "outline_area_km2): the statistics cover that part"),
    "trend_intercept": ("km2", "snow_area_km2 of the trend line at decimal year 0 (for drawing it)"),
    "trend_periods": ("1", "periods the trend rests on"),
}


def with_cf(ds: xr.Dataset, source: str, outline: str) -> xr.Dataset:
    """CF-1.10 discrete-sampling-geometry metadata (``featureType: timeSeries``, one series per glacier)."""
    ds = ds.copy()
    for k, (units, long_name) in _ATTRS.items():
        if k in ds:
            ds[k].attrs.update(units=units, long_name=long_name)
    ds["glacier"].attrs.update(cf_role="timeseries_id", long_name="glacier id (RGI id where the outlines have one)")
    ds["name"].attrs.update(long_name="glacier name")
    ds["time"].attrs.update(standard_name="time", long_name="start of the period", axis="T")
    ds["interpolated"].attrs.update(long_name="period interpolated in the cube (no scene): left out of the trend")
    ds.attrs.update(Conventions="CF-1.10", featureType="timeSeries", source_cube=source, outlines=str(outline),
                    title="glacierflow stats: snow- and ice-covered area per glacier and period")
    return ds


def glacier_stats(cube_url: str, outline: str | Path, storage_options: dict[str, Any] | None = None
                  ) -> xr.Dataset:
    """Open a cube store and an outlines file; compute the per-glacier table and trends (module notes)."""
    cube = open_cube(cube_url, storage_options)
    threshold = cube.preprocess_spec.ndsi_threshold if cube.preprocess_spec is not None else \
        float(json.loads(cube.data.attrs.get("preprocess_spec", "{}")).get("ndsi_threshold", 0.3))
    ds = glacier_areas(cube.data, read_outlines(outline), threshold).compute()
    return with_cf(add_trends(ds), cube_url, str(outline))


def write_stats(ds: xr.Dataset, out: str | Path) -> list[Path]:
    """Write the table: ``.nc`` → one CF NetCDF; anything else → CSV per glacier and period + ``*-trend.csv``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".nc":
        enc = {"time": {"units": "days since 1970-01-01", "dtype": "int64"}}
        ds.to_netcdf(out, engine="h5netcdf", encoding=enc)
        return [out]
    table = ds[list(TABLE_VARS)].to_dataframe().reset_index().rename(columns={"glacier": "rgi_id"})
    table["time"] = table["time"].dt.strftime("%Y-%m-%d")
    table[["rgi_id", "name", "time", "interpolated", *TABLE_VARS]].to_csv(out, index=False, float_format="%.6g")
    per = ["outline_area_km2", "outline_pixels", "cube_covers", *TREND_VARS, "trend_periods"]
    trend = pd.DataFrame({"rgi_id": ds["glacier"].values, "name": ds["name"].values,
                          **{k: ds[k].values for k in per}})
    path = out.with_name(out.stem + "-trend.csv")
    trend.to_csv(path, index=False, float_format="%.6g")
    return [out, path]
