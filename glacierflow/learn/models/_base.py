"""What every forecaster shares: the tensor contract, input checks, teacher forcing, the output head.

Contract: ``forward(x, target=None, teacher_forcing=0.0, context=None)`` maps ``x`` of shape
``(B, t_in, C, H, W)`` (NDSI snow mask in [0, 1]) to ``(B, t_out, C, H, W)`` in [0, 1]. ``target`` and
``teacher_forcing`` only matter to models that roll out step by step; ``context`` only to ``seasonal``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from glacierflow.errors import GlacierflowError


def positive_int(name: str, value: object, minimum: int = 1) -> int:
    """``value`` as an int ``>= minimum``, else a GlacierflowError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise GlacierflowError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def probability(name: str, value: object) -> float:
    """``value`` as a float in [0, 1], else a GlacierflowError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
        raise GlacierflowError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def divisible(model: str, size: int, factor: int, why: str) -> None:
    """Raise unless ``size`` is a multiple of ``factor`` (the model's downsampling)."""
    if size % factor:
        raise GlacierflowError(
            f"{model}: size {size} is not a multiple of {factor} ({why}); use a patch size divisible by {factor}"
        )


class ForecastModel(nn.Module):
    """Base class holding the shared shape arguments and the input checks.

    Parameters
    ----------
    t_in, t_out
        Number of input and predicted periods.
    channels
        Channels per frame (1: the NDSI snow mask).
    size
        Patch height and width in pixels.
    season_length
        Periods per year (12 for ``1MS``, 4 for ``3MS``, 2 for ``6MS``); only ``seasonal`` uses it.
    """

    def __init__(self, *, t_in: int, t_out: int, channels: int, size: int, season_length: int) -> None:
        super().__init__()
        self.t_in = positive_int("t_in", t_in)
        self.t_out = positive_int("t_out", t_out)
        self.channels = positive_int("channels", channels)
        self.size = positive_int("size", size)
        self.season_length = positive_int("season_length", season_length)
        self.model_args: dict[str, object] = {}

    def check_inputs(self, x: Tensor, target: Tensor | None, teacher_forcing: float) -> None:
        """Raise a GlacierflowError if ``x`` or ``target`` do not have the shapes this model was built for."""
        expect = (self.t_in, self.channels, self.size, self.size)
        if x.ndim != 5 or tuple(x.shape[1:]) != expect:
            raise GlacierflowError(
                f"{type(self).__name__} expects input (B, {', '.join(map(str, expect))}), got {tuple(x.shape)}; "
                "build the model with the patches' t_in, channels and size"
            )
        if target is not None:
            want = (x.shape[0], self.t_out, self.channels, self.size, self.size)
            if tuple(target.shape) != want:
                raise GlacierflowError(f"target must have shape {want}, got {tuple(target.shape)}")
        probability("teacher_forcing", teacher_forcing)


def feed_next(prediction: Tensor, target: Tensor | None, step: int, teacher_forcing: float) -> Tensor:
    """The input of the next rollout step: the model's own prediction or, under teacher forcing, the truth.

    Each sample of the batch independently takes ``target[:, step]`` with probability ``teacher_forcing``
    (scheduled sampling); 0 and 1 draw no random numbers. ``prediction`` and ``target[:, step]`` must have
    the same shape. Gradients flow through the fed-back prediction (back-propagation through the rollout).
    """
    if target is None or teacher_forcing <= 0.0:
        return prediction
    truth = target[:, step].reshape(prediction.shape)
    if teacher_forcing >= 1.0:
        return truth
    use = torch.rand(prediction.shape[0], device=prediction.device) < teacher_forcing
    return torch.where(use.view(-1, *([1] * (prediction.ndim - 1))), truth, prediction)
