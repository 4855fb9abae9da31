"""Command line: parse flags -> build a spec -> call one library function -> print the result.

* :func:`main` ``(argv=None) -> int`` runs in-process (tests call it); the console script and
  ``python -m glacierflow`` exit with its return value.
* User mistakes print one line, ``error: ...``, on stderr and return 2, without a traceback. Specs
  raise :class:`~glacierflow.errors.SpecError` naming their *fields*; :func:`flag_for` turns those
  into the flags a user types (``--start 2020-01-01 must be before --end 2019-01-01``), here only.
* Choices come from the registries: ``config.PERIODS`` and ``config.MOTIONS`` are checked as choices;
  glacier names (:data:`glacierflow.geo.glaciers.GLACIERS`), ``--pairs`` (``config.PAIR_KINDS``) and
  ``--category`` (``config.CATEGORIES``) are listed from them and checked by the registry or the spec (their
  errors say more than "not one of"); the twin's sizes and backends are checked by the twin, whose modules
  are too heavy to import for ``--help``. Defaults are the specs' own (``CubeSpec.max_cloud``, ...) and
  ``cluster.DEFAULT_CLUSTER``; shared options (site and search, storage, cluster, overwrite) are defined
  once below and reused by every command.
* Help is plain click formatting (no rich panels), readable in an 80-column terminal.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import click
import typer
from rich.console import Console

from glacierflow.compute.cluster import DEFAULT_CLUSTER, GATEWAY_WORKERS, SPEC_FORMS
from glacierflow.compute.runner import runner
from glacierflow.errors import GlacierflowError, SpecError
from glacierflow.geo.glaciers import GLACIERS
from glacierflow.specs import (
    CATEGORIES,
    DEVICES,
    FLOW_IMAGES,
    FLOW_METHODS,
    MOTIONS,
    PAIR_KINDS,
    PERIODS,
    SPLITS,
    CubeSpec,
    ModelSpec,
    PatchSpec,
    PreprocessSpec,
    TrainSpec,
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="glacierflow: glacier movement from Landsat-8, STAC -> Dask -> Zarr -> PyTorch.",
)
twin_app = typer.Typer(
    no_args_is_help=True, rich_markup_mode=None, help="The offline twin: a synthetic Landsat world with ground truth."
)
plot_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Figures.")
app.add_typer(twin_app, name="twin")
app.add_typer(plot_app, name="plot")
console = Console(stderr=True)
out = Console(soft_wrap=True, markup=False)  # results: never wrapped (paths, URLs), never read as markup


def _print_version(value: bool) -> None:
    if value:
        from glacierflow import __version__

        print(f"glacierflow {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", is_eager=True, callback=_print_version, help="Print the version and exit.")
    ] = False,
) -> None:
    """glacierflow: glacier movement from Landsat-8, STAC -> Dask -> Zarr -> PyTorch."""

# Spec fields whose flag is not ``--`` + the field name with dashes; keys "field" or "SpecName.field".
FLAGS: dict[str, str] = {
    "platforms": "--platform",
    "mask_clouds": "--cloud-mask/--no-cloud-mask",
    "name": "--glacier",
    "categories": "--category",
    "guides": "--guides/--no-guides",
}


def flag_for(field: str, spec: str = "") -> str:
    """The command-line flag for a spec field (``max_cloud`` -> ``--max-cloud``)."""
    return FLAGS.get(f"{spec}.{field}") or FLAGS.get(field) or "--" + field.replace("_", "-")


# ------------------------------------------------------------------------------------- registry choices
# CLI choices are the registries' keys (typer shows and checks a Literal as a choice). Glacier names are
# only listed: the registry looks them up itself (case-insensitive, and its error names the way out, --bbox).
GLACIER_NAMES = "|".join(GLACIERS)
Period = Literal[PERIODS]  # type: ignore[valid-type]
Motion = Literal[MOTIONS]  # type: ignore[valid-type]


# ----------------------------------------------------------------------------------------- shared options
GlacierOpt = Annotated[
    str | None, typer.Option(metavar=GLACIER_NAMES, help="Glacier from the registry (or --bbox W S E N).")
]
BboxOpt = Annotated[
    tuple[float, float, float, float] | None, typer.Option(metavar="W S E N", help="Bounding box in degrees.")
]
EpsgOpt = Annotated[int | None, typer.Option(metavar="CODE", help="Output EPSG (default: the site's UTM zone).")]
StartOpt = Annotated[str | None, typer.Option(metavar="DATE", help="First date, YYYY-MM-DD (default: the site's).")]
EndOpt = Annotated[str | None, typer.Option(metavar="DATE", help="Last date, YYYY-MM-DD (default: the site's).")]
CatalogOpt = Annotated[
    str | None, typer.Option(metavar="URL", help="STAC API URL (default: Planetary Computer).")
]
CollectionOpt = Annotated[str, typer.Option(metavar="NAME", help="STAC collection.")]
PlatformOpt = Annotated[
    list[str] | None,
    typer.Option(metavar="NAME", help=f"Platform to keep (repeatable; default: {', '.join(CubeSpec.platforms)})."),
]
MaxCloudOpt = Annotated[float, typer.Option(metavar="PCT", help="Maximum eo:cloud_cover (%).")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]
ClusterOpt = Annotated[
    str,
    typer.Option(
        metavar="WHERE",
        help=f"Where Dask runs: {SPEC_FORMS.replace(chr(39), '')}.",
    ),
]
WorkersOpt = Annotated[
    str | None,
    typer.Option(metavar="N|MIN:MAX", help="Dask workers: N, or adaptive MIN:MAX (local, gateway; gateway "
                 f"default {GATEWAY_WORKERS[0]}:{GATEWAY_WORKERS[1]}; threads: N threads)."),
]
ClusterOptionOpt = Annotated[
    list[str] | None,
    typer.Option(metavar="KEY=VALUE", help="Dask Gateway cluster option (repeatable), checked against the "
                 "gateway's own, e.g. worker_memory=8."),
]
StorageOpt = Annotated[
    list[str] | None,
    typer.Option(metavar="KEY=VALUE", help="fsspec option for the stores (repeatable), e.g. account_name=..."),
]


def storage_options(pairs: list[str] | None) -> dict[str, Any] | None:
    """``--storage-option KEY=VALUE`` pairs as fsspec options (``true``/``false``/numbers parsed)."""
    from glacierflow.storage.cloud import remember

    if not pairs:
        return None
    opts: dict[str, Any] = {}
    for p in pairs:
        if "=" not in p:
            raise GlacierflowError(f"bad --storage-option {p!r}; use KEY=VALUE")
        k, v = p.split("=", 1)
        opts[k] = json.loads(v) if v in ("true", "false") or v.replace(".", "", 1).isdigit() else v
    remember(opts)  # its secrets are kept out of every error line and store attribute
    return opts


@dataclass(frozen=True)
class Where:
    """Where a command's Dask work runs: its ``--cluster``, ``--workers`` and ``--cluster-option``, parsed.

    Commands get one from :func:`computes` and start the cluster late (after checking their own flags) with
    ``with where.client() as client:``.
    """

    cluster: str = DEFAULT_CLUSTER
    workers: int | tuple[int, int] | None = None
    options: dict[str, Any] | None = None

    @contextlib.contextmanager
    def client(self) -> Iterator[Any]:
        """Start/connect (:func:`glacierflow.compute.cluster.get_client`), print the dashboard, shut down on exit.

        SIGTERM is turned into Ctrl-C meanwhile, so a killed run also shuts its cluster down.
        """
        from glacierflow.compute.cluster import dashboard, get_client

        with _sigterm_interrupts(), get_client(self.cluster, workers=self.workers,
                                               cluster_options=self.options) as client:
            link = dashboard(client)
            if link:
                out.print(f"Dask dashboard: {link}")
            yield client


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def computes(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command the shared ``--cluster``/``--workers``/``--cluster-option`` flags, defined once here.

    The command takes a keyword ``where: Where`` instead of the three flags (typer sees the flags in the
    wrapper's signature).
    """
    sig = inspect.signature(command, eval_str=True)
    keep = [p for p in sig.parameters.values() if p.name != "where"]
    flags = {"cluster": (ClusterOpt, DEFAULT_CLUSTER), "workers": (WorkersOpt, None),
             "cluster_option": (ClusterOptionOpt, None)}
    added = [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, annotation=a, default=d)
             for k, (a, d) in flags.items()]

    @functools.wraps(command)
    def wrapper(*args: Any, cluster: str = DEFAULT_CLUSTER, workers: str | None = None,
                cluster_option: list[str] | None = None, **kwargs: Any) -> Any:
        from glacierflow.compute.cluster import parse_cluster_options, parse_workers

        where = Where(cluster, parse_workers(workers), parse_cluster_options(cluster_option))
        return command(*args, where=where, **kwargs)

    del wrapper.__wrapped__  # typer reads the signature below, not the command's
    wrapper.__signature__ = sig.replace(parameters=keep + added)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in keep + added}
    return wrapper


