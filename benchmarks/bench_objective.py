"""Patch vs full-scene training objective: full-scene forecast error against the cube, next to the baselines.

For each objective (``train --objective patch|full-scene``, same model, epochs, seed and number of tile
sequences seen), train on a cube's temporal split, then ``predict --last-input DATE`` inside the cube (so the
targets exist) with the default blending (half-patch overlap, Hann) and with plain non-overlapping tiles
(``--overlap 0``). Prints one markdown table: full-scene MSE/MAE of the model and of persistence and seasonal
on the same scene, and the seam ratio (mean |difference| of adjacent pixels on the lines where non-overlapping
tiles meet / on the tile-centre lines; 1 = no seam) of both forecasts.

    .venv/bin/python benchmarks/bench_objective.py --cube CUBE --work DIR [--model convlstm] [--epochs 4]
        [--steps 25] [--last-input 2019-10-01 --last-input 2020-10-01]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from glacierflow import predict, train
from glacierflow.config import ModelSpec, PatchSpec, PredictSpec, TrainSpec
from glacierflow.objectives import window_shape
from glacierflow.store import open_store
from glacierflow.tiling import tile_layout


def seam_ratio(f: np.ndarray, patch: int) -> float:
    """Mean |adjacent difference| of a forecast ``(t, y, x)`` on tile-border lines / on tile-centre lines.

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cube", required=True)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--model", default="convlstm")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=25, help="patch objective: batches per epoch")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--val-samples", type=int, default=256)
    ap.add_argument("--scene-window", type=int, default=0)
    ap.add_argument("--last-input", action="append", default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    pspec = PatchSpec(split="temporal")
    base = TrainSpec(epochs=args.epochs, batch_size=args.batch_size, steps_per_epoch=args.steps, device="cpu",
                     val_samples=args.val_samples, patience=args.epochs)
    cube = open_store(args.cube)
    size = window_shape((cube.sizes["y"], cube.sizes["x"]), pspec, base.replace(scene_window=args.scene_window))
    tiles = len(tile_layout(*size, (0, size[0]), pspec.size, pspec.size // 2).spots)
    per_step = max(1, args.batch_size // tiles) * tiles
    # the same number of tile sequences for both objectives: fewer, larger full-scene steps
    specs = {"patch": base,
             "full-scene": base.replace(objective="full-scene", scene_window=args.scene_window,
                                        steps_per_epoch=math.ceil(args.steps * args.batch_size / per_step))}
    rows = []
    for name, spec in specs.items():
        run = args.work / f"run-{args.model}-{name}"
        t0 = time.perf_counter()
        if not (run / "best.pt").is_file():
            train.fit(args.cube, run, ModelSpec(args.model), pspec, spec, progress=False)
        seconds = time.perf_counter() - t0
        info = json.loads((run / "run.json").read_text())
        seqs = spec.epochs * spec.steps_per_epoch * (per_step if name == "full-scene" else spec.batch_size)
        fc = predict.load_forecaster(run)
        for last in args.last_input or ["2020-10-01"]:
            scores, ratio = {}, {}
            for overlap in (-1, 0):
                out = str(args.work / f"fc-{name}-{last}-{overlap}.zarr")
                s = predict.predict_cube(fc, args.cube, out, PredictSpec(overlap=overlap, last_input=last,
                                                                         device="cpu"), overwrite=True)
                scores[overlap] = s["scores"]
                ratio[overlap] = seam_ratio(xr.open_zarr(out)["ndsi"].values, fc.patch)
            rows.append((name, last, seqs, spec.epochs * spec.steps_per_epoch, seconds, info, scores, ratio))
    print(f"cube {args.cube}: {cube.sizes['time']} periods, {cube.sizes['y']}x{cube.sizes['x']} px; model "
          f"{args.model}; scene window {size[0]}x{size[1]} px = {tiles} tiles")
    print("| objective | last input | steps | tile sequences | train s | best val (patch MSE) | MSE | MAE | "
          "persistence MSE | seasonal MSE | MSE, no overlap | seam ratio, no overlap | seam ratio, blended |")
    print("|---" * 13 + "|")
    for name, last, seqs, steps, seconds, info, scores, ratio in rows:
        m, mo = scores[-1]["model"], scores[0]["model"]
        print(f"| {name} | {last} | {steps} | {seqs} | {seconds:.0f} | {info['result']['best_val']:.4f} | "
              f"{m['mse']:.4f} | {m['mae']:.4f} | {scores[-1]['persistence']['mse']:.4f} | "
              f"{scores[-1]['seasonal']['mse']:.4f} | {mo['mse']:.4f} | {ratio[0]:.3f} | {ratio[-1]:.3f} |")


if __name__ == "__main__":
    main()
