"""Checkpoints of a run directory: written atomically, read with ``torch.load(weights_only=True)`` only.

``best.pt`` and ``last.pt`` hold the weights, optimizer and scaler state, the model name and arguments, every
spec as plain dicts, step, epoch and best validation loss: tensors, dicts, strings and numbers only, so
``torch.load(path, weights_only=True)`` loads them and no code is ever unpickled. :func:`save_checkpoint`
writes through :func:`glacierflow.storage.runfiles.atomic_write` (temporary sibling, fsync, ``os.replace``).
"""

from __future__ import annotations

import json
import os
import pickle  # only to catch torch's UnpicklingError; weights_only=True never unpickles code
import re
from pathlib import Path
from typing import Any

import torch

from glacierflow.errors import GlacierflowError
from glacierflow.learn.models import build_model
from glacierflow.specs import ModelSpec, PatchSpec
from glacierflow.storage.runfiles import atomic_write, first_line

SPEC_KEYS = ("patch_spec", "model_spec", "train_spec", "cube_spec", "preprocess_spec")
CHECKPOINT_KEYS = ("model_name", "model_args", "state_dict")


def save_checkpoint(obj: dict[str, Any], path: Path) -> None:
    """Write a checkpoint atomically: a kill at any moment leaves the previous ``path`` whole.

    A failed write (disk full) removes the temporary file and raises a one-line :class:`GlacierflowError`,
    the previous checkpoint untouched.
    """
    atomic_write(path, lambda f: torch.save(obj, f), what="checkpoint",
                 way_out="free space or pass another --out, then --resume")


def plain(d: Any) -> Any:
    """JSON round trip: tuples -> lists, so that ``torch.load(weights_only=True)`` and JSON both read it."""
    return json.loads(json.dumps(d, default=str))