def _check_writable(url: str, pairs: list[str] | None) -> None:
    """One line, before any work, when the output ``url`` cannot be written (see :func:`store.check_writable`)."""
    from glacierflow.storage.store import check_writable

    check_writable(url, storage_options(pairs))


# ------------------------------------------------------------------------------------------------ twin
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
    """Write a synthetic Landsat-8 C2-L2 world (COGs, STAC items, truth.zarr)."""
    from rich.progress import Progress

    from glacierflow.geo.glaciers import get_site
    from glacierflow.twin.make import SIZES, check_realism, make_twin, schedule
    from glacierflow.twin.realism import DEFAULT_REALISM

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
        f"{meta['n_landsat7']} Landsat-7; realism {meta['realism']}), "
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
) -> None:
    """Serve a twin: COGs over HTTP with range requests + a real STAC API. Stops on Ctrl-C / SIGTERM."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        _serve(twin_dirs, port, backend, url_file, stop)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _serve(twin_dirs: list[Path], port: int | None, backend: str, url_file: Path | None,
           stop: threading.Event) -> None:
    from glacierflow.twin.serve import serve_twin, serve_twins

    serving = (serve_twin(twin_dirs[0], port=port, backend=backend) if len(twin_dirs) == 1
               else serve_twins(twin_dirs, port=port, backend=backend))
    with serving as served:
        out.print(f"STAC API: {served['stac_url']}  (assets: {served['asset_url']}, backend: {backend})")
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


# ---------------------------------------------------------------------------------------------- search
@app.command("search")
def search_cmd(
    glacier: GlacierOpt = None,
    bbox: BboxOpt = None,
    start: StartOpt = None,
    end: EndOpt = None,
    catalog: CatalogOpt = None,
    collection: CollectionOpt = CubeSpec.collection,
    platform: PlatformOpt = None,
    max_cloud: MaxCloudOpt = CubeSpec.max_cloud,
    as_json: Annotated[bool, typer.Option("--json", help="Print the kept item ids as JSON.")] = False,
) -> None:
    """Search a STAC API for Landsat scenes over a glacier and print what was found."""
    from glacierflow.ingest import catalog as cat
    from glacierflow.specs import resolve_site

    site = resolve_site(glacier, bbox, None)
    url = catalog or cat.PLANETARY_COMPUTER_URL
    res = cat.search(
        url,
        bbox=site.bbox,
        start=start or site.start,
        end=end or site.end,
        collection=collection,
        platforms=tuple(platform or CubeSpec.platforms),
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


# ------------------------------------------------------------------------------------------ build-cube
GlaciersOpt = Annotated[
    list[str] | None,
    typer.Option(metavar=GLACIER_NAMES, help="Glacier from the registry (repeatable: several sites in one run; "
                 "or --bbox W S E N, or --sites FILE)."),
]
SitesOpt = Annotated[
    Path | None,
    typer.Option(metavar="FILE", help="Sites file: one NAME (registry) or NAME W S E N [EPSG] per line, "
                 "'#' comments; each site's store under --out-dir or --out TEMPLATE{name}."),
]


@app.command("build-cube")
@computes
def build_cube_cmd(
    glacier: GlaciersOpt = None,
    sites: SitesOpt = None,
    bbox: BboxOpt = None,
    epsg: EpsgOpt = None,
    start: StartOpt = None,
    end: EndOpt = None,
    catalog: CatalogOpt = None,
    collection: CollectionOpt = CubeSpec.collection,
    platform: PlatformOpt = None,
    max_cloud: MaxCloudOpt = CubeSpec.max_cloud,
    max_missing: Annotated[
        float, typer.Option(metavar="FRAC", help="Drop scenes with more missing pixels than this fraction.")
    ] = PreprocessSpec.max_missing,
    period: Annotated[Period, typer.Option(help="Period of the cube (month starts).")] = PreprocessSpec.period,
    motion: Annotated[Motion, typer.Option(help="ECC motion model.")] = PreprocessSpec.motion,
    cloud_mask: Annotated[
        bool, typer.Option("--cloud-mask/--no-cloud-mask", help="Mask QA clouds and shadows.")
    ] = PreprocessSpec.mask_clouds,
    ndsi_threshold: Annotated[
        float, typer.Option(metavar="NDSI", help="Snow mask threshold.")
    ] = PreprocessSpec.ndsi_threshold,
    category: Annotated[
        list[str] | None,  # typer takes no list of Literal: CubeSpec checks the names (SpecError)
        typer.Option(
            metavar="|".join(CATEGORIES),
            help="Landsat collection category to keep (repeatable; default: T1 and T2, T2 flagged).",
        ),
    ] = None,
    min_ecc: Annotated[
        float, typer.Option(metavar="CORR", help="Scenes aligned with a lower ECC correlation are not averaged.")
    ] = PreprocessSpec.min_ecc,
    guides: Annotated[
        bool, typer.Option("--guides/--no-guides", help="Store the aligned per-scene images flow can track.")
    ] = CubeSpec.guides,
    strict: Annotated[
        bool, typer.Option("--strict", help="Fail on a missing, unreadable or mis-declared asset instead of "
                           "dropping its scene (the reason is in the scenes table).")
    ] = False,
    http_timeout: Annotated[
        float, typer.Option(metavar="S", help="Seconds before a stalled HTTP request (STAC, COG) is retried.")
    ] = CubeSpec.http_timeout,
    http_retries: Annotated[
        int, typer.Option(metavar="N", help="Retries of a failed or timed-out HTTP request.")
    ] = CubeSpec.http_retries,
    http_retry_delay: Annotated[
        float, typer.Option(metavar="S", help="Seconds before the first retry (doubling after each).")
    ] = CubeSpec.http_retry_delay,
    out_store: Annotated[
        str | None, typer.Option("--out", metavar="STORE", help="Output store (path or fsspec URL; several "
                                 "sites: a template with {name}).")
    ] = None,
    out_dir: Annotated[
        str | None, typer.Option(metavar="DIR", help="Folder (or fsspec URL) of the stores, one <site>-<period>.zarr "
                                 "per site.")
    ] = None,
    overwrite: OverwriteOpt = False,
    force: Annotated[
        bool, typer.Option("--force", help="Build a bbox larger than one Landsat scene (40 Mpx) anyway.")
    ] = False,
    storage_option: StorageOpt = None,
    where: Where = Where(),
) -> int:
    """Search Landsat scenes, preprocess them with Dask and write the NDSI cube store (Zarr).

    Several sites (--glacier repeated, --sites FILE) are built in one run on one cluster, their graphs
    submitted together; one store per site, one summary table; a failed site is reported and the others go
    on (exit status 1 if any failed).
    """
    from glacierflow.geo.glaciers import Site
    from glacierflow.ingest import catalog as cat
    from glacierflow.preprocess.build import build_cube_store, default_store_name
    from glacierflow.specs import check_size, resolve_site
    from glacierflow.storage.store import check_writable

    def spec_for(site: Site) -> CubeSpec:
        spec = CubeSpec(
            name=site.name,
            bbox=site.bbox,
            epsg=site.epsg,
            start=start or site.start,
            end=end or site.end,
            catalog=catalog or cat.PLANETARY_COMPUTER_URL,
            collection=collection,
            platforms=tuple(platform or CubeSpec.platforms),
            max_cloud=max_cloud,
            guides=guides,
            http_timeout=http_timeout,
            http_retries=http_retries,
            http_retry_delay=http_retry_delay,
            **({"categories": tuple(category)} if category else {}),
        )
        check_size(spec, force)  # a bbox typo is refused before any search
        return spec

    pre = PreprocessSpec(
        max_missing=max_missing, mask_clouds=cloud_mask, ndsi_threshold=ndsi_threshold, motion=motion, period=period,
        min_ecc=min_ecc,
    )
    if sites is not None or len(glacier or []) > 1:
        return _build_sites(glacier or [], sites, bbox, epsg, spec_for, pre, out_store, out_dir, overwrite,
                            storage_options(storage_option), where, strict)
    site = resolve_site(glacier[0] if glacier else None, bbox, epsg)
    spec = spec_for(site)
    if out_store and out_dir:
        raise GlacierflowError("--out and --out-dir were both given; pass one of them")
    name = default_store_name(site.name, period)
    target = out_store.replace("{name}", site.name) if out_store else (
        f"{out_dir.rstrip('/')}/{name}" if out_dir else name)
    check_writable(target, storage_options(storage_option))  # before hours of work, not after
    with where.client() as client:
        summary = build_cube_store(
            spec,
            pre,
            target,
            overwrite=overwrite,
            storage_options=storage_options(storage_option),
            compute=runner(client),
            strict=strict,
        )
    s = summary
    out.print(f"scenes: {s.scenes_found} found, {s.scenes_stacked} stacked, {s.scenes_used} used")
    for reason, n in sorted(s.dropped.items()):
        out.print(f"  not used / flagged {n:4d}: {reason}")
    out.print(f"periods: {s.periods} ({s.periods_interpolated} interpolated)")
    if s.aligned and s.shift_rms_px is not None and s.ecc_median is not None:
        out.print(
            f"alignment: {s.aligned} scenes aligned, RMS shift {s.shift_rms_px:.2f} px, median ECC {s.ecc_median:.3f}"
        )
    out.print(f"written: {s.store}  ({s.seconds:.1f} s)")
    return 0


def _build_sites(glaciers: list[str], sites_file: Path | None, bbox: Any, epsg: int | None,
                 spec_for: Callable[[Any], CubeSpec], pre: PreprocessSpec, out_store: str | None,
                 out_dir: str | None, overwrite: bool, storage: dict[str, Any] | None, where: Where,
                 strict: bool = False) -> int:
    """build-cube over several sites on one cluster (glacierflow.geo.sites); the summary table; 1 if any failed."""
    from glacierflow.geo.sites import build_sites, resolve_sites, site_stores, summary_table
    from glacierflow.preprocess.build import build_cube_store, default_store_name
    from glacierflow.storage.store import check_writable

    if bbox:
        raise GlacierflowError("--bbox gives one site; for several, list NAME W S E N lines in --sites FILE")
    chosen = resolve_sites(glaciers, sites_file, epsg)
    stores = site_stores([s.name for s in chosen], out_store, out_dir, lambda n: default_store_name(n, pre.period))
    specs = {s.name: spec_for(s) for s in chosen}  # every spec checked before a cluster starts
    for url in stores.values():  # and every output: one line before hours of work, not a failed site after
        check_writable(url, storage)
    with where.client() as client:
        run = runner(client, progress_bar=False)  # several sites at once: no interleaved bars
        results = build_sites({
            name: (stores[name], functools.partial(build_cube_store, spec, pre, overwrite=overwrite,
                                                   storage_options=storage, compute=run, strict=strict))
            for name, spec in specs.items()
        })
    for line in summary_table(results):
        out.print(line)
    return 1 if any(not r.ok for r in results) else 0


# ------------------------------------------------------------------------------------------------ flow
@app.command("flow")
@computes
def flow_cmd(
    cube: Annotated[str, typer.Argument(metavar="CUBE", help="Cube store written by build-cube.")],
    out_store: Annotated[str, typer.Option("--out", metavar="STORE", help="Velocity store to write.")],
    method: Annotated[
        str | None, typer.Option(metavar="|".join(FLOW_METHODS), help="Matcher (default farneback).")
    ] = None,
    images: Annotated[
        str | None, typer.Option(metavar="|".join(FLOW_IMAGES), help="Track scene guides or NDSI periods.")
    ] = None,
    pairs: Annotated[
        str | None, typer.Option(metavar="|".join(PAIR_KINDS) + "|MIN:MAX", help="Which acquisitions are paired.")
    ] = None,
    max_pairs_per_scene: Annotated[int | None, typer.Option(help="At most this many pairs per scene.")] = None,
    chip: Annotated[int | None, typer.Option(help="NCC chip side, px (odd).")] = None,
    search: Annotated[int | None, typer.Option(help="NCC search range, px; 0: from --max-speed.")] = None,
    max_speed: Annotated[float | None, typer.Option(help="Fastest expected speed, m/yr.")] = None,
    min_corr: Annotated[float | None, typer.Option(help="NCC: mask peaks below this correlation.")] = None,
    ice_mask: Annotated[
        str | None, typer.Option(metavar="FILE", help="Ice mask GeoTIFF or GeoJSON (default: NDSI climatology).")
    ] = None,
    ice_fraction: Annotated[float | None, typer.Option(help="Climatology: ice if snowy this often.")] = None,
    stable_margin: Annotated[int | None, typer.Option(help="Stable ground: px away from the ice.")] = None,
    levels: Annotated[int | None, typer.Option(help="Farneback pyramid levels (paper: 6).")] = None,
    pyr_scale: Annotated[float | None, typer.Option(help="Farneback pyramid scale (paper: 0.5).")] = None,
    iterations: Annotated[int | None, typer.Option(help="Farneback iterations per level (paper: 10).")] = None,
    winsize: Annotated[int | None, typer.Option(help="Farneback averaging window, px (default 9).")] = None,
    min_texture: Annotated[
        float | None, typer.Option(help="Mask pixels whose local std (image in [0, 1]) is below this.")
    ] = None,
    max_fb_error: Annotated[
        float | None, typer.Option(help="Forward/backward check (px); 0: off.")
    ] = None,
    overwrite: OverwriteOpt = False,
    storage_option: StorageOpt = None,
    where: Where = Where(),
) -> None:
    """Surface velocity from pairs of scenes (or NDSI periods) of a cube -> velocity store (m/yr)."""
    from glacierflow.motion.forecast_flow import is_forecast_url
    from glacierflow.motion.velocity import run_flow
    from glacierflow.specs import FlowSpec

    given = {"method": method, "images": images, "pairs": pairs, "max_pairs_per_scene": max_pairs_per_scene,
             "chip": chip, "search": search, "max_speed": max_speed, "min_corr": min_corr,
             "ice_fraction": ice_fraction, "stable_margin": stable_margin, "levels": levels, "pyr_scale": pyr_scale,
             "iterations": iterations, "winsize": winsize, "min_texture": min_texture, "max_fb_error": max_fb_error}
    spec = FlowSpec(**{k: v for k, v in given.items() if v is not None})  # unset flags: the spec's defaults
    _check_writable(out_store, storage_option)
    if is_forecast_url(cube, storage_options(storage_option)):  # predict's output: the predicted frames
        return _flow_forecast(cube, out_store, spec if pairs else spec.replace(pairs="consecutive"),
                              overwrite=overwrite, storage_option=storage_option, ice_mask=ice_mask, where=where)
    with where.client():
        s = run_flow(cube, out_store, spec, overwrite=overwrite, storage_options=storage_options(storage_option),
                     ice_mask=ice_mask)
    out.print(f"{s['pairs']} {spec.pairs} pairs of {s['tracked']} ({s['method']}); median pair error "
              f"{s['median_pair_error_m_per_yr']:.1f} m/yr, median valid fraction {s['median_valid_fraction']:.2f}")
    out.print(f"composite: median speed {s['composite_median_speed_m_per_yr']:.1f} m/yr (95th percentile "
              f"{s['composite_p95_speed_m_per_yr']:.0f} m/yr) over "
              f"{100 * s['composite_valid_fraction']:.0f}% of pixels, median speed error "
              f"{s['median_speed_error_m_per_yr']:.1f} m/yr")
    out.print(f"written: {s['out']}")


def _flow_forecast(fc: str, out_store: str, spec: Any, *, overwrite: bool, storage_option: list[str] | None,
                   ice_mask: str | None, where: Any) -> None:
    """``flow FORECAST``: flow of the predicted frames and of the cube's true frames of the same periods."""
    from glacierflow.motion.forecast_flow import format_comparison, ndsi_store_flow

    with where.client():
        s = ndsi_store_flow(fc, out_store, spec, overwrite=overwrite, storage_options=storage_options(storage_option),
                            ice_mask=ice_mask)
    out.print(f"forecast store: {s['pairs']} {spec.pairs} pairs of predicted NDSI periods ({s['method']}, Δt from "
              f"the period starts); composite median speed {s['composite_median_speed_m_per_yr']:.1f} m/yr")
    out.print(format_comparison(s))
    out.print(f"written: {s['out']}")


