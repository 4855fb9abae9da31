"""Tests for glacierflow.preprocess.qa and .periods: QA mask, read errors, NDSI, period means from observations."""

from __future__ import annotations

import dask.array as dsa
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from glacierflow.errors import GlacierflowError
from glacierflow.preprocess.periods import period_starts, resample
from glacierflow.preprocess.qa import (
    QA_CIRRUS,
    QA_CLEAR,
    QA_CLOUD,
    QA_CLOUD_SHADOW,
    QA_DILATED_CLOUD,
    QA_FILL,
    QA_SNOW,
    mask_invalid,
    ndsi,
    snow_mask,
    valid_fraction,
)
from glacierflow.testing import raise_if_computes

# --- helpers ---------------------------------------------------------------------------------------------


def make_cube(n_time: int = 3, ny: int = 12, nx: int = 10, seed: int = 0, dask_backed: bool = True):
    rng = np.random.default_rng(seed)
    green = rng.uniform(0.05, 0.9, (n_time, ny, nx)).astype(np.float32)
    swir = rng.uniform(0.01, 0.5, (n_time, ny, nx)).astype(np.float32)
    qa = np.full((n_time, ny, nx), float(1 << QA_CLEAR), np.float32)
    data = np.stack([green, swir, qa], axis=1)
    times = pd.date_range("2020-01-05", periods=n_time, freq="16D")
    cube = xr.DataArray(
        data,
        dims=("time", "band", "y", "x"),
        coords={
            "time": times,
            "band": ["green", "swir16", "qa_pixel"],
            "y": np.arange(ny) * -30.0,
            "x": np.arange(nx) * 30.0,
            "id": ("time", [f"LC08_{i}" for i in range(n_time)]),
            "eo:cloud_cover": ("time", np.linspace(1, 20, n_time)),
            "epsg": 32643,
        },
    )
    if dask_backed:
        cube = cube.chunk({"time": 1, "band": -1, "y": -1, "x": -1})
    return cube


# --- QA mask ----------------------------------------------------------------------------------------------


def test_qa_bits_follow_usgs():
    assert (QA_FILL, QA_DILATED_CLOUD, QA_CIRRUS, QA_CLOUD, QA_CLOUD_SHADOW, QA_SNOW, QA_CLEAR) == (
        0,
        1,
        2,
        3,
        4,
        5,
        6,
    )


@pytest.mark.parametrize("dask_backed", [False, True])
def test_mask_invalid_bits_and_nans(dask_backed):
    cube = make_cube(dask_backed=False)
    qa = cube.loc[{"band": "qa_pixel"}].values.copy()
    qa[0, 0, 0] = 1 << QA_FILL
    qa[0, 0, 1] = (1 << QA_CLOUD) | (1 << QA_DILATED_CLOUD)
    qa[0, 0, 2] = 1 << QA_CLOUD_SHADOW
    qa[0, 0, 3] = 1 << QA_DILATED_CLOUD
    qa[0, 0, 4] = 1 << QA_CIRRUS
    qa[0, 0, 5] = (1 << QA_SNOW) | (1 << QA_CLEAR)
    qa[0, 0, 6] = np.nan  # QA missing: outside the footprint
    qa[1, 1, 1] = 21824.0  # typical clear land value
    cube.loc[{"band": "qa_pixel"}] = qa
    cube.loc[{"band": "green", "time": cube.time[2], "y": cube.y[3], "x": cube.x[3]}] = np.nan
    cube.loc[{"band": "swir16", "time": cube.time[2], "y": cube.y[4], "x": cube.x[4]}] = np.nan
    if dask_backed:
        cube = cube.chunk({"time": 1})

    masked = mask_invalid(cube)
    assert masked.dims == ("time", "band", "y", "x")
    assert list(masked.band.values) == ["green", "swir16"]
    assert list(masked["id"].values) == list(cube["id"].values)
    assert "eo:cloud_cover" in masked.coords
    assert isinstance(masked.data, dsa.Array) == dask_backed
    m = masked.values
    bad = np.isnan(m)
    assert (bad[:, 0] == bad[:, 1]).all(), "a pixel is invalid in both bands or in none"
    expected = np.zeros(bad[:, 0].shape, bool)
    expected[0, 0, [0, 1, 2, 3, 6]] = True
    expected[2, 3, 3] = expected[2, 4, 4] = True
    np.testing.assert_array_equal(bad[:, 0], expected)
    np.testing.assert_array_equal(m[~bad], cube.sel(band=["green", "swir16"]).values[~bad])

    no_clouds = mask_invalid(cube, mask_clouds=False).values
    exp2 = np.zeros_like(expected)
    exp2[0, 0, [0, 6]] = True
    exp2[2, 3, 3] = exp2[2, 4, 4] = True
    np.testing.assert_array_equal(np.isnan(no_clouds[:, 0]), exp2)

    with_cirrus = mask_invalid(cube, mask_cirrus=True).values
    assert np.isnan(with_cirrus[0, :, 0, 4]).all()

    frac = valid_fraction(masked)
    assert frac.dims == ("time",)
    np.testing.assert_allclose(frac.values, 1 - expected.reshape(3, -1).mean(axis=1))


