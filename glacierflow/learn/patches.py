"""Patch sequences from a cube store: xbatcher windows, leakage-free splits, torch Dataset/DataLoader.

**Windows.** :func:`window_starts` asks xbatcher (``BatchSchema``: the same selectors ``BatchGenerator``
iterates) for every window of ``t_in + t_out`` periods x ``size`` x ``size`` px at the spatial stride and
temporal stride of the :class:`~glacierflow.specs.PatchSpec`; only the selectors are used, no data is
touched. Samples are then gathered in bulk: one fancy-index over a ``sliding_window_view`` of an in-memory
array per batch (xbatcher's per-patch ``isel`` is ~27x slower). A cube larger than ``max_memory_gb`` is read
tile by tile (all periods of one spatial tile plus a patch halo); its batches are drawn tile by tile.

**Splits** (:func:`split_windows`), none sharing a (pixel, period) between test and training samples:

* ``temporal``: test = the windows inside the last ``test_periods`` periods (default one window,
  ``t_in + t_out``); validation = the windows inside the ``t_in + t_out`` periods just before the test
  periods; training = the windows that end before the validation periods. A cube with fewer than
  ``test_periods + 2 * window`` periods but at least ``test_periods + window`` keeps validation inside the
  training periods as a spatial block (the right-hand columns, a guard band away from the training
  patches). Shorter cubes are refused.
* ``spatial``: all periods; the columns are cut into blocks ``train | guard | val | guard | test`` (test the
  right-most ``test_fraction`` of the width, validation ``val_fraction``); the guard bands are at least
  one patch wide, and a patch belongs to a set only if it lies entirely inside that set's block.

**Masks.** Each sample carries ``mask`` (same shape as its targets, 0/1 float32): 1 where the target pixel
was observed (``n_valid > 0`` where the cube has ``n_valid``, else the period is not ``interpolated``).
Loss and metrics are means over ``mask == 1`` only, so a cloudy season stays in the data but is not scored.

**Context.** Validation and test samples also carry ``context``: the ``max(t_in, season_length)`` periods
ending with the last input frame, for the ``seasonal`` baseline (season length from the cube's period:
1MS -> 12, 3MS -> 4, 6MS -> 2). Windows too close to the cube start to have that history are left out of
validation and test (so every predictor is scored on the same samples); training keeps them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import xarray as xr
import xbatcher
from numpy.lib.stride_tricks import sliding_window_view

from glacierflow.choices import season_length
from glacierflow.errors import GlacierflowError
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


def needed_periods(spec: PatchSpec, separate_val: bool) -> int:
    """Periods a temporal split needs: test periods + one training window (+ one validation window)."""
    test = spec.test_periods or spec.window
    return test + spec.window * (2 if separate_val else 1)


def split_windows(starts: np.ndarray, shape: tuple[int, int, int], spec: PatchSpec,
                  context: int) -> tuple[dict[str, np.ndarray], str]:
    """Assign window starts to ``train``/``val``/``test``; return the index arrays and how validation was chosen.

    ``context`` is the number of periods the evaluation samples need before and including their last
    input (``max(t_in, season_length)``); val/test windows without that history are dropped.
    """
    nt, _, nx = shape
    w = spec.window
    has_ctx = starts[:, 0] + spec.t_in - context >= 0
    if spec.split == "temporal":
        test_p = spec.test_periods or w
        if nt < needed_periods(spec, separate_val=False):
            raise GlacierflowError(
                f"cube has {nt} periods; a {spec.t_in}->{spec.t_out} temporal split needs at least "
                f"{needed_periods(spec, False)} ({needed_periods(spec, True)} for a separate validation window); "
                f"use a longer cube or --split spatial"
            )
        t_end = starts[:, 0] + w
        test = starts[:, 0] >= nt - test_p
        if nt >= needed_periods(spec, separate_val=True):
            val = (starts[:, 0] >= nt - test_p - w) & (t_end <= nt - test_p)
            train = t_end <= nt - test_p - w
            how = f"validation: the window of {w} periods just before the {test_p} test periods"
        else:
            blocks = _blocks(nx, spec, ("train", "val"), (spec.val_fraction,))
            before = t_end <= nt - test_p
            val = before & _inside(starts, blocks["val"], spec.size)
            train = before & _inside(starts, blocks["train"], spec.size)
            how = (f"validation: columns {blocks['val'][0]}-{blocks['val'][1]} px of the training periods "
                   f"(cube too short for a separate window: {nt} < {needed_periods(spec, True)} periods)")
    else:
        blocks = _blocks(nx, spec, ("train", "val", "test"), (spec.val_fraction, spec.test_fraction))
        train, val, test = (_inside(starts, blocks[k], spec.size) for k in SETS)
        how = (f"spatial blocks (columns, px): train {blocks['train']}, val {blocks['val']}, "
               f"test {blocks['test']}; guard bands {spec.guard_px} px")
    sets = {"train": np.flatnonzero(train), "val": np.flatnonzero(val & has_ctx),
            "test": np.flatnonzero(test & has_ctx)}
    for name, idx in sets.items():
        if idx.size == 0:
            raise GlacierflowError(f"the {spec.split} split leaves no {name} samples on this cube "
                                   f"({nt} periods, {shape[1]}x{nx} px); use a longer or larger cube")
    return sets, how


@dataclass
class PatchCube:
    """The arrays samples are gathered from.

    ``ndsi (T, H, W)`` float32 and ``valid`` (``(T, H, W)`` or ``(T, 1, 1)``) uint8, in memory; or lazy
    DataArrays with ``tile`` (px) for a cube larger than memory.
    """

    ndsi: np.ndarray | xr.DataArray
    valid: np.ndarray | xr.DataArray
    spec: PatchSpec
    context: int
    tile: int = 0
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

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

    def _region(self, tile_id: int) -> tuple[np.ndarray, np.ndarray, int, int]:
        """``(ndsi, valid, y_offset, x_offset)`` of one tile plus a patch halo (the loader computes here)."""
        if self._cache.get("id") != tile_id:
            n_tx = -(-self.ndsi.sizes["x"] // self.tile)
            y0, x0 = (tile_id // n_tx) * self.tile, (tile_id % n_tx) * self.tile
            halo = self.tile + self.spec.size - 1
            sl = {"y": slice(y0, y0 + halo), "x": slice(x0, x0 + halo)}
            nd = np.asarray(self.ndsi.isel(sl).values, np.float32)
            va = self.valid.isel(sl).values if "y" in self.valid.dims else self.valid.values[:, None, None]
            self._cache.update(id=tile_id, arrays=(nd, np.asarray(va, np.uint8), y0, x0))
        return self._cache["arrays"]

    def gather(self, starts: np.ndarray, with_context: bool) -> dict[str, np.ndarray]:
        """Samples for window ``starts`` ``(B, 3)``: ``x``, ``y``, ``mask`` (and ``context``), ``(B, T, 1, H, W)``."""
        if self.in_memory:
            return _gather(self.ndsi, self.valid, starts, self.spec, self.context if with_context else 0)
        tiles = self.tile_of(starts)
        parts = []
        for t in np.unique(tiles):  # batches are drawn tile by tile, so usually one tile
            nd, va, y0, x0 = self._region(int(t))
            local = starts[tiles == t] - np.array([0, y0, x0])
            parts.append((np.flatnonzero(tiles == t), _gather(nd, va, local, self.spec,
                                                             self.context if with_context else 0)))
        order = np.argsort(np.concatenate([p[0] for p in parts]))
        return {k: np.concatenate([p[1][k] for p in parts])[order] for k in parts[0][1]}


def _frames(arr: np.ndarray, t: np.ndarray, y: np.ndarray, x: np.ndarray, n: int, size: int) -> np.ndarray:
    """``arr[t + k, y:y+size, x:x+size]`` for k < n, as one bulk gather: ``(B, n, 1, size, size)``."""
    if arr.shape[1] == 1:  # per-period values broadcast over the patch
        per = arr[t[:, None] + np.arange(n)][:, :, 0, 0]
        return np.ascontiguousarray(np.broadcast_to(per[:, :, None, None, None], (len(t), n, 1, size, size)))
    view = sliding_window_view(arr, (n, size, size))
    return view[t, y, x][:, :, None]


def _gather(ndsi: np.ndarray, valid: np.ndarray, starts: np.ndarray, spec: PatchSpec,
            context: int) -> dict[str, np.ndarray]:
    t, y, x = starts[:, 0], starts[:, 1], starts[:, 2]
    seq = _frames(ndsi, t, y, x, spec.window, spec.size)
    out = {"x": seq[:, : spec.t_in], "y": seq[:, spec.t_in:],
           "mask": _frames(valid, t + spec.t_in, y, x, spec.t_out, spec.size).astype(np.float32)}
    if context:
        out["context"] = _frames(ndsi, t + spec.t_in - context, y, x, context, spec.size)
    return out


def open_patch_cube(cube: xr.Dataset, spec: PatchSpec) -> PatchCube:
    """Read a cube store's ``ndsi`` and observation mask into memory (or prepare tile reads if too large)."""
    if "ndsi" not in cube:
        raise GlacierflowError("cube has no 'ndsi' variable; pass a store written by build-cube")
    ndsi = cube["ndsi"].transpose("time", "y", "x")
    valid = observed(cube)
    ctx = max(spec.t_in, season_length(cube_period(cube)))
    per_pixel = "y" in valid.dims
    nbytes = ndsi.size * (4 + (1 if per_pixel else 0))
    if nbytes <= spec.max_memory_gb * 2**30:
        nd = np.ascontiguousarray(ndsi.values, dtype=np.float32)
        va = valid.values.astype(np.uint8)
        return PatchCube(nd, va if per_pixel else va[:, None, None], spec, ctx)
    enc = cube["ndsi"].encoding.get("chunks")
    chunk = enc[-1] if enc else (ndsi.chunks[-1][0] if ndsi.chunks else SPATIAL_CHUNK)
    tile = max(chunk, spec.size) // spec.stride * spec.stride or spec.stride
    return PatchCube(ndsi, valid, spec, ctx, tile=int(tile))