# ------------------------------------------------------------------------------------------------ plot
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
) -> None:
    """Figure: composite speed with arrows and its error, or one pair (NDSI with arrows, speed)."""
    from glacierflow.plots.figures import plot_flow

    path = plot_flow(store, cube, out_png, time_index=pair, step=step)
    out.print(f"written: {path}")


# --- learning
Split = Literal[SPLITS]  # type: ignore[valid-type]
Device = Literal[DEVICES]  # type: ignore[valid-type]
EvalSet = Literal["test", "val", "train"]
_TRAIN, _MODEL, _PATCH = TrainSpec(), ModelSpec(), PatchSpec()
from glacierflow.specs import OBJECTIVES  # noqa: E402  (train's --objective choices: the registry's keys)

Objective = Literal[OBJECTIVES]  # type: ignore[valid-type]


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
    """List the registered models: name, parameters at default size, what it is."""
    from glacierflow.learn.models import MODELS, build_model, count_parameters

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
    storage_option: StorageOpt = None,
    where: Where = Where(),
) -> None:
    """Train a model on patch sequences of a cube; writes best.pt, last.pt, loss.csv, run.json.

    The cube is read through Dask (--cluster): its chunks are read and decoded by the workers, the patch
    batches are cut in this process.
    """
    from glacierflow.learn.train import fit, resume_specs
    from glacierflow.storage.store import check_writable

    given = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay, "seed": seed,
             "patience": patience, "steps_per_epoch": steps_per_epoch, "val_samples": val_samples,
             "scene_window": scene_window, "scene_overlap": scene_overlap}
    spec = TrainSpec(device=device, objective=objective, **{k: v for k, v in given.items() if v is not None})
    patch = {k: v for k, v in {"split": split, "t_in": t_in, "t_out": t_out, "size": patch_size}.items()
             if v is not None}
    chosen = {**({"name": model} if model else {}), **({"kwargs": _model_options(option)} if option else {})}
    if resume:  # the run's own specs; flags given must agree with them (fit names the ones that do not)
        model_spec, patch_spec = resume_specs(out_dir, chosen, patch)
    else:
        model_spec, patch_spec = ModelSpec(**{"name": _MODEL.name, **chosen}), PatchSpec(**patch)
    check_writable(str(out_dir))
    with where.client():
        s = fit(cube, out_dir, model_spec, patch_spec, spec, resume=resume,
                progress=sys.stderr.isatty(), storage_options=storage_options(storage_option))
    out.print(f"samples: {s['n_train']} train, {s['n_val']} val, {s['n_test']} test; {s['validation']}")
    out.print(f"{s['stopped']} after {s['epochs_run']} epochs: best validation MSE {s['best_val']:.5f} "
              f"(epoch {s['best_epoch']}); {s['throughput'] or 0:.0f} training sequences/s")
    out.print(f"written: {s['out']}")


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
    where: Where = Where(),
) -> None:
    """Score models and the persistence/seasonal baselines on the same samples; metrics.json and a table.

    The cube is read through Dask (--cluster), as in train; started only when a run needs evaluating.
    """
    from glacierflow.learn import evaluate

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


