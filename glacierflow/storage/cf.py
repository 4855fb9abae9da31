"""CF-1.10 metadata on every store: one function, :func:`conform`, called by each store writer.

What it adds (never replacing an attribute a writer already set):

- ``Conventions: "CF-1.10"`` on the root;
- ``x``/``y``: ``units``, ``standard_name`` (``projection_x_coordinate``/``projection_y_coordinate``, or
  ``longitude``/``latitude`` on a geographic CRS), ``axis``, ``long_name``; ``time``: ``standard_name``,
  ``axis``, ``long_name``; coordinates never get a ``_FillValue`` (CF forbids missing coordinate values);
- ``grid_mapping: "spatial_ref"`` on every variable on (y, x) when the dataset has the ``spatial_ref`` grid
  mapping variable (the CRS as CF grid mapping attributes, ``crs_wkt`` and ``spatial_ref``: what rioxarray
  and odc-geo read);
- with ``period_means=True`` (cube and forecast stores: ``time`` = period start): ``time_bnds(time, bnds)``
  = [period start, next period start) and ``time: bounds``; ``cell_methods`` from :data:`VARIABLES`
  (``time: mean`` for period means, ``time: sum`` for counts);
- ``units``/``long_name``/``standard_name`` from :data:`VARIABLES` (keyed by variable name; ``v`` is the
  speed where ``vx`` exists, the northward velocity where ``u`` does);
- a deliberate ``_FillValue``: NaN for floating data, none for integers, booleans and coordinates;
- attributes netCDF can hold: dicts, ``None`` and lists of non-scalars (stackstac's ``dropped_items`` and
  ``resampling``) become JSON strings, booleans become 0/1 (netCDF has no boolean attribute).

The result writes with ``to_zarr`` and, once reopened, with ``to_netcdf(engine="h5netcdf")``.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

CONVENTIONS = "CF-1.10"
GRID_MAPPING = "spatial_ref"
BOUNDS_DIM = "bnds"

_MPY = "m yr-1"
#: CF attributes by variable name (a writer's own attributes win); ``cell_methods`` apply to period means only
VARIABLES: dict[str, dict[str, str]] = {
    # cube store
    "ndsi": {"units": "1", "long_name": "snow-mask normalised difference snow index", "cell_methods": "time: mean"},
    "n_valid": {"units": "1", "long_name": "real (not gap-filled) observations averaged",
                "cell_methods": "time: sum"},
    "n_scenes": {"units": "1", "long_name": "number of scenes averaged in the period", "cell_methods": "time: sum"},
    "interpolated": {"long_name": "no scene in the period: linear interpolation in time"},
    "time_mean": {"long_name": "mean acquisition time of the scenes averaged in the period",
                  "cell_methods": "time: mean"},
    "guide": {"units": "1", "long_name": "aligned QA-masked guide image of one scene"},
    "shift_x": {"long_name": "scene shift along x (columns right), pixels"},
    "shift_y": {"long_name": "scene shift along y (rows down), pixels"},
    "cloud_cover": {"units": "%", "long_name": "scene cloud cover"},
    "valid_fraction": {"units": "1", "long_name": "fraction of valid pixels"},
    # velocity store (ITS_LIVE names) and its first names
    "vx": {"units": _MPY, "long_name": "surface velocity along x (east)",
           "standard_name": "land_ice_surface_x_velocity"},
    "vy": {"units": _MPY, "long_name": "surface velocity along y (north)",
           "standard_name": "land_ice_surface_y_velocity"},
    "v_speed": {"units": _MPY, "long_name": "surface speed"},
    "v_error": {"units": _MPY, "long_name": "1-sigma error of the surface speed"},
    "vx_error": {"units": _MPY, "long_name": "1-sigma error of the velocity along x"},
    "vy_error": {"units": _MPY, "long_name": "1-sigma error of the velocity along y"},
    "count": {"units": "1", "long_name": "number of valid image pairs"},
    "u": {"units": _MPY, "long_name": "surface velocity east", "standard_name": "land_ice_surface_x_velocity"},
    "v_north": {"units": _MPY, "long_name": "surface velocity north", "standard_name": "land_ice_surface_y_velocity"},
    "speed": {"units": _MPY, "long_name": "surface speed"},
    "u_composite": {"units": _MPY, "long_name": "composite surface velocity east",
                    "standard_name": "land_ice_surface_x_velocity"},
    "v_composite": {"units": _MPY, "long_name": "composite surface velocity north",
                    "standard_name": "land_ice_surface_y_velocity"},
    "speed_composite": {"units": _MPY, "long_name": "composite surface speed"},
    "speed_error": {"units": _MPY, "long_name": "1-sigma error of the composite speed"},
    "n_pairs": {"units": "1", "long_name": "number of pairs in the composite"},
    "pair_error": {"units": _MPY, "long_name": "1-sigma velocity error of the pair from stable ground"},
    "dt_days": {"units": "days", "long_name": "time between the two acquisitions"},
    # forecast store
    "forecast_reference_time": {"standard_name": "forecast_reference_time",
                                "long_name": "start of the first forecast period"},
    "forecast_period": {"standard_name": "forecast_period", "long_name": "forecast lead time"},
    "lead": {"long_name": "lead time in periods after the last input"},
    # truth store
    "glacier_mask": {"long_name": "glacier extent"},
    "elevation": {"units": "m", "long_name": "surface elevation", "standard_name": "surface_altitude"},
    "defects": {"long_name": "defect bit flags"},
}


def conform(data: xr.Dataset | xr.DataTree, *, period_means: bool = False,
            period: str | None = None) -> xr.Dataset | xr.DataTree:
    """The dataset (or tree: root and every group) with CF-1.10 metadata; lazy data stays lazy.

    Parameters
    ----------
    data
        A store's Dataset, or a DataTree (root + groups) as :func:`glacierflow.storage.store.write` takes.
    period_means
        ``time`` labels period starts and the data are period means (cube, forecast): add ``time_bnds``
        and ``cell_methods``. The period is ``period``, or read from the attributes (``period`` on the
        dataset or a variable, or the ``preprocess_spec`` JSON); no bounds where none is found.
    period
        A pandas offset alias (``"3MS"``) overriding the one recorded in the attributes.
    """
    if isinstance(data, xr.Dataset):
        return _conform_dataset(data, period_means, period)
    nodes = {}
    for node in data.subtree:
        own = node.to_dataset(inherit=False)
        gm = GRID_MAPPING if GRID_MAPPING in node.to_dataset(inherit=True).variables else None
        nodes[node.path] = (_conform_dataset(own, period_means, period) if node.is_root
                            else _conform_group(own, gm))
    return xr.DataTree.from_dict(nodes)


def _conform_dataset(ds: xr.Dataset, period_means: bool, period: str | None) -> xr.Dataset:
    ds = ds.copy()
    ds.attrs.setdefault("Conventions", CONVENTIONS)
    _coordinate_attrs(ds)
    if period_means and "time" in ds.dims:
        step = period or period_of(ds)
        if step and "time_bnds" not in ds.variables and "bounds" not in ds["time"].attrs:
            ds["time_bnds"] = time_bounds(ds["time"], step)
        if "bounds" in ds["time"].attrs or "time_bnds" in ds.variables:
            ds["time"].attrs.setdefault("bounds", "time_bnds")
            for name, var in ds.data_vars.items():
                method = _table(ds, str(name)).get("cell_methods")
                if method and "time" in var.dims:
                    var.attrs.setdefault("cell_methods", method)
    return _conform_group(ds, GRID_MAPPING if GRID_MAPPING in ds.variables else None)


def _conform_group(ds: xr.Dataset, grid_mapping: str | None) -> xr.Dataset:
    """Coordinate and variable attributes, grid mapping, fill values and netCDF-safe attributes of one group.

    A group's own coordinates (the velocity store's ``pairs`` group: ``mid_date``, and ``x``/``y`` if it has
    them) get the same CF attributes as the root's (projected: the groups share the root's grid mapping).
    """
    ds = ds.copy()
    _coordinate_attrs(ds)
    for name, var in ds.variables.items():
        if name == "time_bnds":
            continue
        for key, value in _table(ds, str(name)).items():
            if key != "cell_methods":
                var.attrs.setdefault(key, value)
        if grid_mapping and name not in ds.dims and {"y", "x"} <= set(var.dims):
            var.attrs.setdefault("grid_mapping", grid_mapping)
        _fill_value(var, is_coord=name in ds.coords)
        var.attrs = netcdf_attrs(var.attrs)
    ds.attrs = netcdf_attrs(ds.attrs)
    return ds


def _table(ds: xr.Dataset, name: str) -> dict[str, str]:
    """:data:`VARIABLES`' entry for ``name``; ``v`` is the speed beside ``vx``, else the northward velocity."""
    if name == "v":
        return VARIABLES["v_speed"] if "vx" in ds.variables else VARIABLES["v_north"] if "u" in ds.variables else {}
    return VARIABLES.get(name, {})


