"""Benchmark the flow stage: seconds per 860 x 1050 pair for each method, and Dask-parallel vs serial.

Usage::

    python benchmarks/bench_flow.py                        # 13 synthetic scenes, 12 consecutive pairs
    python benchmarks/bench_flow.py --scenes 13 --cluster local --max-speed 150

The synthetic scenes are guide-like images (smooth random texture, a glacier band moving 1 px per
scene east, the rest still), 30 days apart, written to a temporary Zarr store and read back lazily as
``flow`` reads a cube store's guides (a graph that embeds in-memory arrays ships them with every
task). Per-pair seconds: the matcher alone on one pair, in this process (1 thread), best of
``--repeat``. Serial: the store written with dask's ``sync`` scheduler; parallel: the same graph on
``--cluster`` (:func:`glacierflow.compute.cluster.get_client`; default ``threads``, dask's threaded scheduler
on every core, as ``flow`` runs by default since issue 21; ``local``: one worker process with a thread per
core). Both compute and write the whole velocity store
(per-pair fields, stable-ground statistics, composite) with :func:`glacierflow.motion.velocity.write_velocity`, as
``flow`` does: the workers write the chunks, nothing is gathered to this process. The ratio is
parallel / serial, measured in the same run; the script exits non-zero when the two stores differ.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import xarray as xr
from scipy import ndimage

from glacierflow.compute.cluster import DEFAULT_CLUSTER, get_client
from glacierflow.motion.matching import METHODS, prepare
from glacierflow.motion.velocity import DAYS_PER_YEAR, search_px, velocity, write_velocity
from glacierflow.specs import FlowSpec
from glacierflow.testing import synthetic_cube


def scenes(n: int, folder: Path, ny: int = 860, nx: int = 1050, seed: int = 0
           ) -> tuple[xr.Dataset, xr.DataArray, xr.DataArray]:
    """A cube (for the grid), ``n`` lazy guide images 30 days apart from a Zarr store, and the ice mask."""
    rng = np.random.default_rng(seed)
    pad = n + 8
    field = ndimage.gaussian_filter(rng.standard_normal((ny + 2 * pad, nx + 2 * pad)), 1.5).astype(np.float32)
    rows, cols = np.mgrid[0:ny, 0:nx].astype(np.float32)
    band = (rows > ny * 0.4) & (rows < ny * 0.6)
    frames = np.stack([ndimage.map_coordinates(field, [rows + pad, cols + pad - k * band], order=1)
                       for k in range(n)]).astype(np.float32)
    cube = synthetic_cube(n_periods=2, size=(ny, nx))
    times = pd.date_range("2019-01-01", periods=n, freq="30D")
    guides = xr.DataArray(frames, dims=("scene", "y", "x"), name="guide", coords={
        "scene": [f"S{k:03d}" for k in range(n)], "time": ("scene", times), "wrs_path": ("scene", [148] * n),
        "y": cube["y"], "x": cube["x"]})
    path = folder / "guides.zarr"
    guides.to_dataset().chunk({"scene": 1}).to_zarr(path, mode="w", consolidated=False)
    lazy = xr.open_zarr(path, consolidated=False)["guide"]
    return cube, lazy, xr.DataArray(band, dims=("y", "x"))


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
    ap.add_argument("--cluster", default=DEFAULT_CLUSTER,
                    help=f"as flow's --cluster (default {DEFAULT_CLUSTER}, as flow; local, local:N, ...)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--max-speed", type=float, default=150.0, help="sets the NCC search range")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cube, guides, ice = scenes(args.scenes, Path(tmp))
        print(f"{args.scenes} scenes of {guides.sizes['y']}x{guides.sizes['x']} px, {args.scenes - 1} "
              f"consecutive pairs; parallel: --cluster {args.cluster}")
        specs = {m: FlowSpec(method=m, pairs="consecutive", max_speed=args.max_speed, max_pairs_per_scene=2)
                 for m in args.methods.split(",")}
        first = guides.isel(scene=[0, 1]).values
        one, serial, parallel = {}, {}, {}

        def run(spec: FlowSpec, name: str, sub: xr.DataArray | None = None) -> float:
            """Compute and write the velocity store, as ``flow`` does (the chunks go to disk, not to us)."""
            t = time.perf_counter()
            ds = velocity(cube, spec, guides=guides if sub is None else sub, ice_mask=ice)
            write_velocity(ds, str(Path(tmp) / f"{name}.zarr"), overwrite=True)
            return time.perf_counter() - t

        for method, spec in specs.items():  # serial first: graphs built under a Client would use P2P rechunks
            one[method] = per_pair_seconds(first[0], first[1], spec, args.repeat)
            with dask.config.set(scheduler="sync"):
                serial[method] = run(spec, f"serial-{method}")
        with get_client(args.cluster):  # the default scheduler until closed, as in every CLI stage
            run(specs[next(iter(specs))], "warm-up", guides.isel(scene=slice(0, 3)))  # imports on the workers
            for method, spec in specs.items():
                parallel[method] = run(spec, f"parallel-{method}")
            same = {m: _same_store(Path(tmp), m) for m in specs}
    print(f"{'method':10s} {'s/pair':>7s} {'serial':>8s} {'parallel':>9s} {'ratio':>6s} {'same':>5s}")
    for method in specs:
        print(f"{method:10s} {one[method]:7.2f} {serial[method]:7.1f}s {parallel[method]:8.1f}s "
              f"{parallel[method] / serial[method]:6.2f} {str(same[method]):>5s}")
    if not all(same.values()):
        raise SystemExit("parallel and serial stores differ: the equivalence check failed")


def _same_store(folder: Path, method: str) -> bool:
    """Serial and parallel runs wrote the same composite and per-pair velocities (bit for bit, NaN alike)."""
    a, b = (xr.open_zarr(folder / f"{k}-{method}.zarr", consolidated=False) for k in ("serial", "parallel"))
    pa, pb = (xr.open_zarr(folder / f"{k}-{method}.zarr", group="pairs", consolidated=False)
              for k in ("serial", "parallel"))
    return all(np.array_equal(x[v].values, y[v].values, equal_nan=True)
               for x, y, names in ((a, b, ("vx", "vy", "v_error")), (pa, pb, ("vx", "vy")))
               for v in names)


if __name__ == "__main__":
    main()
