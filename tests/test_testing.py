"""Tests for glacierflow.testing: the compute-refusing scheduler and the synthetic cube builders."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from glacierflow.errors import GlacierflowError
from glacierflow.specs import CubeSpec, PreprocessSpec
from glacierflow.storage import store
from glacierflow.testing import ComputeRefused, raise_if_computes, synthetic_cube, write_synthetic_cube


def test_raise_if_computes_refuses_implicit_and_allows_explicit_scheduler():
    with raise_if_computes():
        lazy = da.arange(10, chunks=5) * 2
        with pytest.raises(ComputeRefused):
            lazy.sum().compute()
        with pytest.raises(ComputeRefused):
            xr.DataArray(lazy).values  # noqa: B018 - .values computes
        assert int(lazy.sum().compute(scheduler="sync")) == 90
    assert int(lazy.sum().compute()) == 90, "the scheduler is restored after the block"
    assert dask.config.get("scheduler", None) is None


def test_synthetic_cube_follows_the_contract():
    ds = synthetic_cube(n_periods=8, size=(40, 48), period="3MS", seed=1, interpolated=(3,))
    assert ds["ndsi"].dims == ("time", "y", "x") and ds["ndsi"].dtype == np.float32
    assert ds.sizes == {"time": 8, "y": 40, "x": 48}
    v = ds["ndsi"].values
    assert v.min() >= 0 and v.max() <= 1
    # the snow mask: every non-zero observed value is at or above the threshold (interpolated periods
    # average two masks, so they may hold values below it)
    obs = v[~ds["interpolated"].values]
    assert (obs[obs > 0] >= 0.3).all() and 0.05 < (v > 0).mean() < 0.95
    assert ds["n_valid"].dtype == np.uint8 and ds["interpolated"].dtype == bool
    assert list(ds["interpolated"].values) == [False] * 3 + [True] + [False] * 4
    assert int(ds["n_scenes"][3]) == 0 and int(ds["n_valid"][3].max()) == 0
    assert (ds["n_scenes"].values[ds["interpolated"].values == 0] >= 1).all()
    assert list(ds["time"].to_index().month) == [1, 4, 7, 10] * 2
    tm = pd.DatetimeIndex(ds["time_mean"].values)
    assert tm[3] is pd.NaT and tm[0] > ds["time"].to_index()[0]
    assert store.epsg_of(ds) == 32643
    assert np.allclose(np.diff(ds.x), 30) and np.allclose(np.diff(ds.y), -30)
    assert CubeSpec.from_json(ds.attrs["cube_spec"]).epsg == 32643
    assert PreprocessSpec.from_json(ds.attrs["preprocess_spec"]).period == "3MS"


def test_synthetic_cube_drift_is_the_stated_shift():
    # no season, no noise: period k is period 0 moved k * (2 cols, 1 row); compare interiors
    ds = synthetic_cube(n_periods=3, size=64, period="1MS", seasonal=0.0, drift=(2.0, 1.0))
    a, b = ds["ndsi"].values[0], ds["ndsi"].values[2]
    assert np.array_equal(b[10:-10, 10:-10], a[8:-12, 6:-14])
    assert not np.array_equal(b[10:-10, 10:-10], a[10:-10, 10:-10])


def test_synthetic_cube_seasonal_snow_and_noise():
    ds = synthetic_cube(n_periods=4, size=48, period="3MS", seasonal=0.3)
    cover = (ds["ndsi"] > 0).mean(("y", "x")).values
    assert cover[0] > cover[2], "more snow in January than in July"
    quiet = synthetic_cube(n_periods=2, size=48, seed=4).ndsi.values
    noisy = synthetic_cube(n_periods=2, size=48, seed=4, noise=0.05).ndsi.values
    assert not np.array_equal(quiet, noisy)
    with pytest.raises(GlacierflowError, match="2MS"):
        synthetic_cube(period="2MS")


def test_write_synthetic_cube_is_a_complete_store(tmp_path):
    path = write_synthetic_cube(str(tmp_path / "c.zarr"), n_periods=4, size=24, period="6MS", seed=2)
    plain = xr.open_zarr(path, decode_coords="all")
    assert "spatial_ref" in plain.coords and plain["ndsi"].encoding["chunks"][0] == 1
    ds = store.open_store(path)
    expected = synthetic_cube(n_periods=4, size=24, period="6MS", seed=2)
    np.testing.assert_array_equal(ds["ndsi"].values, expected["ndsi"].values)
    np.testing.assert_array_equal(ds["time_mean"].values, expected["time_mean"].values)
    assert list(ds["time"].to_index().month) == [1, 7, 1, 7]
    with pytest.raises(FileExistsError):
        write_synthetic_cube(path, n_periods=2, size=8)


def test_write_synthetic_cube_with_scenes_and_guides(tmp_path):
    path = write_synthetic_cube(str(tmp_path / "g.zarr"), n_periods=4, size=96, period="3MS", drift=(2.0, -1.0),
                                interpolated=(2,), groups=True)
    scenes = xr.open_zarr(path, group="scenes").load()
    guides = xr.open_zarr(path, group="guides")
    cube = xr.open_zarr(path)
    assert scenes.sizes["scene"] == 3, "one scene per observed period; the interpolated one has none"
    assert list(guides["scene"].values) == list(scenes["item_id"].values)
    np.testing.assert_array_equal(scenes["time"].values, cube["time_mean"].values[[0, 1, 3]])
    assert scenes["used"].values.all() and set(scenes["collection_category"].values) == {"T1"}
    assert guides["guide"].dtype == np.float32 and guides["guide"].encoding["chunks"][0] == 1
    g = guides["guide"].values
    assert abs(float(g.mean())) < 0.02, "high-passed like build-cube's guides"
    # the last guide (period 3) is the first moved 3 * (2 cols right, 1 row up): guide3[r, c] == guide0[r + 3, c - 6]
    # away from the borders, where the high-pass (sigma 6 px, mode nearest) sees the same texture
    np.testing.assert_allclose(g[2][30:-30, 30:-30], g[0][33:-27, 24:-36], atol=1e-5)
    assert not np.allclose(g[2][30:-30, 30:-30], g[0][30:-30, 30:-30], atol=1e-2)
