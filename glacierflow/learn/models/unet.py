"""U-Net next-frame predictor rolled out recurrently (the paper's section 2.2.3).

The U-Net (Ronneberger et al. 2015) sees the last ``t_in`` frames stacked as channels and predicts the next
frame; the window then slides by one period, taking in its own prediction (or, under teacher forcing, the
true previous target), ``t_out`` times. The research code (``UNet(1, 1)``, the milesial Pytorch-UNet layout,
reference §4.2) looked at the last input frame only; here all ``t_in`` frames are used.

Layout as in the research code: DoubleConv = (3x3 conv without bias -> BatchNorm -> ReLU) x 2; ``depth``
2x2 max-pool downsamplings doubling the width; up = 2x2 transposed convolution halving the width, zero pad
to the skip map's size (odd sizes such as 25 -> 12 -> 24 are padded back to 25), concatenate, DoubleConv;
1x1 conv head, then a sigmoid. ``Dropout2d`` at the bottleneck. Any ``size >= 2**depth`` works.

The paper's scale is ``base_channels=64, depth=4`` (widths 64-1024): 31,036,481 parameters with one input
frame (``t_in=1``), as recomputed in the reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glacierflow.errors import GlacierflowError
from glacierflow.learn.models._base import ForecastModel, feed_next, positive_int, probability


def double_conv(c_in: int, c_out: int) -> nn.Sequential:
    """(3x3 conv, no bias -> BatchNorm -> ReLU) twice."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class Up(nn.Module):
    """Transposed-conv upsampling, pad to the skip map, concatenate, DoubleConv."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(c_in, c_in // 2, 2, stride=2)
        self.conv = double_conv(c_in // 2 + c_out, c_out)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        """Upsample ``x`` and merge it with ``skip``."""
        x = self.up(x)
        dy, dx = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
        x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """Plain U-Net mapping ``c_in`` channels to ``c_out`` channels (logits)."""

    def __init__(self, c_in: int, c_out: int, base: int, depth: int, dropout: float) -> None:
        super().__init__()
        widths = [base * 2**i for i in range(depth + 1)]
        self.inc = double_conv(c_in, widths[0])
        self.downs = nn.ModuleList(double_conv(widths[i], widths[i + 1]) for i in range(depth))
        self.ups = nn.ModuleList(Up(widths[i + 1], widths[i]) for i in reversed(range(depth)))
        self.dropout = nn.Dropout2d(dropout)
        self.out = nn.Conv2d(widths[0], c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Contract, expand with skips, 1x1 head."""
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(F.max_pool2d(skips[-1], 2)))
        x = self.dropout(skips.pop())
        for up in self.ups:
            x = up(x, skips.pop())
        return self.out(x)


class UNetForecaster(ForecastModel):
    """U-Net on the last ``t_in`` frames stacked as channels, rolled out ``t_out`` times.

    Parameters
    ----------
    t_in, t_out, channels, size, season_length
        The shared shape arguments.
    base_channels
        Width of the first level; it doubles at each downsampling.
    depth
        Number of 2x2 max-pool downsamplings (``size >= 2**depth``).
    dropout
        ``Dropout2d`` at the bottleneck.
    """

    def __init__(
        self,
        *,
        t_in: int,
        t_out: int,
        channels: int,
        size: int,
        season_length: int,
        base_channels: int = 8,
        depth: int = 3,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(t_in=t_in, t_out=t_out, channels=channels, size=size, season_length=season_length)
        base = positive_int("base_channels", base_channels)
        depth = positive_int("depth", depth)
        if size < 2**depth:
            raise GlacierflowError(f"unet: size {size} is smaller than 2**depth = {2**depth}; pass a smaller depth")
        self.net = UNet(t_in * channels, channels, base, depth, probability("dropout", dropout))

    def forward(
        self, x: Tensor, target: Tensor | None = None, teacher_forcing: float = 0.0, context: Tensor | None = None
    ) -> Tensor:
        """Predict the next frame from the window, slide, repeat; returns ``(B, t_out, C, H, W)`` in [0, 1]."""
        self.check_inputs(x, target, teacher_forcing)
        window = list(x.unbind(dim=1))
        outputs = []
        for step in range(self.t_out):
            prediction = torch.sigmoid(self.net(torch.cat(window[-self.t_in :], dim=1)))
            outputs.append(prediction)
            window.append(feed_next(prediction, target, step, teacher_forcing))
        return torch.stack(outputs, dim=1)
