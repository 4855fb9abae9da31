"""Outputs that travel: ``export`` (COGs of any store) and ``report`` (one self-contained HTML page of a run)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from glacierflow.cli.app import StorageOpt, app, out, storage_options


@app.command("export")
def export_cmd(
    store_url: Annotated[str, typer.Argument(metavar="STORE", help="Cube, velocity, forecast or truth store.")],
    cog: Annotated[Path, typer.Option("--cog", metavar="DIR", help="Folder for the Cloud-Optimised GeoTIFFs.")],
    var: Annotated[
        list[str] | None,
        typer.Option("--var", metavar="NAME", help="Variable to export (repeatable; default: every gridded one)."),
    ] = None,
    time: Annotated[
        list[str] | None,
        typer.Option("--time", metavar="DATE", help="Time step to export, YYYY-MM-DD (repeatable; default: all)."),
    ] = None,
    storage_option: StorageOpt = None,
) -> None:
    """Export a store as Cloud-Optimised GeoTIFFs (COGs).

    One COG per variable and time step, with CRS, nodata, units and time tags.
    """
    from glacierflow.storage import store
    from glacierflow.storage.cog import export_cogs

    ds = store.open_store(store_url, storage_options(storage_option))
    paths = export_cogs(ds, cog, var or (), time or ())
    out.print(f"{len(paths)} COGs written to {cog}")


@app.command("stac")
def stac_cmd(
    store_url: Annotated[str, typer.Argument(metavar="STORE", help="Cube, velocity or forecast store.")],
    stac_out: Annotated[
        str | None, typer.Option("--stac-out", metavar="DIR", help="Folder for item.json + collection.json "
                                 "(default: STORE.stac beside the store).")
    ] = None,
    storage_option: StorageOpt = None,
) -> None:
    """Write the STAC Item + Collection of a store.

    build-cube, flow and predict write them beside their stores already.
    """
    from glacierflow.storage.stac_out import write_stac

    out.print(f"written: {write_stac(store_url, stac_out, storage_options(storage_option))}")


@app.command("report")
def report_cmd(
    folder: Annotated[Path, typer.Argument(metavar="DIR", help="Demo folder, or any folder of stores and runs.")],
    html: Annotated[
        Path | None, typer.Option("--out", metavar="HTML", help="Page to write (default: DIR/report.html).")
    ] = None,
) -> None:
    """One HTML page of a run: scenes, velocity, skill, forecasts.

    Self-contained (figures inline): scenes, shifts, velocity, loss curves, skill per lead, forecasts.
    """
    from glacierflow.plots.report import write_report  # deferred: matplotlib

    path = write_report(folder, html)
    out.print(f"written: {path} ({path.stat().st_size / 1e6:.2f} MB)")
