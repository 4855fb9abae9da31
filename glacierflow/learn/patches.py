"""Patch sequences from a cube store: xbatcher windows, leakage-free splits, torch Dataset/DataLoader.

**Windows.** :func:`window_starts` asks xbatcher (``BatchSchema``: the same selectors ``BatchGenerator``
iterates) for every window of ``t_in + t_out`` periods x ``size`` x ``size`` px at the spatial stride and
temporal stride of the :class:`~glacierflow.specs.PatchSpec`; only the selectors are used, no data is
touched. Samples are then gathered in bulk: one fancy-index over a ``sliding_window_view`` of an in-memory
array per batch (xbatcher's per-patch ``isel`` is ~27x slower). A cube larger than ``max_memory_gb`` is read
tile by tile (all periods of one spatial tile plus a patch halo); its batches are drawn tile by tile.

**Splits** (:func:`split_windows`), no held-out target period ever seen in training:

* ``temporal`` (rolling origin): test = the windows whose targets lie in the last ``t_out + test_starts - 1``
  periods (``test_starts`` successive forecast start dates); validation = the windows whose targets lie in
  the ``t_out + val_starts - 1`` periods before (``val_starts`` start dates); training = the windows that end
  before the first held-out period. The gap between sets is the output length: an evaluation sample's inputs
  are the past, known when its forecast is made, so they may be training periods (long ``--t-in`` costs no
  extra held-out periods). A cube too short for separate validation start dates (but with one training
  window and the test block) keeps validation inside the training periods as a spatial block (the
  right-hand columns, a guard band away). Shorter cubes are refused.
* ``spatial``: all periods; the columns are cut into blocks ``train | guard | val | guard | test`` (test the
  right-most ``test_fraction`` of the width, validation ``val_fraction``); the guard bands are at least
  one patch wide, and a patch belongs to a set only if it lies entirely inside that set's block. (Not a
  measure of forecast skill: neighbouring columns share the same years' weather.)

**Masks.** Each sample carries ``mask`` (same shape as its targets, 0/1 float32): 1 where the target pixel
was observed (``n_valid > 0`` where the cube has ``n_valid``, else the period is not ``interpolated``).
Loss and metrics are means over ``mask == 1`` only, so a cloudy season stays in the data but is not scored.

**Inputs, history, baselines** (:mod:`glacierflow.learn.climate`). Inputs are causal (a period interpolated
from a later one takes the last earlier value). Every sample carries ``context``: the ``max(t_in,
season_length)`` causal periods ending with its last input (season length from the cube's period: 1MS -> 12,
3MS -> 4, 6MS -> 2); windows too close to the cube start for that history are left out of every set. It also
carries ``bases``, every baseline's forecast (persistence, seasonal, and climatology, trend and anomaly from
the training periods' statistics), and ``phase``, the calendar phase of its input and target periods.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr
import xbatcher
from numpy.lib.stride_tricks import sliding_window_view

from glacierflow.choices import season_length
from glacierflow.errors import GlacierflowError
from glacierflow.learn.climate import (
    CUMULATIVE,
    base_forecasts,
    causal_inputs,
    causal_sources,
    cumulative_sums,
    fit_climate,
    lookahead,
    period_of_year,
    phases,
    stats_from_sums,
)
from glacierflow.learn.metrics import observed
from glacierflow.specs import PatchSpec, TrainSpec
from glacierflow.storage.cubes import SPATIAL_CHUNK, cube_period

SETS = ("train", "val", "test")


def window_starts(ndsi: xr.DataArray, spec: PatchSpec) -> np.ndarray:
    """All windows of ``spec`` over ``ndsi(time, y, x)`` as xbatcher defines them: ``(N, 3)`` starts ``(t, y, x)``.

    Only xbatcher's selectors are built (no data is read). Windows are complete (xbatcher drops partial
    patches at the edges).
    """
    nt, ny, nx = (ndsi.sizes[d] for d in ("time", "y", "x"))
    if nt < spec.window or ny < spec.size or nx < spec.size:
        raise GlacierflowError(
            f"cube ({nt} periods, {ny}x{nx} px) is smaller than one sample "
            f"({spec.window} periods, {spec.size}x{spec.size} px); use a longer/larger cube or smaller patches"
        )
    schema = xbatcher.BatchSchema(
        ndsi,
        input_dims={"time": spec.window, "y": spec.size, "x": spec.size},
        input_overlap={"time": spec.window - spec.time_stride, "y": spec.size - spec.stride,
                       "x": spec.size - spec.stride},
        concat_input_bins=False,
        preload_batch=False,
    )
    sel = [s[0] for s in schema.selectors.values()]
    return np.array([(s["time"].start, s["y"].start, s["x"].start) for s in sel], dtype=np.int64).reshape(-1, 3)


def _blocks(width: int, spec: PatchSpec, names: tuple[str, ...], fractions: tuple[float, ...]) -> dict[str, tuple]:
    """Column blocks ``names[0] | guard | names[1] | guard | ...`` laid out from the right edge.

    ``fractions`` size the blocks after the first (at least one patch each); block starts sit on the patch
    stride grid so each block holds whole patches; the first block takes what the others leave.
    """
    guard, out, end = spec.guard_px, {}, width
    usable = width - guard * (len(names) - 1)
    for name, f in reversed(list(zip(names[1:], fractions, strict=True))):
        w = max(spec.size, int(round(f * usable)))
        start = (end - w) // spec.stride * spec.stride
        out[name] = (start, end)
        end = start - guard
    if end < spec.size:
        raise GlacierflowError(
            f"cube is {width} px wide: too narrow for {' | '.join(names)} blocks of >= {spec.size} px with "
            f"{guard} px guard bands; use a wider cube, smaller patches or --split temporal"
        )
    out[names[0]] = (0, end)
    return {k: out[k] for k in names}


def _inside(starts: np.ndarray, block: tuple[int, int], size: int) -> np.ndarray:
    return (starts[:, 2] >= block[0]) & (starts[:, 2] + size <= block[1])


def eval_blocks(spec: PatchSpec) -> tuple[int, int]:
    """Periods held out at the end of the cube for ``(test, validation)`` (temporal split).

    A block holds the target periods of its successive forecast start dates: ``t_out + starts - 1``
    (``test_periods`` overrides the test block). Nothing else is held out: an evaluation sample's inputs are
    the past, known when its forecast is made, and may be training periods.
    """
    test = spec.test_periods or spec.t_out + spec.test_starts - 1
    return test, spec.t_out + spec.val_starts - 1


def needed_periods(spec: PatchSpec, separate_val: bool, context: int = 0) -> int:
    """Periods a temporal split needs: the test block + one training window with its history (+ the val block)."""
    test, val = eval_blocks(spec)
    return test + max(spec.window, context + spec.t_out) + (val if separate_val else 0)


def temporal_sets(starts: np.ndarray, nt: int, spec: PatchSpec, blocks: tuple[int, int], separate_val: bool,
                  gap: int | None = None) -> dict[str, np.ndarray]:
    """Boolean masks of the temporal split for held-out blocks ``(test, val)`` of periods at the cube's end.

    Test windows have all their targets in the test block, validation windows in the validation block;
    a training window's first target lies at least ``gap`` (default ``t_out``, the output length) periods
    before the first held-out period, so it ends before it: no held-out target period is ever seen in
    training, as input or target. (A ``gap`` one period short lets the last training window's target reach
    the first held-out period; ``tests/test_patches.py`` shows the leakage proof catching it.)
    """
    gap = spec.t_out if gap is None else gap
    test_b, val_b = blocks
    origin, end = starts[:, 0] + spec.t_in, starts[:, 0] + spec.window
    test = (origin >= nt - test_b) & (end <= nt)
    if not separate_val:
        return {"test": test, "train": origin + gap <= nt - test_b}
    val = (origin >= nt - test_b - val_b) & (end <= nt - test_b)
    return {"train": origin + gap <= nt - test_b - val_b, "val": val, "test": test}


def split_windows(starts: np.ndarray, shape: tuple[int, int, int], spec: PatchSpec,
                  context: int) -> tuple[dict[str, np.ndarray], str]:
    """Assign window starts to ``train``/``val``/``test``; return the index arrays and how validation was chosen.

    ``context`` is the number of periods every sample carries before and including its last input
    (``max(t_in, season_length)``); windows without that history are dropped from every set.
    """
    nt, _, nx = shape
    has_ctx = starts[:, 0] + spec.t_in - context >= 0
    if spec.split == "temporal":
        blocks = eval_blocks(spec)
        if nt < needed_periods(spec, False, context):
            raise GlacierflowError(
                f"cube has {nt} periods; a {spec.t_in}->{spec.t_out} temporal split with {spec.test_starts} test "
                f"start dates needs at least {needed_periods(spec, False, context)} "
                f"({needed_periods(spec, True, context)} for separate validation start dates); use a longer "
                f"cube, fewer --test-starts, a shorter --t-in or --split spatial"
            )
        if nt >= needed_periods(spec, True, context):
            masks = temporal_sets(starts, nt, spec, blocks, separate_val=True)
            train, val, test = masks["train"], masks["val"], masks["test"]
            how = (f"test: {spec.test_starts if not spec.test_periods else blocks[0] - spec.t_out + 1} start dates "
                   f"(the last {blocks[0]} periods); validation: {spec.val_starts} start dates (the {blocks[1]} "
                   f"periods before); training: windows ending before those")
        else:
            masks = temporal_sets(starts, nt, spec, blocks, separate_val=False)
            cols = _blocks(nx, spec, ("train", "val"), (spec.val_fraction,))
            val = masks["train"] & _inside(starts, cols["val"], spec.size)
            train = masks["train"] & _inside(starts, cols["train"], spec.size)
            test = masks["test"]
            how = (f"validation: columns {cols['val'][0]}-{cols['val'][1]} px of the training periods "
                   f"(cube too short for separate start dates: {nt} < {needed_periods(spec, True, context)} "
                   f"periods)")
    else:
        cols = _blocks(nx, spec, ("train", "val", "test"), (spec.val_fraction, spec.test_fraction))
        train, val, test = (_inside(starts, cols[k], spec.size) for k in SETS)
        how = (f"spatial blocks (columns, px): train {cols['train']}, val {cols['val']}, "
               f"test {cols['test']}; guard bands {spec.guard_px} px")
    sets = {"train": np.flatnonzero(train & has_ctx), "val": np.flatnonzero(val & has_ctx),
            "test": np.flatnonzero(test & has_ctx)}
    for name, idx in sets.items():
        if idx.size == 0:
            raise GlacierflowError(f"the {spec.split} split leaves no {name} samples on this cube "
                                   f"({nt} periods, {shape[1]}x{nx} px); use a longer or larger cube")
    return sets, how


ARRAYS = ("ndsi", "valid", "inputs", *CUMULATIVE)
"""The ``(T, H, W)`` arrays samples are cut from: stored NDSI (targets), observed mask, causal inputs, and the
running sums per period-of-year of the training periods (:func:`glacierflow.learn.climate.cumulative_sums`)."""


@dataclass
class PatchCube:
    """The arrays samples are gathered from, and what every sample needs besides its frames.

    ``arrays`` maps :data:`ARRAYS` to ``(T, H, W)`` float32 arrays in memory (``valid`` uint8, possibly
    ``(T, 1, 1)``), or to lazy DataArrays with ``tile`` (px) for a cube larger than memory. ``damping`` is the
    anomaly baseline's ``phi_k``; ``phase_obs``/``phase_centre`` the calendar phases per period.
    """

    arrays: dict[str, Any]
    spec: PatchSpec
    context: int
    season: int
    damping: np.ndarray
    phase_obs: np.ndarray
    phase_centre: np.ndarray
    times: np.ndarray
    poy: np.ndarray
    year: np.ndarray  # centred like the running sums
    tile: int = 0
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def ndsi(self) -> Any:
        """The stored NDSI ``(T, H, W)`` (targets)."""
        return self.arrays["ndsi"]

    @property
    def valid(self) -> Any:
        """1 where the target pixel was observed."""
        return self.arrays["valid"]

    @property
    def in_memory(self) -> bool:
        """Whether the whole cube is held in memory."""
        return self.tile == 0

    def tile_of(self, starts: np.ndarray) -> np.ndarray:
        """Tile number of each window (0 everywhere for an in-memory cube)."""
        if self.in_memory:
            return np.zeros(len(starts), np.int64)
        n_tx = -(-self.ndsi.sizes["x"] // self.tile)
        return (starts[:, 1] // self.tile) * n_tx + starts[:, 2] // self.tile

    def _region(self, tile_id: int) -> tuple[dict[str, np.ndarray], int, int]:
        """``(arrays, y_offset, x_offset)`` of one tile plus a patch halo (the loader computes here)."""
        if self._cache.get("id") != tile_id:
            n_tx = -(-self.ndsi.sizes["x"] // self.tile)
            y0, x0 = (tile_id // n_tx) * self.tile, (tile_id % n_tx) * self.tile
            halo = self.tile + self.spec.size - 1
            sl = {"y": slice(y0, y0 + halo), "x": slice(x0, x0 + halo)}
            out = {}
            for k, a in self.arrays.items():
                if "y" in a.dims:
                    out[k] = np.asarray(a.isel(sl).values, np.uint8 if k == "valid" else np.float32)
                else:
                    out[k] = np.asarray(a.values, np.uint8)[:, None, None]
            self._cache.update(id=tile_id, arrays=(out, y0, x0))
        return self._cache["arrays"]

    def gather(self, starts: np.ndarray, stats: bool = False) -> dict[str, np.ndarray]:
        """Samples for window ``starts`` ``(B, 3)``: see :class:`PatchDataset` for the keys.

        ``stats`` adds the climatology at the targets and at the last input (``clim_targets``, ``clim_last``).
        """
        if self.in_memory:
            return _gather(self.arrays, starts, self, stats)
        tiles = self.tile_of(starts)
        parts = []
        for t in np.unique(tiles):  # batches are drawn tile by tile, so usually one tile
            arrays, y0, x0 = self._region(int(t))
            local = starts[tiles == t] - np.array([0, y0, x0])
            parts.append((np.flatnonzero(tiles == t), _gather(arrays, local, self, stats)))
        order = np.argsort(np.concatenate([p[0] for p in parts]))
        return {k: np.concatenate([p[1][k] for p in parts])[order] for k in parts[0][1]}


def _frames(arr: np.ndarray, t: np.ndarray, y: np.ndarray, x: np.ndarray, n: int, size: int) -> np.ndarray:
    """``arr[t + k, y:y+size, x:x+size]`` for k < n, as one bulk gather: ``(B, n, 1, size, size)``."""
    if arr.shape[1] == 1:  # per-period values broadcast over the patch
        per = arr[t[:, None] + np.arange(n)][:, :, 0, 0]
        return np.ascontiguousarray(np.broadcast_to(per[:, :, None, None, None], (len(t), n, 1, size, size)))
    view = sliding_window_view(arr, (n, size, size))
    return view[t, y, x][:, :, None]


def _at(arr: np.ndarray, idx: np.ndarray, y: np.ndarray, x: np.ndarray, size: int) -> np.ndarray:
    """``arr[idx[b, k], y[b]:+size, x[b]:+size]``: ``(B, K, 1, size, size)`` for any periods ``idx (B, K)``."""
    view = sliding_window_view(arr, (size, size), axis=(1, 2))
    return view[idx, y[:, None], x[:, None]][:, :, None]


def sample_stats(arrays: dict[str, np.ndarray], starts: np.ndarray, pc: PatchCube, x_last: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(climatology, trend)`` at the targets and the climatology of the last input, ``(B, t_out|1, 1, s, s)``.

    Statistics known when the forecast is made: training periods up to the last input (for a training
    sample, never its own targets).
    """
    spec = pc.spec
    t, y, x = starts[:, 0], starts[:, 1], starts[:, 2]
    last = t + spec.t_in - 1
    u = last[:, None] + 1 + np.arange(spec.t_out)
    src = stat_periods(pc, last)
    at_t = {k: _at(arrays[k], src, y, x, spec.size) for k in CUMULATIVE}
    clim_t, trend_t = stats_from_sums(at_t, pc.year[u][:, :, None, None, None], x_last)
    at_l = {k: _at(arrays[k], last[:, None], y, x, spec.size) for k in CUMULATIVE}
    clim_l, _ = stats_from_sums(at_l, pc.year[last][:, None, None, None, None], x_last)
    return clim_t, trend_t, clim_l


