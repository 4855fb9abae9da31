"""Benchmark ``build-cube`` on the offline twin, against baselines measured in the same run.

Usage::

    python benchmarks/bench_build_cube.py                                   # makes /tmp/gf-full-twin if missing
    python benchmarks/bench_build_cube.py --twin /tmp/gf-full-twin          # reuse a twin
    python benchmarks/bench_build_cube.py --twin /tmp/gf-full-twin --years 2 --seed-scenes 1   # quick run

What is measured (all in one run, the twin served over HTTP by ``serve_twin`` as ``twin serve`` does):

1. ``glacierflow build-cube`` as a child process (the CLI's default scheduler unless ``--cluster``) over the
   whole date range and over its first half, and the full range with every ``--compare`` set-up: wall time
   of the process (imports, cluster start, search, compute, Zarr write) and the library's own ``seconds``;
   peak memory = the maximum over time of the summed RSS of the process tree (client + scheduler/nanny/worker
   processes), sampled with psutil every 50 ms.
2. Serial baseline, a child process pinned to one core (``sched_setaffinity``; OpenCV sequential): the
   same items and grid, the same COG windows read with rasterio into numpy (over the same HTTP server), then
   the same steps in plain numpy/OpenCV scene by scene: DN -> reflectance + QA mask, drop scenes with more
   than ``max_missing`` missing, gap-fill (``preprocess.gap_fill_2d``, same ``max_iter``), NDSI, the guide of
   ``--guide-band`` (red by default; Gaussian high-pass), reference (NaN-mean + 3x3 median), ECC translation
   (``align.align_scene``), snow mask, period means with linear interpolation of empty periods, Zarr write.
   Its output is compared with build-cube's store (max |difference| of ``ndsi``).
3. Read floor: the same windows read with rasterio into numpy by ``--workers`` processes, nothing else.
4. Seed-style reference (the original research code's choices), measured on ``--seed-scenes`` used scenes
   inside the pinned child process:

   * gap-fill: a per-pixel Python loop applying the 5x5 tent kernel to every NaN pixel, pass after pass,
     until no gap is left. Run on the full scene for at most ``--seed-fill-seconds`` per scene, giving the
     cost per pixel visit; a pixel at chessboard distance d from the nearest valid pixel is visited
     ceil(d / 2) times, which gives the exact number of visits of every used scene (both bands), hence the
     extrapolated seed gap-fill time. The loop is checked against ``gap_fill_2d`` on a crop to completion.
   * ECC: ``align_scene`` with a homography, 10 000 iterations, eps 1e-10, OpenCV's default Gaussian
     filter (5), on the same guide and reference; run to completion on the seed scenes.

   Seed total = serial total - serial gap-fill - serial ECC + extrapolated seed gap-fill (all used scenes)
   + mean seed ECC x used scenes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

try:
    import psutil
except ImportError:  # pragma: no cover - told to the user
    sys.exit("bench_build_cube.py needs psutil for peak memory: pip install psutil")

ASSETS = ("green", "swir16", "qa_pixel")
#: build-cube and the serial reference must agree this closely on every pixel of ``ndsi`` (measured: 0 to 6e-8,
#: float32 rounding of the same arithmetic; a difference in what is read or averaged shows as 1e-2 .. 0.5)
AGREE = 1e-5
#: tasks run per stacked scene by build-cube before the fused graph (main at issue #21, 1-year full twin,
#: threads; benchmarks/README.md): the reference for the graph size printed here
GRAPH_BEFORE = 235.7
SEED_ECC = {"motion": "homography", "max_iter": 10_000, "eps": 1e-10, "gauss_filt_size": 5}


# --------------------------------------------------------------------------------------------- helpers


class PeakRSS:
    """Samples the summed RSS of a process and all its descendants in a thread; ``peak`` in bytes."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.peak_single = 0
        self.n_procs = 0
        self.cpu: dict[int, float] = {}  # pid -> last seen user + system seconds (the tree's CPU time)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total, single, n = 0, 0, 0
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                break
            for p in procs:
                try:
                    rss = p.memory_info().rss
                    t = p.cpu_times()
                    self.cpu[p.pid] = t.user + t.system
                except psutil.Error:
                    continue
                total += rss
                single = max(single, rss)
                n += 1
            self.peak = max(self.peak, total)
            self.peak_single = max(self.peak_single, single)
            self.n_procs = max(self.n_procs, n)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_measured(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a command, returning wall seconds, peak tree RSS and its stdout (raises on failure)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    with PeakRSS(proc.pid) as mem:
        out, err = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out}\n{err[-4000:]}")
    return {"wall": wall, "peak": mem.peak, "peak_single": mem.peak_single, "procs": mem.n_procs, "stdout": out,
            "cpu": sum(mem.cpu.values())}


