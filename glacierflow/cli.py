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

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="glacierflow: glacier movement from Landsat-8, STAC -> Dask -> Zarr -> PyTorch.",
)
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
    size: Annotated[
        str, typer.Option(help="tiny (~128 px, 2 yr) | small (~400 px, 4 yr) | full (whole bbox, 2013-2021)")
    ] = "tiny",
    start: Annotated[str | None, typer.Option(help="First date (YYYY-MM-DD); default per size.")] = None,
    end: Annotated[str | None, typer.Option(help="Last date (YYYY-MM-DD); default per size.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing twin.")] = False,
) -> None:
    """Write a synthetic Landsat-8 C2-L2 world (COGs, STAC items, truth.zarr)."""
    from rich.progress import Progress

    from glacierflow.glaciers import get_site
    from glacierflow.twin.make import SIZES, make_twin, schedule

    if size not in SIZES:
        raise GlacierflowError(f"unknown twin size {size!r}; choose one of: {', '.join(SIZES)}")
    site = get_site(glacier)
    n = len(schedule(site, start or SIZES[size]["start"], end or SIZES[size]["end"], seed))
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"rendering {n} acquisitions", total=n)
        meta = make_twin(out_dir, glacier, size, start, end, seed, overwrite, progress=lambda: bar.advance(task))
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
    backend: Annotated[
        str, typer.Option(help="rustac (light, memory) | pgstac (PostgreSQL, as Planetary Computer)")
    ] = "rustac",
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
    res = cat.search(
        url,
        bbox=site.bbox,
        start=start or site.start,
        end=end or site.end,
        collection=collection,
        platforms=tuple(platform or ["landsat-8"]),
        max_cloud=max_cloud,
    )
    if as_json:
        out.print_json(json.dumps({"ids": res.ids, "rejected": res.reasons()}))
        return
    out.print(
        f"{len(res.items)} scenes kept from {res.returned} returned by {url} "
        f"({res.pages} pages; server-side filter: {'yes' if res.server_filter else 'no, checked client-side'})"
    )
    for reason, n in sorted(res.reasons().items()):
        out.print(f"  rejected {n:4d}: {reason}")
    for item in res.items:
        p = item["properties"]
        out.print(
            f"  {p['datetime'][:19]}  {item['id']}  {p['platform']}  "
            f"cloud {p.get('eo:cloud_cover', float('nan')):5.1f}%"
        )
    res.raise_if_empty()


def _runner(client: object) -> object:
    """A ``compute(list_of_dask_objects) -> results`` callable with a progress bar."""
    import dask

    if hasattr(client, "compute") and hasattr(client, "gather"):
        from distributed import progress

        def run(objs: list) -> list:
            futures = client.compute(objs)  # type: ignore[attr-defined]
            if sys.stderr.isatty():
                progress(futures)
            return client.gather(futures)  # type: ignore[attr-defined]

        return run

    def run_local(objs: list) -> list:
        from dask.diagnostics import ProgressBar

        if sys.stderr.isatty():
            with ProgressBar(out=sys.stderr):
                return list(dask.compute(*objs))
        return list(dask.compute(*objs))

    return run_local


def _storage_options(pairs: list[str] | None) -> dict | None:
    if not pairs:
        return None
    opts = {}
    for p in pairs:
        if "=" not in p:
            raise GlacierflowError(f"bad --storage-option {p!r}; use KEY=VALUE")
        k, v = p.split("=", 1)
        opts[k] = json.loads(v) if v in ("true", "false") or v.replace(".", "", 1).isdigit() else v
    return opts