def stat_periods(pc: PatchCube, last: np.ndarray) -> np.ndarray:
    """``(B, t_out)``: per target, the latest period ``<= last`` of its period-of-year (where its sums are read)."""
    u = last[:, None] + 1 + np.arange(pc.spec.t_out)
    return last[:, None] - (pc.poy[last][:, None] - pc.poy[u]) % pc.season


def _gather(arrays: dict[str, np.ndarray], starts: np.ndarray, pc: PatchCube, stats: bool = False
            ) -> dict[str, np.ndarray]:
    spec, ctx = pc.spec, pc.context
    t, y, x = starts[:, 0], starts[:, 1], starts[:, 2]
    o, s = t + spec.t_in, spec.size
    if len(o) and int(o.min()) < ctx:
        raise GlacierflowError(f"a window starting at period {int(t.min())} has no {ctx} periods of history before "
                               "its targets; samples start at period context - t_in or later")
    context = _frames(arrays["inputs"], o - ctx, y, x, ctx, s)
    clim_t, trend_t, clim_l = sample_stats(arrays, starts, pc, context[:, -1:])
    bases = base_forecasts(context[:, -1:], context, clim_t, trend_t, clim_l, pc.damping, pc.season)
    lead = np.arange(spec.t_out)
    phase = np.concatenate([pc.phase_obs[(o - spec.t_in)[:, None] + np.arange(spec.t_in)],
                            pc.phase_centre[o[:, None] + lead]], axis=1)
    return {"x": np.ascontiguousarray(context[:, ctx - spec.t_in:]),
            "y": _frames(arrays["ndsi"], o, y, x, spec.t_out, s),
            "mask": _frames(arrays["valid"], o, y, x, spec.t_out, s).astype(np.float32),
            "context": context, "bases": bases, "phase": phase.astype(np.float32),
            **({"clim_targets": clim_t, "clim_last": clim_l} if stats else {})}


