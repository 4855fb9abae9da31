"""``glacierflow export STORE --cog DIR``: one valid COG per variable and time, read back by rasterio with the
store's CRS, grid, nodata and values; bad --var/--time are one line."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import rasterio

from glacierflow.cli.main import main
from glacierflow.storage import cf, store
from glacierflow.storage.cog import export_cogs
from glacierflow.testing import synthetic_cube


@pytest.fixture(scope="module")
def cube_url(tmp_path_factory):
    """A synthetic cube written by the store writer with CF metadata (NaN holes in one period)."""
    ds = synthetic_cube(n_periods=3, size=(40, 56), seed=2)
    ndsi = ds["ndsi"].values.copy()
    ndsi[1, :5, :7] = np.nan
    ds["ndsi"] = (ds["ndsi"].dims, ndsi, ds["ndsi"].attrs)
    url = str(tmp_path_factory.mktemp("export") / "cube.zarr")
    return store.write(cf.conform(ds, period_means=True), url)


def test_every_variable_and_time_as_a_cog_with_crs_grid_nodata_and_values(cube_url, tmp_path):
    from rio_cogeo.cogeo import cog_validate

    assert main(["export", cube_url, "--cog", str(tmp_path)]) == 0
    ds = store.open_store(cube_url)
    files = sorted(p.name for p in tmp_path.glob("*.tif"))
    # ndsi and n_valid on (time, y, x): one file per period; the per-period scalars are not rasters
    assert files == sorted(f"{v}_{t:%Y-%m-%d}.tif" for v in ("ndsi", "n_valid")
                           for t in pd.DatetimeIndex(ds["time"].values))
    t1 = pd.Timestamp(ds["time"].values[1])
    with rasterio.open(tmp_path / f"ndsi_{t1:%Y-%m-%d}.tif") as src:
        assert src.crs.to_epsg() == int(ds["spatial_ref"].attrs["epsg"])
        assert np.isnan(src.nodata) and src.dtypes[0] == "float32"
        # pixel centres from the geotransform are the store's x/y coordinates
        cols, rows = np.arange(src.width), np.arange(src.height)
        xs = [src.xy(0, c)[0] for c in cols]
        ys = [src.xy(r, 0)[1] for r in rows]
        np.testing.assert_allclose(xs, ds["x"].values)
        np.testing.assert_allclose(ys, ds["y"].values)
        band = src.read(1, masked=True)
        want = ds["ndsi"].isel(time=1).values
        np.testing.assert_array_equal(band.mask, np.isnan(want))  # the NaN holes are nodata
        np.testing.assert_array_equal(band.filled(np.nan), want)
        assert src.tags()["time"] == t1.isoformat() and src.tags()["units"] == "1"
    with rasterio.open(tmp_path / f"n_valid_{t1:%Y-%m-%d}.tif") as src:
        # uint8 counts without a fill value: nodata is 255, a count they never reach
        assert src.dtypes[0] == "uint8" and src.nodata == 255
        np.testing.assert_array_equal(src.read(1), ds["n_valid"].isel(time=1).values)
    valid, errors, _ = cog_validate(str(tmp_path / f"ndsi_{t1:%Y-%m-%d}.tif"))
    assert valid and not errors


def test_chosen_variable_and_time_and_a_south_up_grid(cube_url, tmp_path):
    ds = store.open_store(cube_url)
    t0 = pd.Timestamp(ds["time"].values[0])
    paths = export_cogs(ds, tmp_path / "a", ["ndsi"], [f"{t0:%Y-%m-%d}"])
    assert [p.name for p in paths] == [f"ndsi_{t0:%Y-%m-%d}.tif"]
    # a store whose y ascends is written north up: the same picture as the descending one
    flipped = ds.isel(y=slice(None, None, -1))
    (up,) = export_cogs(flipped, tmp_path / "b", ["ndsi"], [f"{t0:%Y-%m-%d}"])
    with rasterio.open(paths[0]) as a, rasterio.open(up) as b:
        assert a.transform == b.transform
        np.testing.assert_array_equal(a.read(1), b.read(1))


def test_two_dimensional_variables_have_no_time_in_the_name(tmp_path):
    ds = synthetic_cube(n_periods=2, size=16)
    ds["speed"] = (("y", "x"), np.full((16, 16), 3.0, np.float32), {"units": "m yr-1"})
    (path,) = export_cogs(ds, tmp_path, ["speed"])
    assert path.name == "speed.tif"
    with rasterio.open(path) as src:
        assert src.read(1).mean() == 3.0 and src.tags()["units"] == "m yr-1"


@pytest.mark.parametrize(("flags", "message"), [
    (["--var", "ndsii"], "--var 'ndsii': not a gridded variable of the store (did you mean 'ndsi'?)"),
    (["--time", "1999-01-01"], "--time 1999-01-01: no time step on that date; the store has"),
    (["--time", "soon"], "--time 'soon': not a date; use YYYY-MM-DD"),
])
def test_bad_choice_is_one_line(cube_url, tmp_path, capsys, flags, message):
    assert main(["export", cube_url, "--cog", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {message}") and "\n" not in err
    assert not list(tmp_path.glob("*.tif"))
