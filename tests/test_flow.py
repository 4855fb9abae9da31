"""Tests for glacierflow.flow: units, signs, masking, laziness, the store and the flow figure.

Accuracy against the offline twin's true velocity field: tests/test_flow_truth.py.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy import ndimage

from glacierflow import GlacierflowError, store
from glacierflow.config import CubeSpec, PreprocessSpec
from glacierflow.flow import (
    FlowSpec,
    farneback_pixels,
    pair_indices,
    run_flow,
    to_flow_image,
    velocity,
    write_velocity,
)
from glacierflow.testing import raise_if_computes, spec_attrs, synthetic_cube

PIXEL = 30.0
EPSG = 32643  # UTM 43N (Parvati)


def _texture(n: int, seed: int = 0, sigma: float = 3.0, pad: int = 40) -> np.ndarray:
    """Smooth random field in [0, 1], larger than the scene by ``pad`` on each side."""
    rng = np.random.default_rng(seed)
    f = ndimage.gaussian_filter(rng.standard_normal((n + 2 * pad, n + 2 * pad)), sigma)
    return (f - f.min()) / (f.max() - f.min())


def _snow(a: np.ndarray) -> np.ndarray:
    """Paper's snow mask: NDSI where >= 0.3 else 0."""
    nd = a * 1.1 - 0.1  # in [-0.1, 1.0]
    return np.where(nd >= 0.3, nd, 0.0).astype(np.float32)


def _moved(field: np.ndarray, n: int, cols: np.ndarray | float, rows: np.ndarray | float, pad: int = 40):
    """Scene ``n`` x ``n`` whose content sits ``cols`` columns right and ``rows`` rows down of ``field``."""
    r, c = np.mgrid[0:n, 0:n].astype(np.float64)
    return ndimage.map_coordinates(field, [r + pad - rows, c + pad - cols], order=3, mode="nearest")


def make_cube(
    frames: list[np.ndarray], times: list[str], interpolated: list[bool] | None = None
) -> xr.Dataset:
    """A cube store dataset following the contract (ndsi, n_scenes, interpolated, spatial_ref)."""
    ny, nx = frames[0].shape
    x = 600_000.0 + PIXEL / 2 + PIXEL * np.arange(nx)
    y = 3_550_000.0 - PIXEL / 2 - PIXEL * np.arange(ny)
    crs_wkt = f'PROJCS["WGS 84 / UTM zone 43N",AUTHORITY["EPSG","{EPSG}"]]'
    spatial_ref = xr.DataArray(
        0,
        attrs={"crs_wkt": crs_wkt, "spatial_ref": crs_wkt, "epsg": EPSG,
               "grid_mapping_name": "transverse_mercator"},
    )
    ds = xr.Dataset(
        {
            "ndsi": (("time", "y", "x"), np.stack(frames).astype(np.float32),
                     {"grid_mapping": "spatial_ref"}),
            "n_scenes": ("time", np.full(len(frames), 2, dtype=np.int16)),
            "interpolated": ("time", np.asarray(interpolated or [False] * len(frames))),
        },
        coords={"time": pd.DatetimeIndex(times), "y": y, "x": x, "spatial_ref": spatial_ref},
        attrs=spec_attrs(times, "3MS", epsg=EPSG),
    )
    return ds


def write_cube(tmp_path, ds: xr.Dataset, name: str = "cube.zarr") -> str:
    """Write a synthetic cube as build-cube does: through store.write_store (completion marker)."""
    return store.write_store(ds.chunk({"time": 1}), str(tmp_path / name))


def _interior(a: np.ndarray, m: int = 20) -> np.ndarray:
    return a[..., m:-m, m:-m]


# ---------------------------------------------------------------- spec and pairs


def test_pair_indices_consecutive_and_annual():
    times = pd.date_range("2019-01-01", periods=9, freq="3MS")  # quarterly, Jan 2019 .. Jan 2021
    assert pair_indices(times, "consecutive") == [(i, i + 1) for i in range(8)]
    annual = pair_indices(times, "annual")
    assert annual == [(0, 4), (1, 5), (2, 6), (3, 7), (4, 8)]
    for i, j in annual:
        assert times[j].month == times[i].month and times[j].year == times[i].year + 1
    assert pair_indices(times[:4], "annual") == []


# ---------------------------------------------------------------- units, signs, scaling trap