def fit_damping(pc: PatchCube, train: np.ndarray, max_samples: int = 4096, seed: int = 0) -> np.ndarray:
    """``phi_k``: least-squares regression of the target anomaly on the last input's anomaly, in [0, 1].

    Over (a seeded subset of) the training windows ``train`` (starts), with the anomalies against the
    statistics each sample knows (:func:`sample_stats`); unobserved targets are left out.
    """
    if len(train) > max_samples:
        train = train[np.sort(np.random.default_rng(seed).choice(len(train), max_samples, replace=False))]
    ab, aa = np.zeros(pc.spec.t_out), np.zeros(pc.spec.t_out)
    for i in range(0, len(train), 256):
        b = pc.gather(train[i: i + 256], stats=True)
        a = b["x"][:, -1:].astype(np.float64) - b["clim_last"]
        d = (b["y"] - b["clim_targets"]) * b["mask"]
        ab += (a * d).sum(axis=(0, 2, 3, 4))
        aa += (a * a * b["mask"]).sum(axis=(0, 2, 3, 4))
    return np.clip(np.where(aa > 0, ab / np.maximum(aa, 1e-12), 0.0), 0.0, 1.0).astype(np.float32)


def open_patch_cube(cube: xr.Dataset, spec: PatchSpec, sets: dict[str, np.ndarray] | None = None,
                    starts: np.ndarray | None = None) -> PatchCube:
    """The arrays of a cube store: in memory, or prepared for tile reads when larger than ``max_memory_gb``.

    The training statistics (climatology, trend, anomaly damping) come from the training windows of
    ``sets``/``starts``; without them from every window of the cube (for gathers outside a split).
    """
    if "ndsi" not in cube:
        raise GlacierflowError("cube has no 'ndsi' variable; pass a store written by build-cube")
    ndsi = cube["ndsi"].transpose("time", "y", "x")
    period = cube_period(cube)
    season = season_length(period)
    ctx = max(spec.t_in, season)
    if sets is None or starts is None:
        starts = window_starts(ndsi, spec)
        sets = {"train": np.arange(len(starts))}
    train = starts[sets["train"]]
    nt, times = ndsi.sizes["time"], pd.DatetimeIndex(cube["time"].values)
    periods = np.zeros(nt, bool)
    for t0 in np.unique(train[:, 0]):
        periods[t0: t0 + spec.window] = True
    valid = observed(cube)
    per_pixel = "y" in valid.dims
    in_memory = ndsi.size * (36 + (1 if per_pixel else 0)) <= spec.max_memory_gb * 2**30
    if in_memory:  # statistics in numpy (no task graph) when the cube fits
        ndsi, valid = ndsi.load(), valid.load()
    poy, years = period_of_year(times, period), times.year.to_numpy()
    year0 = float(np.mean(years[periods])) if periods.any() else 0.0
    clim, _ = fit_climate(ndsi, valid, periods, poy, years, season).at(poy, years)
    inputs = causal_inputs(ndsi, causal_sources(lookahead(cube)), clim.assign_coords(time=ndsi["time"]))
    sums = cumulative_sums(ndsi, valid, periods, poy, years, year0)
    tm = cube["time_mean"].values if "time_mean" in cube else None
    ph_obs, ph_centre = phases(times, tm, period)
    arrays: dict[str, Any] = {"ndsi": ndsi, "valid": valid, "inputs": inputs, **sums}
    common = dict(spec=spec, context=ctx, season=season, damping=np.zeros(spec.t_out, np.float32),
                  phase_obs=ph_obs, phase_centre=ph_centre, times=times.to_numpy(), poy=poy,
                  year=(years - year0).astype(np.float32))
    if in_memory:
        mem = {k: np.ascontiguousarray(a.values, dtype=np.float32) for k, a in arrays.items() if k != "valid"}
        va = valid.values.astype(np.uint8)
        pc = PatchCube({**mem, "valid": va if per_pixel else va[:, None, None]}, **common)
    else:
        enc = cube["ndsi"].encoding.get("chunks")
        chunk = enc[-1] if enc else (ndsi.chunks[-1][0] if ndsi.chunks else SPATIAL_CHUNK)
        tile = max(chunk, spec.size) // spec.stride * spec.stride or spec.stride
        pc = PatchCube(arrays, **common, tile=int(tile))
    usable = train[train[:, 0] + spec.t_in >= ctx]
    pc.damping = fit_damping(pc, usable[np.argsort(pc.tile_of(usable), kind="stable")])
    return pc