def test_mask_invalid_without_qa_band_only_nans():
    cube = make_cube(dask_backed=False).sel(band=["green", "swir16"])
    cube[0, 1, 2, 2] = np.nan
    masked = mask_invalid(cube).values
    assert np.isnan(masked).sum() == 2 and np.isnan(masked[0, :, 2, 2]).all()


def test_mask_invalid_missing_band_names_it():
    cube = make_cube(dask_backed=False).sel(band=["green", "qa_pixel"])
    with pytest.raises(GlacierflowError, match="swir16"):
        mask_invalid(cube)


# --- NDSI and snow mask ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dask_backed", [False, True])
def test_ndsi_formula_guard_and_snow_mask(dask_backed):
    cube = make_cube(dask_backed=False)
    refl = cube.sel(band=["green", "swir16"]).copy()
    refl[0, :, 0, 0] = [0.2, -0.2]  # sum 0: guarded -> 0
    refl[0, :, 0, 1] = [np.nan, 0.1]
    refl[0, :, 0, 2] = [0.05, -0.049]  # tiny positive sum: clipped to 1
    if dask_backed:
        refl = refl.chunk({"time": 1})
    out = ndsi(refl)
    assert out.dims == ("time", "y", "x") and out.dtype == np.float32 and out.name == "ndsi"
    assert "band" not in out.coords
    assert "id" in out.coords
    assert isinstance(out.data, dsa.Array) == dask_backed
    g = refl.values[:, 0].astype(np.float64)
    s = refl.values[:, 1].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = (g - s) / (g + s)
    v = out.values
    assert v[0, 0, 0] == 0
    assert np.isnan(v[0, 0, 1])
    assert v[0, 0, 2] == 1
    ok = np.ones_like(v, bool)
    ok[0, 0, :3] = False
    np.testing.assert_allclose(v[ok], expected[ok], rtol=1e-5, atol=1e-6)

    snow = snow_mask(out, 0.3).values
    exp_snow = np.where(v >= 0.3, v, 0)
    exp_snow[np.isnan(v)] = np.nan
    np.testing.assert_array_equal(snow, exp_snow)
    assert ((snow == 0) | (snow >= 0.3) | np.isnan(snow)).all()
    assert (snow == 0).any() and (snow >= 0.3).any()


# --- resampling ---------------------------------------------------------------------------------------


def _series(times, ny=4, nx=5, seed=0):
    rng = np.random.default_rng(seed)
    data = rng.uniform(0, 1, (len(times), ny, nx)).astype(np.float32)
    return xr.DataArray(
        data,
        dims=("time", "y", "x"),
        coords={
            "time": pd.DatetimeIndex(times),
            "y": np.arange(ny) * -30.0,
            "x": np.arange(nx) * 30.0,
            "id": ("time", [f"s{i}" for i in range(len(times))]),
            "spatial_ref": 0,
        },
        name="ndsi",
    )


def test_period_starts_are_calendar_quarters():
    starts, pos = period_starts(pd.DatetimeIndex(["2020-02-10", "2020-05-01", "2020-12-31"]), "3MS")
    assert list(starts) == list(pd.DatetimeIndex(["2020-01-01", "2020-04-01", "2020-07-01", "2020-10-01"]))
    assert list(pos) == [0, 1, 3]
    starts6, _ = period_starts(pd.DatetimeIndex(["2020-03-10", "2021-08-01"]), "6MS")
    assert [(t.month, t.year) for t in starts6] == [(1, 2020), (7, 2020), (1, 2021), (7, 2021)]
    with pytest.raises(GlacierflowError, match="5MS"):
        period_starts(pd.DatetimeIndex(["2020-03-10"]), "5MS")
    with pytest.raises(GlacierflowError, match="period"):
        period_starts(pd.DatetimeIndex(["2020-03-10"]), "16D")


