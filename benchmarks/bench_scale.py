"""Benchmark scale-out: build-cube on 1 vs 2 local workers, on the local Dask Gateway, and two glaciers at once.

Usage::

    glacierflow twin make /tmp/gf-full-twin --size full
    glacierflow twin make /tmp/gf-parvati-small --size small --realism basic
    glacierflow twin make /tmp/gf-aletsch-small --glacier aletsch --size small --realism basic
    python benchmarks/bench_scale.py --twin /tmp/gf-full-twin --years 1 \
        --sites /tmp/gf-parvati-small /tmp/gf-aletsch-small --site-years 2 --json /tmp/gf-bench-scale.json

What is measured, all in one run (one Python process; each twin served over HTTP as ``twin serve`` does):

1. **Local workers**: :func:`glacierflow.preprocess.build.build_cube_store` on ``--twin`` with
   ``get_client("threads", workers=N)`` (the CLI's default, ``--workers N`` threads) and ``get_client("local",
   workers=N)`` for N = 1 and 2 (single-threaded worker processes, i.e. ``--cluster local --workers N``):
   cluster start, build wall time, CPU seconds of the whole process tree (user + system of this process and
   every child: nannies, workers) and the ratio 1-worker / 2-workers (issue target >= 1.6).
2. **Local Dask Gateway** (``deploy/gateway-config.py`` via :func:`glacierflow.testing.local_gateway`):
   time from ``get_client("gateway://...", workers=2)`` to a cluster with 2 workers set up (worker plugin
   included); per-task overhead (``--tasks`` no-op tasks, ``client.map`` + ``gather``) on the gateway
   cluster vs a LocalCluster of 2 workers; and the same build-cube on the gateway with 2 workers.
3. **Two glaciers**: the ``--sites`` twins behind one STAC server; on one LocalCluster (the ``local``
   default), one site after the other vs both at once (:func:`glacierflow.geo.sites.build_sites`, what
   ``build-cube --sites`` does). A CLI user running the sites one after the other also pays a cluster start
   per run: reported as well.

The machine is shared: the load average is recorded before and after each measurement, and CPU seconds are
reported next to wall times (less sensitive to other jobs). ``--profile`` adds where the workers' time went
in each local build (Dask's task stream: busy fraction of the worker threads, transfer time, the task kinds
that took longest); bokeh (performance_report) is not needed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

try:
    import psutil
except ImportError:  # pragma: no cover - told to the user
    sys.exit("bench_scale.py needs psutil for CPU times: pip install psutil")


def tree_cpu() -> float:
    """User + system CPU seconds of this process and its living descendants."""
    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system + getattr(t, "children_user", 0) + getattr(t, "children_system", 0)
        except psutil.Error:
            pass
    return total


def load() -> float:
    """1-minute load average."""
    return round(os.getloadavg()[0], 1)


def spec_for(meta: dict[str, Any], url: str, years: float | None, name: str = "bench") -> Any:
    """The CubeSpec of a served twin, its date range cut to ``years`` from its start."""
    from glacierflow.specs import CubeSpec

    start, end = pd.Timestamp(meta["start"]), pd.Timestamp(meta["end"])
    if years:
        end = min(end, start + pd.DateOffset(days=int(round(365.25 * years))) - pd.Timedelta(days=1))
    return CubeSpec(name=name, bbox=tuple(meta["bbox"]), epsg=int(meta["epsg"]), start=f"{start:%Y-%m-%d}",
                    end=f"{end:%Y-%m-%d}", catalog=url)


def task_profile(records: list[dict[str, Any]], wall: float, threads: int) -> dict[str, Any]:
    """Where the workers' time went, from Dask's task stream: busy fraction, transfers, top task kinds."""
    from dask.utils import key_split

    by: dict[str, list[float]] = {}
    compute = transfer = 0.0
    for r in records:
        for ss in r.get("startstops", ()):
            d = ss["stop"] - ss["start"]
            if ss["action"] == "compute":
                compute += d
                by.setdefault(key_split(r["key"]), [0.0, 0])[0] += d
                by[key_split(r["key"])][1] += 1
            elif ss["action"] == "transfer":
                transfer += d
    top = sorted(by.items(), key=lambda kv: -kv[1][0])[:8]
    return {"tasks": sum(n for _, n in by.values()), "task_compute_s": round(compute, 1),
            "transfer_s": round(transfer, 1), "busy_fraction": round(compute / (wall * threads), 2) if wall else None,
            "top": {k: [round(v, 1), n] for k, (v, n) in top}}


def timed_build(spec: Any, out: str, profile: bool = False) -> dict[str, Any]:
    """build_cube_store on the current Dask client: wall, tree CPU, load before/after, scenes used."""
    from distributed import get_client, get_task_stream

    from glacierflow.preprocess.build import build_cube_store
    from glacierflow.specs import PreprocessSpec

    l0, c0, t0 = load(), tree_cpu(), time.perf_counter()
    with get_task_stream() if profile else nullcontext() as ts:
        s = build_cube_store(spec, PreprocessSpec(), out, overwrite=True)
    wall = time.perf_counter() - t0
    out_ = {"wall_s": round(wall, 2), "cpu_s": round(tree_cpu() - c0, 1), "load": [l0, load()],
            "scenes_used": s.scenes_used, "periods": s.periods}
    if profile:
        threads = sum(w["nthreads"] for w in get_client().scheduler_info()["workers"].values())
        out_["profile"] = task_profile(ts.data, wall, threads)
    return out_


def local_workers(spec: Any, tmp: str, profile: bool, order: tuple[int, ...] = (1, 2),
                  kind: str = "local") -> dict[str, Any]:
    """Part 1: the same build on 1 and 2 workers (in ``order``): ``local`` single-threaded worker processes,
    or ``threads`` (the CLI's default: dask's threaded scheduler with N threads)."""
    from glacierflow.compute.cluster import get_client

    out: dict[str, Any] = {}
    for n in order:
        t0 = time.perf_counter()
        with get_client(kind, workers=n) as client:
            start = round(time.perf_counter() - t0, 2)
            if kind == "local":
                client.wait_for_workers(n)
            out[f"{kind}_{n}"] = {"cluster_start_s": start,
                                  **timed_build(spec, f"{tmp}/{kind}{n}.zarr", profile and kind == "local")}
        print(f"  {kind}, {n} worker(s): {out[f'{kind}_{n}']}", flush=True)
    out["ratio_1_over_2"] = round(out[f"{kind}_1"]["wall_s"] / out[f"{kind}_2"]["wall_s"], 2)
    out["cpu_ratio_1_over_2"] = round(out[f"{kind}_1"]["cpu_s"] / out[f"{kind}_2"]["cpu_s"], 2)
    return out


def _noop(i: int) -> int:
    return i


def per_task_overhead(client: Any, n: int) -> float:
    """Milliseconds per no-op task (submit, run, gather) on ``client``'s cluster (best of 3)."""
    best = float("inf")
    for rep in range(3):
        t0 = time.perf_counter()
        client.gather(client.map(_noop, range(n), key=[f"noop-{rep}-{i}" for i in range(n)]))
        best = min(best, time.perf_counter() - t0)
    return round(1000 * best / n, 3)


