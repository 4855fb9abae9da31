"""SimVP: a convolutional encoder, a temporal translator and a decoder (Gao et al. 2022; OpenSTL's baseline).

Not in the paper: OpenSTL ships SimVP as a strong, simple spatio-temporal baseline, so it is here to show
whether recurrence or attention buys anything on these cubes. The layout follows SimVP (v2, "gSTA"):

- encoder, shared by all frames: ``n_spatial`` conv blocks (3x3 conv -> GroupNorm -> SiLU), every second
  one with stride 2 (so ``n_spatial=2`` halves 50x50 to 25x25);
- translator: the ``t_in`` latent maps stacked as channels ``(t_in * hid_spatial)``, a 1x1 conv to
  ``hid_temporal`` channels, ``n_temporal`` gated spatio-temporal attention blocks (large-kernel attention
  from depth-wise and dilated depth-wise convolutions with a sigmoid gate, then a conv MLP, both residual),
  and a 1x1 conv to ``t_out * hid_spatial`` channels, so ``t_out`` may differ from ``t_in`` (OpenSTL needs
  equal lengths or an iterated model);
- decoder, shared by all target frames: the encoder mirrored (sub-pixel upsampling), the first encoder
  block's features of the last input frame added as the skip, a 1x1 readout and a sigmoid.

Written from the paper's description, not copied. One pass predicts all targets (no teacher forcing).
Constraint: ``size`` must be a multiple of ``2 ** (n_spatial // 2)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glacierflow.learn.models._base import ForecastModel, divisible, positive_int, probability


class ConvBlock(nn.Module):
    """3x3 conv (stride 1 or 2, or x2 sub-pixel upsampling) -> GroupNorm -> SiLU."""

    def __init__(self, c_in: int, c_out: int, *, down: bool = False, up: bool = False) -> None:
        super().__init__()
        self.up = up
        self.conv = nn.Conv2d(c_in, c_out * (4 if up else 1), 3, stride=2 if down else 1, padding=1)
        self.norm = nn.GroupNorm(2 if c_out % 2 == 0 else 1, c_out)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block."""
        x = self.conv(x)
        if self.up:
            x = F.pixel_shuffle(x, 2)
        return F.silu(self.norm(x))


class GatedAttentionBlock(nn.Module):
    """Residual large-kernel gated attention, then a residual conv MLP (SimVP v2's gSTA block, re-derived)."""

    def __init__(self, dim: int, mlp_mult: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.proj_in = nn.Conv2d(dim, dim, 1)
        self.local = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.dilated = nn.Conv2d(dim, dim, 7, padding=9, dilation=3, groups=dim)
        self.gate = nn.Conv2d(dim, 2 * dim, 1)
        self.proj_out = nn.Conv2d(dim, dim, 1)
        self.norm2 = nn.BatchNorm2d(dim)
        hidden = mlp_mult * dim
        self.mlp = nn.Sequential(
            nn.Conv2d(dim, hidden, 1),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Conv2d(hidden, dim, 1),
            nn.Dropout(dropout),
        )
        self.scale1 = nn.Parameter(torch.full((dim, 1, 1), 1e-2))
        self.scale2 = nn.Parameter(torch.full((dim, 1, 1), 1e-2))

    def forward(self, x: Tensor) -> Tensor:
        """Attention then MLP, each added to its input with a learned layer scale."""
        u = F.gelu(self.proj_in(self.norm1(x)))
        f, g = self.gate(self.dilated(self.local(u))).chunk(2, dim=1)
        x = x + self.scale1 * self.proj_out(torch.sigmoid(f) * g)
        return x + self.scale2 * self.mlp(self.norm2(x))


class SimVPForecaster(ForecastModel):
    """SimVP encoder - translator - decoder, all targets in one pass.

    Parameters
    ----------
    t_in, t_out, channels, size, season_length
        The shared shape arguments.
    hid_spatial
        Channels of the per-frame encoder/decoder.
    hid_temporal
        Channels of the translator.
    n_spatial
        Encoder (and decoder) blocks; every second one downsamples by 2.
    n_temporal
        Translator blocks.
    mlp_mult
        Width of the translator's conv MLP as a multiple of ``hid_temporal``.
    dropout
        Dropout in the translator's MLP.
    """

    def __init__(
        self,
        *,
        t_in: int,
        t_out: int,
        channels: int,
        size: int,
        season_length: int,
        hid_spatial: int = 16,
        hid_temporal: int = 48,
        n_spatial: int = 2,
        n_temporal: int = 2,
        mlp_mult: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(t_in=t_in, t_out=t_out, channels=channels, size=size, season_length=season_length)
        hs, ht = positive_int("hid_spatial", hid_spatial), positive_int("hid_temporal", hid_temporal)
        n_s, n_t = positive_int("n_spatial", n_spatial), positive_int("n_temporal", n_temporal)
        divisible("simvp", size, 2 ** (n_s // 2), "n_spatial // 2 stride-2 encoder blocks")
        self.hid_spatial = hs
        downs = [i % 2 == 1 for i in range(n_s)]  # False, True, False, True, ...
        self.encoder = nn.ModuleList(ConvBlock(channels if i == 0 else hs, hs, down=d) for i, d in enumerate(downs))
        self.decoder = nn.ModuleList(ConvBlock(hs, hs, up=d) for d in reversed(downs))
        self.readout = nn.Conv2d(hs, channels, 1)
        dropout = probability("dropout", dropout)
        mlp_mult = positive_int("mlp_mult", mlp_mult)
        self.translator = nn.Sequential(
            nn.Conv2d(t_in * hs, ht, 1),
            *(GatedAttentionBlock(ht, mlp_mult, dropout) for _ in range(n_t)),
            nn.Conv2d(ht, t_out * hs, 1),
        )

    def forward(
        self, x: Tensor, target: Tensor | None = None, teacher_forcing: float = 0.0, context: Tensor | None = None
    ) -> Tensor:
        """Encode each frame, translate in time, decode each target; returns ``(B, t_out, C, H, W)`` in [0, 1]."""
        self.check_inputs(x, target, teacher_forcing)
        b = x.shape[0]
        z = skip = self.encoder[0](x.flatten(0, 1))
        for block in self.encoder[1:]:
            z = block(z)
        # channels-last: depth-wise convolutions back-propagate ~10x faster on CPU in that layout
        stacked = z.unflatten(0, (b, self.t_in)).flatten(1, 2).contiguous(memory_format=torch.channels_last)
        latent = self.translator(stacked).contiguous()  # (B, t_out*hs, h, w)
        z = latent.unflatten(1, (self.t_out, self.hid_spatial)).flatten(0, 1)
        last_skip = skip.unflatten(0, (b, self.t_in))[:, -1:]  # first-block features of the last input frame
        for block in self.decoder[:-1]:
            z = block(z)
        z = z.unflatten(0, (b, self.t_out)) + last_skip
        z = self.decoder[-1](z.flatten(0, 1))
        return torch.sigmoid(self.readout(z)).unflatten(0, (b, self.t_out))
