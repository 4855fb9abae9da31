"""Command line: parse flags -> build a spec -> call one library function -> print the result.

User mistakes (:class:`GlacierflowError`) print one line and exit with status 2, without a traceback.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from glacierflow.errors import GlacierflowError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="glacierflow: glacier movement from Landsat-8, STAC -> Dask -> Zarr -> PyTorch.")
twin_app = typer.Typer(no_args_is_help=True, help="The offline twin: a synthetic Landsat world with ground truth.")
plot_app = typer.Typer(no_args_is_help=True, help="Figures.")
app.add_typer(twin_app, name="twin")
app.add_typer(plot_app, name="plot")
console = Console(stderr=True)
out = Console()


# ------------------------------------------------------------------------------------------------ twin
@twin_app.command("make")
def twin_make(
    out_dir: Annotated[Path, typer.Argument(help="Directory to write the twin into.")],
    glacier: Annotated[str, typer.Option(help="Glacier from the registry.")] = "parvati",
    size: Annotated[str, typer.Option(help="tiny (~128 px, 2 yr) | small (~400 px, 4 yr) | full (whole bbox, 2013-2021)")] = "tiny",
    start: Annotated[str | None, typer.Option(help="First date (YYYY-MM-DD); default per size.")] = None,
    end: Annotated[str | None, typer.Option(help="Last date (YYYY-MM-DD); default per size.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing twin.")] = False,
) -> None:
    """Write a synthetic Landsat-8 C2-L2 world (COGs, STAC items, truth.zarr)."""
    from rich.progress import Progress

    from glacierflow.twin.make import SIZES, make_grid, schedule
    from glacierflow.glaciers import get_site
    from glacierflow.twin.make import make_twin

    if size not in SIZES:
        raise GlacierflowError(f"unknown twin size {size!r}; choose one of: {', '.join(SIZES)}")
    site = get_site(glacier)
    n = len(schedule(site, start or SIZES[size]["start"], end or SIZES[size]["end"], seed))
    make_grid(site, size)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"rendering {n} acquisitions", total=n)
        meta = make_twin(out_dir, glacier, size, start, end, seed, overwrite,
                         progress=lambda: bar.advance(task))
    out.print(
        f"twin written to {out_dir}: {meta['n_items']} items ({meta['n_landsat8']} Landsat-8, "
        f"{meta['n_landsat7']} Landsat-7), grid {meta['shape'][0]}x{meta['shape'][1]} px EPSG:{meta['epsg']}, "
        f"{meta['bytes'] / 1e6:.1f} MB in {meta['generation_seconds']} s"
    )
    out.print(f"AOI bbox (use with --bbox): {' '.join(f'{v:.6f}' for v in meta['bbox'])}")


@twin_app.command("serve")
def twin_serve(
    twin_dir: Annotated[Path, typer.Argument(help="Directory written by `glacierflow twin make`.")],
    port: Annotated[int | None, typer.Option(help="STAC API port (default: a free one).")] = None,
    backend: Annotated[str, typer.Option(help="rustac (light, memory) | pgstac (PostgreSQL, as Planetary Computer)")] = "rustac",
    url_file: Annotated[Path | None, typer.Option(help="Write the STAC URL to this file once serving.")] = None,
) -> None:
    """Serve a twin: COGs over HTTP with range requests + a real STAC API. Stops on Ctrl-C / SIGTERM."""
    from glacierflow.twin.serve import serve_twin

    stop = {"flag": False}

    def _stop(*_: object) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGTERM, _stop)
    with serve_twin(twin_dir, port=port, backend=backend) as served:
        out.print(f"STAC API: {served['stac_url']}  (assets: {served['asset_url']}, backend: {backend})")
        if url_file is not None:
            url_file.write_text(served["stac_url"] + "\n")
        out.print("serving; press Ctrl-C to stop", style="dim")
        try:
            while not stop["flag"]:
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
    if url_file is not None:
        url_file.unlink(missing_ok=True)
    out.print("stopped")


# ---------------------------------------------------------------------------------------------- search
@app.command("search")
def search_cmd(
    glacier: Annotated[str | None, typer.Option(help="Glacier from the registry.")] = None,
    bbox: Annotated[tuple[float, float, float, float] | None, typer.Option(help="W S E N in degrees.")] = None,
    start: Annotated[str | None, typer.Option(help="First date.")] = None,
    end: Annotated[str | None, typer.Option(help="Last date.")] = None,
    catalog: Annotated[str | None, typer.Option(help="STAC API URL (default: Planetary Computer).")] = None,
    collection: Annotated[str, typer.Option()] = "landsat-c2-l2",
    platform: Annotated[list[str] | None, typer.Option(help="Platforms to keep (repeatable).")] = None,
    max_cloud: Annotated[float, typer.Option(help="Maximum eo:cloud_cover (%).")] = 20.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the kept item ids as JSON.")] = False,
) -> None:
    """Search a STAC API for Landsat scenes over a glacier and print what was found."""
    from glacierflow import catalog as cat
    from glacierflow.config import resolve_site

    site = resolve_site(glacier, bbox, None)
    url = catalog or cat.PLANETARY_COMPUTER_URL
    res = cat.search(url, bbox=site.bbox, start=start or site.start, end=end or site.end,
                     collection=collection, platforms=tuple(platform or ["landsat-8"]), max_cloud=max_cloud)
    if as_json:
        out.print_json(json.dumps({"ids": res.ids, "rejected": res.reasons()}))
        return
    out.print(f"{len(res.items)} scenes kept from {res.returned} returned by {url} "
              f"({res.pages} pages; server-side filter: {'yes' if res.server_filter else 'no, checked client-side'})")
    for reason, n in sorted(res.reasons().items()):
        out.print(f"  rejected {n:4d}: {reason}")
    for item in res.items:
        p = item["properties"]
        out.print(f"  {p['datetime'][:19]}  {item['id']}  {p['platform']}  cloud {p.get('eo:cloud_cover', float('nan')):5.1f}%")
    res.raise_if_empty()


def main() -> None:
    """Entry point: run the app, turning user mistakes into one-line errors."""
    try:
        app(standalone_mode=False)
    except GlacierflowError as e:
        console.print(f"error: {e}", style="red", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted", style="red")
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - click usage errors carry their own exit codes
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Exit):
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(130)
        raise
