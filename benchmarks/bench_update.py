"""Benchmark ``build-cube --update`` against a full rebuild, and icechunk against the sibling swap.

Usage::

    python benchmarks/bench_update.py --twin /tmp/gf-full-twin                     # 9-year full twin
    python benchmarks/bench_update.py --twin /tmp/gf-full-twin --start 2019-01-01  # a shorter range

What is measured, all in one run (the twin served over HTTP as ``twin serve --until`` serves it):

1. ``build_cube_store`` over [start, t1] from the world as of t1 (the store to update; copied aside as it is).
2. ``update_cube`` of that store to t2 from the world as of t2 (one new quarter by default): wall and CPU time
   (this process: the default ``threads`` scheduler runs here), bytes written (new objects; the periods and
   guides that did not change are hard links) against the updated store's size.
3. ``build_cube_store`` over [start, t2] with ``reference_from`` the copy (``--reference-from``): the full
   rebuild the update must equal (it skips estimating the references, so it is a slightly cheaper baseline than
   a plain rebuild). Every variable of every group is compared: max |diff| <= 1e-6 and the same NaN pattern,
   or the script exits 1.
4. The storage step alone, the same update written two ways (data read from the updated store): the
   temporary-sibling swap (:func:`glacierflow.storage.store.write_update`: links, changed chunks, consolidated
   metadata, rename) on a copy of the old store, and an icechunk repository holding the old store (one commit)
   updated in one transaction (region write of the changed periods, append of the new ones, the scenes table,
   the new guides): seconds and bytes written; then whether a plain ``xr.open_zarr(path)`` reads each.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dask
import numpy as np
import xarray as xr

from glacierflow.preprocess.build import build_cube_store
from glacierflow.preprocess.update import PERIODIC, update_cube
from glacierflow.specs import CubeSpec, PreprocessSpec
from glacierflow.storage import store
from glacierflow.twin.serve import serve_twin

GROUPS = (None, "scenes", "guides", "reference")


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _du(path: str | Path) -> int:
    """Bytes of the files under ``path`` (each inode once)."""
    seen, total = set(), 0
    for root, _, files in os.walk(path):
        for f in files:
            st = os.stat(os.path.join(root, f))
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_size
    return total


def _timed(fn: Any, *args: Any, **kw: Any) -> tuple[Any, float, float]:
    t, c = time.perf_counter(), _cpu()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t, _cpu() - c


def compare(a: str, b: str) -> tuple[float, int, list[str]]:
    """Max |diff| over every float variable of every group, NaN-pattern mismatches, other differences."""
    worst, nan_bad, other = 0.0, 0, []
    for group in GROUPS:
        x, y = xr.open_zarr(a, group=group), xr.open_zarr(b, group=group)
        if sorted(x.variables) != sorted(y.variables):
            other.append(f"{group}: variables {sorted(set(x.variables) ^ set(y.variables))}")
            continue
        for name in x.variables:
            u, v = x[name].values, y[name].values
            if u.shape != v.shape:
                other.append(f"{group}/{name}: shape {u.shape} vs {v.shape}")
            elif u.dtype.kind == "f":
                nan_bad += int((np.isnan(u) != np.isnan(v)).sum())
                worst = max(worst, float(np.nanmax(np.abs(u - v), initial=0.0)))
            elif not np.array_equal(u, v):
                other.append(f"{group}/{name}")
    return worst, nan_bad, other


def _tree(url: str) -> xr.DataTree:
    """The store at ``url`` as a lazy tree (encodings dropped, as a writer gets it)."""
    nodes = {}
    for group in GROUPS:
        ds = xr.open_zarr(url, group=group, decode_coords="all")
        for var in ds.variables.values():
            var.encoding = {}
        ds.attrs = {k: v for k, v in ds.attrs.items() if k != store.COMPLETE}
        nodes["/" if group is None else group] = ds
    return xr.DataTree.from_dict(nodes)


def swap_write(new: str, old_copy: str, first: int) -> tuple[float, int]:
    """The update's storage step by the sibling swap: seconds, bytes written."""
    old_ids = [str(s) for s in xr.open_zarr(old_copy, group="guides")["scene"].values]
    where = {s: k for k, s in enumerate(old_ids)}
    new_ids = [str(s) for s in xr.open_zarr(new, group="guides")["scene"].values]
    reuse = {n: {k: k for k in range(first)} for n in PERIODIC}
    reuse["guides/guide"] = {i: where[s] for i, s in enumerate(new_ids) if s in where}
    t = time.perf_counter()
    sizes = store.write_update(_tree(new), old_copy, reuse=reuse)
    return time.perf_counter() - t, sizes["written"]