def date_ranges(meta: dict[str, Any], years: float | None) -> tuple[tuple[str, str], tuple[str, str]]:
    """(full range, first half) as ISO dates; ``years`` cuts the full range from the twin's start."""
    start = pd.Timestamp(meta["start"])
    end = pd.Timestamp(meta["end"])
    if years:
        end = min(end, start + pd.DateOffset(days=int(round(365.25 * years))) - pd.Timedelta(days=1))
    mid = start + (end - start) / 2
    fmt = "%Y-%m-%d"
    return (start.strftime(fmt), end.strftime(fmt)), (start.strftime(fmt), mid.strftime(fmt))


def ensure_twin(path: Path, size: str) -> dict[str, Any]:
    """Load ``twin.json`` of ``path``, generating the twin there first if it does not exist."""
    from glacierflow.twin.make import load_twin_meta

    if not (path / "twin.json").exists():
        print(f"generating the {size} twin in {path} (once; reuse it with --twin {path}) ...", flush=True)
        subprocess.run(
            [sys.executable, "-m", "glacierflow", "twin", "make", str(path), "--size", size], check=True
        )
    return load_twin_meta(path)


# --------------------------------------------------------------------------------------------- reading


def scene_plan(stac_url: str, meta: dict[str, Any], start: str, end: str) -> dict[str, Any]:
    """Items and grid exactly as build-cube gets them (search + stackstac metadata; no pixel read)."""
    from glacierflow.ingest import catalog, cube
    from glacierflow.specs import CubeSpec

    spec = CubeSpec(name="bench", bbox=tuple(meta["bbox"]), epsg=int(meta["epsg"]), start=start, end=end,
                    catalog=stac_url)
    found = catalog.search(spec.catalog, bbox=spec.bbox, start=spec.start, end=spec.end,
                           collection=spec.collection, platforms=spec.platforms, max_cloud=spec.max_cloud)
    signed = catalog.sign_items(found.items, catalog.default_signer(spec.catalog))
    raw = cube.build_cube(signed, bbox_lonlat=spec.bbox, epsg=spec.epsg, resolution=spec.resolution,
                          platforms=spec.platforms)
    by_id = {str(it["id"]): it for it in signed}
    scenes = []
    for item_id, t in zip(raw["id"].values, raw["time"].values, strict=True):
        it = by_id[str(item_id)]
        assets = {}
        for a in (*ASSETS, *(k for k in ("red", "nir08") if k in it["assets"])):  # guide bands where present
            rb = (it["assets"][a].get("raster:bands") or [{}])[0]
            assets[a] = {"href": it["assets"][a]["href"], "scale": rb.get("scale", 1.0),
                         "offset": rb.get("offset", 0.0)}
        scenes.append({"id": str(item_id), "time": str(pd.Timestamp(t)), "assets": assets})
    return {"scenes": scenes, "epsg": int(meta["epsg"]), "transform": raw.attrs["transform"],
            "shape": [raw.sizes["y"], raw.sizes["x"]], "x": raw["x"].values.tolist(),
            "y": raw["y"].values.tolist()}


def read_window(href: str, epsg: int, transform: list[float], shape: tuple[int, int],
                resampling: str = "nearest") -> np.ndarray:
    """One asset on the cube grid as DN, the file's nodata outside it (0 for reflectance, 1 = QA fill).

    A scene in another CRS is warped with ``resampling`` and the file's own nodata, as build-cube's reader
    does (``glacierflow.ingest.cube.RESAMPLING``: bilinear reflectance, nearest bit fields).
    """
    import rasterio
    from rasterio.crs import CRS
    from rasterio.enums import Resampling
    from rasterio.transform import Affine
    from rasterio.vrt import WarpedVRT
    from rasterio.windows import from_bounds

    from glacierflow.ingest.readers import GDAL_ENV

    res, _, minx, _, _, maxy = transform
    h, w = shape
    with rasterio.Env(**GDAL_ENV.read.options), rasterio.open(href) as src:
        if src.crs == CRS.from_epsg(epsg) and abs(src.transform.a - res) < 1e-9:
            win = from_bounds(minx, maxy - h * res, minx + w * res, maxy, src.transform)
            win = win.round_offsets().round_lengths()
            return src.read(1, window=win, boundless=True, fill_value=src.nodata or 0, out_shape=(h, w))
        dst = Affine(res, 0.0, minx, 0.0, -res, maxy)
        with WarpedVRT(src, crs=CRS.from_epsg(epsg), transform=dst, width=w, height=h,
                       resampling=Resampling[resampling]) as vrt:
            # interpolated DN unrounded, as stackstac reads them (float32); bit fields stay integers
            return vrt.read(1, out_dtype="float32" if resampling != "nearest" else None)


def read_scene(scene: dict[str, Any], epsg: int, transform: list[float], shape: tuple[int, int]) -> list:
    """The three assets of one scene as DN arrays (each resampled as build-cube resamples it)."""
    from glacierflow.ingest.cube import BITFIELD_ASSETS, RESAMPLING

    return [read_window(scene["assets"][a]["href"], epsg, transform, shape,
                        RESAMPLING["bitfield" if a in BITFIELD_ASSETS else "reflectance"]) for a in ASSETS]