class PatchDataset(torch.utils.data.Dataset):
    """Map-style dataset whose items are whole batches: ``ds[list_of_indices]`` -> dict of tensors.

    Keys: ``x`` (B, t_in, 1, H, W) causal inputs, ``y`` and ``mask`` (B, t_out, 1, H, W), ``context``
    (B, T_ctx, 1, H, W) the causal periods ending with the last input, ``bases`` (B, 5, t_out, 1, H, W) every
    baseline's forecast (:data:`glacierflow.learn.climate.BASELINE_NAMES`), ``phase`` (B, t_in + t_out) the
    calendar phase of each input and target period (radians), ``index`` (B, 3) window starts (t, y, x).
    Use with :func:`make_loader`.
    """

    def __init__(self, cube: PatchCube, starts: np.ndarray) -> None:
        self.cube, self.starts = cube, np.asarray(starts, np.int64)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, idx: list[int] | np.ndarray) -> dict[str, torch.Tensor]:
        starts = self.starts[np.asarray(idx, np.int64).reshape(-1)]
        arrays = self.cube.gather(starts)
        out = {k: torch.from_numpy(v) for k, v in arrays.items()}
        out["index"] = torch.from_numpy(starts)
        return out


class BatchOrder(torch.utils.data.Sampler):
    """Seeded batches of indices: a fresh permutation per epoch from ``(seed, epoch)``.

    With ``groups`` (tiles of a cube larger than memory) batches are drawn group by group, so each tile is
    read once per epoch. Call ``set_epoch`` before each epoch.
    """

    def __init__(self, n: int, batch_size: int, *, shuffle: bool, seed: int = 0,
                 groups: np.ndarray | None = None) -> None:
        self.n, self.batch_size, self.shuffle, self.seed, self.epoch = n, batch_size, shuffle, seed, 0
        self.groups = np.zeros(n, np.int64) if groups is None else np.asarray(groups)

    def set_epoch(self, epoch: int) -> None:
        """Choose the permutation of ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(-(-int((self.groups == g).sum()) // self.batch_size) for g in np.unique(self.groups))

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        groups = np.unique(self.groups)
        if self.shuffle:
            groups = rng.permutation(groups)
        for g in groups:
            idx = np.flatnonzero(self.groups == g)
            if self.shuffle:
                idx = rng.permutation(idx)
            for i in range(0, len(idx), self.batch_size):
                yield idx[i: i + self.batch_size].tolist()


def make_loader(dataset: PatchDataset, batch_size: int, *, shuffle: bool, seed: int = 0,
                num_workers: int = 0, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader of whole batches (bulk gathers), seeded; works with ``num_workers > 0``.

    ``pin_memory`` (for a CUDA device) lets batches be copied with ``non_blocking=True``.
    """
    order = BatchOrder(len(dataset), batch_size, shuffle=shuffle, seed=seed,
                       groups=None if dataset.cube.in_memory else dataset.cube.tile_of(dataset.starts))
    return torch.utils.data.DataLoader(dataset, batch_size=None, sampler=order, num_workers=num_workers,
                                       persistent_workers=False, pin_memory=pin_memory)