class PatchDataset(torch.utils.data.Dataset):
    """Map-style dataset whose items are whole batches: ``ds[list_of_indices]`` -> dict of tensors.

    Keys: ``x`` (B, t_in, 1, H, W), ``y`` and ``mask`` (B, t_out, 1, H, W), ``context`` (B, T_ctx, 1, H, W) when
    ``with_context``, and ``index`` (B, 3) window starts (t, y, x). Use with :func:`make_loader`.
    """

    def __init__(self, cube: PatchCube, starts: np.ndarray, with_context: bool = False) -> None:
        self.cube, self.starts, self.with_context = cube, np.asarray(starts, np.int64), with_context

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, idx: list[int] | np.ndarray) -> dict[str, torch.Tensor]:
        starts = self.starts[np.asarray(idx, np.int64).reshape(-1)]
        arrays = self.cube.gather(starts, self.with_context)
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
                num_workers: int = 0) -> torch.utils.data.DataLoader:
    """A DataLoader of whole batches (bulk gathers), seeded; works with ``num_workers > 0``."""
    order = BatchOrder(len(dataset), batch_size, shuffle=shuffle, seed=seed,
                       groups=None if dataset.cube.in_memory else dataset.cube.tile_of(dataset.starts))
    return torch.utils.data.DataLoader(dataset, batch_size=None, sampler=order, num_workers=num_workers,
                                       persistent_workers=False)