def read_floor(plan: dict[str, Any], workers: int) -> float:
    """Seconds to read every window of the plan with ``workers`` processes (pool start excluded)."""
    args = (plan["epsg"], plan["transform"], tuple(plan["shape"]))
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_noop, range(workers)))  # start the pool and import rasterio before timing
        t0 = time.perf_counter()
        for _ in pool.map(read_scene, plan["scenes"], *[[a] * len(plan["scenes"]) for a in args]):
            pass
        return time.perf_counter() - t0


def _noop(_: int) -> None:
    import rasterio  # noqa: F401

    import glacierflow.ingest.cube  # noqa: F401


def graph_size(stac_url: str, meta: dict[str, Any], start: str, end: str, tmp: str) -> dict[str, Any]:
    """Tasks of build-cube's whole graph (the store write, as ``storage.store.write`` builds it), per scene.

    Built in this process from the same plan as the CLI's (search + grid, no pixel read); only the store's
    metadata is written (to ``tmp``).
    """
    import dask

    from glacierflow.preprocess import build
    from glacierflow.specs import CubeSpec, PreprocessSpec

    spec = CubeSpec(name="bench", bbox=tuple(meta["bbox"]), epsg=int(meta["epsg"]), start=start, end=end,
                    catalog=stac_url)
    pre = PreprocessSpec()
    plan = build.plan_build(spec, pre, f"{tmp}/graph.zarr", overwrite=True)
    ds = build.cube_dataset(plan.items, spec, pre, reader=plan.reader, raw=plan.raw, rejected=plan.found.rejected)
    with dask.config.set({"optimization.fuse.active": False}):
        write = build.as_tree(ds).to_zarr(f"{tmp}/graph.zarr", mode="w", consolidated=False, compute=False)
    n_tasks = len(dict(write.__dask_graph__()))
    n = plan.raw.sizes["time"]
    return {"tasks": n_tasks, "scenes": n, "per_scene": round(n_tasks / n, 1)}


# --------------------------------------------------------------------------------------------- serial


def _median3(img: np.ndarray) -> np.ndarray:
    import cv2

    nan = np.isnan(img)
    filled = np.where(nan, np.nanmedian(img), img).astype(np.float32) if nan.any() else img
    out = cv2.medianBlur(np.ascontiguousarray(filled, np.float32), 3)
    out[nan] = np.nan
    return out


def _nanmean(stack: list[np.ndarray]) -> np.ndarray:
    """NaN-skipping mean of 2-D images, accumulated image by image (float64), NaN where none."""
    total = np.zeros(stack[0].shape)
    count = np.zeros(stack[0].shape)
    for img in stack:
        ok = np.isfinite(img)
        total += np.where(ok, img, 0.0)
        count += ok
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan).astype(np.float32)


def fill_visits(valid: np.ndarray) -> int:
    """Pixel visits of the seed loop: a hole pixel at chessboard distance d is visited ceil(d/2) times."""
    from scipy import ndimage

    if valid.all() or not valid.any():
        return 0
    d = ndimage.distance_transform_cdt(~valid, metric="chessboard")
    return int(np.ceil(d[~valid] / 2.0).sum())


def seed_fill(image: np.ndarray, budget_s: float = np.inf) -> tuple[np.ndarray, int, float, bool]:
    """The research code's gap-fill: per-pixel Python loop, 5x5 tent, until no NaN is left.

    Returns (image, pixel visits, seconds, finished); stops early once ``budget_s`` is spent.
    """
    from glacierflow.preprocess.gapfill import GAP_FILL_WEIGHTS as w

    img = image.astype(np.float64).copy()
    h, wd = img.shape
    visits, t0 = 0, time.perf_counter()
    while np.isnan(img).any():
        prev = np.pad(img, 2, constant_values=np.nan)  # mask at the start of the pass; outside = invalid
        changed = False
        for i, j in np.argwhere(np.isnan(img)):
            win = prev[i : i + 5, j : j + 5]
            ok = ~np.isnan(win)
            visits += 1
            den = (w * ok).sum()
            if den > 0:
                img[i, j] = (w * np.where(ok, win, 0.0)).sum() / den
                changed = True
            if visits % 2000 == 0 and time.perf_counter() - t0 > budget_s:
                return img, visits, time.perf_counter() - t0, False
        if not changed:
            break
    return img, visits, time.perf_counter() - t0, True


def guide_image(band: str, g: np.ndarray, s: np.ndarray, sc: dict, invalid: np.ndarray, plan: dict,
                shape: tuple[int, int]) -> np.ndarray:
    """The unfiltered guide of ``band`` (``--guide-band``), as ``align.guide_band_image`` makes it, from plain
    rasterio reads: the grey mix, NDSI, green, or another band (red, nir08) read here under the same mask."""
    if band == "grey":
        return (0.114 * g + 0.886 * s).astype(np.float32)
    if band == "ndsi":
        return ((g - s) / (g + s)).astype(np.float32)
    if band == "green":
        return g
    a = sc["assets"][band]
    from glacierflow.ingest.cube import RESAMPLING

    dn = read_window(a["href"], plan["epsg"], plan["transform"], shape, RESAMPLING["reflectance"])
    return np.where(invalid | (dn == 0), np.nan, dn * np.float32(a["scale"]) + np.float32(a["offset"])).astype(
        np.float32)


