"""Patch vs full-scene training objective, and the movement the forecasts predict, on a twin cube.

For each training (same model, seed and epochs; ``train --objective patch``, ``--objective full-scene`` with half-
patch and with no tile overlap (``--scene-overlap 0``), each seeing the same number of tile sequences, full-scene
with as many steps as the patch run, and the patch run fine-tuned with ``finetune --objective full-scene``),
predict with ``--last-input DATE`` inside the cube (so the targets exist), with the default blending (half-patch
overlap, Hann) and with plain non-overlapping tiles (``--overlap 0``). Table 1: full-scene MSE/MAE of the model
and of persistence and seasonal on the same scene; the seam ratio (mean |difference| of adjacent pixels on the
lines where non-overlapping tiles meet / on the tile-centre lines; the true frames give the reference). Table 2:
``flow FORECAST`` of each blended forecast (Farnebäck, consecutive predicted periods) against the flow of the true
frames of the same periods; with ``--twin`` also both against the twin's true velocity on its glacier mask.

    .venv/bin/python benchmarks/bench_objective.py --cube CUBE --work DIR [--twin TWIN_DIR] [--model convlstm]
        [--epochs 4] [--steps 25] [--ft-epochs 2] [--last-input 2019-10-01 --last-input 2020-10-01]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr

from glacierflow.forecast import predict
from glacierflow.geo.tiling import tile_layout
from glacierflow.learn import train
from glacierflow.learn.finetune import finetune
from glacierflow.learn.objectives import window_shape
from glacierflow.motion.forecast_flow import ndsi_store_flow
from glacierflow.specs import ModelSpec, PatchSpec, PredictSpec, TrainSpec
from glacierflow.storage.store import open_store


def seam_ratio(f: np.ndarray, patch: int) -> float:
    """Mean |adjacent difference| of frames ``(t, y, x)`` on tile-border lines / on tile-centre lines.

    Border lines: where non-overlapping tiles meet (every ``patch`` px); centre lines: half a patch from
    them. Both lie on any grid of the model's own that divides half a patch (convlstm folds 5-px cells, whose
    block edges every 5 px would otherwise dominate a border/other-lines ratio), so 1 = no tile seam.
    """
    seams, centres = [], []
    for axis in (2, 1):
        d = np.abs(np.diff(f, axis=axis)).mean(axis=(0, 3 - axis))
        i = np.arange(d.size) + 1
        seams.append(d[i % patch == 0])
        centres.append(d[i % patch == patch // 2])
    return float(np.concatenate(seams).mean() / np.concatenate(centres).mean())


def _seconds(run: Path) -> float:
    """Training wall time of a run (``run.json``'s start and finish)."""
    info = json.loads((run / "run.json").read_text())
    return (pd.Timestamp(info["finished"]) - pd.Timestamp(info["started"])).total_seconds()


def trainings(args: argparse.Namespace, pspec: PatchSpec, per_step: dict[int, int]) -> dict[str, tuple]:
    """Train (or reuse) the runs: name -> (run dir, tile sequences seen, training seconds)."""
    base = TrainSpec(epochs=args.epochs, batch_size=args.batch_size, steps_per_epoch=args.steps, device="cpu",
                     val_samples=args.val_samples, patience=args.epochs)
    seqs = args.steps * args.batch_size  # per epoch; the full-scene runs see as many tile sequences
    specs = {"patch": (base, args.batch_size)}
    for overlap, label in ((-1, "full-scene"), (0, "full-scene, non-overlapping tiles")):
        specs[label] = (base.replace(objective="full-scene", scene_window=args.scene_window, scene_overlap=overlap,
                                     steps_per_epoch=math.ceil(seqs / per_step[overlap])), per_step[overlap])
    specs["full-scene, as many steps"] = (base.replace(objective="full-scene", scene_window=args.scene_window),
                                          per_step[-1])
    out = {}
    for name, (spec, per) in specs.items():
        run = args.work / f"run-{args.model}-{name.replace(', ', '-').replace(' ', '-')}"
        if not (run / "best.pt").is_file():
            train.fit(args.cube, run, ModelSpec(args.model), pspec, spec, progress=False)
        out[name] = (run, spec.epochs * spec.steps_per_epoch * per, _seconds(run))
    run = args.work / f"run-{args.model}-patch+full-scene"
    if not (run / "best.pt").is_file():
        finetune(out["patch"][0], args.cube, run, epochs=args.ft_epochs, device="cpu", progress=False,
                 objective="full-scene")
    out["patch, then full-scene fine-tune"] = (run, out["patch"][1] + args.ft_epochs * args.steps * per_step[-1],
                                               out["patch"][2] + _seconds(run))
    return out


def on_glacier(ds: xr.Dataset, truth: xr.Dataset | None) -> dict[str, float]:
    """Composite speeds of the predicted and true-frame flow against the twin's velocity on its glacier."""
    if truth is None:
        return {}
    t = truth.sel(x=ds["x"], y=ds["y"])
    g = np.asarray(t["glacier_mask"].values, bool)
    speed = np.hypot(t["u"].values, t["v"].values)
    out = {"twin_speed": float(np.median(speed[g]))}
    for key in ("", "_true"):
        sp = ds[f"v{key}"].values  # the velocity store's root (ITS_LIVE names)
        ok = g & np.isfinite(sp)
        out[f"err{key}"] = float(np.median(np.abs(sp - speed)[ok])) if ok.any() else math.nan
        u, v = ds[f"vx{key}"].values, ds[f"vy{key}"].values
        ang = np.degrees(np.abs(np.angle((u + 1j * v) * np.conj(t["u"].values + 1j * t["v"].values))))
        out[f"dir{key}"] = float(np.median(ang[ok])) if ok.any() else math.nan
    sp, st = ds["v"].values, ds["v_true"].values
    ok = g & np.isfinite(sp) & np.isfinite(st)
    out["diff"] = float(np.median(np.abs(sp - st)[ok])) if ok.any() else math.nan
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cube", required=True)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--twin", type=Path, help="twin directory (its truth.zarr) for table 2's truth columns")
    ap.add_argument("--model", default="convlstm")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=25, help="patch objective: batches per epoch")
    ap.add_argument("--ft-epochs", type=int, default=2, help="full-scene fine-tuning epochs of the patch run")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--val-samples", type=int, default=256)
    ap.add_argument("--scene-window", type=int, default=0)
    ap.add_argument("--last-input", action="append", default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    pspec = PatchSpec(split="temporal")
    cube = open_store(args.cube)
    size = window_shape((cube.sizes["y"], cube.sizes["x"]), pspec, TrainSpec(scene_window=args.scene_window))
    tiles = {o: len(tile_layout(*size, (0, size[0]), pspec.size, o if o >= 0 else pspec.size // 2).spots)
             for o in (-1, 0)}
    per_step = {o: max(1, args.batch_size // n) * n for o, n in tiles.items()}
    truth = xr.open_zarr(args.twin / "truth.zarr", consolidated=False) if args.twin else None
    runs = trainings(args, pspec, per_step)
    rows: list[dict[str, Any]] = []
    for name, (run, seen, seconds) in runs.items():
        fc = predict.load_forecaster(run)
        best = json.loads((run / "run.json").read_text())["result"]["best_val"]
        for last in args.last_input or ["2020-10-01"]:
            row: dict[str, Any] = {"name": name, "last": last, "seen": seen, "seconds": seconds, "best": best}
            for overlap in (-1, 0):
                out = str(args.work / f"fc-{name.replace(', ', '_').replace(' ', '-')}-{last}-{overlap}.zarr")
                s = predict.predict_cube(fc, args.cube, out, PredictSpec(overlap=overlap, last_input=last,
                                                                         device="cpu"), overwrite=True)
                row[overlap] = (s.scores, seam_ratio(xr.open_zarr(out)["ndsi"].values, fc.patch))
                if overlap == -1:
                    frames = cube["ndsi"].sel(time=xr.open_zarr(out)["time"].values).values
                    row["truth_seam"] = seam_ratio(frames, fc.patch)
                    vel = out.replace(".zarr", "-velocity.zarr")
                    row["flow"] = ndsi_store_flow(out, vel, overwrite=True)["comparison"]
                    row["glacier"] = on_glacier(xr.open_zarr(vel), truth)
            rows.append(row)
    print(f"cube {args.cube}: {cube.sizes['time']} periods, {cube.sizes['y']}x{cube.sizes['x']} px; model "
          f"{args.model}; scene window {size[0]}x{size[1]} px = {tiles[-1]} tiles (half-patch overlap), {tiles[0]} "
          "(none)")
    _tables(rows)


def _tables(rows: list[dict[str, Any]]) -> None:
    print("| objective | last input | tile sequences | train s | best val (patch MSE) | MSE | MAE | persistence MSE "
          "| seasonal MSE | MSE, no overlap | seam ratio, no overlap | seam ratio, blended | seam ratio, truth |")
    print("|---" * 13 + "|")
    for r in rows:
        (sc, seam), (sc0, seam0) = r[-1], r[0]
        print(f"| {r['name']} | {r['last']} | {r['seen']} | {r['seconds']:.0f} | {r['best']:.4f} | "
              f"{sc['model']['mse']:.4f} | {sc['model']['mae']:.4f} | {sc['persistence']['mse']:.4f} | "
              f"{sc['seasonal']['mse']:.4f} | {sc0['model']['mse']:.4f} | {seam0:.3f} | {seam:.3f} | "
              f"{r['truth_seam']:.3f} |")
    print()
    print("| objective | last input | median abs speed diff, ice | direction diff, ice | predicted speed | "
          "true-frame speed | abs speed diff, glacier | twin speed, glacier | predicted vs twin | true frames vs "
          "twin | direction: predicted vs twin | true frames vs twin |")
    print("|---" * 12 + "|")
    for r in rows:
        c, g = r["flow"], r["glacier"]
        cols = [g.get(k, math.nan) for k in ("diff", "twin_speed", "err", "err_true", "dir", "dir_true")]
        print(f"| {r['name']} | {r['last']} | {c['speed_diff_median']:.1f} | {c['direction_diff_median']:.0f}° | "
              f"{c['speed_median']:.1f} | {c['speed_true_median']:.1f} | {cols[0]:.1f} | {cols[1]:.1f} | "
              f"{cols[2]:.1f} | {cols[3]:.1f} | {cols[4]:.0f}° | {cols[5]:.0f}° |")


if __name__ == "__main__":
    main()