@pytest.mark.parametrize(
    ("cols", "rows", "u_true", "v_true"),
    [(2.0, 0.0, 60.0, 0.0), (0.0, -2.0, 0.0, 60.0), (-1.5, 1.0, -45.0, -30.0)],
    ids=["east", "north", "west-south"],
)
def test_uniform_translation_units_and_signs(cols, rows, u_true, v_true):
    n = 96
    field = _texture(n, seed=1)
    frames = [_snow(_moved(field, n, 0.0, 0.0)), _snow(_moved(field, n, cols, rows))]
    cube = make_cube(frames, ["2019-01-01", "2020-01-01"])  # 365 days apart
    out = velocity(cube, FlowSpec()).compute()
    dt_years = 365.0 / 365.25
    u = _interior(out["u"].values[0])
    v = _interior(out["v"].values[0])
    assert np.nanmedian(u) == pytest.approx(u_true / dt_years, rel=0.1, abs=3.0)
    assert np.nanmedian(v) == pytest.approx(v_true / dt_years, rel=0.1, abs=3.0)
    speed = _interior(out["speed"].values[0])
    assert np.nanmedian(speed) == pytest.approx(np.hypot(u_true, v_true) / dt_years, rel=0.1)
    assert out["dt_days"].values[0] == 365.0
    assert out["time"].values[0] == np.datetime64("2019-07-02T12:00")  # midpoint
    assert out["u"].dtype == np.float32


def test_real_time_between_periods_sets_speed():
    """The same 2 px shift over 182 days is twice as fast as over 365 days."""
    n = 96
    field = _texture(n, seed=2)
    frames = [_snow(_moved(field, n, 0, 0)), _snow(_moved(field, n, 2.0, 0)), _snow(_moved(field, n, 4.0, 0))]
    cube = make_cube(frames, ["2020-01-01", "2020-07-01", "2021-07-01"])  # 182 then 365 days
    out = velocity(cube).compute()
    np.testing.assert_array_equal(out["dt_days"].values, [182.0, 365.0])
    med = [np.nanmedian(_interior(out["u"].values[k])) for k in range(2)]
    assert med[0] == pytest.approx(60.0 * 365.25 / 182.0, rel=0.1)
    assert med[1] == pytest.approx(60.0 * 365.25 / 365.0, rel=0.1)


def test_unit_interval_float_is_scaled_before_farneback():
    import cv2

    n = 96
    field = _texture(n, seed=3)
    a, b = _snow(_moved(field, n, 0, 0)), _snow(_moved(field, n, 2.0, 0))
    assert 0.0 <= a.min() and a.max() <= 1.0
    # The trap, measured: raw [0, 1] float32 frames give (near) zero flow.
    raw = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 6, 15, 10, 5, 1.1, 0)
    assert np.abs(raw).max() < 0.05
    img = to_flow_image(np.array([[np.nan, -0.2, 0.5, 1.0, 1.3]], dtype=np.float32))
    np.testing.assert_allclose(img, [[0.0, 0.0, 127.5, 255.0, 255.0]])
    assert img.dtype == np.float32
    flow = farneback_pixels(a, b, FlowSpec())
    assert np.nanmedian(_interior(flow[0])) == pytest.approx(2.0, rel=0.1)


# ---------------------------------------------------------------- masking


def test_no_snow_region_is_nan_not_zero():
    n = 128
    field = _texture(n, seed=4)
    frames = [_snow(_moved(field, n, 0, 0)), _snow(_moved(field, n, 1.0, 0))]
    for f in frames:
        f[:, 80:] = 0.0  # bare ground on the right: no texture in either frame
        f[:40, :40] = np.nan  # nodata corner
    out = velocity(make_cube(frames, ["2019-01-01", "2020-01-01"])).compute()
    u = out["u"].values[0]
    assert np.isnan(u[:, 100:]).all()
    assert np.isnan(u[:40, :40]).all()
    textured = u[50:110, 20:60]
    assert np.isfinite(textured).mean() > 0.9
    assert np.nanmedian(textured) == pytest.approx(30.0, rel=0.1)


def test_interpolated_period_gives_all_nan_pair():
    n = 64
    field = _texture(n, seed=5)
    frames = [_snow(_moved(field, n, k, 0)) for k in range(3)]
    cube = make_cube(frames, ["2019-01-01", "2019-04-01", "2019-07-01"], interpolated=[False, False, True])
    out = velocity(cube).compute()
    np.testing.assert_array_equal(out["interpolated"].values, [False, True])
    assert np.isfinite(out["u"].values[0]).any()
    assert np.isnan(out["u"].values[1]).all()


# ---------------------------------------------------------------- spatially varying field