def icechunk_write(new: str, old: str, repo_dir: str, first: int, n_old: int) -> tuple[float, int, str]:
    """The same step in an icechunk repository holding ``old``: seconds, bytes written, plain-reader outcome."""
    import icechunk

    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(repo_dir))
    session = repo.writable_session("main")
    for group in GROUPS:
        ds = xr.open_zarr(old, group=group, decode_coords="all")
        for var in ds.variables.values():
            var.encoding = {}
        ds.to_zarr(session.store, group=group, mode="w" if group is None else "w-", consolidated=False)
    session.commit("the store as built")
    before = _du(repo_dir)
    t = time.perf_counter()
    session = repo.writable_session("main")
    root = xr.open_zarr(new, decode_coords="all")
    changed = root.isel(time=slice(first, n_old)).drop_vars(
        [v for v in root.variables if "time" not in root[v].dims])
    if changed.sizes["time"]:
        changed.to_zarr(session.store, region={"time": slice(first, n_old)}, consolidated=False)
    added = root.isel(time=slice(n_old, None))
    for var in added.variables.values():
        var.encoding = {}
    added.drop_vars([v for v in added.variables if "time" not in added[v].dims]).to_zarr(
        session.store, append_dim="time", consolidated=False)
    scenes = xr.open_zarr(new, group="scenes")
    for var in scenes.variables.values():
        var.encoding = {}
    scenes.to_zarr(session.store, group="scenes", mode="w", consolidated=False)
    old_n = xr.open_zarr(old, group="guides").sizes["scene"]
    guides = xr.open_zarr(new, group="guides").isel(scene=slice(old_n, None))
    for var in guides.variables.values():
        var.encoding = {}
    guides.drop_vars(["x", "y", "spatial_ref"], errors="ignore").to_zarr(
        session.store, group="guides", append_dim="scene", consolidated=False)
    session.commit("update")
    seconds = time.perf_counter() - t
    try:
        xr.open_zarr(repo_dir)
        plain = "readable"
    except Exception as err:  # noqa: BLE001 - the outcome is what is reported
        plain = f"not readable ({type(err).__name__}: {' '.join(str(err).split())[:90]})"
    return seconds, _du(repo_dir) - before, plain


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--twin", default="/tmp/gf-full-twin", help="twin folder (glacierflow twin make --size full)")
    p.add_argument("--start", default="2013-01-01")
    p.add_argument("--t1", default="2021-09-30", help="the store's end (the world as of this day)")
    p.add_argument("--t2", default="2021-12-31", help="the update's end (one quarter later)")
    p.add_argument("--workdir", default=None)
    p.add_argument("--no-icechunk", action="store_true")
    a = p.parse_args(argv)
    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench-update-"))
    cube, before, rebuilt = str(work / "cube.zarr"), str(work / "before.zarr"), str(work / "rebuilt.zarr")
    for path in (cube, before, rebuilt):
        shutil.rmtree(path, ignore_errors=True)
    meta = json.loads((Path(a.twin) / "twin.json").read_text())
    res: dict[str, Any] = {"range": f"{a.start}..{a.t1} -> {a.t2}", "load_start": os.getloadavg()}
    with dask.config.set(scheduler="threads"):
        with serve_twin(a.twin, until=a.t1) as served:
            spec = CubeSpec(name=meta["glacier"], bbox=tuple(meta["bbox"]), epsg=meta["epsg"], start=a.start,
                            end=a.t1, catalog=served["stac_url"])
            _, res["build_t1_s"], res["build_t1_cpu"] = _timed(build_cube_store, spec, PreprocessSpec(), cube)
        shutil.copytree(cube, before)
        with serve_twin(a.twin, until=a.t2) as served:
            summary, res["update_s"], res["update_cpu"] = _timed(update_cube, cube, end=a.t2,
                                                                 catalog=served["stac_url"])
            spec = spec.replace(end=a.t2, catalog=served["stac_url"])
            _, res["rebuild_s"], res["rebuild_cpu"] = _timed(build_cube_store, spec, PreprocessSpec(), rebuilt,
                                                             reference_from=before)
    res["summary"] = summary.lines()
    res["store_bytes"] = _du(cube)
    res["bytes_written"] = summary.bytes_written
    res["max_diff"], res["nan_mismatch"], res["other"] = compare(cube, rebuilt)
    n_old = xr.open_zarr(before).sizes["time"]
    first = n_old - len(summary.periods_changed)
    if not a.no_icechunk:
        copy = str(work / "swap.zarr")
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(before, copy)
        res["swap_s"], res["swap_bytes"] = swap_write(cube, copy, first)
        repo = str(work / "icechunk")
        shutil.rmtree(repo, ignore_errors=True)
        res["icechunk_s"], res["icechunk_bytes"], res["icechunk_plain"] = icechunk_write(cube, before, repo,
                                                                                         first, n_old)
        res["swap_plain"] = "readable" if xr.open_zarr(copy).sizes["time"] else "empty"
    res["load_end"] = os.getloadavg()
    _report(res)
    ok = res["max_diff"] <= 1e-6 and res["nan_mismatch"] == 0 and not res["other"]
    print("equality check:", "passed" if ok else "FAILED")
    return 0 if ok else 1