@dataclass
class Samples:
    """A cube cut into train/val/test windows: what :func:`prepare` returns."""

    cube: PatchCube
    starts: np.ndarray
    sets: dict[str, np.ndarray]
    validation: str
    season_length: int

    def dataset(self, name: str) -> PatchDataset:
        """The dataset of one set (``train``, ``val`` or ``test``)."""
        if name not in self.sets:
            raise GlacierflowError(f"unknown split set {name!r}; choose one of: {', '.join(self.sets)}")
        return PatchDataset(self.cube, self.starts[self.sets[name]])

    def origins(self, name: str) -> list[str]:
        """The forecast start dates (first target period) of a set, ``YYYY-MM-DD``, in order."""
        o = np.unique(self.starts[self.sets[name], 0] + self.cube.spec.t_in)
        return [str(np.datetime_as_string(self.cube.times[i], unit="D")) for i in o]

    def summary(self) -> dict[str, Any]:
        """Sample counts per set and how validation was chosen."""
        return {**{f"n_{k}": int(v.size) for k, v in self.sets.items()}, "validation": self.validation,
                "season_length": self.season_length, "context": self.cube.context,
                "in_memory": self.cube.in_memory, "damping": [round(float(v), 4) for v in self.cube.damping],
                **{f"origins_{k}": self.origins(k) for k in ("val", "test")}}


