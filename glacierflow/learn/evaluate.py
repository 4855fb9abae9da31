"""Metrics per lead time for a model and both baselines on the same samples; ``metrics.json``; tables.

Every figure is a masked mean over observed target pixels (``mask == 1``, see ``patches``): MSE and MAE
per lead (1..t_out) and over all leads; skill against a baseline ``b`` is ``1 - MSE_model / MSE_b``.
The figures come from :mod:`glacierflow.learn.metrics`, the implementation ``predict`` scores with too.

``metrics.json`` (in the run directory): ``{split: {name: {"mse", "mae", "per_lead": {"mse": [...],
"mae": [...]}, "skill": {baseline: float}}}}`` with ``name`` the model and each baseline.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glacierflow.errors import GlacierflowError
from glacierflow.learn import patches
from glacierflow.learn.checkpoint import load_checkpoint
from glacierflow.learn.metrics import add_sums, finish, metric_sums, with_skill
from glacierflow.learn.models import BASELINES, build_model
from glacierflow.learn.runtime import resolve_device
from glacierflow.specs import PatchSpec
from glacierflow.storage.runfiles import write_json
from glacierflow.storage.store import open_store


# ------------------------------------------------------------------------------------------ on a run
@torch.no_grad()
def evaluate_models(models: dict[str, torch.nn.Module], dataset: Any, *, batch_size: int = 64,
                    device: torch.device | None = None) -> dict[str, dict[str, Any]]:
    """Metrics of each model over all samples of ``dataset`` (a ``patches.PatchDataset`` with context)."""
    device = device or torch.device("cpu")
    sums: dict[str, dict[str, np.ndarray] | None] = dict.fromkeys(models)
    for m in models.values():
        m.eval().to(device)
    for b in patches.make_loader(dataset, batch_size, shuffle=False):
        x, ctx = b["x"].to(device), b.get("context")
        for name, m in models.items():
            pred = m(x, context=None if ctx is None else ctx.to(device))
            sums[name] = add_sums(sums[name], metric_sums(pred, b["y"], b["mask"]))
    if any(s is None for s in sums.values()):
        raise GlacierflowError("no samples to evaluate; use a longer or larger cube")
    return with_skill({k: finish(s) for k, s in sums.items() if s is not None}, BASELINES)


def baseline_models(t_in: int, t_out: int, size: int, season_length: int) -> dict[str, torch.nn.Module]:
    """Every registered baseline, built for this sample shape."""
    return {b: build_model(b, t_in=t_in, t_out=t_out, size=size, season_length=season_length) for b in BASELINES}


def evaluate_run(run_dir: str | os.PathLike[str], split: str = "test", cube: str | None = None, *,
                 checkpoint: str = "best.pt", batch_size: int = 64, device: str = "auto",
                 storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score a run's model and the baselines on one set (``train``/``val``/``test``); update ``metrics.json``.

    The samples are cut exactly as in training (the checkpoint's patch spec) from ``cube`` (default: the
    cube the run was trained on), opened with ``storage_options`` (cloud credentials; never recorded).
    """
    run = Path(run_dir)
    model, specs, _ = load_checkpoint(run / checkpoint)
    spec = PatchSpec.from_dict(specs["patch_spec"])
    samples = patches.prepare(open_store(cube or specs["cube"], storage_options, require=("ndsi",)), spec)
    models = {specs["model_name"]: model,
              **baseline_models(spec.t_in, spec.t_out, spec.size, samples.season_length)}
    results = evaluate_models(models, samples.dataset(split), batch_size=batch_size,
                              device=resolve_device(device))
    metrics = load_metrics(run) if (run / "metrics.json").is_file() else {}
    metrics[split] = results
    write_json(run / "metrics.json", metrics)
    return results


def load_metrics(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``metrics.json`` of a run directory."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise GlacierflowError(f"no metrics.json in {run_dir}; run 'glacierflow evaluate {run_dir}' first")
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------------ tables
def table_rows(runs: dict[str, dict[str, Any]], split: str = "test") -> list[dict[str, Any]]:
    """Rows (run, model, mse, mae, skill, per-lead MSE) for several runs.

    Each run's model, and the baselines once per distinct result (baselines on other samples are other rows).
    """
    rows, seen = [], set()
    for label, metrics in runs.items():
        res = metrics.get(split)
        if res is None:
            raise GlacierflowError(f"run {label} has no {split!r} metrics; run 'glacierflow evaluate {label}'")
        for name, r in res.items():
            key = (name, round(r["mse"], 12), round(r["mae"], 12))
            if name in BASELINES and key in seen:
                continue
            seen.add(key)
            rows.append({"run": label, "model": name, **r})
    return sorted(rows, key=lambda r: (r["model"] in BASELINES, r["mse"]))


def render_table(rows: list[dict[str, Any]], title: str = "") -> Any:
    """A rich Table in the paper's shape (model, MSE, MAE) plus skill against each baseline and per lead."""
    from rich.table import Table

    leads = max(len(r["per_lead"]["mse"]) for r in rows)
    t = Table(title=title or None)
    for col in ("Model", "Run", "MSE", "MAE", *(f"skill vs {b}" for b in BASELINES),
                *(f"MSE t+{k + 1}" for k in range(leads))):
        t.add_column(col, justify="left" if col in ("Model", "Run") else "right")
    for r in rows:
        t.add_row(r["model"], r["run"], f"{r['mse']:.4f}", f"{r['mae']:.4f}",
                  *(f"{r['skill'].get(b, float('nan')):+.1%}" for b in BASELINES),
                  *(f"{v:.4f}" for v in r["per_lead"]["mse"]))
    return t


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The same table as Markdown (for reports)."""
    leads = max(len(r["per_lead"]["mse"]) for r in rows)
    head = ["model", "run", "MSE", "MAE", *(f"skill vs {b}" for b in BASELINES),
            *(f"MSE t+{k + 1}" for k in range(leads))]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], r["run"], f"{r['mse']:.4f}", f"{r['mae']:.4f}",
                 *(f"{r['skill'].get(b, float('nan')):+.1%}" for b in BASELINES),
                 *(f"{v:.4f}" for v in r["per_lead"]["mse"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