def test_glacier_band_moving_rest_still():
    """A 'glacier' band moving ~1.5 px/period downstream while the valley sides stay put."""
    n, pad = 160, 40
    field = _texture(n, seed=6, pad=pad)
    rows = np.arange(n)[:, None] * np.ones((1, n))
    band = (rows >= 55) & (rows < 105)
    # smooth velocity profile across the band (faster in the centre), east-ward
    profile = np.clip(1.0 - ((rows - 80) / 25.0) ** 2, 0, None)
    cols_shift = 1.5 * profile * band
    times = ["2019-01-01", "2019-04-01"]
    frames = [_snow(_moved(field, n, 0, 0, pad)), _snow(_moved(field, n, cols_shift, 0.0, pad))]
    out = velocity(make_cube(frames, times)).compute()
    dt_years = out["dt_days"].values[0] / 365.25
    true_u = cols_shift * PIXEL / dt_years
    speed = out["speed"].values[0]
    inner = np.zeros_like(band)
    inner[:, 20:-20] = True
    moving = inner & (true_u > 0.5 * true_u.max())
    err = np.abs(speed[moving] - true_u[moving]) / true_u[moving]
    assert np.nanmedian(err) < 0.2
    still = inner & ((rows < 40) | (rows >= 120))
    assert np.nanmedian(speed[still]) < 0.05 * true_u.max()
    assert np.isfinite(speed[moving]).mean() > 0.9


# ---------------------------------------------------------------- laziness, store, errors


def test_velocity_is_lazy_on_an_opened_store(tmp_path):
    n = 64
    field = _texture(n, seed=7)
    frames = [_snow(_moved(field, n, k, 0)) for k in range(4)]
    url = write_cube(tmp_path, make_cube(frames, ["2019-01-01", "2019-04-01", "2019-07-01", "2019-10-01"]))
    cube = xr.open_zarr(url, decode_coords="all", consolidated=False)
    with raise_if_computes():
        out = velocity(cube, FlowSpec())
        with pytest.raises(AssertionError, match="lazy"):
            out["u"].compute()
    assert out["u"].shape == (3, n, n)
    assert out["u"].data.npartitions == 3  # one pair per chunk
    assert "spatial_ref" in out.coords


def test_flow_reads_the_cube_spec_back(tmp_path):
    # a cube built with 6-month periods and threshold 0.4: flow reads both from the store, records them
    cube = synthetic_cube(n_periods=3, size=48, period="6MS", threshold=0.4, drift=(1.0, 0.0))
    url = write_cube(tmp_path, cube)
    summary = run_flow(url, str(tmp_path / "v.zarr"), FlowSpec(max_fb_error=0.0))
    assert summary["period"] == "6MS"
    vel = xr.open_zarr(str(tmp_path / "v.zarr"), consolidated=False)
    assert PreprocessSpec.from_json(vel.attrs["preprocess_spec"]) == PreprocessSpec(period="6MS", ndsi_threshold=0.4)
    assert CubeSpec.from_json(vel.attrs["cube_spec"]).epsg == 32643
    assert FlowSpec.from_json(vel.attrs["flow_spec"]) == FlowSpec(max_fb_error=0.0)
    bare = cube.copy()
    bare.attrs = {}
    bare_url = write_cube(tmp_path, bare, "bare.zarr")
    with pytest.raises(GlacierflowError, match="has no cube_spec attribute"):
        run_flow(bare_url, str(tmp_path / "v2.zarr"))


def test_writer_refuses_overwrite_and_store_opens(tmp_path):
    n = 64
    field = _texture(n, seed=8)
    frames = [_snow(_moved(field, n, k * 1.0, 0)) for k in range(3)]
    cube_url = write_cube(tmp_path, make_cube(frames, ["2019-01-01", "2019-04-01", "2019-07-01"]))
    out_url = str(tmp_path / "velocity.zarr")
    summary = run_flow(cube_url, out_url, FlowSpec())
    assert summary["pairs"] == 2 and summary["pairs_interpolated"] == 0
    assert summary["median_speed_m_per_yr"] == pytest.approx(30.0 * 365.25 / 90.5, rel=0.15)
    with pytest.raises(GlacierflowError, match="--overwrite"):
        run_flow(cube_url, out_url, FlowSpec())
    ds = xr.open_zarr(out_url, decode_coords="all", consolidated=False)
    assert {"u", "v", "speed"} <= set(ds.data_vars)
    assert "spatial_ref" in ds.coords
    assert ds["spatial_ref"].attrs["epsg"] == EPSG
    assert FlowSpec.from_dict(__import__("json").loads(ds.attrs["flow_spec"])) == FlowSpec()
    assert ds.attrs["source_cube"] == cube_url and ds.attrs["glacierflow_version"]
    # overwrite replaces it with annual pairs ... which do not exist here -> clear error, old store intact
    with pytest.raises(GlacierflowError, match="no annual pairs"):
        run_flow(cube_url, out_url, FlowSpec(pairs="annual"), overwrite=True)
    assert xr.open_zarr(out_url, consolidated=False).sizes["time"] == 2
    assert store.is_complete(out_url)
    # no temporary (".velocity.zarr.partial-*") or replaced (".velocity.zarr.old-*") siblings left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cube.zarr", "velocity.zarr"]


