"""The one implementation of glacierflow's scores: masked MSE/MAE per lead, skill, and the observed mask.

Every figure is a masked mean over observed target pixels: MSE and MAE per lead (1..t_out) and over all
leads; skill against a baseline ``b`` is ``1 - MSE_model / MSE_b``; snow-cover IoU and F1 compare
``value >= threshold`` (the cube's NDSI threshold) in forecast and target. A lead without any observed target
pixel is ``None`` (printed n/a), never NaN, and the overall figures pool the leads that have pixels.
:func:`bootstrap_skill` gives a 95 % block-bootstrap interval of the skill over (start date x spatial block)
units. ``evaluate`` (``metrics.json``) and
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


SNOW_THRESHOLD = 0.3  # PreprocessSpec.ndsi_threshold's default: the snow mask is NDSI where NDSI >= it, else 0


def lead_sums(pred: Any, target: Any, mask: Any, lead_axis: int = 1, threshold: float = SNOW_THRESHOLD
              ) -> dict[str, Any]:
    """Per-lead sums ``se``, ``ae`` (squared / absolute errors), ``n`` (observed pixels), snow ``tp``, ``fp``, ``fn``.

    Snow is ``value >= threshold``; errors and counts are masked by ``mask``.
    Sums run over every axis but ``lead_axis``; arrays stay in their own kind (numpy, or dask: lazy) and dtype.
    """
    if pred.shape != target.shape:
        raise GlacierflowError(f"prediction shape {pred.shape} differs from target shape {target.shape}")
    axes = tuple(k for k in range(target.ndim) if k != lead_axis)
    err = (pred - target) * mask
    ps, ts = (pred >= threshold) * mask, (target >= threshold) * mask
    return {"se": (err**2).sum(axis=axes), "ae": abs(err).sum(axis=axes), "n": mask.sum(axis=axes),
            "tp": (ps * ts).sum(axis=axes), "fp": (ps * (1 - ts)).sum(axis=axes),
            "fn": ((1 - ps) * ts).sum(axis=axes)}


def add_sums(a: dict[str, np.ndarray] | None, b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Accumulate :func:`lead_sums` over batches."""
    return dict(b) if a is None else {k: a[k] + b[k] for k in b}


def _ratio(a: Any, b: Any) -> float | None:
    return float(a / b) if b > 0 else None


def finish(sums: dict[str, Any], counts: bool = False) -> dict[str, Any]:
    """``{"mse", "mae", "iou", "f1", "per_lead": {...}}`` from sums; ``None`` where nothing was observed.

    ``counts`` adds the observed pixels per lead (``per_lead["n"]``). Overall figures pool every lead with
    observed pixels (a lead without any is left out, never turned into NaN).
    """
    arr = {k: np.asarray(v, np.float64) for k, v in sums.items()}
    se, ae, n = arr["se"], arr["ae"], arr["n"]
    tp, fp, fn = (arr.get(k, np.zeros_like(n)) for k in ("tp", "fp", "fn"))
    per_lead: dict[str, list[Any]] = {
        "mse": [_ratio(a, b) for a, b in zip(se, n, strict=True)],
        "mae": [_ratio(a, b) for a, b in zip(ae, n, strict=True)],
        "iou": [_ratio(a, a + b + c) if m > 0 else None for a, b, c, m in zip(tp, fp, fn, n, strict=True)],
        "f1": [_ratio(2 * a, 2 * a + b + c) if m > 0 else None for a, b, c, m in zip(tp, fp, fn, n, strict=True)],
    }
    if counts:
        per_lead["n"] = [int(v) for v in n]
    return {"mse": _ratio(se.sum(), n.sum()), "mae": _ratio(ae.sum(), n.sum()),
            "iou": _ratio(tp.sum(), tp.sum() + fp.sum() + fn.sum()) if n.sum() else None,
            "f1": _ratio(2 * tp.sum(), 2 * tp.sum() + fp.sum() + fn.sum()) if n.sum() else None,
            "per_lead": per_lead}


def skill(mse: float | None, baseline_mse: float | None) -> float | None:
    """``1 - mse / baseline_mse`` (positive: better than the baseline); None where either is missing or 0."""
    if mse is None or baseline_mse is None or not baseline_mse > 0:
        return None
    return float(1.0 - mse / baseline_mse)


def with_skill(results: dict[str, dict[str, Any]], baselines: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Add ``skill`` (overall) and ``per_lead["skill"]`` against each baseline present in ``results``."""
    out = {}
    for name, r in results.items():
        present = [b for b in baselines if b in results]
        per = {b: [skill(m, mb) for m, mb in zip(r["per_lead"]["mse"], results[b]["per_lead"]["mse"], strict=True)]
               for b in present}
        out[name] = {**r, "skill": {b: skill(r["mse"], results[b]["mse"]) for b in present},
                     "per_lead": {**r["per_lead"], "skill": per}}
    return out


def bootstrap_skill(se_model: np.ndarray, se_base: np.ndarray, origin: np.ndarray, block: np.ndarray,
                    reps: int = 1000, seed: int = 0) -> tuple[list[float] | None, list[list[float] | None]]:
    """95 % block-bootstrap interval of ``1 - SE_model / SE_base``, overall and per lead.

    ``se_*`` ``(U, L)``: squared-error sums per unit (one start date x one spatial block) and lead, both over
    the same observed pixels; ``origin``/``block`` ``(U,)`` label each unit. Each replicate resamples the
    start dates and the spatial blocks independently with replacement (a two-way crossed bootstrap): a unit's
    weight is (times its date was drawn) x (times its block was drawn). Percentile interval.
    """
    dates, di = np.unique(origin, return_inverse=True)
    blocks, bi = np.unique(block, return_inverse=True)
    rng = np.random.default_rng(seed)
    wd = rng.multinomial(len(dates), np.full(len(dates), 1 / len(dates)), size=reps)  # (R, D)
    wb = rng.multinomial(len(blocks), np.full(len(blocks), 1 / len(blocks)), size=reps)  # (R, K)
    w = wd[:, di] * wb[:, bi]  # (R, U)
    m, b = w @ se_model, w @ se_base  # (R, L)

    def interval(num: np.ndarray, den: np.ndarray) -> list[float] | None:
        ok = den > 0
        if ok.sum() < reps // 2:
            return None
        s = 1.0 - num[ok] / den[ok]
        return [float(np.percentile(s, 2.5)), float(np.percentile(s, 97.5))]

    overall = interval(m.sum(1), b.sum(1))
    return overall, [interval(m[:, k], b[:, k]) for k in range(se_model.shape[1])]


def metric_sums(pred: Any, target: Any, mask: Any | None = None) -> dict[str, np.ndarray]:
    """:func:`lead_sums` of ``(B, t_out, ...)`` numpy or torch arrays in float64 (``mask`` 1 = observed)."""
    p, t = as_numpy(pred), as_numpy(target)
    if p.shape != t.shape:
        raise GlacierflowError(f"prediction shape {p.shape} differs from target shape {t.shape}")
    m = np.ones_like(t) if mask is None else np.broadcast_to(as_numpy(mask), t.shape)
    return lead_sums(p, t, m, lead_axis=1)


def score(predictions: dict[str, Any], target: Any, mask: Any | None = None,
          baselines: tuple[str, ...] = ("persistence", "seasonal", "climatology", "trend", "anomaly")
          ) -> dict[str, dict[str, Any]]:
    """Metrics and skill of several predictions of the same ``target`` (all arrays ``(B, t_out, ...)``)."""
    return with_skill({k: finish(metric_sums(p, target, mask)) for k, p in predictions.items()}, baselines)
