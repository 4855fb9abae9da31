"""``fit()``: patch samples -> a registered model trained with masked MSE, early stopping and checkpoints.

The loop, top to bottom (:func:`fit`): open the cube and cut it into samples (``patches.prepare``), build
the model from the registry with its head (``ModelSpec``: residual/direct, base, calendar, climatology), AdamW
(fused on CUDA); the learning rate follows :func:`lr_factor` (warm-up, cosine) over the run's steps or its
``max_minutes``, whichever ends first, and a spent time budget stops the run cleanly after a validation; per
epoch: reseed (``seed``, ``epoch``) so that a resumed run draws exactly what an uninterrupted one would,
train with the teacher-forcing probability of that epoch (linear from ``TrainSpec.teacher_forcing`` at the
first epoch to 0 at ``teacher_forcing_epochs``) on the
loss of ``TrainSpec.objective`` (:mod:`glacierflow.learn.objectives`: patch samples, or blended scene windows), clip the
gradient norm, log every step to ``loss.csv``, score the validation set, keep ``best.pt`` (lowest validation loss) and
``last.pt`` (end of every epoch), stop after ``patience`` epochs without improvement; at the end, fit
``best.pt``'s per-lead shrinkage on the validation samples (``TrainSpec.shrink``,
:mod:`glacierflow.learn.shrink`). A NaN/inf loss stops the run with a one-line error; the checkpoints of the
last good epoch stay untouched.

Run directory (DESIGN): ``best.pt``, ``last.pt`` (plain tensors, dicts, strings and numbers only:
``torch.load(path, weights_only=True)`` loads them), ``loss.csv`` (step, epoch, train_loss, val_loss, lr;
step 0 holds the validation loss before training), ``run.json`` (cube, split, seeds, versions, samples,
outcome). Checkpoints are written to a temporary file and moved into place (``os.replace``).
"""

from __future__ import annotations

import csv
import math
import os
import platform
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray
import xbatcher
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from glacierflow import __version__
from glacierflow.errors import GlacierflowError, did_you_mean
from glacierflow.learn import patches
from glacierflow.learn.checkpoint import check_resumable, plain, read_checkpoint, save_checkpoint
from glacierflow.learn.models import MODELS, build_model, count_parameters
from glacierflow.learn.objectives import OBJECTIVES, StepLoss, forecast, to_device
from glacierflow.learn.runtime import autocast, autocast_dtype, resolve_device
from glacierflow.learn.shrink import fit_lead_scale
from glacierflow.progress import bars
from glacierflow.specs import ModelSpec, PatchSpec, TrainSpec
from glacierflow.storage.runfiles import write_json
from glacierflow.storage.store import config_attr, open_store

LOSS_COLUMNS = ("step", "epoch", "train_loss", "val_loss", "lr")


# ------------------------------------------------------------------------------------------------ pieces
def teacher_forcing_at(epoch: int, spec: TrainSpec) -> float:
    """Teacher-forcing probability of ``epoch`` (0-based): ``teacher_forcing`` falling linearly to 0."""
    return float(spec.teacher_forcing) * max(0.0, 1.0 - epoch / spec.teacher_forcing_epochs)


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
    return {"glacierflow": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "xarray": xarray.__version__, "xbatcher": xbatcher.__version__, "python": platform.python_version()}


@torch.no_grad()
def validation_loss(model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]], device: torch.device,
                    dtype: torch.dtype | None = None) -> float:
    """Masked MSE over all samples (sum of squared errors / observed pixels), no teacher forcing.

    The model gets what it gets in training (history, bases, calendar); sums stay on the device until the end.
    """
    model.eval()
    se = torch.zeros((), dtype=torch.float64, device=device)
    n = torch.zeros((), dtype=torch.float64, device=device)
    for b in batches:
        b = to_device(b, device)
        with autocast(device, dtype):
            pred = forecast(model, b)
        se += (((pred.float() - b["y"]) ** 2) * b["mask"]).sum().double()
        n += b["mask"].sum().double()
    return float(se / n.clamp_min(1.0))