# --- end learning


# --- forecast
from glacierflow.specs import BLEND_WINDOWS, DEVICES  # noqa: E402  (this section's registry choices)


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
    device: Annotated[Literal[DEVICES], typer.Option(help="auto: CUDA when present.")] = "auto",  # type: ignore[valid-type]
    checkpoint: Annotated[str, typer.Option(metavar="NAME", help="Checkpoint in RUN_DIR.")] = "best.pt",
    overwrite: OverwriteOpt = False,
    storage_option: StorageOpt = None,
    where: Where = Where(),
) -> None:
    """Full-scene forecast (tiles blended, no seams) -> forecast store; scores when targets exist."""
    from glacierflow.forecast.predict import format_scores, load_forecaster, predict_cube
    from glacierflow.specs import PredictSpec

    spec = PredictSpec(overlap=-1 if overlap is None else overlap, window=window, batch_size=batch_size,
                       device=device, last_input=last_input or "")
    _check_writable(out_store, storage_option)
    fc = load_forecaster(run_dir, checkpoint)
    with where.client():
        s = predict_cube(fc, cube, out_store, spec, overwrite=overwrite,
                         storage_options=storage_options(storage_option))
    out.print(f"{s['model']}: inputs {', '.join(s['inputs'])} -> targets {', '.join(s['targets'])} "
              f"({s['overlap']} px overlap, {s['device']}, {s['seconds']:.1f} s)")
    for line in format_scores(s["scores"]):
        out.print(line)
    out.print(f"written: {s['out']}")


