"""LSTM encoder-decoder on flattened patches: the paper's best-documented model (section 2.2.1).

Each frame ``(C, H, W)`` is flattened to one vector (2,500 values for a 50x50 patch). An encoder LSTM reads
the ``t_in`` input vectors from a zero state; a decoder LSTM starts from the encoder's final ``(h, c)`` and
rolls out ``t_out`` steps, each fed the previous frame: the last input frame first, then its own prediction
(or, under teacher forcing, the true previous target). This follows Srivastava et al. (2015) as used in the
research code (``LSTMEncDec``, see ``../shared/reference/original-code.md`` §4.2), with three differences:

- the first decoder input is the last input frame (the research code fed the last encoder output);
- a linear head ``hidden -> C*H*W`` with a sigmoid maps to [0, 1] (``head="linear"``, default). With
  ``head="none"`` the decoder's hidden output is the prediction as in the research code, which needs
  ``hidden_size == C*H*W``; it is mapped from (-1, 1) to (0, 1) by ``(h + 1) / 2`` (the research code left
  it in (-1, 1));
- teacher forcing is a probability per sample (scheduled sampling) instead of always on.

The paper's scale is ``hidden_size=2500, num_layers=3, dropout=0.1, head="none"``: 300,120,000 parameters
(``nn.LSTM`` has no peephole connections, as in the research code, although the paper's equations have them).
The default is small (one layer of 256 units, ~6.3 M parameters, mostly the 2,500-wide input and head
matrices) so that it trains on a 2-core CPU in minutes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from glacierflow.errors import GlacierflowError
from glacierflow.learn.models._base import ForecastModel, feed_next, positive_int, probability

HEADS = ("linear", "none")


class LSTMForecaster(ForecastModel):
    """Encoder-decoder LSTM over flattened frames, decoder fed its own predictions.

    Parameters
    ----------
    t_in, t_out, channels, size, season_length
        The shared shape arguments (see :class:`~glacierflow.learn.models._base.ForecastModel`).
    hidden_size
        LSTM hidden units (the paper: 2,500).
    num_layers
        Stacked LSTM layers in encoder and decoder each (the paper: 3).
    dropout
        Dropout between stacked layers and before the head.
    head
        ``"linear"`` (sigmoid of a linear map of the hidden state) or ``"none"`` (the hidden state itself,
        rescaled to [0, 1]; needs ``hidden_size == channels * size * size``).
    """

    def __init__(
        self,
        *,
        t_in: int,
        t_out: int,
        channels: int,
        size: int,
        season_length: int,
        hidden_size: int = 256,
        num_layers: int = 1,
        dropout: float = 0.1,
        head: str = "linear",
    ) -> None:
        super().__init__(t_in=t_in, t_out=t_out, channels=channels, size=size, season_length=season_length)
        n = channels * size * size
        hidden_size = positive_int("hidden_size", hidden_size)
        num_layers = positive_int("num_layers", num_layers)
        dropout = probability("dropout", dropout)
        if head not in HEADS:
            raise GlacierflowError(f"unknown lstm head {head!r}; known: {', '.join(HEADS)}")
        if head == "none" and hidden_size != n:
            raise GlacierflowError(
                f"lstm head='none' needs hidden_size == channels*size*size = {n}, got {hidden_size}; "
                f"pass hidden_size={n} or head='linear'"
            )
        between = dropout if num_layers > 1 else 0.0
        self.encoder = nn.LSTM(n, hidden_size, num_layers, batch_first=True, dropout=between)
        self.decoder = nn.LSTM(n, hidden_size, num_layers, batch_first=True, dropout=between)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, n) if head == "linear" else None

    def _readout(self, h: Tensor) -> Tensor:
        if self.head is None:
            return (h + 1.0) * 0.5
        return torch.sigmoid(self.head(self.dropout(h)))

    def forward(
        self, x: Tensor, target: Tensor | None = None, teacher_forcing: float = 0.0, context: Tensor | None = None
    ) -> Tensor:
        """Encode the inputs, roll the decoder out ``t_out`` steps; returns ``(B, t_out, C, H, W)`` in [0, 1]."""
        self.check_inputs(x, target, teacher_forcing)
        b = x.shape[0]
        flat = x.reshape(b, self.t_in, -1)
        truth = None if target is None else target.reshape(b, self.t_out, -1)
        _, state = self.encoder(flat)
        frame = flat[:, -1]
        outputs = []
        for step in range(self.t_out):
            h, state = self.decoder(frame.unsqueeze(1), state)
            prediction = self._readout(h[:, 0])
            outputs.append(prediction)
            frame = feed_next(prediction, truth, step, teacher_forcing)
        return torch.stack(outputs, dim=1).reshape(b, self.t_out, self.channels, self.size, self.size)
