"""Loader throughput: glacierflow's patch loader vs a numpy floor and vs a per-patch xbatcher loop.

All three read the same in-memory cube (a synthetic cube shaped like the small twin's 8-year quarterly
cube: 32 periods x 401 x 401 px) and produce float32 torch tensors of 4 -> 4 sequences of 50 x 50 px
(stride 10, the paper's):

* floor: ``sliding_window_view`` + one fancy-index per batch + ``torch.from_numpy`` (inputs and targets only);
* glacierflow: ``patches.prepare`` (xbatcher windows, split) + ``make_loader`` over the training set, in
  shuffled batches, with inputs, targets and the observation mask;
* xbatcher: ``BatchGenerator`` over the DataArray, one patch at a time, ``torch.from_numpy(patch.values)``
  (timed on the first ``--xbatcher-patches`` patches; its rate is per patch, so it extrapolates).

Prints sequences/s and the ratios measured in this run (targets: >= 0.5 of the floor, >= 20x xbatcher).
Usage: ``python benchmarks/bench_loader.py [--batch-size 64] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import xbatcher
from numpy.lib.stride_tricks import sliding_window_view

from glacierflow.learn import patches
from glacierflow.specs import PatchSpec
from glacierflow.testing import synthetic_cube


def floor_rate(nd: np.ndarray, starts: np.ndarray, spec: PatchSpec, batch: int, rng: np.random.Generator) -> float:
    """Sequences/s of the plain numpy gather (the floor)."""
    view = sliding_window_view(nd, (spec.window, spec.size, spec.size))
    order = rng.permutation(len(starts))
    t0 = time.perf_counter()
    for i in range(0, len(order), batch):
        t, y, x = starts[order[i: i + batch]].T
        seq = view[t, y, x]
        xs, ys = torch.from_numpy(seq[:, : spec.t_in, None]), torch.from_numpy(seq[:, spec.t_in:, None])
        assert xs.dtype == ys.dtype == torch.float32
    return len(order) / (time.perf_counter() - t0)


def loader_rate(samples: patches.Samples, batch: int) -> float:
    """Sequences/s of glacierflow's loader over the training set (x, y, mask)."""
    loader = patches.make_loader(samples.dataset("train"), batch, shuffle=True, seed=0)
    t0, n = time.perf_counter(), 0
    for b in loader:
        n += len(b["x"])
    return n / (time.perf_counter() - t0)


def xbatcher_rate(ds: object, spec: PatchSpec, n_patches: int) -> float:
    """Sequences/s of a plain per-patch xbatcher loop (first ``n_patches`` patches)."""
    gen = xbatcher.BatchGenerator(ds["ndsi"], input_dims={"time": spec.window, "y": spec.size, "x": spec.size},
                                  input_overlap={"time": spec.window - 1, "y": spec.size - spec.stride,
                                                 "x": spec.size - spec.stride})
    t0, n = time.perf_counter(), 0
    for p in gen:
        a = torch.from_numpy(np.ascontiguousarray(p.values, np.float32))
        xs, ys = a[: spec.t_in, None], a[spec.t_in:, None]
        n += 1
        if n >= n_patches:
            break
    assert xs.shape[0] == spec.t_in and ys.shape[0] == spec.t_out
    return n / (time.perf_counter() - t0)


def main() -> None:
    """Run the three loaders and print rates and ratios."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="best of N runs for each loader")
    ap.add_argument("--xbatcher-patches", type=int, default=400)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    ds = synthetic_cube(n_periods=32, size=401, period="3MS", drift=(0.5, 0.2), noise=0.05)
    spec = PatchSpec()
    samples = patches.prepare(ds, spec)
    starts = samples.starts[samples.sets["train"]]
    nd = samples.cube.ndsi
    rng = np.random.default_rng(0)
    floor = max(floor_rate(nd, starts, spec, args.batch_size, rng) for _ in range(args.repeats))
    ours = max(loader_rate(samples, args.batch_size) for _ in range(args.repeats))
    xb = max(xbatcher_rate(ds, spec, args.xbatcher_patches) for _ in range(args.repeats))
    print(f"cube {nd.shape} float32 in memory; {len(starts)} training sequences of 4 -> 4 x 50 x 50 px, "
          f"batch {args.batch_size}, {args.threads} torch thread(s), best of {args.repeats}")
    print(f"numpy sliding_window_view floor : {floor:10.0f} sequences/s")
    print(f"glacierflow loader (x, y, mask)  : {ours:10.0f} sequences/s   {ours / floor:.2f} x floor (target >= 0.5)")
    print(f"per-patch xbatcher loop          : {xb:10.0f} sequences/s   loader is {ours / xb:.0f} x faster "
          "(target >= 20)")


if __name__ == "__main__":
    main()