@plot_app.command("cube")
def plot_cube_cmd(
    cube: Annotated[str, typer.Argument(metavar="CUBE", help="Cube store written by build-cube.")],
    out_gif: Annotated[Path, typer.Option("--out", metavar="GIF", help="GIF file to write.")] = Path("cube.gif"),
    seconds: Annotated[float, typer.Option(help="Seconds per frame.")] = 0.6,
) -> None:
    """Animated GIF of the cube's snow-mask NDSI, one dated frame per period."""
    from glacierflow.plots.figures import plot_cube_gif

    out.print(f"written: {plot_cube_gif(cube, out_gif, seconds_per_frame=seconds)}")


@plot_app.command("run")
def plot_run_cmd(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="Run directory written by `glacierflow train`.")],
    out_png: Annotated[Path, typer.Option("--out", metavar="PNG", help="PNG file to write.")] = Path("loss.png"),
) -> None:
    """Loss curves (train per step, validation per epoch) with the early-stopping point."""
    from glacierflow.plots.figures import plot_run

    out.print(f"written: {plot_run(run_dir, out_png)}")


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
) -> None:
    """Forecast vs truth per lead, with the error maps of the model, persistence and seasonal."""
    from glacierflow.plots.figures import plot_forecast, plot_forecast_flow

    out.print(f"written: {plot_forecast(store, cube, out_png)}")
    if flow:
        out.print(f"written: {plot_forecast_flow(flow, out_png.with_name(out_png.stem + '-flow.png'), step=step)}")