def lr_factor(progress: float, spec: TrainSpec) -> float:
    """Learning-rate multiplier at ``progress`` (0..1 of the run): linear warm-up, then cosine to 5 %."""
    if spec.schedule == "constant":
        return 1.0
    p = min(max(progress, 0.0), 1.0)
    if spec.warmup > 0 and p < spec.warmup:
        return max(p / spec.warmup, 0.01)
    q = (p - spec.warmup) / max(1.0 - spec.warmup, 1e-9)
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * q))


# ------------------------------------------------------------------------------------------------ fit
@dataclass(frozen=True)
class RunContext:
    """What stays fixed during a run: its specs, device, autocast dtype, directory and step loss."""

    train_spec: TrainSpec
    model_spec: ModelSpec
    patch_spec: PatchSpec
    device: torch.device
    dtype: torch.dtype | None
    out: Path
    cube: str
    specs: dict[str, Any]  # every spec as a plain dict: stored in checkpoints and run.json
    step_loss: StepLoss  # glacierflow.learn.objectives


@dataclass(frozen=True)
class TrainState:
    """Where a run stands after an epoch: what ``last.pt`` stores and ``--resume`` restores."""

    epoch: int = 0
    step: int = 0
    best_val: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    elapsed: float = 0.0

    def after_epoch(self, epoch: int, step: int, val: float, elapsed: float) -> TrainState:
        """The state at the end of ``epoch`` (0-based) with validation loss ``val``, ``elapsed`` s of training."""
        if val < self.best_val:
            return replace(self, epoch=epoch + 1, step=step, best_val=val, best_epoch=epoch + 1, bad_epochs=0,
                           elapsed=elapsed)
        return replace(self, epoch=epoch + 1, step=step, bad_epochs=self.bad_epochs + 1, elapsed=elapsed)


def _progress(enabled: bool) -> Progress:
    return bars(enabled, TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.5f}"), TextColumn("{task.fields[rate]:.0f} seq/s"),
                TimeElapsedColumn())


def _nonfinite_loss(loss: torch.Tensor, batch: Any, step: int, epoch: int, out: Path) -> GlacierflowError:
    why = ("the samples hold NaN/inf (the cube's ndsi is not finite there): rebuild the cube store"
           if not _finite(batch) else "try a lower --lr")
    return GlacierflowError(f"training loss became {float(loss.detach())} at step {step + 1} (epoch {epoch + 1}); "
                            f"stopped, the last good checkpoints in {out} are kept; {why}")


@dataclass
class Clock:
    """The run's wall-clock budget and learning-rate plan: ``progress`` = max(steps, time) of the planned run."""

    spec: TrainSpec
    steps_total: int
    elapsed_before: float
    t0: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        """Seconds of training in this run, resumed parts included."""
        return self.elapsed_before + time.perf_counter() - self.t0

    def out_of_time(self) -> bool:
        """Whether ``max_minutes`` is spent."""
        return self.spec.max_minutes > 0 and self.elapsed() >= self.spec.max_minutes * 60

    def lr(self, step: int) -> float:
        """The learning rate of ``step``."""
        progress = step / max(self.steps_total, 1)
        if self.spec.max_minutes > 0:
            progress = max(progress, self.elapsed() / (self.spec.max_minutes * 60))
        return self.spec.lr * lr_factor(progress, self.spec)


