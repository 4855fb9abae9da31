"""Per-lead shrinkage of a residual head's correction, fitted on the validation start dates.

A residual model forecasts ``base + lead_scale[k] * correction`` at lead ``k``
(:class:`glacierflow.learn.models.head.Headed`). Training leaves ``lead_scale`` at 1; afterwards
:func:`fit_lead_scale` chooses it per lead on the validation samples, so that where the validation dates say the
learned correction does not help, the model falls back to its base instead of going below it:

* ``fallback`` (the default): 0 at a lead where the correction is *significantly* worse than the base on the
  validation start dates (the 95 % block-bootstrap interval of the skill vs the base lies below 0, the same
  start-date x spatial-block bootstrap as ``evaluate``), else 1. A correction that is only noise falls back;
  one that is not clearly worse is kept: the validation set is few start dates of one year, and the shift
  between validation and test years (issue 19) makes a finer fit on it chase that year's weather.
* ``scale``: the factor in {0, 0.1, ..., 1} with the lowest validation MSE (clamped forecasts, exact).
* ``none``: 1 everywhere.

Chosen by measurement (``benchmarks/README.md``, issue 19): fitted on one validation start date and scored on
the other, ``scale`` lost 0–3 % against keeping every correction, ``fallback`` none.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from glacierflow.errors import GlacierflowError
from glacierflow.learn.evaluate import units
from glacierflow.learn.metrics import bootstrap_skill
from glacierflow.learn.objectives import to_device
from glacierflow.learn.runtime import autocast

GRID = np.round(np.linspace(0.0, 1.0, 11), 2)
"""Factors ``scale`` chooses from; ``fallback`` uses the two ends."""


@torch.no_grad()
def scaled_errors(model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]], device: torch.device,
                  dtype: torch.dtype | None = None, grid: np.ndarray = GRID
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Squared-error sums of ``start + a * correction`` (clamped) for each ``a`` of ``grid``, per unit and lead.

    Returns ``(se (A, U, L), n (U, L), origin (U,), block (U,))``: the units are ``evaluate``'s (forecast start
    date x spatial block of two patches, :func:`glacierflow.learn.evaluate.units`). Batches need ``index``.
    """
    model.eval()
    se_rows, n_rows, index = [], [], []
    for b in batches:
        index.append(b["index"].numpy())
        b = to_device(b, device)
        extras = {k: b[k] for k in ("bases", "phase") if k in b}
        with autocast(device, dtype):
            start, corr = model.correction(b["x"], extras=extras or None)
        start, corr, y, m = start.float(), corr.float(), b["y"], b["mask"]
        se_rows.append(torch.stack([((((start + float(a) * corr).clamp(0, 1) - y) ** 2) * m).sum((2, 3, 4))
                                    for a in grid]).double().cpu().numpy())  # (A, B, L)
        n_rows.append(m.sum((2, 3, 4)).double().cpu().numpy())
    if not index:
        raise GlacierflowError("no validation samples to fit the per-lead shrinkage on; use --shrink none")
    starts = np.concatenate(index)
    origin, block = units(starts, model.t_in, int(model.core.size))
    ids, inv = np.unique(np.stack([origin, block], 1), axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    se_all, n_all = np.concatenate(se_rows, axis=1), np.concatenate(n_rows)
    se = np.zeros((len(grid), len(ids), se_all.shape[2]))
    n = np.zeros((len(ids), n_all.shape[1]))
    np.add.at(se, (slice(None), inv), se_all)
    np.add.at(n, inv, n_all)
    return se, n, ids[:, 0], ids[:, 1]


def choose_scale(se: np.ndarray, n: np.ndarray, origin: np.ndarray, block: np.ndarray, mode: str,
                 grid: np.ndarray = GRID) -> tuple[list[float], dict[str, Any]]:
    """Per-lead factors from :func:`scaled_errors`' sums, and what they rest on (validation MSE, intervals).

    ``grid`` must start at 0 and end at 1 (the base and the whole correction).
    """
    if grid[0] != 0.0 or grid[-1] != 1.0:
        raise GlacierflowError("the shrinkage grid must run from 0 (the base) to 1 (the whole correction)")
    tot = se.sum(1)  # (A, L)
    leads = tot.shape[1]
    _, per_lead = bootstrap_skill(se[-1], se[0], origin, block)
    if mode == "none":
        scale = [1.0] * leads
    elif mode == "fallback":
        scale = [0.0 if ci is not None and ci[1] < 0 else 1.0 for ci in per_lead]
    elif mode == "scale":
        scale = [float(grid[int(np.argmin(tot[:, k]))]) for k in range(leads)]
    else:
        raise GlacierflowError(f"unknown shrinkage {mode!r}; choose fallback, scale or none")
    cnt = np.maximum(n.sum(0), 1.0)
    picked = np.array([tot[int(np.flatnonzero(np.isclose(grid, s))[0]), k] for k, s in enumerate(scale)])
    info = {"mode": mode, "lead_scale": scale, "val_mse_base": (tot[0] / cnt).tolist(),
            "val_mse_model": (tot[-1] / cnt).tolist(), "val_mse_shrunk": (picked / cnt).tolist(),
            "val_mse": float(picked.sum() / cnt.sum()), "val_mse_unshrunk": float(tot[-1].sum() / cnt.sum()),
            "val_skill_vs_base_ci95": per_lead, "origins": int(len(np.unique(origin)))}
    return scale, info


def fit_lead_scale(model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]], device: torch.device,
                   mode: str, dtype: torch.dtype | None = None) -> dict[str, Any] | None:
    """Set ``model.lead_scale`` from ``batches`` (the validation samples) by ``mode``; what it rests on.

    Only a residual head is shrunk (its start is a baseline); for any other model nothing changes (None).
    """
    if mode == "none" or getattr(model, "head", None) != "residual" or not hasattr(model, "lead_scale"):
        return None
    model.lead_scale.fill_(1.0)
    se, n, origin, block = scaled_errors(model, batches, device, dtype)
    scale, info = choose_scale(se, n, origin, block, mode)
    model.lead_scale.copy_(torch.tensor(scale, dtype=model.lead_scale.dtype))
    return info