def prepare(cube: xr.Dataset, spec: PatchSpec) -> Samples:
    """Windows (xbatcher), split and arrays of a cube store opened lazily (``store.open_store``)."""
    starts = window_starts(cube["ndsi"].transpose("time", "y", "x"), spec)
    season = season_length(cube_period(cube))
    shape = tuple(cube.sizes[d] for d in ("time", "y", "x"))
    sets, how = split_windows(starts, shape, spec, max(spec.t_in, season))  # type: ignore[arg-type]
    return Samples(open_patch_cube(cube, spec, sets, starts), starts, sets, how, season)


def set_loader(samples: Samples, name: str, spec: TrainSpec, *, shuffle: bool, pin_memory: bool = False) -> Any:
    """Loader of one set; validation limited to a seeded subset of ``val_samples`` when that is set.

    The subset is stratified by forecast start date (each date keeps its share), so validation always
    spans every validation start date.
    """
    ds = samples.dataset(name)
    if name == "val" and 0 < spec.val_samples < len(ds):
        rng, origin = np.random.default_rng(spec.seed), ds.starts[:, 0]
        dates = np.unique(origin)
        per = max(1, spec.val_samples // len(dates))
        keep = np.sort(np.concatenate([rng.choice(np.flatnonzero(origin == d), min(per, int((origin == d).sum())),
                                                  replace=False) for d in dates]))
        ds = PatchDataset(ds.cube, ds.starts[keep])
    return make_loader(ds, spec.batch_size, shuffle=shuffle, seed=spec.seed, num_workers=spec.num_workers,
                       pin_memory=pin_memory)
