"""``stats``: per-glacier snow/ice area against an independent shapely/pyproj count and the twin's truth;
the seasonal Theil–Sen trend against scipy and against a series whose trend is known exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import shapely
import xarray as xr
from pyproj import Transformer
from shapely.geometry import shape
from shapely.ops import transform

from glacierflow.cli.main import main
from glacierflow.monitor.stats import glacier_stats
from glacierflow.monitor.trend import decimal_years, seasonal_sen
from glacierflow.storage.store import epsg_of, open_store


def _outline_masks(path: Path, cube: xr.Dataset) -> list[np.ndarray]:
    """Pixel centres inside each outline, with shapely on outlines reprojected by pyproj (not rasterio)."""
    to_cube = Transformer.from_crs(4326, epsg_of(cube), always_xy=True)
    xx, yy = np.meshgrid(cube["x"].values, cube["y"].values)
    feats = json.loads(path.read_text())["features"]
    return [shapely.contains_xy(transform(to_cube.transform, shape(f["geometry"])), xx, yy) for f in feats]


def test_stats_cli_matches_an_independent_count_and_the_truth(tiny_cube_1ms: str, tiny_twin: Path,
                                                               tmp_path: Path) -> None:
    outlines = tiny_twin / "outlines.geojson"
    assert main(["stats", tiny_cube_1ms, "--outline", str(outlines), "--out", str(tmp_path / "s.csv")]) == 0
    table, trend = pd.read_csv(tmp_path / "s.csv"), pd.read_csv(tmp_path / "s-trend.csv")
    assert (tmp_path / "s.png").stat().st_size > 10_000
    cube = open_store(tiny_cube_1ms).load()
    thr = json.loads(cube.attrs["preprocess_spec"])["ndsi_threshold"]
    truth = xr.open_zarr(tiny_twin / "truth.zarr")
    ix = np.searchsorted(truth["x"].values, cube["x"].values)
    iy = np.searchsorted(-truth["y"].values, -cube["y"].values)
    assert np.allclose(truth["x"].values[ix], cube["x"].values) and np.allclose(truth["y"].values[iy], cube["y"].values)
    acq = pd.DatetimeIndex(truth["time"].values).to_period("M").start_time
    clean = truth["ndsi"].values[:, iy][:, :, ix]
    ids = [f["properties"]["rgi_id"] for f in json.loads(outlines.read_text())["features"]]
    assert list(trend["rgi_id"]) == ids and len(table) == len(ids) * cube.sizes["time"]
    for gid, mask in zip(ids, _outline_masks(outlines, cube), strict=True):
        rows = table[table["rgi_id"] == gid]
        # independent: the count of pixels at or above the threshold inside the shapely outline x 30 m x 30 m
        ref = ((cube["ndsi"].values >= thr) & mask).sum((1, 2)) * 900 / 1e6
        np.testing.assert_allclose(rows["snow_area_km2"].values, ref, atol=1e-5)  # CSV keeps 6 digits
        np.testing.assert_allclose(rows["snow_fraction"].values, ref / (mask.sum() * 900 / 1e6), atol=1e-5)
        assert int(trend.loc[trend["rgi_id"] == gid, "outline_pixels"].iloc[0]) == mask.sum()
        # truth: the clean NDSI of every acquisition of the month, averaged, thresholded the same way, as a fraction
        # of the outline. Measured on the 1MS tiny twin: median |diff| 0.018 (main) and 0.001 (tributary); 23 of 24
        # months within 0.07; June 2020 off by 0.14 and 0.52 (one partly clouded scene in the month: the cube's
        # gap-fill, not the statistic). Bounds leave room for a harder world
        diffs = []
        for period, area in zip(pd.DatetimeIndex(cube["time"].values), rows["snow_area_km2"].values, strict=True):
            if (acq == period).any() and not bool(cube["interpolated"].sel(time=period)):
                want = ((clean[acq == period].mean(0) >= thr) & mask).sum() * 900 / 1e6
                diffs.append((area - want) / (mask.sum() * 900 / 1e6))
        diffs = np.abs(np.array(diffs))
        assert len(diffs) >= 20 and np.median(diffs) <= 0.04 and (diffs > 0.1).mean() <= 0.1, (gid, diffs.round(3))


def test_stats_netcdf_is_cf_and_keeps_the_trend(tiny_cube_1ms: str, tiny_twin: Path, tmp_path: Path) -> None:
    ds = glacier_stats(tiny_cube_1ms, tiny_twin / "outlines.geojson")
    out = tmp_path / "s.nc"
    assert main(["stats", tiny_cube_1ms, "--outline", str(tiny_twin / "outlines.geojson"), "--out", str(out)]) == 0
    back = xr.open_dataset(out)
    assert back.attrs["featureType"] == "timeSeries" and back["glacier"].attrs["cf_role"] == "timeseries_id"
    assert back["snow_area_trend"].attrs["units"] == "km2 yr-1"
    np.testing.assert_allclose(back["snow_area_km2"].values, ds["snow_area_km2"].values)
    # 12 monthly seasons x 2 years: one same-season slope each where both are observed
    assert (ds["trend_periods"].values >= 20).all() and np.isfinite(ds["snow_area_trend"].values).all()


def test_stats_bad_outline_is_one_line(tiny_cube_1ms: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    far = {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {"rgi_id": "X"},
           "geometry": {"type": "Polygon", "coordinates": [[[10, 46], [10.01, 46], [10.01, 46.01], [10, 46]]]}}]}
    (tmp_path / "far.geojson").write_text(json.dumps(far))
    assert main(["stats", tiny_cube_1ms, "--outline", str(tmp_path / "far.geojson")]) == 2
    assert "no outline covers a pixel of the cube" in capsys.readouterr().err
    (tmp_path / "points.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    assert main(["stats", tiny_cube_1ms, "--outline", str(tmp_path / "points.geojson")]) == 2
    assert "holds no polygon features" in capsys.readouterr().err


def test_seasonal_sen_equals_scipy_on_one_season() -> None:
    rng = np.random.default_rng(3)
    t = np.arange(14) + 2010.0
    x = np.round(-0.4 * t + rng.normal(0, 2, t.size), 1)  # rounded: ties, which the variance corrects for
    got, ref = seasonal_sen(t, x, np.zeros(t.size)), scipy.stats.theilslopes(x, t)
    assert (got.slope, got.low, got.high) == pytest.approx((ref.slope, ref.low_slope, ref.high_slope), rel=1e-12)


def test_seasonal_sen_is_not_tilted_by_the_annual_cycle() -> None:
    """Quarterly areas = a large annual cycle + -0.05 km2/yr + noise, the record starting in summer and ending in
    winter: OLS on every period is tilted by where the cycle sits at the ends; the seasonal slope is not."""
    times = pd.date_range("2013-07-01", "2021-01-01", freq="3MS")
    t = decimal_years(times)
    assert np.allclose(np.diff(t[::4]), 1.0)  # the same season of consecutive years: exactly 1 year apart
    cycle = {1: 0.9, 4: 0.6, 7: -1.2, 10: -0.3}
    rng = np.random.default_rng(0)
    x = 10 + np.array([cycle[m] for m in times.month]) - 0.05 * (t - t[0]) + rng.normal(0, 0.02, t.size)
    tr = seasonal_sen(t, x, times.month.values)
    assert tr.low < -0.05 < tr.high and abs(tr.slope + 0.05) < 0.01
    assert tr.high - tr.low < 0.03
    ols = np.polyfit(t, x, 1)[0]
    assert abs(ols + 0.05) > 0.02  # what the estimator avoids: OLS is off by more than the interval is wide
    x_exact = 10 + np.array([cycle[m] for m in times.month]) - 0.05 * (t - t[0])
    assert seasonal_sen(t, x_exact, times.month.values).slope == pytest.approx(-0.05, abs=1e-12)
