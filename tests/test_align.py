"""Tests for glacierflow.preprocess.align: ECC shifts against known truth, sign convention, failures, laziness."""

from __future__ import annotations

import threading

import cv2
import dask
import dask.array as dsa
import numpy as np
import pandas as pd
import pytest
import scipy.ndimage as ndi
import xarray as xr

from glacierflow.errors import GlacierflowError
from glacierflow.preprocess.align import align, align_scene, reference_image
from glacierflow.testing import raise_if_computes

SIZE = 128


def textured(seed: int = 0, size: int = SIZE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = ndi.gaussian_filter(rng.normal(size=(size, size)), 3.0)
    return ((img - img.mean()) / img.std() * 0.2 + 0.5).astype(np.float32)


def shifted(img: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """out[r, c] = img[r - dy, c - dx]: content moved dx columns right and dy rows down."""
    return ndi.shift(img.astype(np.float64), (dy, dx), order=3, mode="nearest").astype(np.float32)


def cube_of(scenes: list[np.ndarray]) -> xr.DataArray:
    n, (ny, nx) = len(scenes), scenes[0].shape
    return xr.DataArray(
        np.stack(scenes),
        dims=("time", "y", "x"),
        coords={
            "time": pd.date_range("2020-01-01", periods=n, freq="16D"),
            "y": 3_000_000.0 - 30.0 * np.arange(ny),
            "x": 500_000.0 + 30.0 * np.arange(nx),
            "id": ("time", [f"LC08_{i}" for i in range(n)]),
            "spatial_ref": 0,
        },
        name="ndsi",
    )


def ref_da(img: np.ndarray, like: xr.DataArray) -> xr.DataArray:
    return xr.DataArray(img, dims=("y", "x"), coords={"y": like.y, "x": like.x}, name="reference")


SHIFTS = [(0.3, -0.7), (-1.2, 0.45), (0.0, 0.0), (2.5, 1.75), (-0.05, 0.9)]


def test_translation_recovers_known_subpixel_shifts_lazily():
    ref = textured(0)
    da = cube_of([shifted(ref, dy, dx) for dy, dx in SHIFTS]).chunk({"time": 2})
    with raise_if_computes():
        aligned, diag = align(da, ref_da(ref, da))
        assert isinstance(aligned.data, dsa.Array)
        assert all(isinstance(diag[k].data, dsa.Array) for k in ("shift_x", "shift_y", "ecc", "aligned"))
    assert aligned.chunks[0] == (1,) * len(SHIFTS), "one scene per task"
    aligned, diag = dask.compute(aligned, diag, scheduler="sync")
    assert aligned.dims == ("time", "y", "x") and aligned.dtype == np.float32 and aligned.name == "ndsi"
    assert list(diag["id"].values) == list(da["id"].values)
    assert "x" not in diag.coords and diag["aligned"].dtype == bool
    assert diag["aligned"].values.all()
    np.testing.assert_allclose(diag["shift_x"].values, [dx for _, dx in SHIFTS], atol=0.05)
    np.testing.assert_allclose(diag["shift_y"].values, [dy for dy, _ in SHIFTS], atol=0.05)
    assert (diag["ecc"].values > 0.99).all()
    # borders: a pixel is missing where its bilinear sample lies mostly outside the scene (weight < 0.5),
    # never a replicated edge; exact up to samples within 0.05 px of that boundary
    r, c = np.mgrid[0:SIZE, 0:SIZE]
    for k in range(len(SHIFTS)):
        px, py = c + diag["shift_x"].values[k], r + diag["shift_y"].values[k]
        expect = (px >= SIZE - 0.5) | (px <= -0.5) | (py >= SIZE - 0.5) | (py <= -0.5)
        near = np.minimum.reduce([abs(px - SIZE + 0.5), abs(px + 0.5), abs(py - SIZE + 0.5), abs(py + 0.5)]) < 0.05
        got = np.isnan(aligned.values[k])
        assert (got == expect)[~near].all(), k
    assert np.isnan(aligned.values[3, -3:, :]).all(), "2.5 rows brought in from outside are missing"
    inner = (slice(None), slice(8, -8), slice(8, -8))
    err_after = np.abs(aligned.values[inner] - ref[inner[1:]]).max(axis=(1, 2))
    err_before = np.abs(da.values[inner] - ref[inner[1:]]).max(axis=(1, 2))
    assert (err_after < 0.02).all()
    assert (err_after[[0, 1, 3, 4]] < err_before[[0, 1, 3, 4]] / 4).all()


@pytest.mark.parametrize("axis", ["x", "y"])
def test_sign_convention_each_axis_integer_shift(axis):
    """scene[r, c] = reference[r - sy, c - sx] built by slicing, independent of scipy."""
    big = textured(1, SIZE + 20)
    sy, sx = (0, 3) if axis == "x" else (-4, 0)
    ref = big[10 : 10 + SIZE, 10 : 10 + SIZE]
    scene = big[10 - sy : 10 - sy + SIZE, 10 - sx : 10 - sx + SIZE]
    r, c = 50, 60
    assert scene[r, c] == ref[r - sy, c - sx]
    _, shift_x, shift_y, ecc, ok = align_scene(scene, ref)
    assert ok and ecc > 0.99
    assert shift_x == pytest.approx(sx, abs=0.05)
    assert shift_y == pytest.approx(sy, abs=0.05)


@pytest.mark.parametrize("motion", ["euclidean", "affine", "homography"])
def test_other_motions_recover_translation(motion):
    ref = textured(2)
    scene = shifted(ref, 0.6, -1.1)
    out, shift_x, shift_y, ecc, ok = align_scene(scene, ref, motion=motion)
    assert ok and ecc > 0.99
    assert shift_x == pytest.approx(-1.1, abs=0.05)
    assert shift_y == pytest.approx(0.6, abs=0.05)
    assert np.abs(out[8:-8, 8:-8] - ref[8:-8, 8:-8]).max() < 0.03


def test_euclidean_reports_displacement_at_centre():
    ref = textured(3)
    h, w = ref.shape
    centre = np.array([(w - 1) / 2, (h - 1) / 2])
    angle, t = np.deg2rad(1.5), np.array([0.8, -0.4])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    forward = np.hstack([rot, (centre + t - rot @ centre)[:, None]])  # reference pixel -> scene pixel
    scene = cv2.warpAffine(ref, forward, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    _, shift_x, shift_y, ecc, ok = align_scene(scene, ref, motion="euclidean")
    assert ok and ecc > 0.98
    assert shift_x == pytest.approx(0.8, abs=0.05)
    assert shift_y == pytest.approx(-0.4, abs=0.05)


def test_failures_leave_scene_unaligned_without_exception():
    ref = textured(4)
    rng = np.random.default_rng(9)
    noise = rng.normal(size=ref.shape).astype(np.float32)
    constant = np.full_like(ref, 0.4)
    empty = np.full_like(ref, np.nan)
    good = shifted(ref, 0.5, 0.5)
    da = cube_of([noise, constant, empty, good]).chunk({"time": 1})
    aligned, diag = dask.compute(*align(da, ref_da(ref, da)), scheduler="sync")
    np.testing.assert_array_equal(diag["aligned"].values, [False, False, False, True])
    assert np.isnan(diag["shift_x"].values[:3]).all() and np.isnan(diag["shift_y"].values[:3]).all()
    assert diag["ecc"].values[0] < 0.3 or np.isnan(diag["ecc"].values[0])
    np.testing.assert_array_equal(aligned.values[0], noise)
    np.testing.assert_array_equal(aligned.values[1], constant)
    assert np.isnan(aligned.values[2]).all()
    assert diag["shift_x"].values[3] == pytest.approx(0.5, abs=0.05)


def test_nan_holes_are_masked_and_stay_local():
    ref = textured(5)
    scene = shifted(ref, -0.8, 1.3)
    scene[40:60, 30:50] = np.nan
    out, shift_x, shift_y, _, ok = align_scene(scene, ref)
    assert ok
    assert shift_x == pytest.approx(1.3, abs=0.05) and shift_y == pytest.approx(-0.8, abs=0.05)
    # the 20x20 hole moves with the scene; plus the first row and last column (sampled from outside)
    assert np.isnan(out[1:, :-1]).sum() == pytest.approx(400, abs=45)
    assert np.isnan(out[0]).all() and np.isnan(out[:, -1]).all()
    assert np.isnan(out[35:65, 25:55]).any() and np.isfinite(out[1:30, :-1]).all() and np.isfinite(out[70:, :-1]).all()


def test_numpy_and_dask_give_identical_results():
    ref = textured(6)
    da = cube_of([shifted(ref, dy, dx) for dy, dx in SHIFTS[:3]])
    a_np, d_np = align(da, ref_da(ref, da), motion="affine")
    assert not isinstance(a_np.data, dsa.Array)
    lazy = align(da.chunk({"time": 3}), ref_da(ref, da), motion="affine")
    a_dk, d_dk = dask.compute(*lazy, scheduler="sync")
    xr.testing.assert_identical(a_np, a_dk)
    xr.testing.assert_identical(d_np, d_dk)


def test_reference_image_is_nanmean_then_median3():
    rng = np.random.default_rng(7)
    data = rng.uniform(0, 1, (4, 30, 26)).astype(np.float32)
    data[0, 5, 5] = np.nan
    data[:, 10, 12] = np.nan  # NaN in every scene: stays NaN
    da = cube_of(list(data))
    with raise_if_computes():
        lazy = reference_image(da.chunk({"time": 1, "y": 10}))
    assert lazy.dims == ("y", "x") and lazy.dtype == np.float32
    got = lazy.compute(scheduler="sync").values
    eager = reference_image(da).values
    np.testing.assert_array_equal(got, eager)
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        mean = np.nanmean(data.astype(np.float64), axis=0).astype(np.float32)
    expected = ndi.median_filter(mean, size=3, mode="nearest")
    assert np.isnan(got[10, 12])
    ok = np.ones(got.shape, bool)
    ok[9:12, 11:14] = False  # the window touching the all-NaN pixel
    np.testing.assert_allclose(got[ok], expected[ok], rtol=1e-6)


def test_reference_computed_once_for_all_scenes():
    ref = textured(8)
    da = cube_of([shifted(ref, dy, dx) for dy, dx in SHIFTS]).chunk({"time": 1})
    calls = []
    lock = threading.Lock()

    def counted(block):
        with lock:
            calls.append(1)
        return block

    lazy_ref = xr.apply_ufunc(
        counted, ref_da(ref, da).chunk(), dask="parallelized", output_dtypes=[np.float32]
    )
    with raise_if_computes():
        aligned, diag = align(da, lazy_ref)
    aligned, diag = dask.compute(aligned, diag, scheduler="threads")
    assert len(calls) == 1
    assert diag["aligned"].values.all()


def test_bad_arguments_name_the_value():
    ref = textured(0, 16)
    da = cube_of([ref])
    with pytest.raises(GlacierflowError, match="rotation"):
        align(da, ref_da(ref, da), motion="rotation")
    with pytest.raises(GlacierflowError, match="reference"):
        align(da, ref_da(ref, da).isel(x=slice(0, 8)))


def test_full_chain_builds_without_computing():
    from glacierflow.preprocess.periods import resample
    from glacierflow.preprocess.qa import mask_invalid, ndsi, snow_mask

    ref = textured(10, 64)
    green = 0.5 + 0.25 * (np.stack([shifted(ref, dy, dx) for dy, dx in SHIFTS]) - 0.5)  # > 0.2
    swir = np.full_like(green, 0.1)
    qa = np.zeros_like(green)
    qa[1, 10:20, 10:20] = 1 << 3  # a cloud: masked, and filled in the period mean only
    base = cube_of(list(green))
    cube = xr.concat(
        [base.copy(data=green), base.copy(data=swir), base.copy(data=qa)],
        dim=pd.Index(["green", "swir16", "qa_pixel"], name="band"),
    ).transpose("time", "band", "y", "x").chunk({"time": 1})
    with raise_if_computes():
        index = ndsi(mask_invalid(cube))
        aligned, diag = align(index, reference_image(index))
        ds = resample(snow_mask(aligned), "3MS")
    ds, diag = dask.compute(ds, diag, scheduler="sync")
    assert diag["aligned"].values.all()
    # The reference is the mean of the shifted scenes: shifts are known up to a common offset.
    for key, true in (("shift_x", [dx for _, dx in SHIFTS]), ("shift_y", [dy for dy, _ in SHIFTS])):
        got = diag[key].values
        np.testing.assert_allclose(got - got.mean(), np.subtract(true, np.mean(true)), atol=0.05)
    assert np.isfinite(ds["ndsi"].values).all()


def test_guide_highpass_is_normalised_convolution_without_halo():
    from glacierflow.preprocess.align import highpass_filter

    rng = np.random.default_rng(11)
    y, x = np.mgrid[0:96, 0:96]
    texture = 0.05 * ndi.gaussian_filter(rng.normal(size=(96, 96)), 1.5)
    full = (np.where(x < 64, 0.8, 0.2) + texture).astype(np.float32)  # bright snow field, dark rock
    img = full.copy()
    img[30:60, 10:40] = np.nan  # a cloud over the snow
    sigma = 6.0
    got = highpass_filter(img[None], sigma)[0]
    # independent reference: scipy's Gaussian (same +-4 sigma support) as a normalised convolution
    valid = np.isfinite(img)
    num = ndi.gaussian_filter(np.where(valid, img, 0.0).astype(np.float64), sigma, mode="constant", truncate=4.0)
    den = ndi.gaussian_filter(valid.astype(np.float64), sigma, mode="constant", truncate=4.0)
    expect = np.where(valid, img - num / den, np.nan)
    np.testing.assert_array_equal(np.isnan(got), ~valid)
    np.testing.assert_allclose(got[valid], expect[valid], atol=2e-4)  # float32 blur vs float64: 1e-5 measured
    # against the guide of the cloud-free image: the mean-filled guide of the first version has a halo
    # along the cloud edge (the fill is darker than the snow) that ECC would lock onto; this one does not
    clean = full - cv2.GaussianBlur(full, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    filled = np.where(valid, img, img[valid].mean()).astype(np.float32)
    old = np.where(valid, filled - cv2.GaussianBlur(filled, (0, 0), sigma, borderType=cv2.BORDER_REFLECT), np.nan)
    rim = valid & ndi.binary_dilation(~valid, iterations=3)
    err_new, err_old = np.mean(np.abs(got - clean)[rim]), np.mean(np.abs(old - clean)[rim])
    assert err_new < 0.25 * err_old, (err_new, err_old)  # measured 0.0008 vs 0.074


def test_co_register_two_passes_and_fresh_reads():
    from glacierflow.preprocess.align import co_register

    ref = textured(12)
    shifts = [(0.6, -1.1), (-0.9, 0.4), (1.5, 1.2), (-0.3, -0.8), (0.2, 0.9), (-1.4, -0.2)]
    scenes = [shifted(ref, dy, dx) for dy, dx in shifts]
    scenes[2][:, :50] = np.nan  # a partial footprint
    rng = np.random.default_rng(3)
    noise = rng.normal(size=ref.shape).astype(np.float32)
    da = cube_of([*scenes, noise]).chunk({"time": 1})
    calls = []

    def source() -> xr.Dataset:
        calls.append(1)
        return xr.Dataset({"guide": da, "ndsi": da * 2})

    with raise_if_computes():
        out = co_register(source)
    assert len(calls) == 3, "reference, pass 1 and pass 2 each read their own copy"
    out = out.compute(scheduler="threads")
    ok = out["aligned"].values
    np.testing.assert_array_equal(ok, [True] * 6 + [False])
    assert np.isnan(out["shift_x"].values[6])
    for key, true in (("shift_x", [dx for _, dx in shifts]), ("shift_y", [dy for dy, _ in shifts])):
        got = out[key].values[:6]
        # the reference is the mean of the (aligned) scenes: shifts are known up to a common offset
        np.testing.assert_allclose(got - got.mean(), np.subtract(true, np.mean(true)), atol=0.05)
    np.testing.assert_allclose(out["ndsi"].values[:6], 2 * out["guide"].values[:6], equal_nan=True)
    assert np.isnan(out["ndsi"].values[2][:, :48]).all(), "the partial footprint stays missing"


def test_guide_band_from_the_raw_cube_under_the_masked_bands_mask_and_wallis():
    """--guide-band red reads the stacked red under the green/swir16 mask; grey is the research mix; Wallis
    gives unit local contrast in bright and dark halves alike."""
    from glacierflow.preprocess.align import alignment_image

    rng = np.random.default_rng(0)
    shape = (2, 3, 40, 40)
    raw = xr.DataArray(rng.uniform(0.1, 0.5, shape).astype(np.float32), dims=("time", "band", "y", "x"),
                       coords={"band": ["green", "swir16", "red"]})
    masked = raw.sel(band=["green", "swir16"]).copy()
    masked[0, :, :5, :] = np.nan  # not observed
    red = alignment_image(masked, band="red", raw=raw)
    assert np.isnan(red.values[0, :5]).all() and np.array_equal(red.values[1], raw.sel(band="red").values[1])
    grey = alignment_image(masked, band="grey")
    np.testing.assert_allclose(grey.values[1], 0.114 * raw.values[1, 0] + 0.886 * raw.values[1, 1], rtol=1e-6)
    with pytest.raises(GlacierflowError, match="no 'nir08' band"):
        alignment_image(masked, band="nir08", raw=raw)
    contrast = raw.copy()
    contrast[:, 2, :, 20:] *= 10  # a bright half: ten times the texture
    w = alignment_image(masked, 3.0, band="red", raw=contrast, wallis=True).values[1]
    left, right = np.std(w[8:-8, 2:8]), np.std(w[8:-8, 30:38])  # a window (3 sigma) away from the edge
    assert 0.7 < left / right < 1.4  # measured ~1.0; a plain high-pass: ~0.1


def test_fused_static_mask_is_static_ground_and_unbiases_ecc_on_moving_ice():
    """build-cube's ECC pass-2 mask (``fused.static_mask`` from tree-reduced sums) equals ``static_ground``
    (the lazy xarray path of ``co_register``), lies on the moving ice, and removes the ice's pull on ECC.

    World: static ground texture with a band of ice whose own texture flows 2 px per scene; every scene is
    then shifted by the same known translation. Measured: shift RMS error 0.137 px on all pixels (the ice
    pulls each scene's x by -0.2..+0.2 px), 0.023 px with the mask; about 80 % of the excluded pixels are ice.
    """
    from glacierflow.preprocess import fused
    from glacierflow.preprocess.align import centre_shift, find_warp, static_ground

    ground = textured(21)
    ice = np.zeros(ground.shape, bool)
    ice[48:64, :] = True
    scenes = [np.where(ice, shifted(textured(22), 0, 2.0 * k), ground).astype(np.float32) for k in range(8)]
    scenes[3][:, :20] = np.nan  # a partial footprint
    ref = fused.reference(fused._partial(scenes))
    mask = fused.static_mask(fused._partial([(s - ref) ** 2 for s in scenes]), ref)
    da = cube_of(scenes)
    np.testing.assert_array_equal(mask, static_ground(da, ref_da(ref, da)).values)
    excluded = ~mask & np.isfinite(ref)
    assert excluded[ice].sum() > 0.7 * excluded.sum(), "the pixels left out are mostly the moving ice"
    rms = {}
    for name, m in (("all", None), ("static", mask)):
        err = []
        for img in scenes:
            moved = shifted(np.nan_to_num(img), 0.4, -0.7)
            moved[shifted(np.isnan(img).astype(np.float32), 0.4, -0.7) > 0.01] = np.nan
            w, _, ok = find_warp(moved if m is None else np.where(m, moved, np.nan), ref)
            sx, sy = centre_shift(w, img.shape)
            assert ok
            err.append(np.hypot(sx + 0.7, sy - 0.4))
        rms[name] = float(np.sqrt(np.mean(np.square(err))))
    assert rms["static"] < 0.05 < 0.1 < rms["all"], rms
