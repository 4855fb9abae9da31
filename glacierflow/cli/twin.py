"""Stage 0, the offline twin: ``twin make`` (a synthetic Landsat world) and ``twin serve`` (its STAC API)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress

from glacierflow.cli.app import GLACIER_NAMES, OverwriteOpt, console, out, twin_app
from glacierflow.errors import GlacierflowError
from glacierflow.geo.glaciers import get_site


@twin_app.command("make")
def twin_make(
    out_dir: Annotated[Path, typer.Argument(help="Directory to write the twin into.")],
    glacier: Annotated[str, typer.Option(metavar=GLACIER_NAMES, help="Glacier from the registry.")] = "parvati",
    size: Annotated[
        str,
        typer.Option(
            metavar="SIZE", help="tiny (~128 px, 2 yr), small (~400 px, 4 yr), full (whole bbox, 2013-2021)."
        ),
    ] = "tiny",
    start: Annotated[str | None, typer.Option(metavar="DATE", help="First date (default: per size).")] = None,
    end: Annotated[str | None, typer.Option(metavar="DATE", help="Last date (default: per size).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    overwrite: OverwriteOpt = False,
    realism: Annotated[
        str | None,
        typer.Option(metavar="LEVEL", help="Realism from the twin's registry: basic (original world) or "
                     "himalaya (default: shadows, snowfall, debris, monsoon, QA errors, parallax, 2 paths)."),
    ] = None,
    max_speed: Annotated[
        float | None, typer.Option(metavar="M_PER_YR", help="Main glacier's top speed (himalaya; 150).")
    ] = None,
    glacier_width: Annotated[
        float | None, typer.Option(metavar="PX", help="Main glacier's width at its head (himalaya).")
    ] = None,
) -> None:
    """Write a synthetic Landsat world with its ground truth.

    Landsat C2-L2 COGs, STAC items and truth.zarr.
    """
    from glacierflow.twin.make import SIZES, check_realism, make_twin, schedule  # deferred: rasterio
    from glacierflow.twin.realism import DEFAULT_REALISM  # deferred: scipy

    if size not in SIZES:
        raise GlacierflowError(f"unknown twin size {size!r}; choose one of: {', '.join(SIZES)}")
    realism = realism or DEFAULT_REALISM
    check_realism(realism, max_speed, glacier_width)
    site = get_site(glacier)
    n = len(schedule(site, start or SIZES[size]["start"], end or SIZES[size]["end"], seed, realism, size))
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"rendering {n} acquisitions", total=n)
        meta = make_twin(out_dir, glacier, size, start, end, seed, overwrite, progress=lambda: bar.advance(task),
                         realism=realism, max_speed=max_speed, glacier_width=glacier_width)
    out.print(
        f"twin written to {out_dir}: {meta['n_items']} items ({meta['n_landsat8']} Landsat-8, "
        f"{meta.get('n_landsat9', 0)} Landsat-9, {meta['n_landsat7']} Landsat-7; realism {meta['realism']}), "
        f"grid {meta['shape'][0]}x{meta['shape'][1]} px EPSG:{meta['epsg']}, "
        f"{meta['bytes'] / 1e6:.1f} MB in {meta['generation_seconds']} s"
    )
    out.print(f"AOI bbox (use with --bbox): {' '.join(f'{v:.6f}' for v in meta['bbox'])}")


@twin_app.command("serve")
def twin_serve(
    twin_dirs: Annotated[list[Path], typer.Argument(
        metavar="TWIN_DIR...", help="Directory written by `glacierflow twin make`; several (e.g. two glaciers): "
        "one STAC API for all.")],
    port: Annotated[int | None, typer.Option(help="STAC API port (default: a free one).")] = None,
    backend: Annotated[
        str,
        typer.Option(metavar="BACKEND", help="rustac: light, in memory; pgstac: PostgreSQL, as Planetary Computer."),
    ] = "rustac",
    url_file: Annotated[
        Path | None, typer.Option(metavar="FILE", help="Write the STAC URL to this file once serving.")
    ] = None,
    until: Annotated[
        str | None, typer.Option(metavar="DATE", help="Serve the world as of DATE (YYYY-MM-DD): items acquired "
                                 "later are hidden (watch scenes arrive with build-cube --update).")
    ] = None,
) -> None:
    """Serve a twin: COGs over HTTP with range requests + a real STAC API. Stops on Ctrl-C / SIGTERM."""
    if until is not None:
        import pandas as pd

        try:
            pd.Timestamp(until)
        except ValueError:
            raise GlacierflowError(f"--until {until!r} is not a date; use YYYY-MM-DD") from None
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        _serve(twin_dirs, port, backend, url_file, stop, until)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _serve(twin_dirs: list[Path], port: int | None, backend: str, url_file: Path | None,
           stop: threading.Event, until: str | None = None) -> None:
    from glacierflow.twin.serve import serve_twin, serve_twins  # deferred: rasterio

    serving = (serve_twin(twin_dirs[0], port=port, backend=backend, until=until) if len(twin_dirs) == 1
               else serve_twins(twin_dirs, port=port, backend=backend, until=until))
    with serving as served:
        asof = f", as of {until}" if until else ""
        out.print(f"STAC API: {served['stac_url']}  (assets: {served['asset_url']}, backend: {backend}{asof})")
        if url_file is not None:
            url_file.write_text(served["stac_url"] + "\n")
        out.print("serving; press Ctrl-C to stop", style="dim")
        try:
            while not stop.wait(0.2):
                pass
        except KeyboardInterrupt:
            pass
    if url_file is not None:
        url_file.unlink(missing_ok=True)
    out.print("stopped")