@app.command("finetune")
def finetune_cmd(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="Trained run to start from (its best.pt).")],
    cube: Annotated[str, typer.Option(metavar="CUBE", help="The other glacier's cube store.")],
    out_dir: Annotated[Path, typer.Option("--out", metavar="RUN_DIR2", help="New run directory.")],
    epochs: Annotated[int, typer.Option(metavar="N", help="Fine-tuning epochs.")] = 5,
    lr: Annotated[float | None, typer.Option(help="Learning rate (default: the run's).")] = None,
    patch_size: Annotated[int | None, typer.Option(metavar="PX", help="Expected patch size (checked).")] = None,
    device: Annotated[Literal[DEVICES], typer.Option(help="auto: CUDA when present.")] = "auto",  # type: ignore[valid-type]
    objective: Annotated[
        Objective | None, typer.Option(help="Training objective to continue with (default: the run's).")
    ] = None,
) -> None:
    """Continue a trained model on another glacier; zero-shot vs fine-tuned on its test split."""
    from glacierflow.learn.finetune import finetune, format_comparison

    r = finetune(run_dir, cube, out_dir, epochs=epochs, lr=lr, device=device, patch_size=patch_size,
                 progress=sys.stderr.isatty(), objective=objective)
    out.print(f"test split of {cube}, the model before and after fine-tuning, next to both baselines:")
    for line in format_comparison(r):
        out.print(line)
    out.print(f"written: {r['out']}")


