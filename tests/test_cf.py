"""CF-1.10 on every store (glacierflow.storage.cf): cube, velocity, forecast and truth stores written by their own
writers are read by cf_xarray (axes, coordinates, bounds, grid mapping), written to netCDF with h5netcdf and
reopened unchanged, and rioxarray and odc-geo read their CRS without help."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xarray as xr

from glacierflow.storage import cf


class Repeat(torch.nn.Module):
    """Repeat the last input frame four times (a forecast store without training)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, -1:].repeat(1, 4, 1, 1, 1)


@pytest.fixture(scope="module")
def stores(tiny_twin: Path, tiny_cube_1ms: str, tiny_cube_summer: dict[str, Any], tmp_path_factory) -> dict[str, str]:
    """Every store kind, each written by its own writer: cube (build-cube), velocity (flow), forecast
    (predict), truth (twin make)."""
    from glacierflow.forecast.predict import Forecaster, predict_cube
    from glacierflow.motion.velocity import run_flow
    from glacierflow.specs import FlowSpec, PredictSpec

    d = tmp_path_factory.mktemp("cf")
    run_flow(tiny_cube_summer["out"], str(d / "velocity.zarr"), FlowSpec(pairs="consecutive"))
    predict_cube(Forecaster(Repeat(), "repeat", 4, 4, 32), tiny_cube_1ms, str(d / "forecast.zarr"),
                 PredictSpec(last_input="2020-06-01", device="cpu"))
    return {"cube": tiny_cube_1ms, "velocity": str(d / "velocity.zarr"), "forecast": str(d / "forecast.zarr"),
            "truth": str(tiny_twin / "truth.zarr")}


KINDS = ["cube", "velocity", "forecast", "truth"]
PERIOD_MEANS = {"cube", "forecast"}


def _open(url: str) -> xr.Dataset:
    return xr.open_zarr(url, decode_coords="all", consolidated=False)  # the twin writes truth unconsolidated


@pytest.mark.parametrize("kind", KINDS)
def test_cf_xarray_finds_axes_coordinates_bounds_and_grid_mapping(stores, kind):
    import cf_xarray  # noqa: F401 - registers the .cf accessor

    ds = _open(stores[kind])
    assert ds.attrs["Conventions"] == "CF-1.10"
    if kind == "velocity":  # ITS_LIVE layout: the composite at the root on (y, x); the pairs' time in `pairs`
        pairs = xr.open_zarr(stores[kind], group="pairs", decode_coords="all", consolidated=False)
        assert pairs.cf.axes["T"] == ["mid_date"] and pairs.cf.coordinates["time"] == ["mid_date"]
        assert pairs.cf.axes["X"] == ["x"] and pairs.cf.axes["Y"] == ["y"]
        assert "T" not in ds.cf.axes
    else:
        tdim = next(d for d in ds.dims if np.issubdtype(ds[d].dtype, np.datetime64))
        assert ds.cf.axes["T"] == [tdim] and ds.cf.coordinates["time"] == [tdim]
    axes = ds.cf.axes
    assert axes["X"] == ["x"] and axes["Y"] == ["y"]
    names = ds.cf.standard_names
    assert names["projection_x_coordinate"] == ["x"] and names["projection_y_coordinate"] == ["y"]
    assert ds["x"].attrs["units"] in ("m", "metre") and ds["y"].attrs["units"] in ("m", "metre")
    assert ds.cf.grid_mapping_names == {"transverse_mercator": ["spatial_ref"]}
    gridded = [n for n, v in ds.data_vars.items() if {"y", "x"} <= set(v.dims)]
    # decode_coords="all" moves the grid_mapping attribute into the encoding; cf_xarray follows it there
    assert gridded and all(ds[n].encoding["grid_mapping"] == "spatial_ref" for n in gridded)
    assert all(ds[n].cf["grid_mapping"].name == "spatial_ref" for n in gridded)
    # no missing value declared on a coordinate (CF 2.5.1); floating data have NaN as the declared fill
    assert all("_FillValue" not in ds[c].encoding or ds[c].encoding["_FillValue"] is None for c in ("x", "y"))
    if kind in PERIOD_MEANS:
        assert ds.cf.bounds["time"] == ["time_bnds"]
        assert ds["ndsi"].attrs["cell_methods"] == "time: mean"
        bounds = ds["time_bnds"].values
        np.testing.assert_array_equal(bounds[:, 0], ds["time"].values)
        # each period ends where the next begins: the bounds tile the time axis without gap or overlap
        np.testing.assert_array_equal(bounds[:-1, 1], bounds[1:, 0])
    elif kind == "truth":  # per acquisition, not period means: no bounds, no cell methods
        assert "time_bnds" not in ds.variables and "cell_methods" not in ds["ndsi"].attrs


