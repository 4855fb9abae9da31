"""Fine-tuning on another glacier (the paper's experiment 2): ``glacierflow finetune RUN_DIR --cube OTHER --out RUN2``.

A trained run's ``best.pt`` seeds a new run directory as a checkpoint to resume from, with its counters reset
(epoch 0, no best validation loss yet), so :func:`glacierflow.learn.train.fit` continues the same weights and
optimizer state on the other glacier's cube with the run directory contract unchanged (``best.pt``,
``last.pt``, ``loss.csv``, ``run.json``; ``finetune.json`` names the source checkpoint and its sha256).
The other cube is cut with the checkpoint's own patch spec (same patch size, window and split); before and
after, the model is scored on the other glacier's test split next to both baselines: zero-shot vs fine-tuned.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from glacierflow.errors import GlacierflowError
from glacierflow.learn import evaluate, patches, train
from glacierflow.learn.checkpoint import load_checkpoint, save_checkpoint
from glacierflow.learn.models import BASELINES
from glacierflow.learn.runtime import resolve_device
from glacierflow.specs import PatchSpec, TrainSpec
from glacierflow.storage.runfiles import file_sha256, write_json
from glacierflow.storage.store import config_attr, open_store


def check_compatible(specs: dict[str, Any], cube: Any, cube_url: str, run_dir: str, *,
                     patch_size: int | None = None, t_in: int | None = None, t_out: int | None = None) -> None:
    """One-line errors when the checkpoint cannot be used on ``cube`` as asked (naming both values)."""
    ps = specs["patch_spec"]
    asked = {"patch size": (patch_size, ps["size"]), "t_in": (t_in, ps["t_in"]), "t_out": (t_out, ps["t_out"])}
    for what, (given, stored) in asked.items():
        if given is not None and int(given) != int(stored):
            raise GlacierflowError(f"checkpoint {run_dir} was trained with {what} {stored}, not {given}; "
                                   f"fine-tune with {what} {stored} or train a new model")
    mine = (specs.get("preprocess_spec") or {}).get("period")
    theirs = config_attr(cube, "preprocess_spec").get("period")
    if mine and theirs and mine != theirs:
        raise GlacierflowError(f"checkpoint {run_dir} was trained on {mine} periods ({ps['t_in']} -> {ps['t_out']} "
                               f"windows), cube {cube_url} has {theirs} periods; build the other cube with "
                               f"--period {mine}")
    small = min(cube.sizes["y"], cube.sizes["x"])
    if small < ps["size"]:
        raise GlacierflowError(f"cube {cube_url} is {small} px on its short side, smaller than the checkpoint's "
                               f"{ps['size']}-px patches")


def score_on(model: Any, name: str, cube_url: str, patch_spec: dict[str, Any], split: str = "test",
             device: str = "cpu", storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Metrics of ``model`` and both baselines on ``split`` of ``cube_url``, cut with ``patch_spec``."""
    spec = PatchSpec.from_dict(patch_spec)
    samples = patches.prepare(open_store(cube_url, storage_options, require=("ndsi",)), spec)
    models = {name: model, **evaluate.baseline_models(spec.t_in, spec.t_out, spec.size, samples.season_length)}
    return evaluate.evaluate_models(models, samples.dataset(split), device=resolve_device(device))


def finetune(run_dir: str | os.PathLike[str], cube_url: str, out_dir: str | os.PathLike[str], *, epochs: int = 5,
             lr: float | None = None, device: str = "auto", progress: bool = True, objective: str | None = None,
             storage_options: dict[str, Any] | None = None, **shape: int | None) -> dict[str, Any]:
    """Continue a trained run on another cube; returns zero-shot and fine-tuned metrics on its test split.

    Parameters
    ----------
    run_dir
        Trained run (its ``best.pt`` is the starting point).
    cube_url
        The other glacier's cube store.
    out_dir
        New run directory (must not hold a run).
    epochs, lr, device
        Fine-tuning epochs; learning rate (default: the run's); device as in training.
    progress
        Progress bar.
    objective
        Training objective to continue with (default: the run's); ``full-scene`` fine-tunes a patch-trained
        model on blended scene windows (the paper's experiment 3: retrained and fine-tuned for full scenes).
    storage_options
        fsspec options for a cloud ``cube_url`` (the run directories are local).
    **shape
        ``patch_size``, ``t_in``, ``t_out`` the caller expects; a mismatch with the checkpoint is an error.

    Returns
    -------
    dict
        ``zero_shot`` and ``fine_tuned`` (``{name: metrics}`` for the model and both baselines on the other
        cube's test split), ``fit`` (the fine-tuning summary) and ``out``.
    """
    src = Path(run_dir) / "best.pt"
    out = Path(out_dir)
    if (out / "last.pt").exists():
        raise GlacierflowError(f"run directory {out} already holds a run; pass another --out")
    model, specs, ck = load_checkpoint(src)
    check_compatible(specs, open_store(cube_url, storage_options, require=("ndsi",)), cube_url, str(run_dir),
                     **shape)
    name = str(specs["model_name"])
    zero_shot = score_on(model, name, cube_url, specs["patch_spec"], device=device, storage_options=storage_options)
    stored = TrainSpec.from_dict(specs["train_spec"])
    tspec = stored.replace(epochs=epochs, device=device, **({"lr": lr} if lr else {}),
                           **({"objective": objective} if objective else {}))
    if lr:
        for group in ck["optimizer"].get("param_groups", []):
            group["lr"] = lr
    out.mkdir(parents=True, exist_ok=True)
    seed = {**ck, "train_spec": tspec.to_dict(), "epoch": 0, "step": 0, "best_val": float("inf"),
            "best_epoch": 0, "bad_epochs": 0, "elapsed": 0.0, "cube": str(cube_url)}
    save_checkpoint(seed, out / "last.pt")
    summary = train.fit(cube_url, out, train_spec=tspec, resume=True, progress=progress,
                        storage_options=storage_options)
    fine_tuned = evaluate.evaluate_run(out, "test", cube_url, device=device, storage_options=storage_options)
    result = {"zero_shot": zero_shot, "fine_tuned": fine_tuned, "fit": summary, "out": str(out)}
    record = {"source": str(src), "source_sha256": file_sha256(src), "cube": str(cube_url), **result,
              "fit": asdict(summary)}
    write_json(out / "finetune.json", record)
    return result


def format_comparison(result: dict[str, Any]) -> list[str]:
    """Zero-shot vs fine-tuned vs both baselines on the other glacier's test split, as lines of a table."""
    zs, ft = result["zero_shot"], result["fine_tuned"]
    model = ft.get("model") or next(k for k, v in ft.items() if isinstance(v, dict) and k not in BASELINES)
    rows = [(f"{model} zero-shot", zs[model]), (f"{model} fine-tuned", ft[model]),
            *((b, ft[b]) for b in BASELINES if b in ft)]
    lines = [f"{'':24s} {'MSE':>8s} {'MAE':>8s}  {'skill vs persistence':>20s} {'skill vs seasonal':>18s}"]
    for label, m in rows:
        sk = m.get("skill", {})
        lines.append(f"{label:24s} {m['mse'] or 0.0:8.4f} {m['mae'] or 0.0:8.4f}  "
                     f"{sk.get('persistence') or 0.0:20.3f} {sk.get('seasonal') or 0.0:18.3f}")
    return lines
