"""The one implementation of glacierflow's scores: masked MSE/MAE per lead, skill, and the observed mask.

Every figure is a masked mean over observed target pixels: MSE and MAE per lead (1..t_out) and over all
leads; skill against a baseline ``b`` is ``1 - MSE_model / MSE_b``. ``evaluate`` (``metrics.json``) and
``predict`` (the forecast store's ``scores`` group) both score with :func:`lead_sums` and :func:`finish`
on the pixels :func:`observed_mask` marks, so the two cannot drift. The array functions work on numpy,
dask and (through :func:`as_numpy`) torch arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from glacierflow.errors import GlacierflowError


def as_numpy(a: Any) -> np.ndarray:
    """A torch tensor (on any device) or array-like as a float64 numpy array."""
    if hasattr(a, "detach"):
        return a.detach().float().cpu().numpy().astype(np.float64)
    return np.asarray(a, np.float64)


def observed(cube: xr.Dataset) -> xr.DataArray:
    """Where the cube observed: ``n_valid > 0`` (time, y, x) where it has it, else periods not ``interpolated``."""
    if "n_valid" in cube:
        return cube["n_valid"].transpose("time", "y", "x") > 0
    if "interpolated" in cube:
        return ~cube["interpolated"].astype(bool)
    return xr.ones_like(cube["time"], dtype=bool)


def observed_mask(cube: xr.Dataset, index: list[int]) -> xr.DataArray:
    """Pixels that score at periods ``index``: :func:`observed` and a finite ``ndsi``, shaped (time, y, x)."""
    sub = cube.isel(time=index)
    return observed(sub) & np.isfinite(sub["ndsi"])


def lead_sums(pred: Any, target: Any, mask: Any, lead_axis: int = 1) -> dict[str, Any]:
    """Per-lead sums ``se``, ``ae`` (masked squared / absolute errors) and ``n`` (observed pixels).

    Sums run over every axis but ``lead_axis``; arrays stay in their own kind (numpy, or dask: lazy) and dtype.
    """
    if pred.shape != target.shape:
        raise GlacierflowError(f"prediction shape {pred.shape} differs from target shape {target.shape}")
    axes = tuple(k for k in range(target.ndim) if k != lead_axis)
    err = (pred - target) * mask
    return {"se": (err**2).sum(axis=axes), "ae": abs(err).sum(axis=axes), "n": mask.sum(axis=axes)}


def add_sums(a: dict[str, np.ndarray] | None, b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Accumulate :func:`lead_sums` over batches."""
    return dict(b) if a is None else {k: a[k] + b[k] for k in b}


def finish(sums: dict[str, Any], counts: bool = False) -> dict[str, Any]:
    """``{"mse", "mae", "per_lead": {"mse": [...], "mae": [...]}}`` from sums (NaN where nothing was observed).

    ``counts`` adds the observed pixels per lead (``per_lead["n"]``).
    """
    se, ae, n = (np.asarray(sums[k], np.float64) for k in ("se", "ae", "n"))
    with np.errstate(invalid="ignore", divide="ignore"):
        per_mse, per_mae = se / n, ae / n
    total = n.sum()
    per_lead: dict[str, list[Any]] = {"mse": [float(v) for v in per_mse], "mae": [float(v) for v in per_mae]}
    if counts:
        per_lead["n"] = [int(v) for v in n]
    return {"mse": float(se.sum() / total) if total else float("nan"),
            "mae": float(ae.sum() / total) if total else float("nan"), "per_lead": per_lead}


def skill(mse: float, baseline_mse: float) -> float:
    """``1 - mse / baseline_mse`` (positive: better than the baseline)."""
    return float(1.0 - mse / baseline_mse) if baseline_mse > 0 else float("nan")


def with_skill(results: dict[str, dict[str, Any]], baselines: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Add ``skill`` against each baseline present in ``results`` to every entry."""
    return {name: {**r, "skill": {b: skill(r["mse"], results[b]["mse"]) for b in baselines if b in results}}
            for name, r in results.items()}


def metric_sums(pred: Any, target: Any, mask: Any | None = None) -> dict[str, np.ndarray]:
    """:func:`lead_sums` of ``(B, t_out, ...)`` numpy or torch arrays in float64 (``mask`` 1 = observed)."""
    p, t = as_numpy(pred), as_numpy(target)
    if p.shape != t.shape:
        raise GlacierflowError(f"prediction shape {p.shape} differs from target shape {t.shape}")
    m = np.ones_like(t) if mask is None else np.broadcast_to(as_numpy(mask), t.shape)
    return lead_sums(p, t, m, lead_axis=1)


def score(predictions: dict[str, Any], target: Any, mask: Any | None = None,
          baselines: tuple[str, ...] = ("persistence", "seasonal")) -> dict[str, dict[str, Any]]:
    """Metrics and skill of several predictions of the same ``target`` (all arrays ``(B, t_out, ...)``)."""
    return with_skill({k: finish(metric_sums(p, target, mask)) for k, p in predictions.items()}, baselines)
