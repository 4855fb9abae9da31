"""``plot``: the figures of every stage (velocity, cube, training run, forecast), one PNG or GIF each.

The library's ``plot_*`` functions return matplotlib Figures (a notebook shows them); these commands save them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from glacierflow.cli.app import StorageOpt, out, plot_app, storage_options


@plot_app.command("flow")
def plot_flow_cmd(
    store: Annotated[str, typer.Argument(metavar="STORE", help="Velocity store written by `glacierflow flow`.")],
    out_png: Annotated[Path, typer.Option("--out", metavar="PNG", help="PNG file to write.")] = Path("flow.png"),
    cube: Annotated[
        str | None, typer.Option(metavar="CUBE", help="Cube store for the NDSI background (default: the source).")
    ] = None,
    pair: Annotated[
        int | None, typer.Option(help="One pair (index along time; negative: from the end); default: the composite.")
    ] = None,
    step: Annotated[int, typer.Option(help="Arrow spacing in pixels (paper: 40 px = 1200 m).")] = 40,
    at: Annotated[
        tuple[float, float] | None, typer.Option(metavar="X Y", help="A point's velocity time series (store CRS, m).")
    ] = None,
    storage_option: StorageOpt = None,
) -> None:
    """Velocity map: speed with arrows, its error; a pair; a point.

    The composite's speed with arrows over the glacier outline and its error map; one pair (--pair); or a
    point's velocity time series (--at X Y).
    """
    from glacierflow.plots.figures import plot_flow, plot_flow_at, save_figure  # deferred: matplotlib

    so = storage_options(storage_option)
    fig = (plot_flow_at(store, at[0], at[1], storage_options=so) if at is not None
           else plot_flow(store, cube, time_index=pair, step=step, storage_options=so))
    out.print(f"written: {save_figure(fig, out_png)}")


@plot_app.command("cube")
def plot_cube_cmd(
    cube: Annotated[str, typer.Argument(metavar="CUBE", help="Cube store written by build-cube.")],
    out_gif: Annotated[Path, typer.Option("--out", metavar="GIF", help="GIF file to write.")] = Path("cube.gif"),
    seconds: Annotated[float, typer.Option(help="Seconds per frame.")] = 0.6,
    storage_option: StorageOpt = None,
) -> None:
    """Animated GIF of the cube's NDSI, one frame per period."""
    from glacierflow.plots.figures import save_cube_gif  # deferred: matplotlib

    path = save_cube_gif(cube, out_gif, seconds_per_frame=seconds, storage_options=storage_options(storage_option))
    out.print(f"written: {path}")


@plot_app.command("run")
def plot_run_cmd(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="Run directory written by `glacierflow train`.")],
    out_png: Annotated[Path, typer.Option("--out", metavar="PNG", help="PNG file to write.")] = Path("loss.png"),
) -> None:
    """Loss curves of a training run, with the early-stopping point.

    Training loss per step, validation loss per epoch.
    """
    from glacierflow.plots.figures import plot_run, save_figure  # deferred: matplotlib

    out.print(f"written: {save_figure(plot_run(run_dir), out_png)}")


@plot_app.command("forecast")
def plot_forecast_cmd(
    store: Annotated[str, typer.Argument(metavar="STORE", help="Forecast store written by `glacierflow predict`.")],
    out_png: Annotated[Path, typer.Option("--out", metavar="PNG", help="PNG file to write.")] = Path("forecast.png"),
    cube: Annotated[
        str | None, typer.Option(metavar="CUBE", help="Cube store with the truth (default: the source).")
    ] = None,
    flow: Annotated[
        str | None, typer.Option(metavar="VELOCITY", help="`flow FORECAST` store: also draw predicted vs true-frame "
                                 "movement (PNG-flow.png).")
    ] = None,
    step: Annotated[int, typer.Option(help="--flow: arrow spacing in pixels.")] = 40,
    storage_option: StorageOpt = None,
) -> None:
    """Forecast vs truth per lead, with the error maps.

    Error maps of the model and of the baselines.
    """
    from glacierflow.plots.figures import plot_forecast, plot_forecast_flow, save_figure  # deferred: matplotlib

    so = storage_options(storage_option)
    out.print(f"written: {save_figure(plot_forecast(store, cube, storage_options=so), out_png)}")
    if flow:
        fig = plot_forecast_flow(flow, step=step, storage_options=so)
        out.print(f"written: {save_figure(fig, out_png.with_name(out_png.stem + '-flow.png'))}")
