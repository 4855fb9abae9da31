"""Tests for glacierflow.preprocess.gapfill: the 5x5 gap-fill against its per-pixel loop, termination, laziness."""

from __future__ import annotations

import dask.array as dsa
import numpy as np
import pytest
import scipy.ndimage as ndi
import xarray as xr

from glacierflow.errors import GlacierflowError
from glacierflow.preprocess.gapfill import GAP_FILL_WEIGHTS, gap_fill, gap_fill_2d
from glacierflow.testing import raise_if_computes


def reference_fill(image: np.ndarray) -> np.ndarray:
    """The paper's gap-fill, a per-pixel loop (research code `kernel`/`applyToImage`)."""
    w = np.outer([1, 2, 3, 2, 1], [1, 2, 3, 2, 1]).astype(np.float64)
    x = image.astype(np.float64)
    while np.isnan(x).any():
        padded = np.pad(x, 2, constant_values=np.nan)  # zero padding: invalid
        new = x.copy()
        for r, c in np.argwhere(np.isnan(x)):
            win = padded[r : r + 5, c : c + 5]
            m = np.isfinite(win)
            den = (w * m).sum()
            if den > 0:
                new[r, c] = (w * np.where(m, win, 0.0)).sum() / den
        x = new
    return x




def test_weights_are_the_papers():
    assert GAP_FILL_WEIGHTS.sum() == 81
    assert GAP_FILL_WEIGHTS[2, 2] == 9 and GAP_FILL_WEIGHTS[0, 0] == 1 and GAP_FILL_WEIGHTS[1, 2] == 6


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_gap_fill_matches_paper_loop(seed):
    rng = np.random.default_rng(seed)
    img = rng.normal(size=(31, 37)).astype(np.float32)
    holes = rng.random(img.shape) < 0.15
    holes |= ndi.binary_dilation(rng.random(img.shape) < 0.01, iterations=3)  # small blobs
    holes[:3, :4] = True  # a hole at the corner (zero padding matters there)
    img[holes] = np.nan
    expected = reference_fill(img)
    got, passes = gap_fill_2d(img)
    assert passes >= 2, "holes need several passes: the mask-not-updated rule is exercised"
    assert got.dtype == np.float32
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, rtol=2e-6, atol=2e-7)
    np.testing.assert_array_equal(got[~holes], img[~holes])


def test_gap_fill_first_pass_by_hand():
    img = np.arange(25, dtype=np.float32).reshape(5, 5)
    img[2, 2] = np.nan
    got, passes = gap_fill_2d(img)
    w = GAP_FILL_WEIGHTS.copy()
    w[2, 2] = 0
    expected = (w * np.nan_to_num(np.arange(25.0).reshape(5, 5))).sum() / w.sum()
    assert passes == 1
    assert got[2, 2] == pytest.approx(expected, rel=1e-6)


def test_gap_fill_partial_footprint_matches_loop_and_huge_hole_terminates():
    rng = np.random.default_rng(5)
    img = ndi.gaussian_filter(rng.normal(size=(24, 30)), 2).astype(np.float32)
    img[:, 12:] = np.nan  # half the scene outside the footprint: many passes
    np.testing.assert_allclose(gap_fill_2d(img)[0], reference_fill(img), rtol=2e-6, atol=2e-7)

    # Bound hit: the multi-scale fallback finishes the hole with finite values inside the data range.
    got, passes = gap_fill_2d(img, max_iter=2)
    assert passes == 2
    assert np.isfinite(got).all()
    lo, hi = np.nanmin(img), np.nanmax(img)
    assert (got >= lo - 1e-6).all() and (got <= hi + 1e-6).all()
    exact = reference_fill(img)
    np.testing.assert_allclose(got[:, :16], exact[:, :16], rtol=2e-6, atol=2e-7)  # first 2 rings exact


def test_gap_fill_big_scene_half_missing_is_finite():
    rng = np.random.default_rng(1)
    img = ndi.gaussian_filter(rng.normal(size=(860, 1050)), 4).astype(np.float32)
    img[:, 525:] = np.nan
    img[100:140, 100:160] = np.nan
    got, passes = gap_fill_2d(img)
    assert np.isfinite(got).all()
    assert passes > 200  # the half hole closes ring by ring, exactly as the paper's loop would
    got2, passes2 = gap_fill_2d(img, max_iter=10)
    assert passes2 == 10 and np.isfinite(got2).all()  # wall time: benchmarks/, not tests


def test_gap_fill_all_nan_slice_stays_nan_and_lazy_equals_eager():
    rng = np.random.default_rng(3)
    values = rng.uniform(0, 1, (3, 2, 16, 14)).astype(np.float32)
    values[rng.random(values.shape) < 0.3] = np.nan
    values[1] = np.nan  # scene 1 entirely outside the footprint
    masked = xr.DataArray(values, dims=("time", "band", "y", "x"))
    eager = gap_fill(masked)
    with raise_if_computes():
        lazy = gap_fill(masked.chunk({"time": 2, "y": 8}))
        assert isinstance(lazy.data, dsa.Array)
    assert lazy.chunks[2] == (16,) and lazy.chunks[3] == (14,), "full y/x per chunk"
    lazy = lazy.compute(scheduler="sync")
    xr.testing.assert_identical(lazy, eager)
    assert np.isnan(eager.values[1]).all()
    assert np.isfinite(eager.values[[0, 2]]).all()
    for t in (0, 2):
        for b in range(2):
            np.testing.assert_allclose(eager.values[t, b], reference_fill(masked.values[t, b]), rtol=2e-6)
    with pytest.raises(GlacierflowError, match="max_iter"):
        gap_fill(masked, max_iter=-1)
