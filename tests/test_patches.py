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


def causal_reference(ds: xr.Dataset) -> np.ndarray:
    """The cube's inputs as a numpy reference: an interpolated period takes the last earlier non-interpolated one."""
    nd, interp = ds["ndsi"].values, ds["interpolated"].values
    out = nd.copy()
    for t in range(len(nd)):
        if interp[t]:
            src = [k for k in range(t) if not interp[k]]
            assert src, "the reference covers cubes that start with an observed period"
            out[t] = nd[src[-1]]
    return out


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
    keep = starts[:, 0] + spec.t_in >= pc.context  # samples carry a season of history (3MS: 4 periods)
    got = pc.gather(starts[keep])
    listed = [tuple(s) for s in starts[keep].tolist()]
    for i, p in enumerate(gen):
        if ref[i] in listed:
            j = listed.index(ref[i])
            np.testing.assert_array_equal(np.concatenate([got["x"][j], got["y"][j]])[:, 0], p.values)
    with pytest.raises(GlacierflowError, match="history"):
        pc.gather(starts[~keep])


def test_loader_samples_equal_sliding_window_reference(real_cube: xr.Dataset) -> None:
    spec = PatchSpec(test_starts=1, val_starts=1)  # the paper's 4 -> 4, 50 px, stride 10; 24 monthly periods
    samples = patches.prepare(real_cube, spec)
    nd = real_cube["ndsi"].values
    ref = sliding_window_view(nd, (8, 50, 50))[:, ::10, ::10]  # (t, y, x, 8, 50, 50): every window
    causal = sliding_window_view(causal_reference(real_cube), (8, 50, 50))[:, ::10, ::10]
    assert len(samples.starts) == ref.shape[0] * ref.shape[1] * ref.shape[2]
    assert ref.shape[0] == 24 - 8 + 1 and ref.shape[1] == (nd.shape[1] - 50) // 10 + 1
    loader = patches.make_loader(samples.dataset("test"), 16, shuffle=True, seed=1)
    n = 0
    for b in loader:
        t, y, x = b["index"].numpy().T
        expect = ref[t, y // 10, x // 10]
        np.testing.assert_array_equal(b["x"].numpy()[:, :, 0], causal[t, y // 10, x // 10][:, :4])
        np.testing.assert_array_equal(b["y"].numpy()[:, :, 0], expect[:, 4:])
        assert b["x"].dtype == b["y"].dtype == b["mask"].dtype == torch.float32
        n += len(t)
    # one start date: the last 4 periods are the targets (24 monthly periods, a year of history)
    assert n == len(samples.sets["test"]) == ref.shape[1] * ref.shape[2]
    assert samples.origins("test") == [f"{real_cube['time'].values[k]}"[:10] for k in (20,)]


def held_out_leaks(samples_starts: np.ndarray, sets: dict[str, np.ndarray], spec: PatchSpec) -> list[str]:
    """What the leakage proof checks: every period of every training window against every held-out target."""
    train_periods = {int(t) + k for t in samples_starts[sets["train"], 0] for k in range(spec.window)}
    found = []
    for name in ("val", "test"):
        if name not in sets:
            continue
        targets = {int(t) + spec.t_in + k for t in samples_starts[sets[name], 0] for k in range(spec.t_out)}
        if targets & train_periods:
            found.append(f"{name} targets {sorted(targets & train_periods)} are training periods")
    if "val" in sets:
        val_t = {int(t) + spec.t_in + k for t in samples_starts[sets["val"], 0] for k in range(spec.t_out)}
        test_t = {int(t) + spec.t_in + k for t in samples_starts[sets["test"], 0] for k in range(spec.t_out)}
        if val_t & test_t:
            found.append("validation and test targets overlap")
    return found


@pytest.mark.parametrize("t_in", [1, 2, 4, 8, 12])
def test_temporal_split_never_trains_on_a_held_out_target_for_every_t_in(t_in: int) -> None:
    ds = synthetic_cube(n_periods=40, size=40)  # 10 years, quarterly
    spec = PatchSpec(t_in=t_in, t_out=4, size=20, stride=20, test_starts=4, val_starts=2)
    samples = patches.prepare(ds, spec)
    assert held_out_leaks(samples.starts, samples.sets, spec) == []
    origins = {k: np.unique(samples.starts[samples.sets[k], 0] + t_in) for k in ("val", "test")}
    assert list(origins["test"]) == [33, 34, 35, 36]  # 4 successive start dates: targets fill the last 7 periods
    assert list(origins["val"]) == [28, 29]  # 2 start dates, targets in the 5 periods before
    # the gap is the output length: the latest training window ends at the first held-out period
    assert int((samples.starts[samples.sets["train"], 0] + spec.window).max()) == 28
    assert samples.origins("test")[0] == "2027-04-01"


def test_the_leakage_proof_fails_when_the_gap_is_one_period_short() -> None:
    ds = synthetic_cube(n_periods=40, size=40)
    spec = PatchSpec(t_in=4, t_out=4, size=20, stride=20)
    starts = patches.window_starts(ds["ndsi"], spec)
    test_b, val_b = patches.eval_blocks(spec)
    right = patches.temporal_sets(starts, 40, spec, (test_b, val_b), separate_val=True)
    assert held_out_leaks(starts, {k: np.flatnonzero(v) for k, v in right.items()}, spec) == []
    for separate in (True, False):
        short = patches.temporal_sets(starts, 40, spec, (test_b, val_b), separate_val=separate, gap=spec.t_out - 1)
        sets = {k: np.flatnonzero(v) for k, v in short.items()}
        assert held_out_leaks(starts, sets, spec), separate


def test_causal_inputs_ignore_every_later_period() -> None:
    """Changing a target period's observations leaves every model input (x, context) unchanged."""
    ds = synthetic_cube(n_periods=24, size=40, noise=0.05, interpolated=(9, 13))
    spec = PatchSpec(t_in=4, t_out=4, size=20, stride=20, test_starts=2, val_starts=1)
    samples = patches.prepare(ds, spec)
    idx = np.flatnonzero(samples.starts[:, 0] == 6)  # inputs 6..9 (9 interpolated from 8 and 10), targets 10..13
    changed = ds.copy(deep=True)
    nd = changed["ndsi"].values
    nd[10:] = 1.0 - nd[10:]  # every target period and later is another world
    nd[9] = 0.5 * (nd[8] + nd[10])  # and the stored interpolated period follows it, as build-cube would
    changed["ndsi"] = (changed["ndsi"].dims, nd)
    pc_a = patches.open_patch_cube(ds, spec, {"train": samples.sets["train"]}, samples.starts)
    pc_b = patches.open_patch_cube(changed, spec, {"train": samples.sets["train"]}, samples.starts)
    a, b = pc_a.gather(samples.starts[idx]), pc_b.gather(samples.starts[idx])
    for k in ("x", "context"):
        np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_array_equal(a["x"][:, -1], a["x"][:, -2])  # period 9 takes period 8's value
    assert not np.array_equal(a["y"], b["y"])


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
    assert cov["train"].any(axis=(1, 2))[12 - spec.t_in:].all(), "training spans all periods with a year of history"
    # every window needs 12 monthly periods of history (seasonal context): their inputs start at period 10
    assert list(np.flatnonzero(cov["test"].any(axis=(1, 2)))) == list(range(12 - spec.t_in, shape[0]))


def test_too_short_cube_is_refused_with_periods_it_has_and_needs() -> None:
    with pytest.raises(GlacierflowError, match=r"has 14 periods.*at least 15 \(20 for separate validation"):
        patches.prepare(synthetic_cube(n_periods=14, size=60), PatchSpec(size=20))
    spec = PatchSpec(size=20, stride=10)
    samples = patches.prepare(synthetic_cube(n_periods=18, size=150), spec)
    assert "columns" in samples.validation  # too short for validation start dates: validation is a spatial block
    assert held_out_leaks(samples.starts, {"train": samples.sets["train"], "test": samples.sets["test"]}, spec) == []
    cov = {k: _coverage(samples, k, (18, 150, 150)) for k in patches.SETS}
    assert not (cov["train"] & cov["val"]).any()


def test_masks_follow_n_valid_and_interpolated_periods() -> None:
    ds = synthetic_cube(n_periods=10, size=40, interpolated=(6,))
    nv = ds["n_valid"].values.copy()
    nv[7, 5:15, 20:30] = 0
    ds["n_valid"] = (ds["n_valid"].dims, nv)
    spec = PatchSpec(t_in=2, t_out=2, size=20, stride=10, split="temporal", test_periods=4)
    pc = patches.open_patch_cube(ds, spec)
    starts = patches.window_starts(ds["ndsi"], spec)
    starts = starts[starts[:, 0] + 2 >= pc.context]
    got = pc.gather(starts)
    for k, (t, y, x) in enumerate(starts):
        expect = (nv[t + 2: t + 4, y: y + 20, x: x + 20] > 0).astype(np.float32)
        np.testing.assert_array_equal(got["mask"][k, :, 0], expect)
    assert got["mask"].min() == 0 and got["mask"].max() == 1
    flag_only = patches.open_patch_cube(ds.drop_vars("n_valid"), spec).gather(starts)
    per_period = ~ds["interpolated"].values
    for k, (t, _, _) in enumerate(starts):
        assert (flag_only["mask"][k, :, 0] == per_period[t + 2: t + 4, None, None]).all()


def test_context_for_seasonal_on_a_monthly_cube(real_cube: xr.Dataset) -> None:
    spec = PatchSpec(test_starts=1, val_starts=1)
    samples = patches.prepare(real_cube, spec)
    assert samples.season_length == 12 and samples.cube.context == 12
    nd = causal_reference(real_cube)
    b = samples.dataset("test")[list(range(5))]
    for i, (t, y, x) in enumerate(b["index"].numpy()):
        np.testing.assert_array_equal(b["context"][i, :, 0].numpy(), nd[t + 4 - 12: t + 4, y: y + 50, x: x + 50])
        np.testing.assert_array_equal(b["context"][i, -4:].numpy(), b["x"][i].numpy())
    for k in patches.SETS:  # windows without 12 periods of history are out of every set
        assert (samples.starts[samples.sets[k], 0] >= 8).all()


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