def _train_epoch(model: torch.nn.Module, loader: Any, opt: torch.optim.Optimizer, scaler: Any, ctx: RunContext,
                 epoch: int, step: int, log: LossLog, bar: Any, clock: Clock) -> tuple[int, float, float, bool]:
    """One epoch of optimiser steps; the new step count, mean train loss, sequences/s, and whether time ran out.

    The loss is read back every ``log_every`` steps (every step on the CPU, where reading costs nothing), so a
    GPU is never synchronised per step; a non-finite loss stops the run at that read.
    """
    spec = ctx.train_spec
    n_batches = len(loader) if not spec.steps_per_epoch else min(spec.steps_per_epoch, len(loader))
    task = bar.add_task(f"epoch {epoch + 1}/{spec.epochs}", total=n_batches, loss=float("nan"), rate=0.0)
    tf, t0, seen, losses = teacher_forcing_at(epoch, spec), time.perf_counter(), 0, []
    every = 1 if ctx.device.type == "cpu" else spec.log_every
    pending: list[torch.Tensor] = []
    timed_out = False
    model.train()
    for i, b in enumerate(loader):
        if i >= n_batches:
            break
        for g in opt.param_groups:
            g["lr"] = clock.lr(step)
        loss, n_seq = ctx.step_loss(model, b, tf, ctx.device, ctx.dtype)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.clip)
        scaler.step(opt)
        scaler.update()
        step, seen = step + 1, seen + n_seq
        pending.append(loss.detach())
        if len(pending) >= every or i + 1 == n_batches:
            values = torch.stack(pending).float().cpu().tolist()
            if not all(math.isfinite(v) for v in values):
                raise _nonfinite_loss(loss, b, step - 1, epoch, ctx.out)
            for k, v in enumerate(values):
                log.write(step - len(values) + k + 1, epoch + 1, v, None, opt.param_groups[0]["lr"])
            losses += values
            pending = []
            bar.update(task, advance=len(values), loss=losses[-1],
                       rate=seen / max(time.perf_counter() - t0, 1e-9))
        if clock.out_of_time():
            timed_out = True
            break
    if pending:
        values = torch.stack(pending).float().cpu().tolist()
        for k, v in enumerate(values):
            log.write(step - len(values) + k + 1, epoch + 1, v, None, opt.param_groups[0]["lr"])
        losses += values
    bar.remove_task(task)
    throughput = seen / max(time.perf_counter() - t0, 1e-9)
    return step, float(np.mean(losses)) if losses else float("nan"), throughput, timed_out


def _finite(batch: Any) -> bool:
    """Whether every floating-point tensor of a batch (dict, sequence or tensor) is finite."""
    parts = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else [batch]
    return all(bool(torch.isfinite(v).all()) for v in parts if torch.is_tensor(v) and v.is_floating_point())


def _checkpoint(model: torch.nn.Module, opt: torch.optim.Optimizer, scaler: Any, ctx: RunContext,
                state: TrainState, val: float) -> dict[str, Any]:
    return {"model_name": ctx.model_spec.name, "model_args": plain(model.model_args),
            "state_dict": model.state_dict(), "optimizer": opt.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            **{k: plain(v) for k, v in ctx.specs.items()}, "cube": ctx.cube, **asdict(state), "val_loss": val}


def _open_samples(cube: str, patch_spec: PatchSpec,
                  storage_options: dict[str, Any] | None = None) -> tuple[Any, Any, dict[str, Any]]:
    ds = open_store(cube, storage_options, require=("ndsi",))
    samples = patches.prepare(ds, patch_spec)
    return ds, samples, {k: config_attr(ds, k) for k in ("cube_spec", "preprocess_spec")}


def _starting_point(out: Path, cube: str, model_spec: ModelSpec | None, patch_spec: PatchSpec | None,
                    train_spec: TrainSpec | None, resume: bool
                    ) -> tuple[dict[str, Any] | None, str, ModelSpec, PatchSpec, TrainSpec]:
    """``(checkpoint or None, cube, specs)``: a new run's specs, or with ``resume`` those of ``last.pt``."""
    if not resume:
        if (out / "last.pt").exists():
            raise GlacierflowError(f"run directory {out} already holds a run; pass --resume or another --out")
        return None, cube, model_spec or ModelSpec(), patch_spec or PatchSpec(), train_spec or TrainSpec()
    if not (out / "last.pt").is_file():
        raise GlacierflowError(f"--resume: no last.pt in {out}; start without --resume")
    ck = read_checkpoint(out / "last.pt")
    check_resumable(ck, out, model_spec, patch_spec)
    given = train_spec or TrainSpec()
    stored = TrainSpec.from_dict(ck["train_spec"])
    train_spec = TrainSpec.from_dict({**stored.to_dict(), "epochs": given.epochs, "patience": given.patience,
                                      "max_minutes": given.max_minutes})
    return (ck, cube or ck["cube"], ModelSpec.from_dict(ck["model_spec"]), PatchSpec.from_dict(ck["patch_spec"]),
            train_spec)