def test_interrupted_write_keeps_previous_store(tmp_path):
    n = 48
    field = _texture(n, seed=9)
    frames = [_snow(_moved(field, n, k, 0)) for k in range(2)]
    cube = make_cube(frames, ["2019-01-01", "2019-04-01"])
    out_url = str(tmp_path / "velocity.zarr")
    write_velocity(velocity(cube), out_url)
    broken = velocity(cube)
    broken["u"] = broken["u"].copy(data=broken["u"].data.map_blocks(_boom, dtype=np.float32))
    with pytest.raises(RuntimeError, match="boom"):
        write_velocity(broken, out_url, overwrite=True)
    assert store.is_complete(out_url)
    ds = store.open_store(out_url)
    assert np.isfinite(ds["u"].values).any()
    # Only hidden siblings may remain: store.write_store removes its ".velocity.zarr.partial-*" temp
    # store on failure, but tasks still in flight on other threads can re-create files after that.
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["velocity.zarr"]


def _boom(block):
    raise RuntimeError("boom")


def test_cube_errors(tmp_path):
    with pytest.raises(GlacierflowError, match="not found"):
        run_flow(str(tmp_path / "missing.zarr"), str(tmp_path / "v.zarr"))
    # a Zarr store not written by glacierflow (no completion marker) is refused
    xr.Dataset({"foo": ("t", np.arange(3))}).to_zarr(str(tmp_path / "other.zarr"), consolidated=False)
    with pytest.raises(GlacierflowError, match="incomplete or not a glacierflow store"):
        run_flow(str(tmp_path / "other.zarr"), str(tmp_path / "v.zarr"))
    # a complete glacierflow store of another kind
    store.write_store(xr.Dataset({"foo": ("t", np.arange(3))}), str(tmp_path / "table.zarr"))
    with pytest.raises(GlacierflowError, match="lacks ndsi"):
        run_flow(str(tmp_path / "table.zarr"), str(tmp_path / "v.zarr"))
    one = make_cube([_snow(_texture(32)[:32, :32])], ["2019-01-01"])
    with pytest.raises(GlacierflowError, match="at least 2"):
        velocity(one)
    assert not (tmp_path / "v.zarr").exists()


def test_incomplete_cube_is_refused(tmp_path):
    """A cube whose writer died before the completion marker is not read."""
    n = 48
    field = _texture(n, seed=11)
    cube = make_cube([_snow(_moved(field, n, k, 0)) for k in range(2)], ["2019-01-01", "2019-04-01"])
    url = write_cube(tmp_path, cube)
    import zarr

    zarr.open_group(url, mode="r+").attrs[store.COMPLETE] = False
    with pytest.raises(GlacierflowError, match="incomplete"):
        run_flow(url, str(tmp_path / "v.zarr"))


# ---------------------------------------------------------------- figure


def test_plot_flow_writes_png_of_known_size(tmp_path):
    from PIL import Image

    from glacierflow.plots import FLOW_DPI, FLOW_FIGSIZE, plot_flow

    n = 96
    field = _texture(n, seed=10)
    frames = [_snow(_moved(field, n, 0, 0)), _snow(_moved(field, n, 1.0, -1.0))]
    cube_url = write_cube(tmp_path, make_cube(frames, ["2019-01-01", "2019-04-01"]))
    out_url = str(tmp_path / "velocity.zarr")
    run_flow(cube_url, out_url)
    png = tmp_path / "flow.png"
    result = plot_flow(out_url, None, png, time_index=0, step=16)
    assert result == png
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as im:
        assert im.size == (round(FLOW_FIGSIZE[0] * FLOW_DPI), round(FLOW_FIGSIZE[1] * FLOW_DPI))
    # with an explicit cube dataset and a Dataset input as well
    cube = xr.open_zarr(cube_url, decode_coords="all", consolidated=False)
    vel = xr.open_zarr(out_url, decode_coords="all", consolidated=False)
    plot_flow(vel, cube, tmp_path / "flow2.png")
    assert (tmp_path / "flow2.png").stat().st_size > 10_000
    with pytest.raises(GlacierflowError, match="time_index"):
        plot_flow(vel, cube, tmp_path / "flow3.png", time_index=5)
