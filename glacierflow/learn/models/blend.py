"""``blend``: the cheapest learned core, a 3x3 convolution from the input frames to the target frames.

With the shared head (:mod:`glacierflow.learn.models.head`) it is a small CNN that learns, per pixel and per
lead, how to combine the statistical baselines (seasonal, climatology, trend, anomaly, persistence), the last
inputs and the calendar, like IceNet's use of baseline forecasts and calendar encodings as input channels.
Its cost per sequence is a fraction of the other cores', so a CPU budget of minutes sees many more samples.
"""

from __future__ import annotations

from torch import Tensor, nn

from glacierflow.learn.models._base import ForecastModel


class BlendCore(ForecastModel):
    """``(B, t_in, C, H, W)`` -> ``(B, t_out, C, H, W)``: one 3x3 convolution over the stacked input frames."""

    def __init__(self, *, t_in: int, t_out: int, channels: int, size: int, season_length: int,
                 kernel_size: int = 3) -> None:
        super().__init__(t_in=t_in, t_out=t_out, channels=channels, size=size, season_length=season_length)
        self.conv = nn.Conv2d(t_in * channels, t_out * channels, kernel_size, padding=kernel_size // 2)

    def forward(self, x: Tensor, target: Tensor | None = None, teacher_forcing: float = 0.0,
                context: Tensor | None = None) -> Tensor:
        """The input frames mixed into ``t_out`` frames, clamped to [0, 1]."""
        self.check_inputs(x, target, teacher_forcing)
        b, _, c, h, w = x.shape
        return self.conv(x.flatten(1, 2)).view(b, self.t_out, c, h, w).clamp(0.0, 1.0)
