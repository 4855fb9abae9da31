"""The model zoo: a registry of forecasters sharing one tensor contract.

Every model maps ``x`` of shape ``(B, t_in, C, H, W)`` (NDSI snow mask in [0, 1]) to ``(B, t_out, C, H, W)``
in [0, 1] with ``forward(x, target=None, teacher_forcing=0.0, context=None, extras=None)``. ``target`` and
``teacher_forcing`` are used in training by the models that roll out step by step (``lstm``, ``convlstm``,
``unet``, ``transformer``); ``context`` (the cube periods ending with the last input frame) by ``seasonal``;
``extras`` (a sample's ``bases`` and ``phase``, see ``glacierflow.learn.patches``) by the baselines fitted on
the training periods and by every learned model's head (:mod:`glacierflow.learn.models.head`: ``residual`` or
``direct``, calendar, climatology channels). The baselines have no parameters and are never trained.

``build_model(name, **module.model_args)`` rebuilds the architecture of a built module, so a checkpoint that
stores the model name and ``model_args`` is enough to reload it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch

from glacierflow.choices import BASES, HEADS
from glacierflow.errors import GlacierflowError, did_you_mean
from glacierflow.learn.models.baselines import Anomaly, Climatology, Persistence, Seasonal, Trend
from glacierflow.learn.models.blend import BlendCore
from glacierflow.learn.models.convlstm import ConvLSTMForecaster
from glacierflow.learn.models.head import HEAD_KEYS, Headed
from glacierflow.learn.models.lstm import LSTMForecaster
from glacierflow.learn.models.simvp import SimVPForecaster
from glacierflow.learn.models.transformer import TransformerForecaster
from glacierflow.learn.models.unet import UNetForecaster
from glacierflow.learn.models.vit import ViTForecaster


@dataclass(frozen=True)
class ModelEntry:
    """One registered model.

    Attributes
    ----------
    cls
        The ``nn.Module`` class; it takes the shape arguments and the keys of ``defaults`` as keywords.
    summary
        One line for ``glacierflow models``.
    learned
        False for the baselines (no parameters, never trained).
    defaults
        Default keyword arguments, small enough to train on a 2-core CPU in minutes.
    """

    cls: type[torch.nn.Module]
    summary: str
    learned: bool
    defaults: dict[str, Any]


MODELS: dict[str, ModelEntry] = {
    "persistence": ModelEntry(Persistence, "baseline: repeat the last input frame", False, {}),
    "seasonal": ModelEntry(
        Seasonal, "baseline: the most recent period of the same season (needs season_length)", False, {}
    ),
    "climatology": ModelEntry(Climatology, "baseline: per-pixel mean of each period-of-year (training periods)",
                              False, {}),
    "trend": ModelEntry(Trend, "baseline: per-pixel linear trend of each period-of-year over the training years",
                        False, {}),
    "anomaly": ModelEntry(Anomaly, "baseline: climatology + the last anomaly, damped per lead (fitted on training)",
                          False, {}),
    "blend": ModelEntry(
        BlendCore,
        "3x3 conv of the inputs + the shared head: a small CNN blending baselines, history and calendar",
        True,
        {"kernel_size": 3},
    ),
    "lstm": ModelEntry(
        LSTMForecaster,
        "LSTM encoder-decoder on flattened patches, fed its own predictions (the paper's)",
        True,
        {"hidden_size": 256, "num_layers": 1, "dropout": 0.1, "head": "linear"},
    ),
    "convlstm": ModelEntry(
        ConvLSTMForecaster,
        "ConvLSTM encoder-forecaster on space-to-depth folded frames, fed its own predictions",
        True,
        {"hidden": [24, 24], "patch_size": 5, "kernel_size": 3, "dropout": 0.1},
    ),
    "unet": ModelEntry(
        UNetForecaster,
        "U-Net next-frame predictor on the stacked input frames, rolled out recurrently",
        True,
        {"base_channels": 8, "depth": 3, "dropout": 0.1},
    ),
    "transformer": ModelEntry(
        TransformerForecaster,
        "causal transformer over frame embeddings (a position never sees its own target)",
        True,
        {"d_model": 128, "layers": 2, "heads": 4, "ff_mult": 2, "dropout": 0.1},
    ),
    "vit": ModelEntry(
        ViTForecaster,
        "vision transformer on 5x5 px x 2-period tubelets, all targets in one pass",
        True,
        {"patch_size": 5, "tubelet_frames": 2, "d_model": 64, "layers": 3, "heads": 4, "mlp_mult": 2, "dropout": 0.1},
    ),
    "simvp": ModelEntry(
        SimVPForecaster,
        "SimVP (OpenSTL): conv encoder, gated-attention temporal translator, conv decoder",
        True,
        {"hid_spatial": 16, "hid_temporal": 48, "n_spatial": 2, "n_temporal": 2, "mlp_mult": 2, "dropout": 0.1},
    ),
}

HEAD_DEFAULTS: dict[str, Any] = {"head_mode": "residual", "base": "seasonal", "calendar": True, "climatology": True}
"""The head options left out of a partial head choice (``ModelSpec`` gives a run's all; none: the bare core)."""

BASELINES: tuple[str, ...] = ("persistence", "seasonal", "climatology", "trend", "anomaly")


def _jsonable(value: Any) -> Any:
    """Tuples become lists, so that ``model_args`` survives a JSON round trip unchanged."""
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def build_model(
    name: str,
    *,
    t_in: int = 4,
    t_out: int = 4,
    channels: int = 1,
    size: int = 50,
    season_length: int = 4,
    **kwargs: Any,
) -> torch.nn.Module:
    """Build a registered model; ``kwargs`` override the entry's defaults.

    Parameters
    ----------
    name
        A key of :data:`MODELS`.
    t_in, t_out, channels, size, season_length
        The shape of the samples: input/target periods, channels per frame, patch size, periods per year.
    **kwargs
        Model options (the keys of ``MODELS[name].defaults``).

    Returns
    -------
    torch.nn.Module
        The model, with ``model_args`` (JSON-serialisable) such that ``build_model(name, **model.model_args)``
        builds the same architecture.

    Raises
    ------
    GlacierflowError
        Unknown model name, unknown option, or an option value the model cannot use.
    """
    entry = MODELS.get(name)
    if entry is None:
        raise GlacierflowError(f"unknown model {name!r}{did_you_mean(name, MODELS)}; known: {', '.join(MODELS)}")
    if "head" in kwargs and "head" not in entry.defaults and entry.learned:  # ModelSpec's name for head_mode
        kwargs["head_mode"] = kwargs.pop("head")
    head = {k: kwargs.pop(k) for k in HEAD_KEYS if k in kwargs}
    if head and not entry.learned:
        raise GlacierflowError(f"{name!r} is a baseline: it has no head ({', '.join(head)})")
    unknown = sorted(set(kwargs) - set(entry.defaults))
    if unknown:
        known = ", ".join(entry.defaults) or "none"
        raise GlacierflowError(f"unknown option {unknown[0]!r} for model {name!r}; its options: {known}")
    args = {"t_in": t_in, "t_out": t_out, "channels": channels, "size": size, "season_length": season_length}
    args |= {key: _jsonable(value) for key, value in (entry.defaults | kwargs).items()}
    try:
        json.dumps(args)
    except TypeError as err:
        raise GlacierflowError(f"model options must be JSON values (numbers, strings, lists): {err}") from None
    module = entry.cls(**args)
    if entry.learned and head:  # a bare core without head options (what the architecture tests check)
        head = {**HEAD_DEFAULTS, **head}
        if head["head_mode"] not in HEADS or head["base"] not in BASES:
            raise GlacierflowError(f"head {head['head_mode']!r} / base {head['base']!r}: choose a head of "
                                   f"{', '.join(HEADS)} and a base of {', '.join(BASES)}")
        module = Headed(module, **head)
        args |= head
    module.model_args = args
    return module


def count_parameters(module: torch.nn.Module) -> int:
    """Number of trainable parameters (0 for the baselines)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = ["BASELINES", "MODELS", "ModelEntry", "build_model", "count_parameters"]