def _check_trainable(name: str) -> None:
    entry = MODELS.get(name)
    if entry is None:
        raise GlacierflowError(f"unknown model {name!r}{did_you_mean(name, MODELS)}; known: {', '.join(MODELS)}")
    if not entry.learned:
        raise GlacierflowError(f"{name!r} is a baseline and is never trained; evaluate it with any run")


def _restore(ck: dict[str, Any] | None, model: torch.nn.Module, opt: torch.optim.Optimizer,
             scaler: Any) -> TrainState:
    """Load a resumed run's weights, optimizer and scaler; its state (a fresh one without a checkpoint)."""
    if ck is None:
        return TrainState()
    model.load_state_dict(ck["state_dict"])
    opt.load_state_dict(ck["optimizer"])
    if ck.get("scaler"):
        scaler.load_state_dict(ck["scaler"])
    return TrainState(**{k: ck.get(k, v) for k, v in asdict(TrainState()).items()})


def _run_record(ctx: RunContext, model: torch.nn.Module, samples: Any, objective: Any, resumed: bool
                ) -> dict[str, Any]:
    """``run.json`` as the run starts."""
    return {"cube": ctx.cube, "split": ctx.patch_spec.split, "seed": ctx.train_spec.seed,
            "device": str(ctx.device), "autocast": str(ctx.dtype).replace("torch.", "") if ctx.dtype else None,
            "model": ctx.model_spec.name, "parameters": count_parameters(model), "samples": samples.summary(),
            "versions": _versions(), "objective": objective, **ctx.specs,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "resumed": resumed}


def _epochs(model: torch.nn.Module, opt: torch.optim.Optimizer, scaler: Any, ctx: RunContext, state: TrainState,
            loaders: tuple[Any, Any], log: LossLog, progress: bool) -> tuple[TrainState, str, float | None]:
    """Train epoch by epoch from ``state``; returns the final state, why it stopped and the last throughput."""
    train_loader, val_loader = loaders
    spec, throughput = ctx.train_spec, None
    per_epoch = len(train_loader) if not spec.steps_per_epoch else min(spec.steps_per_epoch, len(train_loader))
    clock = Clock(spec, spec.epochs * per_epoch, state.elapsed)
    if clock.out_of_time():
        return state, "time budget", throughput
    with _progress(progress) as bar:
        for epoch in range(state.epoch, spec.epochs):
            torch.manual_seed(spec.seed * 100_003 + epoch)  # a resumed run draws what an uninterrupted one would
            train_loader.sampler.set_epoch(epoch)
            step, train_loss, throughput, timed_out = _train_epoch(model, train_loader, opt, scaler, ctx, epoch,
                                                                   state.step, log, bar, clock)
            val = validation_loss(model, val_loader, ctx.device, ctx.dtype)
            if not math.isfinite(val):
                raise GlacierflowError(f"validation loss became {val} in epoch {epoch + 1}; stopped, the last "
                                       f"good checkpoints in {ctx.out} are kept; try a lower --lr")
            log.write(step, epoch + 1, None, val, opt.param_groups[0]["lr"])
            improved, state = val < state.best_val, state.after_epoch(epoch, step, val, clock.elapsed())
            if improved:
                save_checkpoint(_checkpoint(model, opt, scaler, ctx, state, val), ctx.out / "best.pt")
            save_checkpoint(_checkpoint(model, opt, scaler, ctx, state, val), ctx.out / "last.pt")
            bar.console.print(f"epoch {epoch + 1}: train {train_loss:.5f}  val {val:.5f}  "
                              f"({throughput:.0f} seq/s, {clock.elapsed() / 60:.1f} min)", highlight=False)
            if timed_out or clock.out_of_time():
                return state, "time budget", throughput
            if state.bad_epochs >= spec.patience:
                return state, "early stopping", throughput
    return state, "finished", throughput