@pytest.mark.parametrize("dask_backed", [False, True])
def test_resample_means_interpolation_and_edges(dask_backed):
    times = ["2020-02-10", "2020-03-20", "2020-05-05", "2021-01-15", "2021-02-20"]
    da = _series(times)
    da[1, 0, 0] = np.nan  # skipped in the mean
    src = da.chunk({"time": 1, "y": 2}) if dask_backed else da
    with raise_if_computes():
        ds = resample(src, "3MS", start="2019-11-01", end="2021-08-31")
    assert isinstance(ds["ndsi"].data, dsa.Array) == dask_backed
    if dask_backed:
        assert ds["ndsi"].chunks[0] == (ds.sizes["time"],)
    expected_starts = pd.date_range("2019-10-01", "2021-07-01", freq="3MS")
    assert list(pd.DatetimeIndex(ds.time.values)) == list(expected_starts)
    assert [t.month for t in pd.DatetimeIndex(ds.time.values)] == [10, 1, 4, 7, 10, 1, 4, 7]
    np.testing.assert_array_equal(ds["n_scenes"].values, [0, 2, 1, 0, 0, 2, 0, 0])
    np.testing.assert_array_equal(ds["interpolated"].values, ds["n_scenes"].values == 0)
    assert ds["ndsi"].dtype == np.float32 and ds["ndsi"].dims == ("time", "y", "x")
    assert "id" not in ds.coords and "spatial_ref" in ds.coords

    v = ds["ndsi"].values
    a = da.values.astype(np.float64)
    q1_2020 = np.nanmean(a[0:2], axis=0)
    q2_2020 = a[2]
    q1_2021 = a[3:5].mean(axis=0)
    np.testing.assert_allclose(v[1], q1_2020, rtol=1e-6)
    assert v[1, 0, 0] == pytest.approx(a[0, 0, 0])
    np.testing.assert_allclose(v[2], q2_2020, rtol=1e-6)
    np.testing.assert_allclose(v[5], q1_2021, rtol=1e-6)
    # Q3, Q4 2020 lie 1/3 and 2/3 of the way from Q2 2020 to Q1 2021.
    np.testing.assert_allclose(v[3], q2_2020 + (q1_2021 - q2_2020) / 3, rtol=1e-5)
    np.testing.assert_allclose(v[4], q2_2020 + 2 * (q1_2021 - q2_2020) / 3, rtol=1e-5)
    # Leading / trailing empty periods take the nearest non-empty period.
    np.testing.assert_allclose(v[0], q1_2020, rtol=1e-6)
    np.testing.assert_allclose(v[6], q1_2021, rtol=1e-6)
    np.testing.assert_allclose(v[7], q1_2021, rtol=1e-6)

    dropped = resample(da, "3MS", start="2019-11-01", end="2021-08-31", edges="drop")
    assert list(dropped["n_scenes"].values) == [2, 1, 0, 0, 2]
    np.testing.assert_allclose(dropped["ndsi"].values, v[1:6])


def test_resample_default_range_monthly_and_dask_equals_numpy():
    times = ["2020-04-03", "2020-04-19", "2020-06-22", "2020-09-08"]
    da = _series(times, seed=4)
    eager = resample(da, "1MS")
    lazy = resample(da.chunk({"time": 1}), "1MS").compute(scheduler="sync")
    xr.testing.assert_identical(eager, lazy)
    assert pd.DatetimeIndex(eager.time.values)[0] == pd.Timestamp("2020-04-01")
    assert pd.DatetimeIndex(eager.time.values)[-1] == pd.Timestamp("2020-09-01")
    np.testing.assert_array_equal(eager["n_scenes"].values, [2, 0, 1, 0, 0, 1])
    half = resample(da, "6MS")
    assert list(pd.DatetimeIndex(half.time.values)) == list(pd.DatetimeIndex(["2020-01-01", "2020-07-01"]))
    np.testing.assert_array_equal(half["n_scenes"].values, [3, 1])


def test_whole_chain_is_lazy():
    cube = make_cube(n_time=4, ny=20, nx=18)
    with raise_if_computes():
        masked = mask_invalid(cube)
        frac = valid_fraction(masked)
        snow = snow_mask(ndsi(masked))
        ds = resample(snow, "3MS")
    assert isinstance(frac.data, dsa.Array) and isinstance(ds["ndsi"].data, dsa.Array)
    out = ds.compute(scheduler="sync")
    assert np.isfinite(out["ndsi"].values).all()


def test_xarray_3ms_is_not_calendar_aligned_but_ours_is():
    da = _series(["2020-02-10", "2020-05-01", "2020-08-03", "2020-12-31"])
    xr_starts = pd.DatetimeIndex(da.resample(time="3MS").mean().time.values)
    assert [t.month for t in xr_starts] == [2, 5, 8, 11]  # why resample() groups by itself
    ours = resample(da, "3MS")
    assert [t.month for t in pd.DatetimeIndex(ours.time.values)] == [1, 4, 7, 10]
    np.testing.assert_array_equal(ours["n_scenes"].values, [1, 1, 1, 1])