@app.command("build-cube")
def build_cube_cmd(
    glacier: Annotated[str | None, typer.Option(help="Glacier from the registry (e.g. parvati).")] = None,
    bbox: Annotated[tuple[float, float, float, float] | None, typer.Option(help="W S E N in degrees.")] = None,
    epsg: Annotated[int | None, typer.Option(help="Output EPSG (default: the site's UTM zone).")] = None,
    start: Annotated[str | None, typer.Option(help="First date (YYYY-MM-DD).")] = None,
    end: Annotated[str | None, typer.Option(help="Last date (YYYY-MM-DD).")] = None,
    catalog: Annotated[str | None, typer.Option(help="STAC API URL (default: Planetary Computer).")] = None,
    collection: Annotated[str, typer.Option()] = "landsat-c2-l2",
    platform: Annotated[list[str] | None, typer.Option(help="Platforms to keep (repeatable).")] = None,
    max_cloud: Annotated[float, typer.Option(help="Maximum eo:cloud_cover (%).")] = 20.0,
    max_missing: Annotated[float, typer.Option(help="Drop scenes with more missing pixels than this fraction.")] = 0.5,
    period: Annotated[str, typer.Option(help="1MS | 3MS | 6MS")] = "3MS",
    motion: Annotated[str, typer.Option(help="translation | euclidean | affine | homography")] = "translation",
    cloud_mask: Annotated[bool, typer.Option("--cloud-mask/--no-cloud-mask", help="Mask QA clouds/shadows.")] = True,
    ndsi_threshold: Annotated[float, typer.Option(help="Snow mask threshold.")] = 0.3,
    out_store: Annotated[str | None, typer.Option("--out", help="Output store (path or fsspec URL).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing store.")] = False,
    cluster: Annotated[
        str | None, typer.Option(help="local | local:N | tcp://host:port | gateway[://URL] | threads | sync")
    ] = None,
    storage_option: Annotated[
        list[str] | None, typer.Option(help="fsspec option KEY=VALUE for --out (repeatable).")
    ] = None,
) -> None:
    """Search Landsat scenes, preprocess them with Dask and write the NDSI cube store (Zarr)."""
    from glacierflow import catalog as cat
    from glacierflow.build import build_cube_store, default_store_name
    from glacierflow.cluster import get_client
    from glacierflow.config import CubeSpec, PreprocessSpec, resolve_site

    site = resolve_site(glacier, bbox, epsg)
    spec = CubeSpec(
        name=site.name,
        bbox=site.bbox,
        epsg=site.epsg,
        start=start or site.start,
        end=end or site.end,
        catalog=catalog or cat.PLANETARY_COMPUTER_URL,
        collection=collection,
        platforms=tuple(platform or ["landsat-8"]),
        max_cloud=max_cloud,
    )
    pre = PreprocessSpec(
        max_missing=max_missing, mask_clouds=cloud_mask, ndsi_threshold=ndsi_threshold, motion=motion, period=period
    )
    target = out_store or default_store_name(site.name, period)
    with get_client(cluster) as client:
        summary = build_cube_store(
            spec,
            pre,
            target,
            overwrite=overwrite,
            storage_options=_storage_options(storage_option),
            compute=_runner(client),
        )
    s = summary
    out.print(f"scenes: {s['scenes_found']} found, {s['scenes_stacked']} stacked, {s['scenes_used']} used")
    for reason, n in sorted(s["dropped"].items()):
        out.print(f"  not used / flagged {n:4d}: {reason}")
    out.print(f"periods: {s['periods']} ({s['periods_interpolated']} interpolated)")
    if s["aligned"]:
        out.print(
            f"alignment: {s['aligned']} scenes aligned, RMS shift {s['shift_rms_px']:.2f} px, "
            f"median ECC {s['ecc_median']:.3f}"
        )
    out.print(f"written: {s['store']}  ({s['seconds']:.1f} s)")


@app.command("flow")
def flow_cmd(
    cube: Annotated[str, typer.Argument(help="Cube store written by build-cube.")],
    out_store: Annotated[str, typer.Option("--out", help="Velocity store to write.")],
    pairs: Annotated[str, typer.Option(help="consecutive | annual")] = "consecutive",
    levels: Annotated[int | None, typer.Option(help="Farneback pyramid levels (paper: 6).")] = None,
    pyr_scale: Annotated[float | None, typer.Option(help="Farneback pyramid scale (paper: 0.5).")] = None,
    iterations: Annotated[int | None, typer.Option(help="Farneback iterations per level (paper: 10).")] = None,
    winsize: Annotated[int | None, typer.Option(help="Farneback averaging window in px (default 9).")] = None,
    min_texture: Annotated[float | None, typer.Option(help="Mask pixels whose local NDSI std is below this.")] = None,
    max_fb_error: Annotated[
        float | None, typer.Option(help="Mask pixels whose forward/backward flows disagree by more (px); 0: off.")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing store.")] = False,
    cluster: Annotated[
        str | None, typer.Option(help="local | local:N | tcp://host:port | gateway[://URL] | threads | sync")
    ] = "threads",
) -> None:
    """Dense Farneback optical flow between periods of a cube -> velocity store (u, v, speed in m/yr)."""
    from glacierflow.cluster import get_client
    from glacierflow.flow import FlowSpec, run_flow

    given = {"levels": levels, "pyr_scale": pyr_scale, "iterations": iterations, "winsize": winsize,
             "min_texture": min_texture, "max_fb_error": max_fb_error}
    spec = FlowSpec(pairs=pairs, **{k: v for k, v in given.items() if v is not None})
    with get_client(cluster):
        s = run_flow(cube, out_store, spec, overwrite=overwrite)
    out.print(f"{s['pairs']} {pairs} pairs ({s['pairs_interpolated']} involve an interpolated period: masked); "
              f"median speed {s['median_speed_m_per_yr']:.1f} m/yr over {100 * s['valid_fraction']:.0f}% of pixels")
    out.print(f"median over pairs (speed_median): {s['composite_median_speed_m_per_yr']:.1f} m/yr over "
              f"{100 * s['composite_valid_fraction']:.0f}% of pixels")
    out.print(f"written: {s['out']}")


@plot_app.command("flow")
def plot_flow_cmd(
    store: Annotated[str, typer.Argument(help="Velocity store written by `glacierflow flow`.")],
    out_png: Annotated[Path, typer.Option("--out", help="PNG file to write.")] = Path("flow.png"),
    cube: Annotated[
        str | None, typer.Option(help="Cube store for the NDSI background (default: the source cube).")
    ] = None,
    pair: Annotated[int, typer.Option(help="Which pair (index along time; negative counts from the end).")] = -1,
    step: Annotated[int, typer.Option(help="Arrow spacing in pixels (paper: 40 px = 1200 m).")] = 40,
) -> None:
    """Figure: NDSI with velocity arrows, and the speed map in m/yr."""
    from glacierflow.plots import plot_flow

    path = plot_flow(store, cube, out_png, time_index=pair, step=step)
    out.print(f"written: {path}")


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