def serial_main(cfg: dict[str, Any]) -> dict[str, Any]:
    """The serial in-memory pipeline (+ seed-style reference); runs in a child pinned to one core."""
    t_start = time.perf_counter()
    import cv2
    import xarray as xr

    from glacierflow.ingest.cube import RESAMPLING
    from glacierflow.preprocess.align import find_warp, highpass_filter, steady_pixels, warp_image
    from glacierflow.preprocess.gapfill import gap_fill_2d
    from glacierflow.preprocess.periods import period_starts
    from glacierflow.preprocess.qa import QA_CLOUD, QA_CLOUD_SHADOW, QA_DILATED_CLOUD, QA_FILL
    from glacierflow.specs import PreprocessSpec

    cv2.setNumThreads(0)
    pre = PreprocessSpec()
    t_import = time.perf_counter() - t_start
    steps: dict[str, float] = {}

    def tick(name: str, t: float) -> float:
        now = time.perf_counter()
        steps[name] = steps.get(name, 0.0) + now - t
        return now

    t = time.perf_counter()
    plan = scene_plan(cfg["stac_url"], cfg["meta"], cfg["start"], cfg["end"])
    t = tick("search + grid", t)
    shape = tuple(plan["shape"])
    bad = (1 << QA_FILL) | (1 << QA_DILATED_CLOUD) | (1 << QA_CLOUD) | (1 << QA_CLOUD_SHADOW)
    used, fracs, guides, index, visits, ids, times = [], [], [], [], [], [], []
    for sc in plan["scenes"]:
        # quality from qa_pixel alone (as build-cube's first read), then the bands of the used scenes
        qa = read_window(sc["assets"]["qa_pixel"]["href"], plan["epsg"], plan["transform"], shape)
        t = tick("read (rasterio)", t)
        bad_qa = (qa & bad) != 0
        frac = 1.0 - bad_qa.mean()
        fracs.append(frac)
        t = tick("mask + valid fraction", t)
        if frac < 1.0 - pre.max_missing:
            continue
        green_dn, swir_dn = (read_window(sc["assets"][a]["href"], plan["epsg"], plan["transform"], shape,
                                         RESAMPLING["reflectance"]) for a in ("green", "swir16"))
        t = tick("read (rasterio)", t)
        a = sc["assets"]
        invalid = (green_dn == 0) | (swir_dn == 0) | bad_qa
        g = np.where(invalid, np.nan, green_dn * np.float32(a["green"]["scale"]) + np.float32(a["green"]["offset"]))
        s = np.where(invalid, np.nan, swir_dn * np.float32(a["swir16"]["scale"]) + np.float32(a["swir16"]["offset"]))
        g, s = g.astype(np.float32), s.astype(np.float32)
        t = tick("mask + valid fraction", t)
        visits.append(2 * fill_visits(~invalid))  # both bands share the mask (seed extrapolation only)
        den = g + s
        nd = np.clip((g - s) / np.where(np.abs(den) <= 1e-6, np.inf, den), -1, 1).astype(np.float32)
        index.append(nd)
        t = tick("ndsi", t)
        guides.append(highpass_filter(guide_image(pre.guide_band, g, s, sc, invalid, plan, shape)[None],
                                      pre.align_highpass, wallis=pre.guide_filter == "wallis")[0])
        t = tick("guide image", t)
        used.append(len(fracs) - 1)
        ids.append(sc["id"])
        times.append(pd.Timestamp(sc["time"]))
    ref = _median3(_nanmean(guides)) if guides else None
    t = tick("reference", t)
    ecc_s, warps, ok1 = [], [], []
    for k in range(len(index)):  # pass 1 against the mean of the unaligned guides
        t1 = time.perf_counter()
        w, _, ok = find_warp(guides[k], ref, pre.motion, min_ecc=pre.min_ecc)
        ecc_s.append(time.perf_counter() - t1)
        warps.append(w)
        ok1.append(ok)
    t = tick("ECC align (translation)", t)
    aligned1 = [warp_image(guides[k], warps[k]) for k in range(len(index)) if ok1[k]]
    ref2 = _median3(_nanmean(aligned1))
    # pass 2 looks only at the ground whose aligned guide follows ref2 (motion-robust, align.steady_pixels)
    static = steady_pixels(_nanmean([(a - ref2) ** 2 for a in aligned1]), ref2)
    t = tick("reference", t)
    shifts = []
    for k in range(len(index)):  # pass 2 against the re-estimated reference, from the pass-1 warp
        t1 = time.perf_counter()
        w, _, ok = find_warp(np.where(static, guides[k], np.nan), ref2, pre.motion, init=warps[k],
                             min_ecc=pre.min_ecc)
        ecc_s[k] += time.perf_counter() - t1
        out = warp_image(index[k], w) if ok else index[k]
        index[k] = np.where((out >= pre.ndsi_threshold) | np.isnan(out), out, 0).astype(np.float32)
        shifts.append(ok)
    t = tick("ECC align (translation)", t)
    # period means of the real observations of the aligned scenes; the paper's gap-fill of each period
    # mean where nothing was observed; empty periods linearly interpolated by period index, edges nearest
    starts, pos = period_starts(np.array(times, "datetime64[ns]"), pre.period, cfg["start"], cfg["end"])
    n_p = len(starts)
    sums = np.zeros((n_p, *shape), np.float64)
    counts = np.zeros((n_p, *shape), np.int32)
    for k, p in enumerate(pos):
        if p >= 0 and shifts[k]:
            ok = np.isfinite(index[k])
            sums[p] += np.where(ok, index[k], 0.0)
            counts[p] += ok
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counts > 0, sums / counts, np.nan).astype(np.float32)
    del sums, counts
    t = tick("resample", t)
    for p in range(n_p):
        if np.isfinite(mean[p]).any():
            mean[p] = gap_fill_2d(mean[p], max_iter=pre.gap_fill_max_iter)[0]
    t = tick("gap-fill", t)
    have = np.isfinite(mean)
    flat = mean.reshape(n_p, -1)
    need = ~have.reshape(n_p, -1).all(axis=0)
    pidx = np.arange(n_p)
    for col in np.flatnonzero(need):
        ok = np.isfinite(flat[:, col])
        if ok.any():
            flat[~ok, col] = np.interp(pidx[~ok], pidx[ok], flat[ok, col])
    cube = mean.astype(np.float32)
    n_scenes = np.bincount(pos[(pos >= 0) & np.array(shifts, bool)], minlength=n_p)
    t = tick("resample", t)
    with tempfile.TemporaryDirectory() as tmp:
        xr.Dataset(
            {"ndsi": (("time", "y", "x"), cube), "n_scenes": ("time", n_scenes)},
            coords={"time": starts.values, "y": plan["y"], "x": plan["x"]},
        ).to_zarr(f"{tmp}/serial.zarr", consolidated=False, zarr_format=3)
    t = tick("zarr write", t)
    result = {
        "import_s": t_import,
        "steps": steps,
        "total_s": time.perf_counter() - t_start,
        "cpu_s": time.process_time(),  # CPU seconds of the pipeline (imports .. Zarr write), load-independent
        "n_stacked": len(plan["scenes"]),
        "n_used": len(used),
        "visits": visits,
        "ecc_s": ecc_s,
        "shape": list(shape),
        "n_periods": int(n_p),
        "diff": None,
    }
    if cfg.get("compare"):
        other = xr.open_zarr(cfg["compare"], decode_coords="all")["ndsi"].values
        if other.shape == cube.shape:
            d = np.abs(other - cube)
            result["diff"] = {"max": float(np.nanmax(d, initial=0.0)), "frac_gt_1e-3": float(np.nanmean(d > 1e-3)),
                              "nan_mismatch": int((np.isnan(other) != np.isnan(cube)).sum())}
    if cfg["seed_scenes"] > 0 and index:
        result["seed"] = seed_reference(cfg, guides, ref, visits, plan, used, shape, pre)
    return result


