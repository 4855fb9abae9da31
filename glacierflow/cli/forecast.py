"""Stage 4, forecast: ``predict``, a full-scene forecast from a trained run (scored where the truth exists)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from glacierflow.cli.app import (
    DEFAULT_WHERE,
    Device,
    OverwriteOpt,
    StorageOpt,
    Where,
    app,
    check_writable_output,
    computes,
    out,
    storage_options,
)
from glacierflow.specs import BLEND_WINDOWS, PredictSpec


@app.command("predict")
@computes
def predict_cmd(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="Run directory written by `glacierflow train`.")],
    cube: Annotated[str, typer.Option(metavar="CUBE", help="Cube store to forecast from.")],
    out_store: Annotated[str, typer.Option("--out", metavar="STORE", help="Forecast store to write.")],
    last_input: Annotated[
        str | None, typer.Option(metavar="DATE", help="Last input period (default: the cube's last).")
    ] = None,
    overlap: Annotated[int | None, typer.Option(metavar="PX", help="Tile overlap (default: half a patch).")] = None,
    window: Annotated[Literal[BLEND_WINDOWS], typer.Option(help="Blending weight of each tile.")] = "hann",  # type: ignore[valid-type]
    batch_size: Annotated[int, typer.Option(metavar="B", help="Tiles per inference batch.")] = 64,
    device: Annotated[Device, typer.Option(help="auto: CUDA when present.")] = "auto",
    checkpoint: Annotated[str, typer.Option(metavar="NAME", help="Checkpoint in RUN_DIR.")] = "best.pt",
    update: Annotated[bool, typer.Option("--update", help="Roll the forecast store forward from the cube's "
                                         "newest complete period (nothing written when it is up to date).")] = False,
    overwrite: OverwriteOpt = False,
    storage_option: StorageOpt = None,
    where: Where = DEFAULT_WHERE,
) -> None:
    """Forecast the next periods of a whole scene -> forecast store.

    Tiles are blended (no seams); scores are written when the targets exist.
    """
    from glacierflow.forecast.predict import load_forecaster, predict_cube  # deferred: torch

    spec = PredictSpec(overlap=-1 if overlap is None else overlap, window=window, batch_size=batch_size,
                       device=device, last_input=last_input or "")
    check_writable_output(out_store, storage_option, inputs=(cube, str(run_dir)))
    fc = load_forecaster(run_dir, checkpoint)
    if update:
        from glacierflow.forecast.update import update_forecast  # deferred: torch

        with where.client():
            lines = update_forecast(fc, cube, out_store, spec, storage_options=storage_options(storage_option)).lines()
        for line in lines:
            out.print(line)
        return
    with where.client():
        s = predict_cube(fc, cube, out_store, spec, overwrite=overwrite,
                         storage_options=storage_options(storage_option))
    for line in s.lines():
        out.print(line)
