"""Causal transformer over the sequence of frame embeddings (the paper's "language" transformer, §2.2.4).

Each frame is one token, as in the research code (``transformerBase.Transformer``: a 50x50 patch is a
2,500-d token): a linear embedding of the flattened frame plus a learned position embedding. A stack of
pre-norm self-attention blocks with a causal mask runs over ``[x_1 .. x_t_in, f_1 .. f_{t_out-1}]``, where
``f_j`` is the frame fed in for target ``j`` (its own prediction, or under teacher forcing the true target);
the output at position ``t_in - 1 + j`` is read out (linear head, sigmoid) as the prediction of target ``j``.

Causality, the research code's flaw fixed: there, the decoder input held ``y_1 .. y_4`` and its outputs were
compared with ``y_1 .. y_4`` (no right shift), so each position saw the target it predicted in training but
not at inference. Here the prediction of target ``j`` is computed from positions ``< t_in + j`` only, which
hold the inputs and targets ``< j``: it never depends on target ``j`` or later, also under teacher forcing.
With teacher forcing 1.0 all positions are computed in one pass; otherwise the rollout runs step by step.

The research code used ``nn.Transformer(d_model=2500, 10 heads, 5 + 5 layers)`` (477.7 M parameters); the
default here is a small decoder-only model (``d_model=128``, 2 layers, 4 heads).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from glacierflow.errors import GlacierflowError
from glacierflow.learn.models._base import ForecastModel, feed_next, positive_int, probability


class TransformerForecaster(ForecastModel):
    """Decoder-only causal transformer over frame tokens.

    Parameters
    ----------
    t_in, t_out, channels, size, season_length
        The shared shape arguments.
    d_model
        Token width (a multiple of ``heads``).
    layers
        Number of self-attention blocks.
    heads
        Attention heads.
    ff_mult
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
        d_model: int = 128,
        layers: int = 2,
        heads: int = 4,
        ff_mult: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(t_in=t_in, t_out=t_out, channels=channels, size=size, season_length=season_length)
        d_model, heads = positive_int("d_model", d_model), positive_int("heads", heads)
        if d_model % heads:
            raise GlacierflowError(f"transformer d_model {d_model} is not a multiple of heads {heads}")
        n = channels * size * size
        dropout = probability("dropout", dropout)
        self.embed = nn.Linear(n, d_model)
        self.position = nn.Parameter(torch.randn(t_in + t_out - 1, d_model) * 0.02)
        self.dropout = nn.Dropout(dropout)
        block = nn.TransformerEncoderLayer(
            d_model, heads, positive_int("ff_mult", ff_mult) * d_model, dropout, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(
            block, positive_int("layers", layers), norm=nn.LayerNorm(d_model), enable_nested_tensor=False
        )
        self.head = nn.Linear(d_model, n)

    def _run(self, frames: Tensor) -> Tensor:
        """Causal pass over ``(B, L, n)`` flattened frames; returns ``(B, L, n)`` predictions of the next frame."""
        length = frames.shape[1]
        tokens = self.dropout(self.embed(frames) + self.position[:length])
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=frames.device, dtype=frames.dtype)
        return torch.sigmoid(self.head(self.blocks(tokens, mask=mask, is_causal=True)))

    def forward(
        self, x: Tensor, target: Tensor | None = None, teacher_forcing: float = 0.0, context: Tensor | None = None
    ) -> Tensor:
        """Predict ``t_out`` frames causally; returns ``(B, t_out, C, H, W)`` in [0, 1]."""
        self.check_inputs(x, target, teacher_forcing)
        b = x.shape[0]
        seq = x.reshape(b, self.t_in, -1)
        truth = None if target is None else target.reshape(b, self.t_out, -1)
        if truth is not None and teacher_forcing >= 1.0:
            out = self._run(torch.cat([seq, truth[:, :-1]], dim=1))[:, self.t_in - 1 :]
        else:
            outputs = []
            for step in range(self.t_out):
                prediction = self._run(seq)[:, -1]
                outputs.append(prediction)
                if step < self.t_out - 1:
                    seq = torch.cat([seq, feed_next(prediction, truth, step, teacher_forcing)[:, None]], dim=1)
            out = torch.stack(outputs, dim=1)
        return out.reshape(b, self.t_out, self.channels, self.size, self.size)
