"""The pipeline's truth figures on the ``basic`` and the ``himalaya`` twin, side by side.

Usage::

    python benchmarks/bench_twin_realism.py TWIN_DIR [TWIN_DIR ...] [--json out.json]

For each twin (made with ``glacierflow twin make DIR --size small --realism basic|himalaya``): serve it,
build the cube as build-cube does (defaults: 3-month periods, guides), run ``flow`` (defaults), then print

* shift RMS error: ECC's recovered translation vs the truth's ``shift_x/shift_y`` (median removed, used
  and aligned scenes; T1 and T2 separately when there are T2 items);
* gap-fill MAE: snow-mask NDSI of the gap-filled scene vs the truth in the gaps (scenes with 0.1-30 %
  gaps, at most 12), and the scene-mean fill for scale;
* period-mean MAE: the cube's ``ndsi`` vs the truth's clean NDSI averaged over each period's used scenes;
* flow: composite speed vs the true speed on the glacier (median absolute error, m/yr and % of the true
  median), direction error, and the median speed on stable ground (truth: exactly 0).

Figures only; no timings are asserted (the machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import dask
import numpy as np
import xarray as xr
from scipy import ndimage

from glacierflow.ingest import catalog, cube
from glacierflow.motion.velocity import run_flow
from glacierflow.preprocess import gapfill
from glacierflow.preprocess import qa as preprocess
from glacierflow.preprocess.build import build_cube_store
from glacierflow.specs import CubeSpec, PreprocessSpec
from glacierflow.storage.store import open_store
from glacierflow.twin.make import load_twin_meta
from glacierflow.twin.serve import serve_twin


def shift_figures(out: str, truth: xr.Dataset) -> dict[str, float]:
    scenes = xr.open_zarr(out, group="scenes", consolidated=False).load()
    ok = scenes["used"].values.astype(bool) & scenes["aligned"].values.astype(bool)
    ids = list(truth["item_id"].values)
    idx = np.array([ids.index(i) for i in scenes["item_id"].values[ok]])
    ex = scenes["shift_x"].values[ok] - truth["shift_x"].values[idx]
    ey = scenes["shift_y"].values[ok] - truth["shift_y"].values[idx]
    ex, ey = ex - np.median(ex), ey - np.median(ey)
    res = {"scenes_used": int(scenes["used"].values.sum()), "scenes_aligned": int(ok.sum()),
           "shift_rms_px": float(np.sqrt(np.mean(ex**2 + ey**2))),
           "injected_rms_px": float(np.sqrt(np.mean(truth["shift_x"].values[idx] ** 2
                                                    + truth["shift_y"].values[idx] ** 2)))}
    if "collection_category" in truth:
        cat = truth["collection_category"].values[idx]
        for c in ("T1", "T2"):
            if (cat == c).any():
                res[f"shift_rms_px_{c}"] = float(np.sqrt(np.mean(ex[cat == c] ** 2 + ey[cat == c] ** 2)))
    return res


def gapfill_figures(served: dict[str, Any], truth: xr.Dataset, start: str, end: str) -> dict[str, float]:
    found = catalog.search(served["stac_url"], bbox=served["meta"]["bbox"], start=start, end=end)
    raw = cube.build_cube(found.items, bbox_lonlat=tuple(served["meta"]["bbox"]), epsg=served["meta"]["epsg"])
    masked = preprocess.mask_invalid(raw)
    snow = preprocess.snow_mask(preprocess.ndsi(gapfill.gap_fill(masked)))
    ids = list(truth["item_id"].values)
    errs, base = [], []
    for k, item in enumerate(found.items):
        gaps = np.isnan(masked.isel(time=k, band=0).values)
        if not 0.001 < gaps.mean() < 0.3:
            continue
        j = ids.index(item["id"])
        sx, sy = float(truth["shift_x"][j]), float(truth["shift_y"][j])
        moved = ndimage.shift(truth["ndsi"][j].values.astype(np.float32), (sy, sx), order=1, mode="nearest")
        t = xr.DataArray(moved, dims=("y", "x"), coords={"y": truth.y, "x": truth.x}).sel(y=raw.y, x=raw.x).values
        s = snow.isel(time=k).values
        errs.append(float(np.mean(np.abs(s - t)[gaps])))
        base.append(float(np.mean(np.abs(np.nanmean(np.where(gaps, np.nan, s)) - t)[gaps])))
        if len(errs) >= 12:
            break
    return {"gapfill_mae": float(np.mean(errs)), "gapfill_scene_mean_mae": float(np.mean(base)),
            "gapfill_scenes": len(errs)}


def period_figures(out: str, truth: xr.Dataset) -> dict[str, float]:
    ds = open_store(out).load()
    scenes = xr.open_zarr(out, group="scenes", consolidated=False).load()
    ids = list(truth["item_id"].values)
    used = scenes["used"].values.astype(bool)
    starts = list(ds["time"].values) + [np.datetime64("2100-01-01")]
    # scene times from the truth by item id (the store's scenes group may carry the period times instead)
    when = truth["time"].values[[ids.index(str(i)) for i in scenes["item_id"].values]]
    errs = []
    for k in range(ds.sizes["time"]):
        rows = [i for i in np.flatnonzero(used) if starts[k] <= when[i] < starts[k + 1]]
        if not rows:
            continue
        js = [ids.index(str(scenes["item_id"].values[i])) for i in rows]
        mean = truth["ndsi"].isel(time=js).mean("time").sel(y=ds.y, x=ds.x).values
        got = ds["ndsi"].values[k]
        ok = np.isfinite(got)
        errs.append(np.abs(got - mean)[ok])
    return {"period_mean_mae": float(np.mean(np.concatenate(errs))), "periods_observed": len(errs),
            "periods": int(ds.sizes["time"]), "periods_interpolated": int(ds["interpolated"].values.sum())}


def flow_figures(out: str, vel_out: str, truth: xr.Dataset) -> dict[str, float]:
    summary = run_flow(out, vel_out, overwrite=True)
    vel = open_store(vel_out).load()  # the composite: vx, vy (ITS_LIVE names)
    on = truth[["u", "v", "glacier_mask"]].sel(x=vel["x"], y=vel["y"])
    tu, tv = on["u"].values.astype(float), on["v"].values.astype(float)
    gl = on["glacier_mask"].values.astype(bool)
    u, v = vel["vx"].values, vel["vy"].values
    speed, true_speed = np.hypot(u, v), np.hypot(tu, tv)
    ok = gl & np.isfinite(speed)
    true_median = float(np.median(true_speed[gl]))
    mae = float(np.median(np.abs(speed[ok] - true_speed[ok])))
    moving = ok & (true_speed >= 0.25 * true_median)
    angle = np.angle(np.exp(1j * (np.arctan2(v[moving], u[moving]) - np.arctan2(tv[moving], tu[moving]))))
    off = ~gl & np.isfinite(speed)
    return {"flow_pairs": summary.pairs, "flow_true_median": true_median, "flow_mae": mae,
            "flow_rel": mae / true_median, "flow_direction_deg": float(np.degrees(np.median(np.abs(angle)))),
            "flow_stable_median_speed": float(np.median(speed[off])), "flow_valid": float(ok.sum() / gl.sum())}


def measure(twin: Path, work: Path) -> dict[str, Any]:
    meta = load_twin_meta(twin)
    truth = xr.open_zarr(twin / "truth.zarr", consolidated=False)
    res: dict[str, Any] = {"twin": str(twin), "realism": meta.get("realism", "basic"), "items": meta["n_items"]}
    out = str(work / f"{twin.name}.zarr")
    if Path(out).exists():  # a kept store from an earlier run (--work)
        import shutil

        shutil.rmtree(out)
    with serve_twin(twin, backend="rustac") as served, dask.config.set(scheduler="threads"):
        spec = CubeSpec(name=twin.name, bbox=tuple(meta["bbox"]), epsg=meta["epsg"], start=meta["start"],
                        end=meta["end"], catalog=served["stac_url"])
        build_cube_store(spec, PreprocessSpec(), out)
        res.update(shift_figures(out, truth))
        res.update(period_figures(out, truth))
        res.update(gapfill_figures(served, truth, meta["start"], meta["end"]))
        res.update(flow_figures(out, str(work / f"{twin.name}-velocity.zarr"), truth))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("twins", nargs="+", type=Path)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--work", type=Path, default=None, help="keep the cube and velocity stores here")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for twin in args.twins:
            rows.append(measure(twin, work))
            print(json.dumps(rows[-1]), flush=True)
    keys = [k for k in rows[0] if k != "twin"]
    print(f"{'figure':28s}" + "".join(f"{r['realism']:>14s}" for r in rows))
    for k in keys:
        vals = [r.get(k, "") for r in rows]
        print(f"{k:28s}" + "".join(f"{v:>14.3f}" if isinstance(v, float) else f"{v!s:>14s}" for v in vals))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