@dataclass
class Samples:
    """A cube cut into train/val/test windows: what :func:`prepare` returns."""

    cube: PatchCube
    starts: np.ndarray
    sets: dict[str, np.ndarray]
    validation: str
    season_length: int

    def dataset(self, name: str) -> PatchDataset:
        """The dataset of one set (``train``, ``val`` or ``test``); val/test carry ``context``."""
        if name not in self.sets:
            raise GlacierflowError(f"unknown split set {name!r}; choose one of: {', '.join(self.sets)}")
        return PatchDataset(self.cube, self.starts[self.sets[name]], with_context=name != "train")

    def summary(self) -> dict[str, Any]:
        """Sample counts per set and how validation was chosen."""
        return {**{f"n_{k}": int(v.size) for k, v in self.sets.items()}, "validation": self.validation,
                "season_length": self.season_length, "context": self.cube.context,
                "in_memory": self.cube.in_memory}


def prepare(cube: xr.Dataset, spec: PatchSpec) -> Samples:
    """Windows (xbatcher), split and arrays of a cube store opened lazily (``store.open_store``)."""
    starts = window_starts(cube["ndsi"].transpose("time", "y", "x"), spec)
    pc = open_patch_cube(cube, spec)
    shape = tuple(cube.sizes[d] for d in ("time", "y", "x"))
    sets, how = split_windows(starts, shape, spec, pc.context)  # type: ignore[arg-type]
    return Samples(pc, starts, sets, how, season_length(cube_period(cube)))


def set_loader(samples: Samples, name: str, spec: TrainSpec, *, shuffle: bool) -> Any:
    """Loader of one set; validation limited to a seeded subset of ``val_samples`` when that is set."""
    ds = samples.dataset(name)
    if name == "val" and 0 < spec.val_samples < len(ds):
        keep = np.sort(np.random.default_rng(spec.seed).choice(len(ds), spec.val_samples, replace=False))
        ds = PatchDataset(ds.cube, ds.starts[keep], with_context=ds.with_context)
    return make_loader(ds, spec.batch_size, shuffle=shuffle, seed=spec.seed, num_workers=spec.num_workers)