@dataclass(frozen=True)
class TrainSummary:
    """What :func:`fit` did: the CLI prints :meth:`lines`."""

    out: str
    epochs_run: int
    best_val: float
    best_epoch: int
    stopped: str  # finished | early stopping | time budget
    throughput: float | None
    minutes: float
    samples: dict[str, Any]
    shrink: dict[str, Any] | None = None

    def lines(self) -> list[str]:
        """The summary as the CLI prints it."""
        s = self.samples
        out = [f"samples: {s['n_train']} train, {s['n_val']} val, {s['n_test']} test; {s['validation']}",
               f"{self.stopped} after {self.epochs_run} epochs ({self.minutes:.1f} min): best validation MSE "
               f"{self.best_val:.5f} (epoch {self.best_epoch}); {self.throughput or 0:.0f} training sequences/s"]
        if self.shrink:
            k = self.shrink
            out.append(f"per-lead shrinkage ({k['mode']}, validation): correction x "
                       f"{' / '.join(f'{v:g}' for v in k['lead_scale'])}; validation MSE "
                       f"{' / '.join(f'{v:.5f}' for v in k['val_mse_shrunk'])} (base "
                       f"{' / '.join(f'{v:.5f}' for v in k['val_mse_base'])})")
        return [*out, f"written: {self.out}"]