def gateway(spec: Any, tmp: str, tasks: int) -> dict[str, Any]:
    """Part 2: time to a ready gateway cluster, per-task overhead vs LocalCluster, build-cube on the gateway."""
    from glacierflow.compute.cluster import get_client
    from glacierflow.testing import local_gateway

    out: dict[str, Any] = {}
    with get_client("local", workers=2) as client:
        client.wait_for_workers(2)
        out["local_ms_per_task"] = per_task_overhead(client, tasks)
    gw_dir = Path(tmp) / "gateway"
    gw_dir.mkdir()
    with local_gateway(str(gw_dir)) as address:
        t0 = time.perf_counter()
        with get_client(f"gateway://{address}", workers=2) as client:
            out["gateway_first_worker_s"] = round(time.perf_counter() - t0, 2)
            client.wait_for_workers(2, timeout=300)
            out["gateway_ready_s"] = round(time.perf_counter() - t0, 2)
            out["gateway_ms_per_task"] = per_task_overhead(client, tasks)
            out["gateway_build"] = timed_build(spec, f"{tmp}/gateway.zarr")
    out["task_overhead_ratio"] = round(out["gateway_ms_per_task"] / out["local_ms_per_task"], 2)
    print(f"  gateway: {out}", flush=True)
    return out


def two_glaciers(site_dirs: list[Path], years: float | None, tmp: str) -> dict[str, Any]:
    """Part 3: two sites one after the other vs both at once, on one LocalCluster (``local`` default)."""
    from glacierflow.compute.cluster import get_client
    from glacierflow.geo.sites import build_sites
    from glacierflow.preprocess.build import build_cube_store
    from glacierflow.specs import PreprocessSpec
    from glacierflow.twin.serve import serve_twins

    out: dict[str, Any] = {}
    with serve_twins(site_dirs) as served:
        specs = {d.name: spec_for(served["metas"][d.name], served["stac_url"], years, d.name) for d in site_dirs}
        t0 = time.perf_counter()
        with get_client("local") as client:
            out["cluster_start_s"] = round(time.perf_counter() - t0, 2)
            client.wait_for_workers(1)
            l0, c0, t0 = load(), tree_cpu(), time.perf_counter()
            each = {n: timed_build(s, f"{tmp}/seq-{n}.zarr") for n, s in specs.items()}
            out["one_after_other"] = {"wall_s": round(time.perf_counter() - t0, 2), "cpu_s": round(tree_cpu() - c0, 1),
                                      "load": [l0, load()], "sites": each}
            l0, c0, t0 = load(), tree_cpu(), time.perf_counter()
            results = build_sites({n: (f"{tmp}/both-{n}.zarr", partial(build_cube_store, s, PreprocessSpec(),
                                                                        overwrite=True)) for n, s in specs.items()})
            out["together"] = {"wall_s": round(time.perf_counter() - t0, 2), "cpu_s": round(tree_cpu() - c0, 1),
                               "load": [l0, load()], "ok": [r.ok for r in results],
                               "errors": [r.error for r in results if not r.ok]}
    out["speedup"] = round(out["one_after_other"]["wall_s"] / out["together"]["wall_s"], 2)
    out["speedup_vs_separate_cli_runs"] = round(
        (out["one_after_other"]["wall_s"] + len(site_dirs) * out["cluster_start_s"])
        / (out["together"]["wall_s"] + out["cluster_start_s"]), 2)
    print(f"  two glaciers: {out}", flush=True)
    return out


