"""Metrics per lead time for a model and every baseline on the same samples; ``metrics.json``; tables.

Every figure is a masked mean over observed target pixels (``mask == 1``, see ``patches``): MSE, MAE and
snow-cover IoU/F1 per lead (1..t_out) and over all leads; skill against a baseline ``b`` is
``1 - MSE_model / MSE_b``, pooled over every forecast start date of the set, with a 95 % block-bootstrap
interval (:func:`glacierflow.learn.metrics.bootstrap_skill`) resampling start dates x spatial blocks. A
spatial block is a ``2 * size`` px square cell of the window's top-left corner: windows of cells two apart
share no pixel, and weather is common to a whole start date (it is the date that is resampled for that);
neighbouring cells still overlap by up to a patch, so the interval is somewhat too narrow spatially, which
is why start dates, not pixels, carry most of the resampling. A lead without any observed pixel is
``None`` (n/a).

``metrics.json`` (in the run directory)::

    {"model": NAME, split: {"model": NAME, "origins": [YYYY-MM-DD, ...],
                             name: {"mse", "mae", "iou", "f1", "per_lead": {"mse": [...], "mae": [...],
                                    "iou": [...], "f1": [...], "skill": {baseline: [...]},
                                    "skill_ci95": {baseline: [[lo, hi], ...]}},
                                    "skill": {baseline: float}, "skill_ci95": {baseline: [lo, hi]}}}}

with ``name`` the model and each of ``persistence``, ``seasonal``, ``climatology``, ``trend``, ``anomaly``.
The figures come from :mod:`glacierflow.learn.metrics`, the implementation ``predict`` scores with too.
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
from glacierflow.learn.metrics import SNOW_THRESHOLD, bootstrap_skill, finish, with_skill
from glacierflow.learn.models import BASELINES, build_model
from glacierflow.learn.objectives import forecast, to_device
from glacierflow.learn.runtime import autocast, autocast_dtype, resolve_device
from glacierflow.specs import PatchSpec
from glacierflow.storage.runfiles import write_json
from glacierflow.storage.store import config_attr, open_store

SUM_KEYS = ("se", "ae", "n", "tp", "fp", "fn")


def sample_sums(pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, threshold: float
                ) -> dict[str, np.ndarray]:
    """Per-sample, per-lead sums ``(B, t_out)`` of :data:`SUM_KEYS` (as :func:`metrics.lead_sums`)."""
    p, t, m = pred.double(), y.double(), mask.double()
    err = (p - t) * m
    ps, ts = (p >= threshold).double() * m, (t >= threshold).double() * m
    dims = tuple(range(2, pred.ndim))
    out = {"se": (err**2).sum(dims), "ae": err.abs().sum(dims), "n": m.sum(dims), "tp": (ps * ts).sum(dims),
           "fp": (ps * (1 - ts)).sum(dims), "fn": ((1 - ps) * ts).sum(dims)}
    return {k: v.cpu().numpy() for k, v in out.items()}


def units(index: np.ndarray, t_in: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(start date index, spatial block id)`` of each window start ``(t, y, x)``: blocks of ``2 * size`` px."""
    cell = 2 * size
    return index[:, 0] + t_in, (index[:, 1] // cell) * 100_000 + index[:, 2] // cell


# ------------------------------------------------------------------------------------------ on a run
@torch.no_grad()
def evaluate_models(models: dict[str, torch.nn.Module], dataset: Any, *, batch_size: int = 64,
                    device: torch.device | None = None, threshold: float = SNOW_THRESHOLD,
                    amp: bool = True) -> dict[str, dict[str, Any]]:
    """Metrics of each model over all samples of ``dataset`` (a ``patches.PatchDataset``), with intervals.

    Every model gets the same inputs (history, bases, calendar) and the same autocast policy as training.
    """
    device = device or torch.device("cpu")
    dtype = autocast_dtype(device, amp)
    rows: dict[str, list[dict[str, np.ndarray]]] = {k: [] for k in models}
    index = []
    for m in models.values():
        m.eval().to(device)
    for b in patches.make_loader(dataset, batch_size, shuffle=False, pin_memory=device.type == "cuda"):
        index.append(b["index"].numpy())
        b = to_device(b, device)
        for name, m in models.items():
            with autocast(device, dtype):
                pred = forecast(m, b)
            rows[name].append(sample_sums(pred.float(), b["y"], b["mask"], threshold))
    if not index:
        raise GlacierflowError("no samples to evaluate; use a longer or larger cube")
    per = {name: {k: np.concatenate([r[k] for r in rs]) for k in SUM_KEYS} for name, rs in rows.items()}
    results = with_skill({name: finish({k: v.sum(0) for k, v in p.items()}) for name, p in per.items()}, BASELINES)
    origin, block = units(np.concatenate(index), dataset.cube.spec.t_in, dataset.cube.spec.size)
    ids, inv = np.unique(np.stack([origin, block], 1), axis=0, return_inverse=True)
    inv = inv.reshape(-1)

    def grouped(se: np.ndarray) -> np.ndarray:
        out = np.zeros((len(ids), se.shape[1]))
        np.add.at(out, inv, se)
        return out

    for name, r in results.items():
        ci = {b: bootstrap_skill(grouped(per[name]["se"]), grouped(per[b]["se"]), ids[:, 0], ids[:, 1])
              for b in BASELINES if b in per}
        r["skill_ci95"] = {b: v[0] for b, v in ci.items()}
        r["per_lead"]["skill_ci95"] = {b: v[1] for b, v in ci.items()}
    return results


def baseline_models(t_in: int, t_out: int, size: int, season_length: int) -> dict[str, torch.nn.Module]:
    """Every registered baseline, built for this sample shape."""
    return {b: build_model(b, t_in=t_in, t_out=t_out, size=size, season_length=season_length) for b in BASELINES}


def evaluate_run(run_dir: str | os.PathLike[str], split: str = "test", cube: str | None = None, *,
                 checkpoint: str = "best.pt", batch_size: int = 64, device: str = "auto",
                 storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score a run's model and the baselines on one set (``train``/``val``/``test``); update ``metrics.json``.

    The samples are cut exactly as in training (the checkpoint's patch spec, the training periods'
    statistics) from ``cube`` (default: the cube the run was trained on), opened with ``storage_options``
    (cloud credentials; never recorded). Returns the split's entry of ``metrics.json``.
    """
    run = Path(run_dir)
    model, specs, _ = load_checkpoint(run / checkpoint)
    spec = PatchSpec.from_dict(specs["patch_spec"])
    ds = open_store(cube or specs["cube"], storage_options, require=("ndsi",))
    samples = patches.prepare(ds, spec)
    threshold = float(config_attr(ds, "preprocess_spec").get("ndsi_threshold", SNOW_THRESHOLD))
    name = specs["model_name"]
    models = {name: model, **baseline_models(spec.t_in, spec.t_out, spec.size, samples.season_length)}
    amp = bool((specs.get("train_spec") or {}).get("amp", True))
    results = evaluate_models(models, samples.dataset(split), batch_size=batch_size,
                              device=resolve_device(device), threshold=threshold, amp=amp)
    metrics = load_metrics(run) if (run / "metrics.json").is_file() else {}
    metrics["model"] = name
    metrics[split] = {"model": name, "origins": samples.origins(split), **results}
    write_json(run / "metrics.json", metrics)
    return metrics[split]


def load_metrics(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``metrics.json`` of a run directory."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise GlacierflowError(f"no metrics.json in {run_dir}; run 'glacierflow evaluate {run_dir}' first")
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------------ tables
def _entries(res: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The per-predictor entries of a split's metrics (leaving out ``model`` and ``origins``)."""
    return {k: v for k, v in res.items() if isinstance(v, dict) and "mse" in v}


def table_rows(runs: dict[str, dict[str, Any]], split: str = "test") -> list[dict[str, Any]]:
    """Rows (run, model, mse, mae, iou, skill with intervals, per lead) for several runs.

    Each run's model, and the baselines once per distinct result (baselines on other samples are other rows).
    """
    rows, seen = [], set()
    for label, metrics in runs.items():
        res = metrics.get(split)
        if res is None:
            raise GlacierflowError(f"run {label} has no {split!r} metrics; run 'glacierflow evaluate {label}'")
        for name, r in _entries(res).items():
            key = (name, round(r["mse"] or 0.0, 12), round(r["mae"] or 0.0, 12))
            if name in BASELINES and key in seen:
                continue
            seen.add(key)
            rows.append({"run": label, "model": name, "origins": len(res.get("origins", [])), **r})
    return sorted(rows, key=lambda r: (r["model"] in BASELINES, r["mse"] if r["mse"] is not None else np.inf))


def fmt(v: float | None, spec: str) -> str:
    """A figure, or ``n/a`` where there is none."""
    return "n/a" if v is None else format(v, spec)


def _skill_cell(r: dict[str, Any], b: str) -> str:
    ci = (r.get("skill_ci95") or {}).get(b)
    text = fmt(r["skill"].get(b), "+.1%")
    return text + (f" [{ci[0]:+.1%}, {ci[1]:+.1%}]" if ci else "")


def _cells(r: dict[str, Any], leads: int) -> list[str]:
    per = r["per_lead"]
    lead_cells = []
    for k in range(leads):
        sk = per.get("skill", {}).get("seasonal", [None] * leads)
        ci = per.get("skill_ci95", {}).get("seasonal", [None] * leads)
        mse = per["mse"][k] if k < len(per["mse"]) else None
        text = f"{fmt(mse, '.4f')} ({fmt(sk[k] if k < len(sk) else None, '+.0%')}"
        c = ci[k] if k < len(ci) else None
        lead_cells.append(text + (f" [{c[0]:+.0%}, {c[1]:+.0%}])" if c else ")"))
    return [r["model"], r["run"], fmt(r["mse"], ".4f"), fmt(r["mae"], ".4f"), fmt(r.get("iou"), ".3f"),
            *(_skill_cell(r, b) for b in BASELINES), *lead_cells]


def _head(rows: list[dict[str, Any]]) -> tuple[list[str], int]:
    leads = max(len(r["per_lead"]["mse"]) for r in rows)
    return (["model", "run", "MSE", "MAE", "IoU", *(f"skill vs {b} [95% CI]" for b in BASELINES),
             *(f"MSE t+{k + 1} (skill vs seasonal [CI])" for k in range(leads))], leads)


def render_table(rows: list[dict[str, Any]], title: str = "") -> Any:
    """A rich Table in the paper's shape (model, MSE, MAE) plus IoU, skill (95 % CI) against each baseline, per lead."""
    from rich.table import Table

    head, leads = _head(rows)
    t = Table(title=title or None)
    for col in head:
        t.add_column(col, justify="left" if col in ("model", "run") else "right")
    for r in rows:
        t.add_row(*_cells(r, leads))
    return t


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The same table as Markdown (for reports)."""
    head, leads = _head(rows)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cells(r, leads)) + " |" for r in rows]
    return "\n".join(lines)
