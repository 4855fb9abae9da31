"""ConvLSTM encoder-forecaster (Shi et al. 2015), the paper's section 2.2.2.

The LSTM's matrix products become 3x3 convolutions, so the cell states keep the patch's spatial layout.
As in OpenSTL's ConvLSTM, each frame is first folded space-to-depth by ``patch_size`` (a 50x50x1 frame with
``patch_size=5`` becomes 10x10x25), which makes the recurrent convolutions cheap on a CPU; the head unfolds
the prediction back (depth-to-space) and applies a sigmoid.

Encoder: a stack of ConvLSTM cells reads the ``t_in`` input frames from a zero state. Forecaster: a second
stack (its own weights) starts from the encoder's states and rolls out ``t_out`` steps, each fed the
previous frame: the last input frame first, then its own prediction (or, under teacher forcing, the true
previous target). The research code (``ConvLSTMPredictor``, reference §4.2) restarted its decoder from a
zero state at every step and never used teacher forcing; here the state is carried through the rollout.

Default: two layers of 24 channels on 10x10 folded maps (~169 k parameters). Constraint: ``size`` must be a
multiple of ``patch_size``. The paper's trained configuration used hidden
widths ``[128, 64, 32]`` (encoder) and ``[32, 64, 32]`` (decoder) on the full-resolution patch
(``patch_size=1``, ~1.6 M parameters, far slower on a CPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glacierflow.errors import GlacierflowError
from glacierflow.learn.models._base import ForecastModel, divisible, feed_next, positive_int, probability

State = list[tuple[Tensor, Tensor]]


class ConvLSTMCell(nn.Module):
    """One ConvLSTM cell: a single convolution of ``[input, h]`` gives the gates i, f, o, g."""

    def __init__(self, in_channels: int, hidden: int, kernel_size: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.conv = nn.Conv2d(in_channels + hidden, 4 * hidden, kernel_size, padding=kernel_size // 2)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """Advance one step; returns the new ``(h, c)``."""
        h, c = state
        i, f, o, g = torch.chunk(self.conv(torch.cat([x, h], dim=1)), 4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class ConvLSTMStack(nn.Module):
    """Stacked ConvLSTM cells; dropout on the hidden maps passed between layers."""

    def __init__(self, in_channels: int, hidden: list[int], kernel_size: int, dropout: float) -> None:
        super().__init__()
        widths = [in_channels, *hidden]
        self.cells = nn.ModuleList(ConvLSTMCell(widths[i], widths[i + 1], kernel_size) for i in range(len(hidden)))
        self.dropout = nn.Dropout2d(dropout)

    def zero_state(self, like: Tensor) -> State:
        """Zero ``(h, c)`` for every layer, on the grid of ``like`` ``(B, C, h, w)``."""
        b, _, h, w = like.shape
        return [(like.new_zeros(b, cell.hidden, h, w), like.new_zeros(b, cell.hidden, h, w)) for cell in self.cells]

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """One time step through all layers; returns the top hidden map and the new states."""
        new: State = []
        for layer, cell in enumerate(self.cells):
            h, c = cell(x, state[layer])
            new.append((h, c))
            x = self.dropout(h)
        return x, new


class ConvLSTMForecaster(ForecastModel):
    """ConvLSTM encoder-forecaster on space-to-depth folded frames.

    Parameters
    ----------
    t_in, t_out, channels, size, season_length
        The shared shape arguments.
    hidden
        Hidden channels per layer (the encoder and the forecaster have the same widths).
    patch_size
        Space-to-depth factor (``size`` must be a multiple of it).
    kernel_size
        Odd convolution kernel of the cells.
    dropout
        ``Dropout2d`` between stacked layers.
    """

    def __init__(
        self,
        *,
        t_in: int,
        t_out: int,
        channels: int,
        size: int,
        season_length: int,
        hidden: list[int] | tuple[int, ...] = (24, 24),
        patch_size: int = 5,
        kernel_size: int = 3,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(t_in=t_in, t_out=t_out, channels=channels, size=size, season_length=season_length)
        if not isinstance(hidden, list | tuple) or not hidden:
            raise GlacierflowError(f"convlstm hidden must be a non-empty list of widths, got {hidden!r}")
        widths = [positive_int("convlstm hidden width", w) for w in hidden]
        self.patch_size = positive_int("patch_size", patch_size)
        kernel_size = positive_int("kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise GlacierflowError(f"convlstm kernel_size must be odd, got {kernel_size}")
        divisible("convlstm", size, self.patch_size, "space-to-depth folding by patch_size")
        folded = channels * self.patch_size**2
        dropout = probability("dropout", dropout)
        self.encoder = ConvLSTMStack(folded, widths, kernel_size, dropout)
        self.forecaster = ConvLSTMStack(folded, widths, kernel_size, dropout)
        self.head = nn.Conv2d(widths[-1], folded, 1)

    def forward(
        self, x: Tensor, target: Tensor | None = None, teacher_forcing: float = 0.0, context: Tensor | None = None
    ) -> Tensor:
        """Encode, then roll out ``t_out`` steps; returns ``(B, t_out, C, H, W)`` in [0, 1]."""
        self.check_inputs(x, target, teacher_forcing)
        b, p = x.shape[0], self.patch_size
        frames = F.pixel_unshuffle(x.flatten(0, 1), p).unflatten(0, (b, self.t_in))
        truth = None if target is None else F.pixel_unshuffle(target.flatten(0, 1), p).unflatten(0, (b, self.t_out))
        state = self.encoder.zero_state(frames[:, 0])
        for t in range(self.t_in):
            _, state = self.encoder(frames[:, t], state)
        frame = frames[:, -1]
        outputs = []
        for step in range(self.t_out):
            h, state = self.forecaster(frame, state)
            prediction = torch.sigmoid(self.head(h))
            outputs.append(prediction)
            frame = feed_next(prediction, truth, step, teacher_forcing)
        folded = torch.stack(outputs, dim=1)
        return F.pixel_shuffle(folded.flatten(0, 1), p).unflatten(0, (b, self.t_out))