@app.command("demo")
def demo_cmd(
    workdir: Annotated[Path, typer.Option(metavar="DIR", help="Where everything is written.")] = Path("demo-out"),
    fresh: Annotated[bool, typer.Option("--fresh", help="Start over (remove DIR first).")] = False,
    size: Annotated[Literal["tiny", "small"], typer.Option(help="Twin size (small: the README's demo).")] = "small",
    model: Annotated[str, typer.Option(metavar="NAME", help="Learned model to train briefly.")] = "convlstm",
    cluster: ClusterOpt = "threads",  # the demo's small cubes: dask's threaded scheduler has the least overhead
) -> None:
    """The whole pipeline on the offline twins: twin, cube, flow, train, evaluate, forecast, fine-tune, figures."""
    from glacierflow.demo import report_lines, run_demo

    r = run_demo(workdir, fresh=fresh, cluster=cluster, say=out.print, size=size, model=model)
    for line in report_lines(r):
        out.print(line)
# --- end forecast


# typer >= 0.20 vendors click (typer._click); older typer raises click's own exceptions: accept both
_USAGE_ERRORS = (typer.TyperException, click.exceptions.ClickException)
_EXITS = (typer.Exit, click.exceptions.Exit)
_ABORTS = (typer.Abort, click.exceptions.Abort, KeyboardInterrupt)


