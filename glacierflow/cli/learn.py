"""Stage 3, learning: ``models`` (the registry), ``train`` (a run directory) and ``evaluate`` (its metrics)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from glacierflow.choices import BASES, HEADS, SHRINKS
from glacierflow.cli.app import DEFAULT_WHERE, Device, Objective, StorageOpt, Where, app, computes, out, storage_options
from glacierflow.cli.common import progress_enabled
from glacierflow.errors import GlacierflowError
from glacierflow.specs import SPLITS, ModelSpec, PatchSpec, TrainSpec
from glacierflow.storage.store import check_writable

Split = Literal[SPLITS]  # type: ignore[valid-type]
Head = Literal[HEADS]  # type: ignore[valid-type]
Base = Literal[BASES]  # type: ignore[valid-type]
Shrink = Literal[SHRINKS]  # type: ignore[valid-type]
BUDGET_EPOCHS = 10_000  # --max-minutes without --epochs: the time budget ends the run
EvalSet = Literal["test", "val", "train"]
_TRAIN, _MODEL, _PATCH = TrainSpec(), ModelSpec(), PatchSpec()


def _model_options(pairs: list[str] | None) -> dict[str, Any]:
    """``--option KEY=VALUE`` pairs as model keyword arguments (VALUE read as JSON where it parses)."""
    opts: dict[str, Any] = {}
    for p in pairs or []:
        if "=" not in p:
            raise GlacierflowError(f"bad --option {p!r}; use KEY=VALUE, e.g. --option hidden_size=512")
        k, v = p.split("=", 1)
        try:
            opts[k] = json.loads(v)
        except json.JSONDecodeError:
            opts[k] = v
    return opts


@app.command("models")
def models_cmd() -> None:
    """List the forecast models: name, size, what it is."""
    from glacierflow.learn.models import MODELS, build_model, count_parameters  # deferred: torch

    for name, entry in MODELS.items():
        kind = "learned" if entry.learned else "baseline"
        out.print(f"{name:<12} {count_parameters(build_model(name)):>10,}  {kind:<8}  {entry.summary}")


@app.command("train")
@computes
def train_cmd(
    cube: Annotated[str, typer.Argument(metavar="CUBE", help="Cube store written by build-cube.")],
    out_dir: Annotated[Path, typer.Option("--out", metavar="RUN_DIR", help="Run directory to write.")],
    model: Annotated[
        str | None, typer.Option(metavar="NAME", help=f"Model, see `glacierflow models` (default {_MODEL.name}).")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help=f"Epochs (default {_TRAIN.epochs}).")] = None,
    batch_size: Annotated[int | None, typer.Option(help=f"Batch size (default {_TRAIN.batch_size}).")] = None,
    lr: Annotated[float | None, typer.Option(help=f"AdamW learning rate (default {_TRAIN.lr:g}).")] = None,
    weight_decay: Annotated[
        float | None, typer.Option(help=f"AdamW weight decay (default {_TRAIN.weight_decay:g}).")
    ] = None,
    split: Annotated[
        Split | None, typer.Option(help=f"How test/validation samples are held out (default {_PATCH.split}).")
    ] = None,
    t_in: Annotated[int | None, typer.Option(metavar="N", help=f"Input periods per sample (default {_PATCH.t_in}).")
                    ] = None,
    t_out: Annotated[int | None, typer.Option(metavar="N", help=f"Periods forecast (default {_PATCH.t_out}).")
                     ] = None,
    patch_size: Annotated[int | None, typer.Option(metavar="PX", help=f"Patch side (default {_PATCH.size}).")
                          ] = None,
    seed: Annotated[int | None, typer.Option(help=f"Seed (default {_TRAIN.seed}).")] = None,
    device: Annotated[Device, typer.Option(help="auto: CUDA with autocast when present, else CPU.")] = "auto",
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in RUN_DIR from last.pt.")] = False,
    patience: Annotated[
        int | None, typer.Option(help=f"Early stopping: epochs without improvement (default {_TRAIN.patience}).")
    ] = None,
    steps_per_epoch: Annotated[int | None, typer.Option(help="Batches per epoch (default: all).")] = None,
    val_samples: Annotated[int | None, typer.Option(help="Validation samples per epoch (default: all).")] = None,
    objective: Annotated[
        Objective, typer.Option(help="patch: MSE per patch sample; full-scene: MSE on scene windows of tiles "
                                     "blended as predict does.")
    ] = "patch",
    scene_window: Annotated[
        int | None, typer.Option(metavar="PX", help="full-scene: scene window side (default: three patches).")
    ] = None,
    scene_overlap: Annotated[
        int | None, typer.Option(metavar="PX", help="full-scene: tile overlap (default: half a patch, as predict; "
                                 "0: non-overlapping tiles, for predict --overlap 0).")
    ] = None,
    option: Annotated[
        list[str] | None, typer.Option(metavar="KEY=VALUE", help="Model option (repeatable), e.g. hidden_size=512.")
    ] = None,
    stride: Annotated[int | None, typer.Option(metavar="PX", help=f"Patch stride (default {_PATCH.stride}).")] = None,
    test_starts: Annotated[int | None, typer.Option(
        metavar="K", help=f"Temporal split: forecast start dates tested at the end of the cube (default "
                          f"{_PATCH.test_starts}).")] = None,
    val_starts: Annotated[int | None, typer.Option(
        metavar="K", help=f"Temporal split: validation start dates before them (default {_PATCH.val_starts}).")
                          ] = None,
    head: Annotated[Head | None, typer.Option(
        help=f"residual: a zero-initialised correction to --base; direct: to the network's own forecast "
             f"(default {_MODEL.head}).")] = None,
    base: Annotated[Base | None, typer.Option(
        help=f"Baseline a residual head starts from (default {_MODEL.base}).")] = None,
    max_minutes: Annotated[float | None, typer.Option(
        metavar="M", help="Stop cleanly after M minutes of training (best checkpoint kept; --resume continues); "
                          "without --epochs the run then lasts its budget.")] = None,
    num_workers: Annotated[int | None, typer.Option(help="DataLoader worker processes (default 0).")] = None,
    shrink: Annotated[Shrink | None, typer.Option(
        help=f"After training, per lead, on the validation start dates: fallback = drop the residual correction "
             f"where it is significantly worse than --base; scale = least-squares factor in [0, 1]; none "
             f"(default {_TRAIN.shrink}).")] = None,
    amp: Annotated[bool, typer.Option("--amp/--no-amp", help="bf16/fp16 autocast on CUDA.")] = True,
    compile_model: Annotated[bool, typer.Option("--compile", help="torch.compile the model.")] = False,
    storage_option: StorageOpt = None,
    where: Where = DEFAULT_WHERE,
) -> None:
    """Train a forecast model on a cube -> run directory.

    Writes best.pt, last.pt, loss.csv and run.json.

    Without --model: the measured-best recipe (see README, learning).

    The cube is read through Dask (--cluster): its chunks are read and decoded by the workers, the patch
    batches are cut in this process.
    """
    from glacierflow.learn.checkpoint import resume_specs  # deferred: torch
    from glacierflow.learn.train import fit  # deferred: torch

    if max_minutes and epochs is None:
        epochs = BUDGET_EPOCHS
    given = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay, "seed": seed,
             "patience": patience, "steps_per_epoch": steps_per_epoch, "val_samples": val_samples,
             "scene_window": scene_window, "scene_overlap": scene_overlap, "max_minutes": max_minutes,
             "num_workers": num_workers, "shrink": shrink}
    spec = TrainSpec(device=device, objective=objective, amp=amp, compile=compile_model,
                     **{k: v for k, v in given.items() if v is not None})
    patch = {k: v for k, v in {"split": split, "t_in": t_in, "t_out": t_out, "size": patch_size, "stride": stride,
                               "test_starts": test_starts, "val_starts": val_starts}.items() if v is not None}
    chosen = {**({"name": model} if model else {}), **({"kwargs": _model_options(option)} if option else {}),
              **{k: v for k, v in {"head": head, "base": base}.items() if v is not None}}
    if resume:  # the run's own specs; flags given must agree with them (fit names the ones that do not)
        model_spec, patch_spec = resume_specs(out_dir, chosen, patch)
    else:
        model_spec, patch_spec = ModelSpec(**chosen), PatchSpec(**patch)
    check_writable(str(out_dir), inputs=(cube,))
    with where.client():
        s = fit(cube, out_dir, model_spec, patch_spec, spec, resume=resume,
                progress=progress_enabled(), storage_options=storage_options(storage_option))
    for line in s.lines():
        out.print(line)


@app.command("evaluate")
@computes
def evaluate_cmd(
    run_dirs: Annotated[list[Path], typer.Argument(metavar="RUN_DIR...", help="Run directories.")],
    split: Annotated[EvalSet, typer.Option(help="Which samples to score.")] = "test",
    cube: Annotated[str | None, typer.Option(metavar="CUBE", help="Cube store (default: the run's).")] = None,
    table: Annotated[
        bool, typer.Option("--table", help="One table for all runs (runs without metrics are evaluated).")
    ] = False,
    storage_option: StorageOpt = None,
    where: Where = DEFAULT_WHERE,
) -> None:
    """Score runs against the five baselines -> metrics.json.

    Models and baselines are scored on the same samples, over every start date, with 95 % intervals.

    The cube is read through Dask (--cluster), as in train; started only when a run needs evaluating.
    """
    from glacierflow.learn import evaluate  # deferred: torch

    if len(run_dirs) > 1 and not table:
        raise GlacierflowError("several RUN_DIRs need --table; or evaluate one run at a time")
    metrics = {}
    todo = [run for run in run_dirs
            if not (table and (run / "metrics.json").is_file() and split in evaluate.load_metrics(run))]
    with where.client() if todo else contextlib.nullcontext():
        for run in todo:
            evaluate.evaluate_run(run, split, cube, storage_options=storage_options(storage_option))
    for run in run_dirs:
        label = run.name if [r.name for r in run_dirs].count(run.name) == 1 else str(run)
        metrics[label] = evaluate.load_metrics(run)
    out.print(f"{split} set: MSE/MAE over observed pixels; skill = 1 - MSE / MSE_baseline")
    out.print(evaluate.markdown_table(evaluate.table_rows(metrics, split)))
    if not table:
        out.print(f"written: {run_dirs[0] / 'metrics.json'}")
