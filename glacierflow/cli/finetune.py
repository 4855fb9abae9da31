"""Stage 5, transfer: ``finetune``, a trained model continued on another glacier, before and after compared."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from glacierflow.cli.app import (
    DEFAULT_WHERE,
    Device,
    Objective,
    StorageOpt,
    Where,
    app,
    computes,
    out,
    storage_options,
)
from glacierflow.cli.common import progress_enabled


@app.command("finetune")
@computes
def finetune_cmd(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="Trained run to start from (its best.pt).")],
    cube: Annotated[str, typer.Option(metavar="CUBE", help="The other glacier's cube store.")],
    out_dir: Annotated[Path, typer.Option("--out", metavar="RUN_DIR2", help="New run directory.")],
    epochs: Annotated[int, typer.Option(metavar="N", help="Fine-tuning epochs.")] = 5,
    lr: Annotated[float | None, typer.Option(help="Learning rate (default: the run's).")] = None,
    patch_size: Annotated[int | None, typer.Option(metavar="PX", help="Expected patch size (checked).")] = None,
    device: Annotated[Device, typer.Option(help="auto: CUDA when present.")] = "auto",
    objective: Annotated[
        Objective | None, typer.Option(help="Training objective to continue with (default: the run's).")
    ] = None,
    storage_option: StorageOpt = None,
    where: Where = DEFAULT_WHERE,
) -> None:
    """Continue a trained model on another glacier.

    Scores it zero-shot and fine-tuned on the new glacier's test split.

    The cube is read through Dask (--cluster), as in train; the run directories are local.
    """
    from glacierflow.learn.finetune import finetune, format_comparison  # deferred: torch
    from glacierflow.storage.store import check_writable
    check_writable(str(out_dir), inputs=(cube, str(run_dir)))  # before any work: not an input, writable

    with where.client():
        r = finetune(run_dir, cube, out_dir, epochs=epochs, lr=lr, device=device, patch_size=patch_size,
                     progress=progress_enabled(), objective=objective,
                     storage_options=storage_options(storage_option))
    out.print(f"test split of {cube}, the model before and after fine-tuning, next to both baselines:")
    for line in format_comparison(r):
        out.print(line)
    out.print(f"written: {r['out']}")