def _optimizer(model: torch.nn.Module, spec: TrainSpec, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; the fused CUDA kernel on a GPU (one launch per step instead of one per parameter)."""
    fused = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay, **fused)


def _build(model_spec: ModelSpec, patch_spec: PatchSpec, season: int, device: torch.device) -> torch.nn.Module:
    head = {"head_mode": model_spec.head, "base": model_spec.base, "calendar": model_spec.calendar,
            "climatology": model_spec.climatology}
    if device.type == "cuda":  # TF32 matmuls/convolutions: ~free accuracy-wise for a masked-MSE forecaster
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return build_model(model_spec.name, t_in=patch_spec.t_in, t_out=patch_spec.t_out, size=patch_spec.size,
                       season_length=season, **head, **model_spec.kwargs).to(device)


def shrink_best(model: torch.nn.Module, samples: Any, ctx: RunContext) -> dict[str, Any] | None:
    """Fit ``best.pt``'s per-lead shrinkage on every validation sample (:mod:`glacierflow.learn.shrink`).

    Rewrites ``best.pt`` with the fitted ``lead_scale`` and returns what it rests on (None: nothing to shrink).
    """
    path = ctx.out / "best.pt"
    if ctx.train_spec.shrink == "none" or not path.is_file() or not hasattr(model, "lead_scale"):
        return None
    ck = read_checkpoint(path)
    model.load_state_dict(ck["state_dict"])
    loader = patches.set_loader(samples, "val", replace(ctx.train_spec, val_samples=0), shuffle=False,
                                pin_memory=ctx.device.type == "cuda")
    info = fit_lead_scale(model, loader, ctx.device, ctx.train_spec.shrink, ctx.dtype)
    if info is not None:  # the checkpoint's validation loss is that of the weights it now holds
        save_checkpoint({**ck, "state_dict": model.state_dict(), "shrink": info, "val_loss": info["val_mse"]}, path)
    return info


def fit(cube: str, out_dir: str | os.PathLike[str], model_spec: ModelSpec | None = None,
        patch_spec: PatchSpec | None = None, train_spec: TrainSpec | None = None, *, resume: bool = False,
        progress: bool = True, storage_options: dict[str, Any] | None = None) -> TrainSummary:
    """Train a registered model on a cube store and write the run directory.

    Parameters
    ----------
    cube
        Cube store (path or URL) written by ``build-cube``.
    out_dir
        Run directory (created); ``best.pt``, ``last.pt``, ``loss.csv``, ``run.json``.
    model_spec, patch_spec, train_spec
        What to train, how to cut samples, how to optimise. With ``resume`` the model and patch specs come
        from ``last.pt``; of the train spec only ``epochs``, ``patience`` and ``max_minutes`` may change.
    resume
        Continue from ``last.pt`` where it ended (the next epoch; same next losses as an uninterrupted run).
    progress
        Show a progress bar (loss, sequences/s) on stderr.
    storage_options
        fsspec options for a cloud ``cube`` (credentials; used to open it, never written to the run directory).

    Returns
    -------
    TrainSummary
        Epochs run, best validation loss and epoch, why it stopped (``finished`` | ``early stopping`` |
        ``time budget``), training sequences/s of the last epoch, the sample counts and the run directory.
    """
    out = Path(out_dir)
    ck, cube, model_spec, patch_spec, train_spec = _starting_point(out, cube, model_spec, patch_spec, train_spec,
                                                                   resume)
    _check_trainable(model_spec.name)
    device = resolve_device(train_spec.device)
    _, samples, cube_specs = _open_samples(cube, patch_spec, storage_options)
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(train_spec.seed)
    model = _build(model_spec, patch_spec, samples.season_length, device)
    opt = _optimizer(model, train_spec, device)
    dtype = autocast_dtype(device, train_spec.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    state = _restore(ck, model, opt, scaler)
    runner = torch.compile(model) if train_spec.compile else model
    train_loader, step_loss, objective = OBJECTIVES[train_spec.objective].build(samples, patch_spec, train_spec)
    specs = {"patch_spec": patch_spec.to_dict(), "model_spec": model_spec.to_dict(),
             "train_spec": train_spec.to_dict(), **cube_specs,
             "climate": {"damping": [float(v) for v in samples.cube.damping]}}
    ctx = RunContext(train_spec, model_spec, patch_spec, device, dtype, out, str(cube), specs, step_loss)
    val_loader = patches.set_loader(samples, "val", train_spec, shuffle=False, pin_memory=device.type == "cuda")
    log = LossLog(out / "loss.csv", keep_until_step=state.step if ck is not None else None)
    run = _run_record(ctx, model, samples, objective, resumed=bool(ck))
    write_json(out / "run.json", run)
    if ck is None:
        log.write(0, 0, None, validation_loss(runner, val_loader, device, dtype), train_spec.lr)
    state, stopped, throughput = _epochs(_Wrapped(runner, model), opt, scaler, ctx, state,
                                         (train_loader, val_loader), log, progress)
    shrink = shrink_best(model, samples, ctx)
    summary = TrainSummary(str(out), state.epoch, state.best_val, state.best_epoch, stopped, throughput,
                           state.elapsed / 60, samples.summary(), shrink)
    write_json(out / "run.json", {**run, "shrink": shrink, "result": {**asdict(summary), **summary.samples},
                                  "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return summary


class _Wrapped(torch.nn.Module):
    """The (possibly compiled) model that runs, with the plain module's ``state_dict`` for checkpoints."""

    def __init__(self, runner: torch.nn.Module, model: torch.nn.Module) -> None:
        super().__init__()
        self.runner, self.model = runner, model
        self.model_args = getattr(model, "model_args", {})

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the compiled (or plain) model."""
        return self.runner(*args, **kwargs)

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """The plain module's weights (no ``_orig_mod.`` prefixes)."""
        return self.model.state_dict(*args, **kwargs)