def _coordinate_attrs(ds: xr.Dataset) -> None:
    """``x``/``y``/``time`` coordinate attributes (projected or geographic from the grid mapping's CRS)."""
    geographic = False
    if GRID_MAPPING in ds.variables and "crs_wkt" in ds[GRID_MAPPING].attrs:
        from pyproj import CRS

        geographic = CRS.from_wkt(ds[GRID_MAPPING].attrs["crs_wkt"]).is_geographic
    axes = {
        "x": ("X", "longitude", "degrees_east", "longitude") if geographic else
        ("X", "projection_x_coordinate", "m", "x coordinate of projection (pixel centre)"),
        "y": ("Y", "latitude", "degrees_north", "latitude") if geographic else
        ("Y", "projection_y_coordinate", "m", "y coordinate of projection (pixel centre)"),
    }
    for name, (axis, standard, units, long_name) in axes.items():
        if name in ds.coords:
            ds[name].attrs.setdefault("units", units)
            ds[name].attrs.setdefault("standard_name", standard)
            ds[name].attrs.setdefault("axis", axis)
            ds[name].attrs.setdefault("long_name", long_name)
    times = [str(d) for d in ds.dims if d in ds.coords and np.issubdtype(ds[d].dtype, np.datetime64)]
    for name in times:  # `time`, or another time dimension (the velocity store's `mid_date`)
        ds[name].attrs.setdefault("standard_name", "time")
        ds[name].attrs.setdefault("long_name", name.replace("_", " "))
        if name == "time" or "time" not in times:
            ds[name].attrs.setdefault("axis", "T")


