"""``fit()``: patch samples -> a registered model trained with masked MSE, early stopping and checkpoints.

The loop, top to bottom (:func:`fit`): open the cube and cut it into samples (``patches.prepare``), build
the model from the registry, AdamW; per epoch: reseed (``seed``, ``epoch``) so that a resumed run draws
exactly what an uninterrupted one would, train with the teacher-forcing probability of that epoch
(linear from ``TrainSpec.teacher_forcing`` at the first epoch to 0 at ``teacher_forcing_epochs``) on the
loss of ``TrainSpec.objective`` (:mod:`glacierflow.learn.objectives`: patch samples, or blended scene windows), clip the
gradient norm, log every step to ``loss.csv``, score the validation set, keep ``best.pt`` (lowest validation loss) and
``last.pt`` (end of every epoch), stop after ``patience`` epochs without improvement. A NaN/inf loss
stops the run with a one-line error; the checkpoints of the last good epoch stay untouched.

Run directory (DESIGN): ``best.pt``, ``last.pt`` (plain tensors, dicts, strings and numbers only:
``torch.load(path, weights_only=True)`` loads them), ``loss.csv`` (step, epoch, train_loss, val_loss, lr;
step 0 holds the validation loss before training), ``run.json`` (cube, split, seeds, versions, samples,
outcome). Checkpoints are written to a temporary file and moved into place (``os.replace``).
"""

from __future__ import annotations

import csv
import errno
import json
import math
import os
import platform
import re
import shutil
import time
from collections.abc import Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glacierflow.errors import GlacierflowError, did_you_mean
from glacierflow.specs import ModelSpec, PatchSpec, TrainSpec

LOSS_COLUMNS = ("step", "epoch", "train_loss", "val_loss", "lr")
SPEC_KEYS = ("patch_spec", "model_spec", "train_spec", "cube_spec", "preprocess_spec")


