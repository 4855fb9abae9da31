"""Patch sequences: xbatcher windows, bulk gathers vs numpy references, leakage-free splits, masks, loaders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
import xbatcher
from numpy.lib.stride_tricks import sliding_window_view

from glacierflow.errors import GlacierflowError
from glacierflow.learn import patches
from glacierflow.specs import PatchSpec
from glacierflow.storage.store import open_store
from glacierflow.testing import synthetic_cube


def _coverage(samples: patches.Samples, name: str, shape: tuple[int, int, int]) -> np.ndarray:
    """Boolean (time, y, x): every (period, pixel) that some sample of set ``name`` reads as input or target."""
    spec = samples.cube.spec
    cov = np.zeros(shape, bool)
    for t, y, x in samples.starts[samples.sets[name]]:
        cov[t: t + spec.window, y: y + spec.size, x: x + spec.size] = True
    return cov


@pytest.fixture(scope="module")
def real_cube(tiny_cube_1ms: str) -> xr.Dataset:
    return open_store(tiny_cube_1ms)


def test_windows_are_xbatchers_and_samples_equal_its_patches() -> None:
    ds = synthetic_cube(n_periods=7, size=(31, 37), seed=3, noise=0.05)
    spec = PatchSpec(t_in=2, t_out=2, size=10, stride=6, time_stride=2)
    starts = patches.window_starts(ds["ndsi"], spec)
    gen = xbatcher.BatchGenerator(ds["ndsi"], input_dims={"time": 4, "y": 10, "x": 10},
                                  input_overlap={"time": 2, "y": 4, "x": 4})
    pos = {d: {v: i for i, v in enumerate(ds[d].values)} for d in ("time", "y", "x")}
    ref = [tuple(pos[d][p[d].values[0]] for d in ("time", "y", "x")) for p in gen]
    assert sorted(map(tuple, starts.tolist())) == sorted(ref)
    assert len(ref) == 2 * 4 * 5  # time starts 0, 2; y starts 0, 6, 12, 18; x starts 0, 6, ..., 24
    pc = patches.open_patch_cube(ds, spec)
    got = pc.gather(starts, with_context=False)
    for i, p in enumerate(gen):
        j = [tuple(s) for s in starts.tolist()].index(ref[i])
        np.testing.assert_array_equal(np.concatenate([got["x"][j], got["y"][j]])[:, 0], p.values)


def test_loader_samples_equal_sliding_window_reference(real_cube: xr.Dataset) -> None:
    spec = PatchSpec()  # the paper's 4 -> 4, 50 px, stride 10
    samples = patches.prepare(real_cube, spec)
    nd = real_cube["ndsi"].values
    ref = sliding_window_view(nd, (8, 50, 50))[:, ::10, ::10]  # (t, y, x, 8, 50, 50): every window
    assert len(samples.starts) == ref.shape[0] * ref.shape[1] * ref.shape[2]
    assert ref.shape[0] == 24 - 8 + 1 and ref.shape[1] == (nd.shape[1] - 50) // 10 + 1
    loader = patches.make_loader(samples.dataset("test"), 16, shuffle=True, seed=1)
    n = 0
    for b in loader:
        t, y, x = b["index"].numpy().T
        expect = ref[t, y // 10, x // 10]
        np.testing.assert_array_equal(b["x"].numpy()[:, :, 0], expect[:, :4])
        np.testing.assert_array_equal(b["y"].numpy()[:, :, 0], expect[:, 4:])
        assert b["x"].dtype == b["y"].dtype == b["mask"].dtype == torch.float32
        n += len(t)
    assert n == len(samples.sets["test"]) == ref.shape[1] * ref.shape[2]  # one time position: the last 8 periods


def test_temporal_split_has_no_shared_pixel_period_on_a_real_cube(real_cube: xr.Dataset) -> None:
    spec = PatchSpec()
    samples = patches.prepare(real_cube, spec)
    shape = real_cube["ndsi"].shape
    cov = {k: _coverage(samples, k, shape) for k in patches.SETS}
    assert not (cov["train"] & cov["test"]).any() and not (cov["val"] & cov["test"]).any()
    assert not (cov["train"] & cov["val"]).any()
    periods = {k: np.flatnonzero(c.any(axis=(1, 2))) for k, c in cov.items()}
    assert list(periods["test"]) == list(range(16, 24)) and list(periods["val"]) == list(range(8, 16))
    assert periods["train"].max() == 7
    assert "just before" in samples.validation


def test_spatial_split_has_no_shared_pixel_and_a_guard_band_on_a_real_cube(real_cube: xr.Dataset) -> None:
    spec = PatchSpec(t_in=2, t_out=2, size=16, stride=4, split="spatial")
    samples = patches.prepare(real_cube, spec)
    shape = real_cube["ndsi"].shape
    cov = {k: _coverage(samples, k, shape) for k in patches.SETS}
    for a, b in (("train", "test"), ("val", "test"), ("train", "val")):
        assert not (cov[a] & cov[b]).any(), (a, b)
        cols_a, cols_b = np.flatnonzero(cov[a].any(axis=(0, 1))), np.flatnonzero(cov[b].any(axis=(0, 1)))
        gap = min(abs(int(i) - int(j)) for i in cols_a for j in cols_b) - 1  # unused columns between them
        assert gap >= spec.size, (a, b, gap)
    assert cov["train"].any(axis=(1, 2)).all(), "training spans all periods"
    # val/test windows need 12 monthly periods of history (seasonal context): their inputs start at period 10
    assert list(np.flatnonzero(cov["test"].any(axis=(1, 2)))) == list(range(12 - spec.t_in, shape[0]))


def test_too_short_cube_is_refused_with_periods_it_has_and_needs() -> None:
    with pytest.raises(GlacierflowError, match=r"has 15 periods.*at least 16 \(24 for a separate validation"):
        patches.prepare(synthetic_cube(n_periods=15, size=60), PatchSpec(size=20))
    samples = patches.prepare(synthetic_cube(n_periods=20, size=150), PatchSpec(size=20, stride=10))
    assert "columns" in samples.validation  # too short for a third window: validation is a spatial block
    cov = {k: _coverage(samples, k, (20, 150, 150)) for k in patches.SETS}
    assert not (cov["train"] & cov["test"]).any() and not (cov["train"] & cov["val"]).any()


def test_masks_follow_n_valid_and_interpolated_periods() -> None:
    ds = synthetic_cube(n_periods=10, size=40, interpolated=(6,))
    nv = ds["n_valid"].values.copy()
    nv[7, 5:15, 20:30] = 0
    ds["n_valid"] = (ds["n_valid"].dims, nv)
    spec = PatchSpec(t_in=2, t_out=2, size=20, stride=10, split="temporal", test_periods=4)
    pc = patches.open_patch_cube(ds, spec)
    starts = patches.window_starts(ds["ndsi"], spec)
    got = pc.gather(starts, with_context=False)
    for k, (t, y, x) in enumerate(starts):
        expect = (nv[t + 2: t + 4, y: y + 20, x: x + 20] > 0).astype(np.float32)
        np.testing.assert_array_equal(got["mask"][k, :, 0], expect)
    assert got["mask"].min() == 0 and got["mask"].max() == 1
    flag_only = patches.open_patch_cube(ds.drop_vars("n_valid"), spec).gather(starts, with_context=False)
    per_period = ~ds["interpolated"].values
    for k, (t, _, _) in enumerate(starts):
        assert (flag_only["mask"][k, :, 0] == per_period[t + 2: t + 4, None, None]).all()


def test_context_for_seasonal_on_a_monthly_cube(real_cube: xr.Dataset) -> None:
    spec = PatchSpec()
    samples = patches.prepare(real_cube, spec)
    assert samples.season_length == 12 and samples.cube.context == 12
    nd = real_cube["ndsi"].values
    b = samples.dataset("test")[list(range(5))]
    for i, (t, y, x) in enumerate(b["index"].numpy()):
        np.testing.assert_array_equal(b["context"][i, :, 0].numpy(), nd[t + 4 - 12: t + 4, y: y + 50, x: x + 50])
        np.testing.assert_array_equal(b["context"][i, -4:].numpy(), b["x"][i].numpy())
    assert (samples.starts[samples.sets["val"], 0] >= 8).all()  # windows without 12 periods of history are out


def test_seeded_order_and_workers_give_the_same_batches() -> None:
    ds = synthetic_cube(n_periods=12, size=48, noise=0.05)
    samples = patches.prepare(ds, PatchSpec(t_in=2, t_out=2, size=16, stride=8, test_periods=4))
    ds_train = samples.dataset("train")

    def order(seed: int, epoch: int, workers: int = 0) -> list[list[int]]:
        loader = patches.make_loader(ds_train, 7, shuffle=True, seed=seed, num_workers=workers)
        loader.sampler.set_epoch(epoch)
        return [b["index"].numpy().tolist() for b in loader]

    a = order(0, 0)
    assert a == order(0, 0) and a != order(0, 1) and a != order(1, 0)
    assert order(0, 0, workers=2) == a
    flat = [tuple(s) for batch in a for s in batch]
    assert sorted(flat) == sorted(map(tuple, ds_train.starts.tolist()))  # a permutation of all samples


def test_larger_than_memory_cube_is_read_tile_by_tile_with_the_same_samples() -> None:
    ds = synthetic_cube(n_periods=12, size=(70, 90), noise=0.05, chunks={"time": 1, "y": 32, "x": 32})
    spec = PatchSpec(t_in=2, t_out=2, size=16, stride=8, test_periods=4)
    small = PatchSpec.from_dict({**spec.to_dict(), "max_memory_gb": 1e-6})
    mem, tiles = patches.prepare(ds, spec), patches.prepare(ds, small)
    assert mem.cube.in_memory and not tiles.cube.in_memory and tiles.cube.tile == 32
    assert len(np.unique(tiles.cube.tile_of(tiles.starts))) == 2 * 3  # y starts 0..48, x starts 0..72
    d_mem, d_tiles = mem.dataset("train"), tiles.dataset("train")
    loader = patches.make_loader(d_tiles, 5, shuffle=True, seed=0)
    seen = 0
    for b in loader:
        idx = [d_mem.starts.tolist().index(s) for s in b["index"].numpy().tolist()]
        ref = d_mem[idx]
        for k in ("x", "y", "mask"):
            np.testing.assert_array_equal(b[k].numpy(), ref[k].numpy())
        seen += len(idx)
    assert seen == len(d_mem)