_ECC_CHILD = """
import json, os, sys, time
import numpy as np
os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
from glacierflow.preprocess.align import align_scene
scene, ref = np.load(sys.argv[1]), np.load(sys.argv[2])
t0 = time.perf_counter()
_, sx, sy, ecc, ok = align_scene(scene, ref, **json.loads(sys.argv[3]))
print("ECC", json.dumps([time.perf_counter() - t0, float(ecc), bool(ok)]))
"""


def seed_ecc(scene: np.ndarray, ref: np.ndarray, timeout: float) -> tuple[float, float, bool | None]:
    """Seed-style ECC (homography, 10 000 iterations) in a child on the same core, killed after ``timeout``.

    Returns (seconds, ecc, aligned); on timeout (``timeout``, nan, None): the time is then a lower bound.
    """
    with tempfile.TemporaryDirectory() as tmp:
        np.save(f"{tmp}/s.npy", scene)
        np.save(f"{tmp}/r.npy", ref)
        try:
            out = subprocess.run([sys.executable, "-c", _ECC_CHILD, f"{tmp}/s.npy", f"{tmp}/r.npy",
                                  json.dumps(SEED_ECC)], capture_output=True, text=True, timeout=timeout,
                                 check=True).stdout
        except subprocess.TimeoutExpired:
            return float(timeout), float("nan"), None
    secs, ecc, ok = json.loads(out.split("ECC ", 1)[1])
    return secs, ecc, ok