def _fill_value(var: xr.Variable, is_coord: bool) -> None:
    """Set ``_FillValue`` deliberately: NaN for floating data, none for coordinates, integers, booleans."""
    if "_FillValue" in var.encoding or "_FillValue" in var.attrs:
        return
    if np.issubdtype(var.dtype, np.floating) and not is_coord:
        var.encoding["_FillValue"] = np.nan
    elif np.issubdtype(var.dtype, np.number) or var.dtype == bool:
        var.encoding["_FillValue"] = None


def period_of(ds: xr.Dataset) -> str | None:
    """The period (pandas offset alias) recorded in ``ds``; None if none is.

    Looked for in the dataset's ``period`` attribute, a variable's, then the ``preprocess_spec`` JSON.
    """
    found = [ds.attrs.get("period"), *(v.attrs.get("period") for v in ds.data_vars.values())]
    spec = ds.attrs.get("preprocess_spec")
    if isinstance(spec, str):
        try:
            found.append(json.loads(spec).get("period"))
        except (ValueError, AttributeError):
            pass
    return next((str(p) for p in found if isinstance(p, str) and p), None)


def time_bounds(time: xr.DataArray, period: str) -> xr.DataArray:
    """``time_bnds(time, bnds)``: each period's start and the next period's start (``period`` an offset alias)."""
    start = pd.DatetimeIndex(time.values)
    end = start + pd.tseries.frequencies.to_offset(period)
    values = np.stack([start.values, end.values], axis=1).astype(time.dtype)
    return xr.DataArray(values, dims=("time", BOUNDS_DIM), coords={"time": time},
                        attrs={"long_name": "period bounds (start inclusive, end exclusive)"})


def netcdf_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """Attributes netCDF can store: JSON for dicts, None and non-scalar lists; 0/1 for booleans."""
    return {str(k): _netcdf_value(v) for k, v in attrs.items()}


def _netcdf_value(value: Any) -> Any:
    if isinstance(value, bool | np.bool_):
        return int(value)
    if isinstance(value, str | bytes | int | float | np.number):
        return value
    if isinstance(value, np.ndarray) and value.ndim <= 1 and value.dtype.kind in "iuf":
        return value
    if isinstance(value, list | tuple) and value and all(
            isinstance(v, int | float | np.number) and not isinstance(v, bool | np.bool_) for v in value):
        return list(value)
    if isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
        return list(value)
    return json.dumps(value, default=_jsonable, sort_keys=True)


def _jsonable(value: Any) -> Any:
    """JSON for values ``json`` does not know (numpy scalars and arrays, timestamps)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