def test_resample_empty_time_axis():
    da = _series(["2020-02-10"]).isel(time=slice(0, 0))
    with pytest.raises(GlacierflowError, match="start and end"):
        resample(da)
    ds = resample(da, start="2020-01-01", end="2020-12-31")
    assert ds.sizes["time"] == 4 and (ds["n_scenes"].values == 0).all()


def test_period_means_count_only_real_observations_and_fill_only_the_unobserved():
    from glacierflow.preprocess.gapfill import gap_fill_2d

    times = ["2020-01-05", "2020-02-10", "2020-03-30", "2020-04-20", "2020-05-25", "2020-11-02"]
    da = _series(times, ny=12, nx=10, seed=7)
    a = da.values.astype(np.float64)
    a[0, :, :4] = np.nan  # scene 0: a partial footprint (left strip outside)
    a[1, :3, :] = np.nan  # scene 1: the top rows clouded
    a[2, :2, :2] = np.nan  # scene 2 misses the top-left corner too: no observation there in Q1
    a[3, 5:, :] = np.nan  # Q2: half of scene 3 missing, scene 4 (not used) covers it
    da = da.copy(data=a.astype(np.float32))
    use = xr.DataArray([True, True, True, True, False, True], dims="time")
    with raise_if_computes():
        lazy = resample(da.chunk({"time": 1}), "3MS", start="2020-01-01", end="2020-12-31", use=use.chunk(2))
    ds = lazy.compute(scheduler="sync")
    eager = resample(da, "3MS", start="2020-01-01", end="2020-12-31", use=use)
    xr.testing.assert_allclose(ds, eager)
    # numpy reference: per period, mean over the used scenes that observed the pixel, and their count
    w = np.array(use.values)[:, None, None] & np.isfinite(a)
    groups = [[0, 1, 2], [3, 4], [], [5]]
    for k, g in enumerate(groups):
        n_ref = w[g].sum(0) if g else np.zeros(a.shape[1:], int)
        np.testing.assert_array_equal(ds["n_valid"].values[k], n_ref)
        if not g:
            continue
        mean_ref = np.where(n_ref > 0, np.where(w[g], a[g], 0).sum(0) / np.maximum(n_ref, 1), np.nan)
        seen = n_ref > 0
        np.testing.assert_allclose(ds["ndsi"].values[k][seen], mean_ref[seen], rtol=1e-6)
        # where nothing observed the pixel, the paper's gap-fill of the period mean supplies it
        np.testing.assert_allclose(ds["ndsi"].values[k], gap_fill_2d(mean_ref.astype(np.float32), 32)[0],
                                   rtol=1e-6)
    assert ds["n_valid"].dtype == np.uint8 and int(ds["n_valid"].values[0, 0, 0]) == 0
    assert int(ds["n_valid"].values[1, 8, 3]) == 0, "scene 4 is not used: Q2's lower half is gap-filled"
    np.testing.assert_array_equal(ds["n_scenes"].values, [3, 1, 0, 1])
    np.testing.assert_array_equal(ds["interpolated"].values, [False, False, True, False])
    np.testing.assert_allclose(ds["ndsi"].values[2], (ds["ndsi"].values[1] + ds["ndsi"].values[3]) / 2, rtol=1e-5)
    t = pd.DatetimeIndex(times)
    expect = [t[:3].mean(), t[3], pd.NaT, t[5]]
    got = pd.DatetimeIndex(ds["time_mean"].values)
    assert got[0] == expect[0].floor("us") or abs(got[0] - expect[0]) < pd.Timedelta("1us")
    assert got[1] == expect[1] and pd.isna(got[2]) and got[3] == expect[3]


def test_qa_valid_and_read_errors():
    from glacierflow.preprocess.qa import qa_valid, read_errors

    qa = xr.DataArray(np.array([[1 << QA_CLEAR, 1 << QA_CLOUD, np.nan, -np.inf, 1 << QA_FILL,
                                 (1 << QA_CIRRUS) | (1 << QA_CLEAR)]], np.float32), dims=("y", "x"))
    np.testing.assert_array_equal(qa_valid(qa).values, [[True, False, False, False, False, True]])
    np.testing.assert_array_equal(qa_valid(qa, mask_clouds=False).values, [[True, True, False, False, False, True]])
    np.testing.assert_array_equal(qa_valid(qa, mask_cirrus=True).values, [[True, False, False, False, False, False]])
    cube = make_cube(n_time=3, ny=4, nx=5, dask_backed=False)
    cube[1, 1] = -np.inf  # scene 1: swir16 unreadable
    with raise_if_computes():
        errs = read_errors(cube.chunk({"time": 1}))
    np.testing.assert_array_equal(errs.values, [[False] * 3, [False, True, False], [False] * 3])
    assert np.isnan(mask_invalid(cube).values[1]).all(), "an unreadable band masks the scene"