def seed_reference(cfg, grey, ref, visits, plan, used, shape, pre) -> dict[str, Any]:  # noqa: ANN001
    """Seed-style gap-fill (bounded, extrapolated) and homography ECC (complete) on a few scenes."""
    from glacierflow.preprocess.gapfill import gap_fill_2d

    order = np.argsort(visits)
    n = min(cfg["seed_scenes"], len(order))
    # evenly spaced over the scenes sorted by hole size: largest, ..., smallest
    picks = [int(order[int(round(q))]) for q in np.linspace(len(order) - 1, 0, n)]
    # correctness of the per-pixel loop: a crop with a hole, to completion, vs gap_fill_2d
    rng = np.random.default_rng(0)
    crop = grey[picks[0]][:96, :96].copy()
    crop[20:60, 30:80] = np.nan
    crop[rng.random(crop.shape) < 0.05] = np.nan
    ref_fill = gap_fill_2d(crop, max_iter=10_000)[0]
    loop_fill, _, _, done = seed_fill(crop)
    check = float(np.nanmax(np.abs(loop_fill - ref_fill))) if done else None
    rows = []
    for k in picks:
        sc = plan["scenes"][used[k]]
        g_dn, s_dn, qa = read_scene(sc, plan["epsg"], plan["transform"], shape)
        a = sc["assets"]["green"]
        img = np.where(g_dn == 0, np.nan, g_dn * a["scale"] + a["offset"]).astype(np.float32)
        from glacierflow.preprocess.qa import QA_CLOUD, QA_CLOUD_SHADOW, QA_DILATED_CLOUD, QA_FILL

        bad = (1 << QA_FILL) | (1 << QA_DILATED_CLOUD) | (1 << QA_CLOUD) | (1 << QA_CLOUD_SHADOW)
        img[((qa & bad) != 0) | (s_dn == 0)] = np.nan
        _, n_vis, secs, finished = seed_fill(img, cfg["seed_fill_seconds"])
        ecc_secs, ecc, ok = seed_ecc(grey[k], ref, cfg["seed_ecc_timeout"])
        rows.append({"id": sc["id"], "visits_total": visits[k], "visits_run": n_vis, "fill_run_s": secs,
                     "fill_finished": finished, "per_visit_s": secs / max(n_vis, 1), "ecc_s": ecc_secs,
                     "ecc": ecc, "aligned": bool(ok), "ecc_timed_out": ok is None})
    per_visit = sum(r["fill_run_s"] for r in rows) / max(sum(r["visits_run"] for r in rows), 1)
    return {"rows": rows, "per_visit_s": per_visit, "fill_total_s": per_visit * sum(visits),
            "ecc_mean_s": float(np.mean([r["ecc_s"] for r in rows])), "loop_check_maxdiff": check}


# --------------------------------------------------------------------------------------------- main


def build_cube_cmd(stac_url: str, meta: dict[str, Any], start: str, end: str, out: str, cluster: str) -> list:
    w, s, e, n = (str(v) for v in meta["bbox"])
    where = ["--cluster", cluster] if cluster != "default" else []  # default: the CLI's own (no flag)
    return [sys.executable, "-m", "glacierflow", "build-cube", "--bbox", w, s, e, n, "--epsg", str(meta["epsg"]),
            "--start", start, "--end", end, "--catalog", stac_url, "--out", out, *where, "--overwrite"]