@pytest.mark.parametrize("kind", KINDS)
def test_every_store_round_trips_through_netcdf(stores, kind, tmp_path):
    ds = _open(stores[kind])
    path = tmp_path / f"{kind}.nc"
    ds.to_netcdf(path, engine="h5netcdf")
    back = xr.open_dataset(path, engine="h5netcdf", decode_coords="all")
    assert set(back.data_vars) == set(ds.data_vars) and set(back.coords) == set(ds.coords)
    for name in ds.variables:
        a, b = ds[name].values, back[name].values
        if a.dtype.kind in "fc":
            np.testing.assert_array_equal(a, b, err_msg=name)
        else:
            assert (a == b).all(), name
    assert back.attrs["Conventions"] == "CF-1.10"


@pytest.mark.parametrize("kind", KINDS)
def test_rioxarray_and_odc_geo_read_the_crs(stores, kind):
    import odc.geo.xr  # noqa: F401 - registers the .odc accessor
    import rioxarray  # noqa: F401 - registers the .rio accessor

    ds = _open(stores[kind])
    epsg = int(ds["spatial_ref"].attrs["epsg"])
    assert ds.rio.crs.to_epsg() == epsg
    name = next(n for n, v in ds.data_vars.items() if {"y", "x"} <= set(v.dims))
    assert ds[name].rio.crs.to_epsg() == epsg
    box = ds.odc.geobox
    assert box.crs.epsg == epsg and box.shape == (ds.sizes["y"], ds.sizes["x"])
    # the geobox's pixel size is the store's grid spacing (30 m Landsat pixels, north up)
    assert box.resolution.x == pytest.approx(float(ds["x"][1] - ds["x"][0]))
    assert box.resolution.y == pytest.approx(float(ds["y"][1] - ds["y"][0]))


def test_non_scalar_attributes_become_json_and_writer_attributes_win():
    ds = xr.Dataset(
        {"ndsi": (("time", "y", "x"), np.zeros((2, 3, 4), np.float32),
                  {"dropped_items": {"a": "cloudy"}, "resampling": {"green": "bilinear"}, "units": "custom",
                   "flag": True, "transform": [30.0, 0.0, 1.0]})},
        coords={"time": np.array(["2020-01-01", "2020-04-01"], "datetime64[ns]"), "y": [3.0, 2.0, 1.0],
                "x": [0.0, 1.0, 2.0, 3.0]},
        attrs={"search": {"bbox": [1, 2, 3, 4]}, "period": "3MS", "none": None},
    )
    out = cf.conform(ds, period_means=True)
    attrs = out["ndsi"].attrs
    assert json.loads(attrs["dropped_items"]) == {"a": "cloudy"} and attrs["flag"] == 1
    assert attrs["transform"] == [30.0, 0.0, 1.0] and attrs["units"] == "custom"  # the writer's units kept
    assert json.loads(out.attrs["search"]) == {"bbox": [1, 2, 3, 4]} and out.attrs["none"] == "null"
    np.testing.assert_array_equal(out["time_bnds"].values[:, 1],
                                  np.array(["2020-04-01", "2020-07-01"], "datetime64[ns]"))
    assert "grid_mapping" not in attrs  # no grid mapping variable: none is invented
    assert cf.conform(out, period_means=True).identical(out)  # idempotent


@pytest.mark.parametrize("kind", ["cube", "velocity", "forecast"])
def test_build_cube_flow_and_predict_write_a_valid_stac_item_beside_the_store(stores, kind):
    from glacierflow.storage import stac_out

    folder = Path(stac_out.stac_dir(stores[kind]))
    item = json.loads((folder / "item.json").read_text())
    assert len(stac_out.validate(item)) == 5  # the core schema and four extensions, offline
    assert stac_out.validate(json.loads((folder / "collection.json").read_text()))
    assert item["id"].startswith(f"{kind}-")
