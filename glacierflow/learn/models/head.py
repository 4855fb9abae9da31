"""The output head every learned model shares: history, calendar and the statistical baselines reach it.

A learned core (``lstm``, ``convlstm``, ...) maps the input frames to ``t_out`` frames. :class:`Headed` wraps it:
per lead ``k`` a small CNN sees the core's frame, the last input, every baseline's forecast (``bases``:
persistence and seasonal always; climatology, trend and anomaly, statistics of the training periods, with
``climatology``), and with ``calendar`` the sin/cos of the target's and the last input's period-of-year phase
and a learned lead embedding. Its last layer is zero-initialised and its output is added to a start:

* ``head="residual"``: the start is the ``base`` baseline, so an untrained model forecasts exactly that
  baseline, and training only learns where the data say the baseline is wrong;
* ``head="direct"``: the start is the core's own forecast (the head still adds what history and calendar say).

The correction of lead ``k`` is multiplied by ``lead_scale[k]`` (a buffer, 1 while training; after training
:mod:`glacierflow.learn.shrink` sets it from the validation start dates, 0 where the model falls back to its
start). The result is clamped to [0, 1]. Without ``extras`` (a bare ``model(x)`` call) the bases come from ``x`` alone:
persistence, and seasonal where ``t_in`` reaches a season back (else persistence); the phases are 0.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from glacierflow.learn.climate import BASELINE_NAMES, seasonal_index

HEAD_KEYS = ("head_mode", "base", "calendar", "climatology")
"""``model_args`` keys that configure the head (the rest build the core; ``head_mode`` is ``ModelSpec.head``)."""


class Headed(nn.Module):
    """A learned core with the shared head (see the module docstring)."""

    def __init__(self, core: nn.Module, *, head_mode: str = "residual", base: str = "seasonal", calendar: bool = True,
                 climatology: bool = True, hidden: int = 16) -> None:
        super().__init__()
        self.core, self.head, self.base = core, head_mode, base
        self.calendar, self.climatology = calendar, climatology
        self.t_in, self.t_out, self.season_length = core.t_in, core.t_out, core.season_length
        self.base_index = BASELINE_NAMES.index(base)
        n_in = 2 + (len(BASELINE_NAMES) if climatology else 2) + (8 if calendar else 0)
        self.lead = nn.Embedding(self.t_out, 4) if calendar else None
        self.net = nn.Sequential(nn.Conv2d(n_in, hidden, 3, padding=1), nn.GELU(),
                                 nn.Conv2d(hidden, hidden, 3, padding=1), nn.GELU(), nn.Conv2d(hidden, 1, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.register_buffer("lead_scale", torch.ones(self.t_out))
        self.model_args: dict[str, object] = {}

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # checkpoints written before the per-lead shrinkage hold no ``lead_scale``: they keep every correction
        state_dict.setdefault(prefix + "lead_scale", torch.ones(self.t_out))
        super()._load_from_state_dict(state_dict, prefix, *args)

    def correction(self, x: Tensor, target: Tensor | None = None, teacher_forcing: float = 0.0,
                   extras: dict[str, Any] | None = None) -> tuple[Tensor, Tensor]:
        """``(start, correction)`` before ``lead_scale`` and the clamp, both ``(B, t_out, 1, H, W)``."""
        core = self.core(x, target=target, teacher_forcing=teacher_forcing)
        bases = self._bases(x, extras)
        start = bases[:, self.base_index] if self.head == "residual" else core
        corr = self.net(self.features(x, core, bases, None if extras is None else extras.get("phase")))
        return start, corr.view_as(start)

    def _bases(self, x: Tensor, extras: dict[str, Tensor] | None) -> Tensor:
        if extras is not None and "bases" in extras:
            return extras["bases"].to(x.dtype)
        last = x[:, -1:].clamp(0, 1).expand(-1, self.t_out, -1, -1, -1)
        seas = x[:, seasonal_index(self.t_in, self.t_out, self.season_length)].clamp(0, 1) \
            if self.t_in >= self.season_length else last
        return torch.stack([last, seas, last, last, last], dim=1)

    def features(self, x: Tensor, core: Tensor, bases: Tensor, phase: Tensor | None) -> Tensor:
        """Head input ``(B * t_out, C, H, W)``."""
        b, t, c, h, w = core.shape
        last = x[:, -1:].expand(-1, t, -1, -1, -1)
        picked = bases if self.climatology else bases[:, :2]
        parts = [core, last, *picked.unbind(1)]
        if self.calendar:
            ph = torch.zeros(b, self.t_in + t, device=x.device, dtype=x.dtype) if phase is None else phase.to(x.dtype)
            tgt, inp = ph[:, self.t_in:], ph[:, self.t_in - 1: self.t_in].expand(-1, t)
            cal = torch.stack([tgt.sin(), tgt.cos(), inp.sin(), inp.cos()], dim=2)  # (B, t, 4)
            cal = torch.cat([cal, self.lead.weight.to(x.dtype)[None].expand(b, -1, -1)], dim=2)
            parts.append(cal[:, :, :, None, None].expand(-1, -1, -1, h, w))
        return torch.cat(parts, dim=2).flatten(0, 1)

    def forward(self, x: Tensor, target: Tensor | None = None, teacher_forcing: float = 0.0,
                context: Tensor | None = None, extras: dict[str, Any] | None = None) -> Tensor:
        """``(B, t_in, 1, H, W)`` -> ``(B, t_out, 1, H, W)`` in [0, 1]; ``extras``: ``bases``, ``phase``."""
        start, corr = self.correction(x, target, teacher_forcing, extras)
        scale = self.lead_scale.to(corr.dtype)[None, :, None, None, None]
        return (start + scale * corr).clamp(0.0, 1.0)