# ------------------------------------------------------------------------------------------------ pieces
def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` requested but absent -> one-line error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise GlacierflowError("--device cuda requested but PyTorch sees no CUDA GPU; use --device cpu or auto")
    if name not in ("auto", "cpu", "cuda"):
        raise GlacierflowError(f"unknown --device {name!r}; choose one of: auto, cpu, cuda")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """bf16 on CUDA where supported, else fp16 (with a gradient scaler); None (full precision) on CPU."""
    if device.type != "cuda" or not amp:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all predicted frames where ``mask`` is 1 (the paper's eq. 1, observed pixels)."""
    se = (pred.float() - target.float()) ** 2 * mask
    return se.sum() / mask.sum().clamp_min(1.0)


def teacher_forcing_at(epoch: int, spec: TrainSpec) -> float:
    """Teacher-forcing probability of ``epoch`` (0-based): ``teacher_forcing`` falling linearly to 0."""
    return float(spec.teacher_forcing) * max(0.0, 1.0 - epoch / spec.teacher_forcing_epochs)


def _atomic_save(obj: dict[str, Any], path: Path) -> None:
    """Write a checkpoint to a temporary sibling, flush it to disk, then ``os.replace`` it into place.

    A kill at any moment leaves the previous ``path`` whole (at worst a hidden ``.NAME.tmp-PID`` beside it,
    removed by the next save); a failed write (disk full) removes the temporary file and raises a one-line
    :class:`GlacierflowError`, the previous checkpoint untouched.
    """
    for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a run killed while saving
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        # torch reports a full disk as RuntimeError "unexpected pos ...": look at the free space, then clean up
        full = getattr(err, "errno", None) == errno.ENOSPC or shutil.disk_usage(path.parent).free < (1 << 20)
        tmp.unlink(missing_ok=True)
        why = "no space left on the device" if full else " ".join(str(err).split())[:120]
        raise GlacierflowError(f"cannot write checkpoint {path} ({why}); the previous {path.name}, if any, is "
                               "kept; free space or pass another --out, then --resume") from None


def _plain(d: Any) -> Any:
    """JSON round trip: tuples -> lists, so that ``torch.load(weights_only=True)`` and JSON both read it."""
    return json.loads(json.dumps(d, default=str))


CHECKPOINT_KEYS = ("model_name", "model_args", "state_dict")


def _first_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:160] or type(err).__name__


def read_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The dict of a checkpoint file, loaded with ``torch.load(weights_only=True)`` (never unpickling code).

    Raises
    ------
    GlacierflowError
        One line when the file holds pickled objects other than tensors and plain values (refused), is not a
        readable PyTorch file (truncated, another format), or is not a glacierflow checkpoint.
    """
    import pickle

    p = Path(path)
    try:
        ck = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = f"e.g. {found.group(1)}" if found else _first_line(err)
        raise GlacierflowError(
            f"checkpoint {p} holds pickled objects other than tensors and plain values ({what}); refused: "
            "glacierflow loads checkpoints with torch.load(weights_only=True) and never runs code from a file; "
            "use a checkpoint written by 'glacierflow train'") from None
    except (RuntimeError, EOFError, OSError, KeyError, ValueError) as err:
        raise GlacierflowError(f"checkpoint {p} is not a readable PyTorch checkpoint ({_first_line(err)}); it may "
                               "be truncated or another kind of file: use another checkpoint, or retrain") from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ck, dict) or k not in ck]
    if missing:
        raise GlacierflowError(f"checkpoint {p} was not written by 'glacierflow train' (no {', '.join(missing)}); "
                               "use best.pt or last.pt of a glacierflow run directory")
    return ck


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
    from glacierflow.learn.models import build_model

    p = Path(path)
    if not p.is_file():
        raise GlacierflowError(f"checkpoint {p} does not exist; train one with 'glacierflow train'")
    ck = read_checkpoint(p, map_location)
    try:
        model = build_model(ck["model_name"], **ck["model_args"])
        model.load_state_dict(ck["state_dict"])
    except (GlacierflowError, RuntimeError, TypeError, KeyError) as err:
        shape = {k: ck["model_args"].get(k) for k in ("t_in", "t_out", "size")}
        raise GlacierflowError(
            f"checkpoint {p}: its weights do not fit model {ck['model_name']!r} with the stored arguments "
            f"({', '.join(f'{k} {v}' for k, v in shape.items())}): {_first_line(err)}; it belongs to another "
            "model or patch shape: use the run directory it was trained in, or retrain") from None
    model.eval()
    keys = (*SPEC_KEYS, "model_name", "model_args", "epoch", "step", "best_val", "cube")
    return model, {k: ck.get(k) for k in keys}, ck


class LossLog:
    """``loss.csv``: one row per optimiser step (train loss) and one per epoch end (validation loss)."""

    def __init__(self, path: Path, keep_until_step: int | None) -> None:
        self.path = path
        rows = []
        if keep_until_step is not None and path.is_file():  # resume: drop rows after the checkpoint
            with path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= keep_until_step]
        tmp = path.with_name(f".{path.name}.tmp")  # rewritten whole, then moved: a kill keeps the old rows
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, LOSS_COLUMNS)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, path)

    def write(self, step: int, epoch: int, train: float | None, val: float | None, lr: float) -> None:
        """Append one row (empty cells for the missing loss)."""
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([step, epoch, "" if train is None else f"{train:.8g}",
                                    "" if val is None else f"{val:.8g}", f"{lr:.6g}"])


def _versions() -> dict[str, str]:
    import xarray
    import xbatcher

    from glacierflow import __version__

    return {"glacierflow": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "xarray": xarray.__version__, "xbatcher": xbatcher.__version__, "python": platform.python_version()}


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else nullcontext()


@torch.no_grad()
def validation_loss(model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]], device: torch.device,
                    dtype: torch.dtype | None = None) -> float:
    """Masked MSE over all samples (sum of squared errors / observed pixels), no teacher forcing."""
    model.eval()
    se = n = 0.0
    for b in batches:
        with _autocast(device, dtype):
            pred = model(b["x"].to(device))
        m = b["mask"].to(device)
        se += float((((pred.float() - b["y"].to(device)) ** 2) * m).sum())
        n += float(m.sum())
    return se / max(n, 1.0)


# ------------------------------------------------------------------------------------------------ fit
def _progress(enabled: bool) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.5f}"), TextColumn("{task.fields[rate]:.0f} seq/s"),
                    TimeElapsedColumn(), console=Console(stderr=True), transient=True, disable=not enabled)


def _train_epoch(model: torch.nn.Module, loader: Any, opt: torch.optim.Optimizer, scaler: Any, ctx: dict[str, Any],
                 epoch: int, step: int, log: LossLog, bar: Any) -> tuple[int, float]:
    """One epoch of optimiser steps; returns the new step count and the epoch's mean train loss."""
    spec: TrainSpec = ctx["train_spec"]
    device, dtype = ctx["device"], ctx["dtype"]
    n_batches = len(loader) if not spec.steps_per_epoch else min(spec.steps_per_epoch, len(loader))
    task = bar.add_task(f"epoch {epoch + 1}/{spec.epochs}", total=n_batches, loss=float("nan"), rate=0.0)
    tf, t0, seen, losses = teacher_forcing_at(epoch, spec), time.perf_counter(), 0, []
    model.train()
    for i, b in enumerate(loader):
        if i >= n_batches:
            break
        loss, n_seq = ctx["step_loss"](model, b, tf, device, dtype)  # glacierflow.learn.objectives
        if not torch.isfinite(loss):
            bad_input = not _finite(b)
            why = ("the samples hold NaN/inf (the cube's ndsi is not finite there): rebuild the cube store"
                   if bad_input else "try a lower --lr")
            raise GlacierflowError(
                f"training loss became {float(loss.detach())} at step {step + 1} (epoch {epoch + 1}); stopped, "
                f"the last good checkpoints in {ctx['out']} are kept; {why}"
            )
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.clip)
        scaler.step(opt)
        scaler.update()
        step, seen = step + 1, seen + n_seq
        losses.append(float(loss.detach()))
        log.write(step, epoch + 1, losses[-1], None, opt.param_groups[0]["lr"])
        bar.update(task, advance=1, loss=losses[-1], rate=seen / max(time.perf_counter() - t0, 1e-9))
    bar.remove_task(task)
    ctx["throughput"] = seen / max(time.perf_counter() - t0, 1e-9)
    return step, float(np.mean(losses)) if losses else float("nan")


def _finite(batch: Any) -> bool:
    """Whether every floating-point tensor of a batch (dict, sequence or tensor) is finite."""
    parts = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else [batch]
    return all(bool(torch.isfinite(v).all()) for v in parts if torch.is_tensor(v) and v.is_floating_point())


def _checkpoint(model: torch.nn.Module, opt: torch.optim.Optimizer, scaler: Any, ctx: dict[str, Any],
                **state: Any) -> dict[str, Any]:
    return {"model_name": ctx["model_name"], "model_args": _plain(model.model_args),
            "state_dict": model.state_dict(), "optimizer": opt.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            **{k: _plain(v) for k, v in ctx["specs"].items()}, "cube": ctx["cube"], **state}


def _check_resumable(ck: dict[str, Any], out: Path, model_spec: ModelSpec | None,
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

    :func:`fit` then refuses a resume whose specs differ from the run's, naming the fields.
    """
    last = Path(out_dir) / "last.pt"
    if not (model or patch) or not last.is_file():
        return None, None
    ck = read_checkpoint(last)
    stored_model, stored_patch = ModelSpec.from_dict(ck["model_spec"]), PatchSpec.from_dict(ck["patch_spec"])
    return (stored_model.replace(**model) if model else None, stored_patch.replace(**patch) if patch else None)


def _open_samples(cube: str, patch_spec: PatchSpec,
                  storage_options: dict[str, Any] | None = None) -> tuple[Any, Any, dict[str, Any]]:
    from glacierflow.learn import patches
    from glacierflow.storage.store import config_attr, open_store

    ds = open_store(cube, storage_options, require=("ndsi",))
    samples = patches.prepare(ds, patch_spec)
    return ds, samples, {k: config_attr(ds, k) for k in ("cube_spec", "preprocess_spec")}


def fit(cube: str, out_dir: str | os.PathLike[str], model_spec: ModelSpec | None = None,
        patch_spec: PatchSpec | None = None, train_spec: TrainSpec | None = None, *, resume: bool = False,
        progress: bool = True, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train a registered model on a cube store and write the run directory.

    Parameters
    ----------
    cube
        Cube store (path or URL) written by ``build-cube``.
    out_dir
        Run directory (created); ``best.pt``, ``last.pt``, ``loss.csv``, ``run.json``.
    model_spec, patch_spec, train_spec
        What to train, how to cut samples, how to optimise. With ``resume`` the model and patch specs come
        from ``last.pt``; of the train spec only ``epochs`` and ``patience`` may change.
    resume
        Continue from ``last.pt`` exactly where it ended (same next losses as an uninterrupted run).
    progress
        Show a progress bar (loss, sequences/s) on stderr.
    storage_options
        fsspec options for a cloud ``cube`` (credentials; used to open it, never written to the run directory).

    Returns
    -------
    dict
        ``epochs_run``, ``best_val``, ``best_epoch``, ``stopped`` (``finished`` | ``early stopping``),
        ``throughput`` (training sequences/s of the last epoch), the sample counts and the run directory.
    """
    from glacierflow.learn.models import MODELS, build_model, count_parameters
    from glacierflow.learn.objectives import OBJECTIVES

    out = Path(out_dir)
    ck = None
    if resume:
        if not (out / "last.pt").is_file():
            raise GlacierflowError(f"--resume: no last.pt in {out}; start without --resume")
        ck = read_checkpoint(out / "last.pt")
        _check_resumable(ck, out, model_spec, patch_spec)
        given = train_spec or TrainSpec()
        stored = TrainSpec.from_dict(ck["train_spec"])
        train_spec = TrainSpec.from_dict({**stored.to_dict(), "epochs": given.epochs, "patience": given.patience})
        model_spec, patch_spec = ModelSpec.from_dict(ck["model_spec"]), PatchSpec.from_dict(ck["patch_spec"])
        cube = cube or ck["cube"]
    elif (out / "last.pt").exists():
        raise GlacierflowError(f"run directory {out} already holds a run; pass --resume or another --out")
    model_spec, patch_spec, train_spec = model_spec or ModelSpec(), patch_spec or PatchSpec(), train_spec or TrainSpec()
    entry = MODELS.get(model_spec.name)
    if entry is None:
        raise GlacierflowError(f"unknown model {model_spec.name!r}{did_you_mean(model_spec.name, MODELS)}; "
                               f"known: {', '.join(MODELS)}")
    if not entry.learned:
        raise GlacierflowError(f"{model_spec.name!r} is a baseline and is never trained; evaluate it with any run")
    device = resolve_device(train_spec.device)
    _, samples, cube_specs = _open_samples(cube, patch_spec, storage_options)
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(train_spec.seed)
    model = build_model(model_spec.name, t_in=patch_spec.t_in, t_out=patch_spec.t_out, size=patch_spec.size,
                        season_length=samples.season_length, **model_spec.kwargs).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=train_spec.lr, weight_decay=train_spec.weight_decay)
    dtype = autocast_dtype(device, train_spec.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    state = {"epoch": 0, "step": 0, "best_val": math.inf, "best_epoch": 0, "bad_epochs": 0}
    if ck is not None:
        model.load_state_dict(ck["state_dict"])
        opt.load_state_dict(ck["optimizer"])
        if ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        state = {k: ck[k] for k in state}
    ctx = {"train_spec": train_spec, "device": device, "dtype": dtype, "out": out, "model_name": model_spec.name,
           "cube": str(cube), "specs": {"patch_spec": patch_spec.to_dict(), "model_spec": model_spec.to_dict(),
                                        "train_spec": train_spec.to_dict(), **cube_specs}}
    train_loader, ctx["step_loss"], objective = OBJECTIVES[train_spec.objective].build(samples, patch_spec,
                                                                                       train_spec)
    val_loader = _loader(samples, "val", train_spec, shuffle=False)
    log = LossLog(out / "loss.csv", keep_until_step=state["step"] if ck is not None else None)
    run = {"cube": str(cube), "split": patch_spec.split, "seed": train_spec.seed, "device": str(device),
           "autocast": str(dtype).replace("torch.", "") if dtype else None, "model": model_spec.name,
           "parameters": count_parameters(model), "samples": samples.summary(), "versions": _versions(),
           "objective": objective, **ctx["specs"], "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "resumed": bool(ck)}
    _write_json(out / "run.json", run)
    if ck is None:
        log.write(0, 0, None, validation_loss(model, val_loader, device, dtype), train_spec.lr)
    stopped = "finished"
    with _progress(progress) as bar:
        for epoch in range(state["epoch"], train_spec.epochs):
            torch.manual_seed(train_spec.seed * 100_003 + epoch)
            train_loader.sampler.set_epoch(epoch)
            state["step"], train_loss = _train_epoch(model, train_loader, opt, scaler, ctx, epoch, state["step"],
                                                     log, bar)
            val = validation_loss(model, val_loader, device, dtype)
            if not math.isfinite(val):
                raise GlacierflowError(f"validation loss became {val} in epoch {epoch + 1}; stopped, the last "
                                       f"good checkpoints in {out} are kept; try a lower --lr")
            log.write(state["step"], epoch + 1, None, val, opt.param_groups[0]["lr"])
            state["epoch"] = epoch + 1
            if val < state["best_val"]:
                state.update(best_val=val, best_epoch=epoch + 1, bad_epochs=0)
                _atomic_save(_checkpoint(model, opt, scaler, ctx, **state, val_loss=val), out / "best.pt")
            else:
                state["bad_epochs"] += 1
            _atomic_save(_checkpoint(model, opt, scaler, ctx, **state, val_loss=val), out / "last.pt")
            bar.console.print(f"epoch {epoch + 1}: train {train_loss:.5f}  val {val:.5f}  "
                              f"({ctx.get('throughput', 0):.0f} seq/s)", highlight=False)
            if state["bad_epochs"] >= train_spec.patience:
                stopped = "early stopping"
                break
    summary = {"epochs_run": state["epoch"], "best_val": state["best_val"], "best_epoch": state["best_epoch"],
               "stopped": stopped, "throughput": ctx.get("throughput"), "out": str(out), **samples.summary()}
    _write_json(out / "run.json", {**run, "result": summary,
                                   "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return summary


def _loader(samples: Any, name: str, spec: TrainSpec, *, shuffle: bool) -> Any:
    """Loader of one set; validation limited to a seeded subset of ``val_samples`` when that is set."""
    from glacierflow.learn import patches

    ds = samples.dataset(name)
    if name == "val" and 0 < spec.val_samples < len(ds):
        keep = np.sort(np.random.default_rng(spec.seed).choice(len(ds), spec.val_samples, replace=False))
        ds = patches.PatchDataset(ds.cube, ds.starts[keep], with_context=ds.with_context)
    return patches.make_loader(ds, spec.batch_size, shuffle=shuffle, seed=spec.seed, num_workers=spec.num_workers)


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)
