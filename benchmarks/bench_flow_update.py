"""Benchmark ``flow --update`` against a fresh ``flow`` on the updated cube: time, pairs matched, equality.

Usage::

    python benchmarks/bench_flow_update.py --twin /tmp/gf-small-twin            # an existing twin
    python benchmarks/bench_flow_update.py --make tiny                          # make a tiny twin first

The loop a monitoring user runs, with real components: the twin served as of ``t1`` (``twin serve --until``),
``build_cube_store`` to ``t1`` and ``run_flow`` with the twin's outlines; the twin served as of ``t2`` (one more
quarter by default), ``update_cube`` to ``t2``, then ``update_flow`` (timed) and, as the baseline, ``run_flow``
on the updated cube into a fresh store (timed). Every variable of the velocity root and its ``pairs`` group is
compared: max |diff| <= 1e-6 and the same NaN pattern, or the script exits 1. Prints wall and CPU seconds
(this process: the threads scheduler runs here) and their ratio update / fresh.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from glacierflow.motion.update import update_flow
from glacierflow.motion.velocity import open_velocity, run_flow
from glacierflow.preprocess.build import build_cube_store
from glacierflow.preprocess.update import update_cube
from glacierflow.specs import CubeSpec, FlowSpec, PreprocessSpec
from glacierflow.twin.make import make_twin
from glacierflow.twin.serve import load_twin_meta, serve_twin


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _timed(fn: Any, *args: Any, **kw: Any) -> tuple[Any, float, float]:
    t, c = time.perf_counter(), _cpu()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t, _cpu() - c


def compare(a: str, b: str) -> tuple[float, bool]:
    """Max |diff| over every float variable of the root and ``pairs``, and whether NaNs and the rest match."""
    worst, same = 0.0, True
    for group in (None, "pairs"):
        x, y = open_velocity(a, group=group).load(), open_velocity(b, group=group).load()
        same &= set(x.data_vars) == set(y.data_vars) and dict(x.sizes) == dict(y.sizes)
        for name in x.data_vars:
            p, q = x[name].values, y[name].values
            if p.dtype.kind == "f":
                same &= bool((np.isnan(p) == np.isnan(q)).all())
                if np.isfinite(p).any():
                    worst = max(worst, float(np.nanmax(np.abs(p - q))))
            else:
                same &= bool((p == q).all())
        if group == "pairs":
            same &= bool((x["mid_date"].values == y["mid_date"].values).all())
    return worst, same


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--twin", help="an existing twin folder")
    ap.add_argument("--make", choices=("tiny", "small"), help="make a twin of this size (parvati, basic)")
    ap.add_argument("--t2", help="last date of the update (default: the twin's end)")
    ap.add_argument("--months", type=int, default=3, help="the update adds this many months (default 3)")
    ap.add_argument("--method", default=FlowSpec().method, help="flow matcher (default: the spec's)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gf-bench-flow-update-"))
    twin = Path(args.twin) if args.twin else work / "twin"
    if not args.twin:
        make_twin(twin, glacier="parvati", size=args.make or "tiny", seed=0, realism="basic")
    meta = load_twin_meta(twin)
    t2 = pd.Timestamp(args.t2 or meta["end"])
    t1 = (t2 + pd.Timedelta(days=1) - pd.DateOffset(months=args.months) - pd.Timedelta(days=1))
    cube, vel, fresh = str(work / "cube.zarr"), str(work / "v.zarr"), str(work / "fresh.zarr")
    spec, outline = FlowSpec(method=args.method), str(twin / "outlines.geojson")
    with serve_twin(twin, until=f"{t1:%Y-%m-%d}") as s:
        cs = CubeSpec(name="bench", bbox=tuple(meta["bbox"]), epsg=meta["epsg"], start=meta["start"],
                      end=f"{t1:%Y-%m-%d}", catalog=s["stac_url"])
        build_cube_store(cs, PreprocessSpec(), cube)
        first, w0, c0 = _timed(run_flow, cube, vel, spec, outline=outline)
    with serve_twin(twin, until=f"{t2:%Y-%m-%d}") as s:
        up = update_cube(cube, end=f"{t2:%Y-%m-%d}", catalog=s["stac_url"])
    u, wu, cu = _timed(update_flow, vel, cube)
    f, wf, cf = _timed(run_flow, cube, fresh, spec, outline=outline)
    worst, same = compare(vel, fresh)
    print(f"twin {twin} ({meta['size']}), cube to {t1:%Y-%m-%d} then +{up.new_scenes} scenes to {t2:%Y-%m-%d}; "
          f"method {spec.method}")
    print(f"first flow:   {first.pairs} pairs, {w0:.1f} s wall, {c0:.1f} s CPU")
    print(f"flow --update: {u.added} pairs matched, {u.kept} kept, {u.dropped} dropped; {wu:.1f} s wall, "
          f"{cu:.1f} s CPU")
    print(f"fresh flow:   {f.pairs} pairs; {wf:.1f} s wall, {cf:.1f} s CPU")
    print(f"update / fresh: wall {wu / wf:.2f}, CPU {cu / cf:.2f}; max |diff| {worst:.3g} (every variable, root and "
          f"pairs), same NaN pattern and pairs: {same}")
    ok = same and worst <= 1e-6 and u.kept + u.added == f.pairs
    print("equivalence: OK" if ok else "equivalence: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