def _summary_seconds(stdout: str) -> float:
    for line in stdout.splitlines():
        if line.startswith("written:") and "(" in line:
            return float(line.rsplit("(", 1)[1].split()[0])
    return float("nan")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--twin", type=Path, default=None, help="twin directory (made there if missing)")
    ap.add_argument("--size", default="full", help="twin size when one has to be made (tiny|small|full)")
    ap.add_argument("--years", type=float, default=None, help="limit the date range to the first N years")
    ap.add_argument("--workers", type=int, default=2, help="processes of the read floor")
    ap.add_argument("--cluster", default="default",
                    help="build-cube --cluster of the main run (ratios, memory); default: the CLI's default")
    ap.add_argument("--compare", default="local",
                    help="other --cluster set-ups timed on the full range (comma-separated; '' for none)")
    ap.add_argument("--seed-scenes", type=int, default=3, help="scenes for the seed-style reference (0: skip)")
    ap.add_argument("--seed-fill-seconds", type=float, default=10.0,
                    help="per-pixel loop budget per seed scene (the rest is extrapolated per visit)")
    ap.add_argument("--seed-ecc-timeout", type=float, default=180.0,
                    help="seconds after which a seed ECC solve is stopped (its time is then a lower bound)")
    ap.add_argument("--no-half", action="store_true", help="skip the half-range run (memory scaling)")
    ap.add_argument("--json", type=Path, default=None, help="also write all figures as JSON here")
    ap.add_argument("--_serial", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._serial:  # child: pinned to one core
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
        cfg = json.loads(Path(args._serial).read_text())
        print("RESULT " + json.dumps(serial_main(cfg), default=float))
        return

    from glacierflow.twin.serve import serve_twin

    twin = args.twin or Path(tempfile.gettempdir()) / f"gf-{args.size}-twin"
    meta = ensure_twin(twin, args.size)
    (start, end), (hstart, hend) = date_ranges(meta, args.years)
    print(f"twin {twin}: {meta['size']}, grid {meta['shape']}, {meta['n_items']} items, "
          f"generated in {meta['generation_seconds']} s, {meta['bytes'] / 1e6:.0f} MB", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    res: dict[str, Any] = {"twin": str(twin), "twin_meta": {k: meta[k] for k in
                           ("size", "shape", "n_items", "generation_seconds", "bytes", "start", "end")},
                           "range": [start, end], "half_range": [hstart, hend], "workers": args.workers}
    with tempfile.TemporaryDirectory(prefix="gf-bench-") as tmp, serve_twin(twin) as served:
        url = served["stac_url"]
        store = f"{tmp}/full.zarr"
        print(f"build-cube {start}..{end} ...", flush=True)
        full = run_measured(build_cube_cmd(url, meta, start, end, store, args.cluster), env)
        print(full["stdout"].strip(), flush=True)
        mixes = {args.cluster: full}
        for other in [c for c in args.compare.split(",") if c.strip() and c.strip() != args.cluster]:
            print(f"build-cube {start}..{end} --cluster {other} ...", flush=True)
            mixes[other] = run_measured(build_cube_cmd(url, meta, start, end, f"{tmp}/{other}.zarr", other), env)
        res["mixes"] = {k: {"wall": v["wall"], "peak": v["peak"], "cpu": v["cpu"]} for k, v in mixes.items()}
        half = None
        if not args.no_half:
            print(f"build-cube {hstart}..{hend} ...", flush=True)
            half = run_measured(build_cube_cmd(url, meta, hstart, hend, f"{tmp}/half.zarr", args.cluster), env)
        print("serial baseline + seed reference (one core) ...", flush=True)
        cfg = {"stac_url": url, "meta": meta, "start": start, "end": end, "compare": store,
               "seed_scenes": args.seed_scenes, "seed_fill_seconds": args.seed_fill_seconds,
               "seed_ecc_timeout": args.seed_ecc_timeout}
        (Path(tmp) / "cfg.json").write_text(json.dumps(cfg))
        ser = run_measured([sys.executable, __file__, "--_serial", f"{tmp}/cfg.json"], env)
        serial = json.loads(ser["stdout"].split("RESULT ", 1)[1])
        print("read floor ...", flush=True)
        plan = scene_plan(url, meta, start, end)
        floor = read_floor(plan, args.workers)
        res["graph"] = graph_size(url, meta, start, end, tmp)
    report(args, res, full, half, ser, serial, floor, len(plan["scenes"]))


def report(args, res, full, half, ser, serial, floor, n_scenes) -> None:  # noqa: ANN001
    mb = 1024**2
    n_used = serial["n_used"]
    seed = serial.get("seed")
    serial_wall = serial["total_s"]  # imports .. Zarr write; not the comparison or the seed reference
    lines = [
        "",
        f"build-cube benchmark: {res['twin_meta']['size']} twin {res['twin_meta']['shape']} px, "
        f"{res['range'][0]} .. {res['range'][1]}, {n_scenes} scenes stacked, {n_used} used, "
        f"{serial['n_periods']} periods, --cluster {args.cluster}",
        f"twin generation {res['twin_meta']['generation_seconds']} s, {res['twin_meta']['bytes'] / mb:.0f} MiB",
        "",
        f"{'measurement':58s} {'value':>12s}",
        f"{'build-cube wall, whole process (s)':58s} {full['wall']:12.1f}",
        *[f"{f'  --cluster {k}: wall (s), peak tree RSS (MiB)':58s} {v['wall']:12.1f} {v['peak'] / mb:8.0f}"
          for k, v in res.get("mixes", {}).items()],
        *[f"{f'  --cluster {k}: CPU time of the process tree (s)':58s} {v['cpu']:12.1f}"
          for k, v in res.get("mixes", {}).items()],
        f"{'build-cube library seconds (search..write) (s)':58s} {_summary_seconds(full['stdout']):12.1f}",
        f"{'graph: tasks per stacked scene (whole store write)':58s} {res['graph']['per_scene']:12.1f}",
        f"{'  (before the fused graph, issue #21: tasks run per scene)':58s} {GRAPH_BEFORE:12.1f}",
        f"{'build-cube CPU time, process tree (s)':58s} {full['cpu']:12.1f}",
        f"{'build-cube peak RSS, process tree (MiB)':58s} {full['peak'] / mb:12.0f}",
        f"{'  largest single process (MiB)':58s} {full['peak_single'] / mb:12.0f}",
    ]
    if half:
        lines += [
            f"{'build-cube half range wall (s)':58s} {half['wall']:12.1f}",
            f"{'build-cube half range peak RSS, process tree (MiB)':58s} {half['peak'] / mb:12.0f}",
            f"{'  peak full / peak half (target <= 1.20)':58s} {full['peak'] / half['peak']:12.2f}",
            f"{'  largest single process full / half':58s} {full['peak_single'] / half['peak_single']:12.2f}",
        ]
    lines += [f"{'serial (1 core) wall, imports .. zarr write (s)':58s} {serial_wall:12.1f}",
              f"{'serial CPU time, imports .. zarr write (s)':58s} {serial['cpu_s']:12.1f}"]
    lines += [f"{'  ' + k + ' (s)':58s} {v:12.2f}" for k, v in serial["steps"].items()]
    lines += [
        f"{'  imports (s)':58s} {serial['import_s']:12.2f}",
        f"{'serial child peak RSS (incl. seed reference) (MiB)':58s} {ser['peak'] / mb:12.0f}",
        f"{'serial child CPU time (incl. seed reference) (s)':58s} {ser['cpu']:12.1f}",
        f"{f'read floor, rasterio, {args.workers} processes (s)':58s} {floor:12.2f}",
        "",
        f"{'(a) build-cube wall / serial wall (target <= 0.6)':58s} {full['wall'] / serial_wall:12.2f}",
        f"{'(b) build-cube wall / read floor':58s} {full['wall'] / floor:12.1f}",
        f"{'(c) build-cube CPU / serial CPU (overhead, load-independent)':58s} "
        f"{full['cpu'] / serial['cpu_s']:12.2f}",
    ]
    if serial.get("diff"):
        d = serial["diff"]
        lines.append(f"{f'serial vs build-cube ndsi: max |diff| (must be <= {AGREE:g})':58s} {d['max']:12.2e}")
        lines.append(f"{'  fraction of pixels |diff| > 1e-3; NaN mismatches':58s} "
                     f"{d['frac_gt_1e-3']:8.4f}; {d['nan_mismatch']}")
    if seed:
        steps = serial["steps"]
        seed_total = (serial_wall - steps.get("gap-fill", 0) - steps.get("ECC align (translation)", 0)
                      + seed["fill_total_s"] + seed["ecc_mean_s"] * n_used)
        lines += [
            "",
            "seed-style reference (measured on one core in the serial child):",
            "  per-pixel loop == gap_fill_2d on a 96x96 crop to completion: max |diff| "
            + (f"{seed['loop_check_maxdiff']:.1e}" if seed["loop_check_maxdiff"] is not None else "not finished"),
            f"  {'scene':42s} {'visits':>10s} {'run':>9s} {'run s':>7s} {'us/visit':>8s} {'ECC s':>7s} {'ecc':>6s}",
        ]
        for r in seed["rows"]:
            lines.append(f"  {r['id']:42s} {r['visits_total']:10d} {r['visits_run']:9d} {r['fill_run_s']:7.1f} "
                         f"{r['per_visit_s'] * 1e6:8.1f} {r['ecc_s']:7.1f}{'+' if r['ecc_timed_out'] else ' '}"
                         f"{r['ecc']:6.3f}")
        if any(r["ecc_timed_out"] for r in seed["rows"]):
            lines.append("  (+: ECC stopped at the timeout; its time and the speed-up below are lower bounds)")
        lines += [
            f"{'  seed gap-fill, all used scenes, extrapolated (s)':58s} {seed['fill_total_s']:12.0f}",
            f"{'  seed ECC homography 10k iter, mean per scene (s)':58s} {seed['ecc_mean_s']:12.1f}",
            f"{'  seed total estimate (s)':58s} {seed_total:12.0f}",
            f"{'  seed per stacked scene (s)':58s} {seed_total / n_scenes:12.2f}",
            f"{'  build-cube per stacked scene (s)':58s} {full['wall'] / n_scenes:12.3f}",
            f"{'  speed-up vs seed (target >= 50)':58s} {seed_total / full['wall']:12.0f}",
        ]
        res["seed_total_s"] = seed_total
    print("\n".join(lines))
    if args.json:
        res.update(full={k: v for k, v in full.items() if k != "stdout"}, serial=serial, serial_wall=serial_wall,
                   serial_peak=ser["peak"], read_floor_s=floor, n_scenes=n_scenes,
                   half=None if half is None else {k: v for k, v in half.items() if k != "stdout"})
        args.json.write_text(json.dumps(res, indent=1, default=float))
    problem = disagreement(serial.get("diff"))
    if problem:
        sys.exit(f"FAILED: {problem}")


def disagreement(diff: dict[str, Any] | None) -> str:
    """Why build-cube and the serial reference disagree ('' when every pixel agrees within :data:`AGREE`)."""
    if diff is None:
        return "serial and build-cube ndsi have different shapes (or no build-cube store to compare)"
    if diff["nan_mismatch"] or not diff["max"] <= AGREE:
        return (f"serial vs build-cube ndsi differ by up to {diff['max']:.3g} (> {AGREE:g}) on "
                f"{diff['frac_gt_1e-3']:.1%} of pixels, {diff['nan_mismatch']} NaN mismatches")
    return ""


if __name__ == "__main__":
    main()
