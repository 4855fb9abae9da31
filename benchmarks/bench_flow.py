"""Benchmark the flow stage: seconds per 860 x 1050 pair for each method, and Dask-parallel vs serial.

Usage::

    python benchmarks/bench_flow.py                        # 13 synthetic scenes, 12 consecutive pairs
    python benchmarks/bench_flow.py --scenes 13 --workers 2 --max-speed 150

The synthetic scenes are guide-like images (smooth random texture, a glacier band moving 1 px per
scene east, the rest still), 30 days apart. Per-pair seconds: the matcher alone on one pair, in this
process (1 thread), best of ``--repeat``. Serial: ``velocity(...).compute(scheduler="sync")``;
parallel: the same graph on a distributed LocalCluster (``--workers`` processes, 1 thread each). Both
compute the whole velocity store content (per-pair fields, stable-ground statistics, composite) from
in-memory guides; the ratio is parallel / serial measured in the same run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import xarray as xr
from scipy import ndimage

from glacierflow.config import FlowSpec
from glacierflow.flow import DAYS_PER_YEAR, search_px, velocity
from glacierflow.matching import METHODS, prepare
from glacierflow.testing import synthetic_cube


def scenes(n: int, ny: int = 860, nx: int = 1050, seed: int = 0) -> tuple[xr.Dataset, xr.DataArray, xr.DataArray]:
    """A cube (for the grid), ``n`` guide images 30 days apart, and the ice mask (the moving band)."""
    rng = np.random.default_rng(seed)
    pad = n + 8
    field = ndimage.gaussian_filter(rng.standard_normal((ny + 2 * pad, nx + 2 * pad)), 1.5).astype(np.float32)
    rows, cols = np.mgrid[0:ny, 0:nx].astype(np.float32)
    band = (rows > ny * 0.4) & (rows < ny * 0.6)
    frames = np.stack([ndimage.map_coordinates(field, [rows + pad, cols + pad - k * band], order=1)
                       for k in range(n)]).astype(np.float32)
    cube = synthetic_cube(n_periods=2, size=(ny, nx))
    times = pd.date_range("2019-01-01", periods=n, freq="30D")
    guides = xr.DataArray(frames, dims=("scene", "y", "x"), coords={
        "scene": [f"S{k:03d}" for k in range(n)], "time": ("scene", times), "wrs_path": ("scene", [148] * n),
        "y": cube["y"], "x": cube["x"]})
    return cube, guides, xr.DataArray(band, dims=("y", "x"))


def per_pair_seconds(a: np.ndarray, b: np.ndarray, spec: FlowSpec, repeat: int) -> float:
    search = search_px(spec, 30 / DAYS_PER_YEAR, 30.0)
    pa, pb = prepare(a, "guide"), prepare(b, "guide")
    best = np.inf
    for _ in range(repeat):
        t = time.perf_counter()
        METHODS[spec.method](pa, pb, spec, search)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=13)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--max-speed", type=float, default=150.0, help="sets the NCC search range")
    args = ap.parse_args()
    from dask.distributed import Client, LocalCluster

    cube, guides, ice = scenes(args.scenes)
    print(f"{args.scenes} scenes of {guides.sizes['y']}x{guides.sizes['x']} px, {args.scenes - 1} consecutive pairs")
    print(f"{'method':10s} {'s/pair':>7s} {'serial':>8s} {'parallel':>9s} {'ratio':>6s}")
    specs = {m: FlowSpec(method=m, pairs="consecutive", max_speed=args.max_speed, max_pairs_per_scene=2)
             for m in METHODS}
    one, serial, parallel = {}, {}, {}
    for method, spec in specs.items():  # serial first: graphs built under a Client would use P2P rechunks
        one[method] = per_pair_seconds(guides.values[0], guides.values[1], spec, args.repeat)
        t = time.perf_counter()
        velocity(cube, spec, guides=guides, ice_mask=ice).compute(scheduler="sync")
        serial[method] = time.perf_counter() - t
    cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True)
    with cluster, Client(cluster) as client:
        for method, spec in specs.items():
            t = time.perf_counter()
            velocity(cube, spec, guides=guides, ice_mask=ice).compute(scheduler=client)
            parallel[method] = time.perf_counter() - t
    for method in specs:
        print(f"{method:10s} {one[method]:7.2f} {serial[method]:7.1f}s {parallel[method]:8.1f}s "
              f"{parallel[method] / serial[method]:6.2f}")

if __name__ == "__main__":
    main()