def _report(r: dict[str, Any]) -> None:
    print(f"range {r['range']}  (load average at start {r['load_start'][0]:.1f}, at end {r['load_end'][0]:.1f})")
    for line in r["summary"]:
        print("  " + line)
    print(f"build to t1: {r['build_t1_s']:.1f} s wall, {r['build_t1_cpu']:.1f} s CPU")
    print(f"update:      {r['update_s']:.1f} s wall, {r['update_cpu']:.1f} s CPU")
    print(f"rebuild:     {r['rebuild_s']:.1f} s wall, {r['rebuild_cpu']:.1f} s CPU (--reference-from)")
    print(f"update / rebuild: wall {r['update_s'] / r['rebuild_s']:.3f} (target <= 0.10), "
          f"CPU {r['update_cpu'] / r['rebuild_cpu']:.3f}")
    print(f"bytes written {r['bytes_written'] / 1e6:.1f} MB of a {r['store_bytes'] / 1e6:.1f} MB store: "
          f"{r['bytes_written'] / r['store_bytes']:.3f} (target <= 0.05)")
    print(f"update vs rebuild: max |diff| {r['max_diff']:.3g}, NaN mismatches {r['nan_mismatch']}, "
          f"other differences {r['other'] or 'none'}")
    if "swap_s" in r:
        print(f"storage step, sibling swap: {r['swap_s']:.2f} s, {r['swap_bytes'] / 1e6:.2f} MB; xr.open_zarr: "
              f"{r['swap_plain']}")
        print(f"storage step, icechunk:     {r['icechunk_s']:.2f} s, {r['icechunk_bytes'] / 1e6:.2f} MB; "
              f"xr.open_zarr: {r['icechunk_plain']}")


if __name__ == "__main__":
    sys.exit(main())
