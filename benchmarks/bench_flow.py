"""Benchmark the flow stage: seconds per full-size pair, and Dask-parallel vs serial in the same run.

Usage::

    python benchmarks/bench_flow.py                 # synthetic 860 x 1050 cube, 8 consecutive pairs
    python benchmarks/bench_flow.py --pairs 12 --workers 2
    python benchmarks/bench_flow.py --cube path/to/cube.zarr --pairs-kind annual

Serial baseline: read the frames from the store, then a plain Python loop calling the same per-pair
function the Dask graph uses. Parallel: ``velocity(open_zarr(store)).compute()`` on a distributed
LocalCluster (``--workers`` processes, 1 thread each). Both include reading the store. The parallel
run computes the whole velocity store content (per-pair fields and the median composite). The
per-pair time is also given without the forward-backward check (``max_fb_error=0``), which runs
Farnebäck a second time, backwards.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from scipy import ndimage

from glacierflow import store
from glacierflow.flow import DAYS_PER_YEAR, FlowSpec, _grid_step, _pair_velocity, pair_indices, velocity


def synthetic_cube(path: Path, n_periods: int, ny: int = 860, nx: int = 1050, seed: int = 0) -> str:
    """Textured snow-mask sequence, a glacier band moving 1 px/period east, written as a cube store."""
    rng = np.random.default_rng(seed)
    pad = 20 + n_periods
    field = ndimage.gaussian_filter(rng.standard_normal((ny + 2 * pad, nx + 2 * pad)), 3.0)
    field = (field - field.min()) / (field.max() - field.min())
    r, c = np.mgrid[0:ny, 0:nx].astype(np.float64)
    band = np.clip(1.0 - ((r - ny / 2) / (ny / 6)) ** 2, 0, None)
    frames = []
    for k in range(n_periods):
        a = ndimage.map_coordinates(field, [r + pad, c + pad - k * band], order=1, mode="nearest")
        nd = a * 1.1 - 0.1
        frames.append(np.where(nd >= 0.3, nd, 0.0).astype(np.float32))
    x = 600_000.0 + 15.0 + 30.0 * np.arange(nx)
    y = 3_550_000.0 - 15.0 - 30.0 * np.arange(ny)
    wkt = 'PROJCS["WGS 84 / UTM zone 43N",AUTHORITY["EPSG","32643"]]'
    ds = xr.Dataset(
        {
            "ndsi": (("time", "y", "x"), np.stack(frames), {"grid_mapping": "spatial_ref"}),
            "n_scenes": ("time", np.full(n_periods, 2, dtype=np.int16)),
            "interpolated": ("time", np.zeros(n_periods, dtype=bool)),
        },
        coords={
            "time": pd.date_range("2019-01-01", periods=n_periods, freq="3MS"),
            "y": y, "x": x,
            "spatial_ref": xr.DataArray(0, attrs={"crs_wkt": wkt, "spatial_ref": wkt, "epsg": 32643}),
        },
    )
    return store.write_store(ds.chunk({"time": 1}), str(path / "cube.zarr"))


def serial(url: str, spec: FlowSpec, n_pairs: int) -> tuple[float, list[float]]:
    """Plain loop over the pairs; returns total seconds and per-pair Farnebäck seconds."""
    t0 = time.perf_counter()
    cube = store.open_store(url)
    pairs = pair_indices(cube["time"].values, spec.pairs)[:n_pairs]
    needed = sorted({k for p in pairs for k in p})
    frames = dict(zip(needed, cube["ndsi"].isel(time=needed).values, strict=True))
    dx, dy = _grid_step(cube["x"], "x"), _grid_step(cube["y"], "y")
    times = pd.DatetimeIndex(cube["time"].values)
    flags = np.zeros(cube.sizes["time"], dtype=bool)
    per_pair = []
    for i, j in pairs:
        years = (times[j] - times[i]) / pd.Timedelta(days=1) / DAYS_PER_YEAR
        t = time.perf_counter()
        _pair_velocity(frames[i], frames[j], flags, i, j, spec, dx, dy, years)
        per_pair.append(time.perf_counter() - t)
    return time.perf_counter() - t0, per_pair


def _periods_for(cube: xr.Dataset, spec: FlowSpec, n_pairs: int) -> int:
    """Number of leading periods that hold the first ``n_pairs`` pairs."""
    return max(j for _, j in pair_indices(cube["time"].values, spec.pairs)[:n_pairs]) + 1


def parallel(url: str, spec: FlowSpec, n_pairs: int, client) -> float:
    """The library path on a distributed cluster."""
    t0 = time.perf_counter()
    cube = store.open_store(url)
    ds = velocity(cube.isel(time=slice(0, _periods_for(cube, spec, n_pairs))), spec)
    client.compute(ds, sync=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cube", help="existing cube store instead of the synthetic one")
    parser.add_argument("--pairs", type=int, default=8, help="number of pairs (default 8)")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes (default 2)")
    parser.add_argument("--repeat", type=int, default=2, help="repeats; the best time is reported")
    parser.add_argument("--pairs-kind", default="consecutive", help="consecutive | annual (default consecutive)")
    args = parser.parse_args()
    from dask.distributed import Client, LocalCluster

    spec = FlowSpec(pairs=args.pairs_kind)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.cube or synthetic_cube(Path(tmp), args.pairs + 1)
        cube = store.open_store(url)
        n_pairs = min(args.pairs, len(pair_indices(cube["time"].values, spec.pairs)))
        print(f"cube: {'synthetic' if not args.cube else url}  grid {cube.sizes['y']} x {cube.sizes['x']}  "
              f"pairs {n_pairs}  spec {spec.to_dict()}")
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            parallel(url, spec, 1, client)  # warm up workers (imports, OpenCV)
            ser, par, per_pair, per_pair_nofb = [], [], [], []
            for _ in range(args.repeat):
                total, pp = serial(url, spec, n_pairs)
                ser.append(total)
                per_pair.extend(pp)
                per_pair_nofb.extend(serial(url, dataclasses.replace(spec, max_fb_error=0.0), n_pairs)[1])
                par.append(parallel(url, spec, n_pairs, client))
        s, p = min(ser), min(par)
        print(f"seconds per pair (Farnebaeck + mask, 1 thread): median {np.median(per_pair):.3f} "
              f"min {min(per_pair):.3f} max {max(per_pair):.3f}; without the forward-backward check: "
              f"median {np.median(per_pair_nofb):.3f}")
        print(f"serial loop, {n_pairs} pairs incl. read: {s:.2f} s  ({s / n_pairs:.3f} s/pair)")
        print(f"dask LocalCluster {args.workers}x1 thread, {n_pairs} pairs: {p:.2f} s  "
              f"({p / n_pairs:.3f} s/pair)")
        print(f"ratio parallel/serial: {p / s:.2f}  (speed-up {s / p:.2f}x)")
        print(f"cpus {os.cpu_count()}, load average during run {os.getloadavg()[0]:.2f} "
              "(other processes on the machine distort both figures)")


if __name__ == "__main__":
    main()