def main() -> None:
    """Run the parts asked for and print/write the figures."""
    from glacierflow.twin.serve import serve_twin

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--twin", type=Path, help="twin for parts 1-2 (the full twin)")
    ap.add_argument("--years", type=float, default=None, help="limit part 1-2's date range to the first N years")
    ap.add_argument("--sites", type=Path, nargs="*", default=[], help="twins of two glaciers for part 3")
    ap.add_argument("--site-years", type=float, default=None, help="limit part 3's date range to N years")
    ap.add_argument("--tasks", type=int, default=500, help="no-op tasks for the per-task overhead")
    ap.add_argument("--skip-gateway", action="store_true")
    ap.add_argument("--order", default="1,2", help="order of the local runs (2,1 checks for drift in the load)")
    ap.add_argument("--profile", action="store_true", help="task-stream profile of the local builds")
    ap.add_argument("--kinds", default="threads,local", help="part 1's schedulers (threads = the CLI default)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    res: dict[str, Any] = {"cores": len(os.sched_getaffinity(0)), "uptime_load": list(os.getloadavg()),
                           "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    with tempfile.TemporaryDirectory(prefix="gf-bench-scale-") as tmp:
        if args.twin:
            with serve_twin(args.twin) as served:
                spec = spec_for(served["meta"], served["stac_url"], args.years)
                res["twin"] = {"dir": str(args.twin), "shape": served["meta"].get("shape"),
                               "range": [spec.start, spec.end]}
                order = tuple(int(n) for n in args.order.split(","))
                for kind in args.kinds.split(","):  # threads: the CLI's default scheduler
                    res[kind] = local_workers(spec, tmp, args.profile, order, kind)
                if not args.skip_gateway:
                    res["gateway"] = gateway(spec, tmp, args.tasks)
        if args.sites:
            res["two_glaciers"] = two_glaciers(args.sites, args.site_years, tmp)
    res["finished_load"] = list(os.getloadavg())
    print(json.dumps(res, indent=1))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
