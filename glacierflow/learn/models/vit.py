"""Vision transformer on spatio-temporal tubelets, predicting all target frames at once (§2.2.5).

The input ``(t_in, C, H, W)`` is cut into tubelets of ``tubelet_frames`` periods x ``patch_size`` x
``patch_size`` pixels (ViViT-style tubelet embedding, a strided 3-D convolution); each tubelet is one token,
with a learned position embedding (time and space). A stack of pre-norm self-attention blocks (full
attention: all tokens are inputs, none is a target) runs over them. For each spatial patch position, the
features of its tokens along time are concatenated and a linear head (sigmoid) emits that patch in all
``t_out`` target frames.

The research code's ``visionFuturePrediction`` (reference §4.2) predicted one frame at a time from the last
input frame only, through a single class token and a zero-initialised 2,500 x 2,500 head (81.6 M
parameters); here every input frame is seen and all targets come out of one pass (no rollout, so no
teacher forcing). Constraints: ``size`` a multiple of ``patch_size``, ``t_in`` a multiple of
``tubelet_frames``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from glacierflow.errors import GlacierflowError
from glacierflow.learn.models._base import ForecastModel, divisible, positive_int, probability


class ViTForecaster(ForecastModel):
    """Tubelet-token vision transformer with a per-patch linear head for all target frames.

    Parameters
    ----------
    t_in, t_out, channels, size, season_length
        The shared shape arguments.
    patch_size
        Tubelet height and width in pixels (``size`` must be a multiple of it).
    tubelet_frames
        Tubelet length in periods (``t_in`` must be a multiple of it).
    d_model
        Token width (a multiple of ``heads``).
    layers, heads
        Self-attention blocks and heads.
    mlp_mult
        Width of the feed-forward layer as a multiple of ``d_model``.
    dropout
        Dropout in attention, feed-forward and on the embeddings.
    """

    def __init__(
        self,
        *,
        t_in: int,
        t_out: int,
        channels: int,
        size: int,
        season_length: int,
        patch_size: int = 5,
        tubelet_frames: int = 2,
        d_model: int = 64,
        layers: int = 3,
        heads: int = 4,
        mlp_mult: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(t_in=t_in, t_out=t_out, channels=channels, size=size, season_length=season_length)
        self.patch_size = p = positive_int("patch_size", patch_size)
        self.tubelet_frames = positive_int("tubelet_frames", tubelet_frames)
        d_model, heads = positive_int("d_model", d_model), positive_int("heads", heads)
        divisible("vit", size, p, "tubelets of patch_size pixels")
        if t_in % self.tubelet_frames:
            raise GlacierflowError(
                f"vit: t_in {t_in} is not a multiple of tubelet_frames {self.tubelet_frames}; pass tubelet_frames=1"
            )
        if d_model % heads:
            raise GlacierflowError(f"vit d_model {d_model} is not a multiple of heads {heads}")
        self.grid = size // p
        self.steps = t_in // self.tubelet_frames
        dropout = probability("dropout", dropout)
        self.embed = nn.Conv3d(channels, d_model, (self.tubelet_frames, p, p), stride=(self.tubelet_frames, p, p))
        self.position = nn.Parameter(torch.randn(self.steps * self.grid**2, d_model) * 0.02)
        self.dropout = nn.Dropout(dropout)
        block = nn.TransformerEncoderLayer(
            d_model, heads, positive_int("mlp_mult", mlp_mult) * d_model, dropout, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(
            block, positive_int("layers", layers), norm=nn.LayerNorm(d_model), enable_nested_tensor=False
        )
        self.head = nn.Linear(self.steps * d_model, t_out * channels * p * p)

    def forward(
        self, x: Tensor, target: Tensor | None = None, teacher_forcing: float = 0.0, context: Tensor | None = None
    ) -> Tensor:
        """Tokenise, attend, emit every target patch; returns ``(B, t_out, C, H, W)`` in [0, 1]."""
        self.check_inputs(x, target, teacher_forcing)
        b, p, g = x.shape[0], self.patch_size, self.grid
        tokens = self.embed(x.transpose(1, 2))  # (B, d, steps, g, g)
        tokens = tokens.flatten(2).transpose(1, 2)  # (B, steps*g*g, d), time-major
        feats = self.blocks(self.dropout(tokens + self.position))
        feats = feats.unflatten(1, (self.steps, g * g)).permute(0, 2, 1, 3).flatten(2)  # (B, g*g, steps*d)
        out = torch.sigmoid(self.head(feats))  # (B, g*g, t_out*C*p*p)
        out = out.reshape(b, g, g, self.t_out, self.channels, p, p)
        return out.permute(0, 3, 4, 1, 5, 2, 6).reshape(b, self.t_out, self.channels, g * p, g * p)
