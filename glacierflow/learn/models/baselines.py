"""The baselines every model is judged against: persistence, seasonal, climatology, trend, anomaly.

Neither has parameters and neither is trained. The paper reported no baseline at all; the reference
review (``../shared/reference/original-code.md`` §5) recomputed a 2-year seasonal persistence that came close
to the paper's best model, and on a seasonal snow cube seasonal persistence is the baseline to beat.

- ``persistence``: every target period is the last input frame.
- ``seasonal``: target ``k`` (1-based) is the most recent period of the same season that is not a target,
  ``context[:, T_ctx - 1 + k - s * ceil(k / s)]`` with ``s = season_length`` and ``context`` the cube periods
  ending with (and including) the last input frame. With quarterly periods (s = 4) and 4 -> 4 that is the
  input frames in order; with monthly periods (s = 12) it reaches 12 periods back into the cube.

- ``climatology``, ``trend``, ``anomaly``: statistics of the training periods (``glacierflow.learn.climate``); a
  sample carries their forecasts in ``extras["bases"]``, which these modules return.

All clamp to [0, 1] so that the forecast never leaves the snow mask's range.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from glacierflow.errors import GlacierflowError
from glacierflow.learn.climate import BASELINE_NAMES
from glacierflow.learn.models._base import ForecastModel


def seasonal_indices(t_ctx: int, t_out: int, season_length: int) -> list[int]:
    """Index into a context of ``t_ctx`` periods for each target ``k = 1..t_out`` (see module docstring)."""
    s = season_length
    return [t_ctx - 1 + k - s * math.ceil(k / s) for k in range(1, t_out + 1)]


class Persistence(ForecastModel):
    """Repeat the last input frame ``t_out`` times."""

    def forward(
        self, x: Tensor, target: Tensor | None = None, teacher_forcing: float = 0.0, context: Tensor | None = None,
        extras: dict[str, Any] | None = None,
    ) -> Tensor:
        """Return ``x[:, -1]`` repeated over ``t_out`` periods, clamped to [0, 1]."""
        self.check_inputs(x, target, teacher_forcing)
        return x[:, -1:].clamp(0.0, 1.0).repeat(1, self.t_out, 1, 1, 1)


class Seasonal(ForecastModel):
    """Each target period gets the most recent known period of the same season (never a target)."""

    def forward(
        self, x: Tensor, target: Tensor | None = None, teacher_forcing: float = 0.0, context: Tensor | None = None,
        extras: dict[str, Any] | None = None,
    ) -> Tensor:
        """Pick the same-season periods out of ``context`` (or ``x`` when ``context`` is None).

        Raises
        ------
        GlacierflowError
            If the context holds fewer than ``season_length`` periods or does not match ``x`` in shape.
        """
        self.check_inputs(x, target, teacher_forcing)
        ctx = x if context is None else context
        if ctx.ndim != 5 or ctx.shape[0] != x.shape[0] or tuple(ctx.shape[2:]) != tuple(x.shape[2:]):
            raise GlacierflowError(f"context must have shape (B, T_ctx, C, H, W) like x, got {tuple(ctx.shape)}")
        if ctx.shape[1] < self.season_length:
            raise GlacierflowError(
                f"seasonal needs a context of at least season_length={self.season_length} periods, got "
                f"{ctx.shape[1]}; pass context= with the cube periods ending with the last input frame"
            )
        idx = seasonal_indices(ctx.shape[1], self.t_out, self.season_length)
        return ctx[:, idx].clamp(0.0, 1.0)


class FromBases(ForecastModel):
    """A baseline fitted on the training periods: returns its column of ``extras["bases"]``."""

    name = ""

    def forward(
        self, x: Tensor, target: Tensor | None = None, teacher_forcing: float = 0.0, context: Tensor | None = None,
        extras: dict[str, Any] | None = None,
    ) -> Tensor:
        """The sample's precomputed forecast of this baseline (training statistics), clamped to [0, 1]."""
        self.check_inputs(x, target, teacher_forcing)
        if extras is None or "bases" not in extras:
            raise GlacierflowError(f"{self.name} needs the training periods' statistics: pass extras= with the "
                                   "sample's 'bases' (glacierflow.learn.patches samples carry them)")
        return extras["bases"][:, BASELINE_NAMES.index(self.name)].clamp(0.0, 1.0)


class Climatology(FromBases):
    """Per-pixel mean of each period-of-year over the training periods."""

    name = "climatology"


class Trend(FromBases):
    """Per pixel and period-of-year, the linear trend over the training years, extrapolated."""

    name = "trend"


class Anomaly(FromBases):
    """Climatology + the last observed anomaly, damped per lead (damping fitted on training windows)."""

    name = "anomaly"