def read_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The dict of a checkpoint file, loaded with ``torch.load(weights_only=True)`` (never unpickling code).

    Raises
    ------
    GlacierflowError
        One line when the file holds pickled objects other than tensors and plain values (refused), is not a
        readable PyTorch file (truncated, another format), or is not a glacierflow checkpoint.
    """
    p = Path(path)
    try:
        ck = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = f"e.g. {found.group(1)}" if found else first_line(err)
        raise GlacierflowError(
            f"checkpoint {p} holds pickled objects other than tensors and plain values ({what}); refused: "
            "glacierflow loads checkpoints with torch.load(weights_only=True) and never runs code from a file; "
            "use a checkpoint written by 'glacierflow train'") from None
    except (RuntimeError, EOFError, OSError, KeyError, ValueError) as err:
        raise GlacierflowError(f"checkpoint {p} is not a readable PyTorch checkpoint ({first_line(err)}); it may "
                               "be truncated or another kind of file: use another checkpoint, or retrain") from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ck, dict) or k not in ck]
    if missing:
        raise GlacierflowError(f"checkpoint {p} was not written by 'glacierflow train' (no {', '.join(missing)}); "
                               "use best.pt or last.pt of a glacierflow run directory")
    return ck


#: A checkpoint's model arguments are plain values of at most this magnitude (a layer width, a patch side).
MAX_MODEL_ARG = 1 << 16


def check_model_args(p: Path, ck: dict[str, Any]) -> None:
    """One line unless ``model_args`` are few plain bounded values whose model has the checkpoint's weights' size.

    A file is data, not a recipe: ``hidden_size=10**9`` would allocate terabytes before any weight is read. The
    model is built on the ``meta`` device (no memory) and refused when it has far more parameters (64x + 1 M)
    than the stored weights.
    """
    args = ck.get("model_args")
    bad = None if isinstance(args, dict) and len(args) <= 64 else f"model_args {type(args).__name__}"
    for k, v in (args if bad is None else {}).items():
        for x in v if isinstance(v, list | tuple) and len(v) <= 16 else [v]:
            if not (x is None or isinstance(x, bool) or (isinstance(x, str) and len(x) <= 256)
                    or (isinstance(x, int | float) and abs(x) <= MAX_MODEL_ARG)):
                bad = bad or f"{k}={first_line(ValueError(repr(v)), 60)}"
    if bad is None:
        try:
            with torch.device("meta"):
                n = sum(t.numel() for t in build_model(ck["model_name"], **args).parameters())
        except Exception:  # noqa: BLE001 - a model that cannot be built is reported by the real build below
            n = None
        weights = ck["state_dict"].values() if isinstance(ck["state_dict"], dict) else []
        stored = sum(t.numel() for t in weights if isinstance(t, torch.Tensor) and t.is_floating_point())
        # far larger than its weights: a strict load could never fill it (a shape mismatch is reported below)
        if n is not None and n > 64 * stored + (1 << 20):
            bad = f"a model of {n} parameters for {stored} stored weights"
    if bad is not None:
        raise GlacierflowError(f"checkpoint {p}: model arguments out of bounds ({bad}; plain values up to "
                               f"{MAX_MODEL_ARG}, a model the size of its weights); refused: use a checkpoint "
                               "written by 'glacierflow train'")


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
                    ) -> tuple[torch.nn.Module, dict[str, Any], dict[str, Any]]:
    """Rebuild the model of a checkpoint (``best.pt``/``last.pt``) with its weights, in eval mode.

    Returns
    -------
    (model, specs, checkpoint)
        ``specs``: plain dicts ``patch_spec``, ``model_spec``, ``train_spec``, ``cube_spec``,
        ``preprocess_spec`` plus ``model_name``, ``model_args``, ``epoch``, ``step``, ``best_val`` and
        ``cube``; ``checkpoint``: the whole loaded dict (weights and optimizer state included).
    """
    p = Path(path)
    if not p.is_file():
        raise GlacierflowError(f"checkpoint {p} does not exist; train one with 'glacierflow train'")
    ck = read_checkpoint(p, map_location)
    check_model_args(p, ck)
    try:
        model = build_model(ck["model_name"], **ck["model_args"])
        model.load_state_dict(ck["state_dict"])
    except (GlacierflowError, RuntimeError, TypeError, KeyError) as err:
        shape = {k: ck["model_args"].get(k) for k in ("t_in", "t_out", "size")}
        raise GlacierflowError(
            f"checkpoint {p}: its weights do not fit model {ck['model_name']!r} with the stored arguments "
            f"({', '.join(f'{k} {v}' for k, v in shape.items())}): {first_line(err)}; it belongs to another "
            "model or patch shape: use the run directory it was trained in, or retrain") from None
    model.eval()
    keys = (*SPEC_KEYS, "model_name", "model_args", "epoch", "step", "best_val", "cube")
    return model, {k: ck.get(k) for k in keys}, ck


def check_resumable(ck: dict[str, Any], out: Path, model_spec: ModelSpec | None,
                     patch_spec: PatchSpec | None) -> None:
    """``--resume`` with a model or patch spec other than the run's is a mistake (one line), not ignored."""
    stored = {"model": ModelSpec.from_dict(ck["model_spec"]), "patch": PatchSpec.from_dict(ck["patch_spec"])}
    for what, given in (("model", model_spec), ("patch", patch_spec)):
        if given is not None and given != stored[what]:
            diff = {k: (v, getattr(given, k)) for k, v in stored[what].to_dict().items() if getattr(given, k) != v}
            text = ", ".join(f"{k} {b!r} (the run's: {a!r})" for k, (a, b) in diff.items())
            raise GlacierflowError(f"--resume: run directory {out} holds a different {what} spec: {text}; drop "
                                   "those flags to continue the run as it was, or train into another --out")


def resume_specs(out_dir: str | os.PathLike[str], model: dict[str, Any], patch: dict[str, Any]
                 ) -> tuple[ModelSpec | None, PatchSpec | None]:
    """For ``--resume``: the run's stored specs with the fields a user gave (None where nothing was given).

    :func:`glacierflow.learn.train.fit` then refuses a resume whose specs differ from the run's, naming the fields.
    """
    last = Path(out_dir) / "last.pt"
    if not (model or patch) or not last.is_file():
        return None, None
    ck = read_checkpoint(last)
    stored_model, stored_patch = ModelSpec.from_dict(ck["model_spec"]), PatchSpec.from_dict(ck["patch_spec"])
    return (stored_model.replace(**model) if model else None, stored_patch.replace(**patch) if patch else None)