def _error(message: str) -> int:
    from glacierflow.storage.cloud import redact

    print(f"error: {redact(message)}", file=sys.stderr)  # never a credential seen in this process
    return 2


def _usage_error(e: Exception) -> int:
    """One line for a bad flag or value (click's own output is a usage block); ``no args`` shows the help."""
    if type(e).__name__ == "NoArgsIsHelpError":
        e.show()  # type: ignore[attr-defined]
        return 2
    message = e.format_message() if hasattr(e, "format_message") else str(e)
    message = " ".join(message.replace("Value error, ", "").split()).rstrip(".")
    ctx = getattr(e, "ctx", None)
    where = f"; see {ctx.command_path} --help" if ctx is not None else ""
    code = getattr(e, "exit_code", 2)
    print(f"error: {message}{where}", file=sys.stderr)
    return code if isinstance(code, int) else 2


def main(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv`` (default: ``sys.argv[1:]``) and return the exit status.

    User mistakes (:class:`GlacierflowError`, bad flags and values) print one line on stderr and return 2;
    spec errors name the flags (:func:`flag_for`). Ctrl-C returns 130.
    """
    try:
        result = app(args=argv, prog_name="glacierflow", standalone_mode=False)
    except SpecError as e:
        spec = e.spec
        return _error(e.render(lambda name: flag_for(name, spec)))
    except GlacierflowError as e:
        return _error(str(e))
    except _ABORTS:
        print("interrupted", file=sys.stderr)
        return 130
    except _EXITS as e:
        return int(e.exit_code)
    except _USAGE_ERRORS as e:
        return _usage_error(e)
    if result == 130:  # typer turns Ctrl-C into Exit(130), which click returns silently
        print("interrupted", file=sys.stderr)
    return int(result) if isinstance(result, int) else 0
