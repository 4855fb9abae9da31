"""Stage 1, the cube: ``search`` (what a STAC API has) and ``build-cube`` (one site or several, on one cluster)."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from glacierflow.cli.app import (
    DEFAULT_WHERE,
    GLACIER_NAMES,
    BboxOpt,
    CatalogOpt,
    CollectionOpt,
    EndOpt,
    EpsgOpt,
    GlacierOpt,
    MaxCloudOpt,
    OverwriteOpt,
    PlatformOpt,
    StartOpt,
    StorageOpt,
    Where,
    app,
    check_writable_output,
    computes,
    out,
    storage_options,
)
from glacierflow.cli.common import progress_enabled
from glacierflow.compute.runner import runner
from glacierflow.errors import GlacierflowError
from glacierflow.geo.glaciers import Site
from glacierflow.geo.sites import build_sites, resolve_sites, site_stores, summary_table
from glacierflow.ingest import catalog as cat
from glacierflow.specs import (
    CATEGORIES,
    GUIDE_BANDS,
    GUIDE_FILTERS,
    MOTIONS,
    PERIODS,
    CubeSpec,
    PreprocessSpec,
    check_size,
    resolve_site,
)
from glacierflow.storage.store import check_writable

if TYPE_CHECKING:
    from glacierflow.preprocess.build import BuildSummary

Period = Literal[PERIODS]  # type: ignore[valid-type]
Motion = Literal[MOTIONS]  # type: ignore[valid-type]


# HTTP settings of the STAC client and GDAL's reads: search and build-cube share them
HttpTimeoutOpt = Annotated[
    float, typer.Option(metavar="S", help="Seconds before a stalled HTTP request (STAC, COG) is retried.")
]
HttpRetriesOpt = Annotated[int, typer.Option(metavar="N", help="Retries of a failed or timed-out HTTP request.")]
HttpRetryDelayOpt = Annotated[
    float, typer.Option(metavar="S", help="Seconds before the first retry (doubling after each).")
]


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
    http_timeout: HttpTimeoutOpt = CubeSpec.http_timeout,
    http_retries: HttpRetriesOpt = CubeSpec.http_retries,
    http_retry_delay: HttpRetryDelayOpt = CubeSpec.http_retry_delay,
) -> None:
    """Find the Landsat scenes over a glacier (no pixels read).

    Searches the STAC API and prints what was found, and why other scenes were not kept.
    """
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
        retries=http_retries,
        backoff=http_retry_delay,
        timeout=http_timeout,
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
    guide_band: Annotated[
        str, typer.Option(metavar="|".join(GUIDE_BANDS), help="Band the guides (ECC and flow) are made of; "
                          "grey: 0.114 green + 0.886 swir16, the guide before this option.")
    ] = PreprocessSpec.guide_band,
    guide_filter: Annotated[
        str, typer.Option(metavar="|".join(GUIDE_FILTERS), help="High-pass, or Wallis (high-pass / local std).")
    ] = PreprocessSpec.guide_filter,
    guides: Annotated[
        bool, typer.Option("--guides/--no-guides", help="Store the aligned per-scene images flow can track.")
    ] = CubeSpec.guides,
    strict: Annotated[
        bool, typer.Option("--strict", help="Fail on a missing, unreadable or mis-declared asset instead of "
                           "dropping its scene (the reason is in the scenes table).")
    ] = False,
    http_timeout: HttpTimeoutOpt = CubeSpec.http_timeout,
    http_retries: HttpRetriesOpt = CubeSpec.http_retries,
    http_retry_delay: HttpRetryDelayOpt = CubeSpec.http_retry_delay,
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
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Search and print the scenes found, the cube's shape and the bytes "
                           "it would read and write; start no cluster, read no pixel, write nothing.")
    ] = False,
    update: Annotated[
        str | None, typer.Option("--update", metavar="STORE", help="Bring STORE up to date to --end (default today): "
                                 "search, align (to its own reference) and write only what is new; the site and "
                                 "every other flag come from the store (--catalog overrides its catalog).")
    ] = None,
    reference_from: Annotated[
        str | None, typer.Option("--reference-from", metavar="STORE", help="Align the scenes to the ECC reference "
                                 "of this cube store (the same grid) instead of estimating one.")
    ] = None,
    storage_option: StorageOpt = None,
    where: Where = DEFAULT_WHERE,
) -> int:
    """Build the preprocessed NDSI cube store (Zarr) with Dask.

    Searches Landsat scenes, masks clouds, fills gaps, aligns them and averages them per period.

    Several sites (--glacier repeated, --sites FILE) are built in one run on one cluster, their graphs
    submitted together; one store per site, one summary table; a failed site is reported and the others go
    on (exit status 1 if any failed).
    """
    from glacierflow.preprocess.build import build_cube_store, default_store_name, plan_build  # deferred: cv2

    if update is not None:
        given = {"--glacier": glacier, "--sites": sites, "--bbox": bbox, "--start": start, "--out": out_store,
                 "--out-dir": out_dir, "--reference-from": reference_from, "--dry-run": dry_run or None,
                 "--overwrite": overwrite or None}
        return _update(update, end, catalog, [k for k, v in given.items() if v], storage_options(storage_option),
                       where)
    spec_for = cube_spec_maker(
        start=start, end=end, catalog=catalog, collection=collection, platform=platform, max_cloud=max_cloud,
        guides=guides, http_timeout=http_timeout, http_retries=http_retries, http_retry_delay=http_retry_delay,
        category=category, force=force,
    )
    pre = PreprocessSpec(
        max_missing=max_missing, mask_clouds=cloud_mask, ndsi_threshold=ndsi_threshold, motion=motion, period=period,
        min_ecc=min_ecc, guide_band=guide_band, guide_filter=guide_filter,
    )
    if sites is not None or len(glacier or []) > 1:
        if dry_run or reference_from:
            raise GlacierflowError(f"{'--dry-run' if dry_run else '--reference-from'} takes one site; run it per "
                                   "--glacier or --bbox")
        return _build_sites(glacier or [], sites, bbox, epsg, spec_for, pre, out_store, out_dir, overwrite,
                            storage_options(storage_option), where, strict)
    site = resolve_site(glacier[0] if glacier else None, bbox, epsg)
    spec = spec_for(site)
    if out_store and out_dir:
        raise GlacierflowError("--out and --out-dir were both given; pass one of them")
    name = default_store_name(site.name, period)
    target = out_store.replace("{name}", site.name) if out_store else (
        f"{out_dir.rstrip('/')}/{name}" if out_dir else name)
    check_writable_output(target, storage_option)  # before hours of work, not after
    # the search and every input check before a cluster starts: a dead catalog is one line in seconds
    plan = plan_build(spec, pre, target, overwrite=overwrite, storage_options=storage_options(storage_option),
                      strict=strict)
    if dry_run:
        for line in plan.lines():
            out.print(line)
        return 0
    with where.client() as client:
        summary = build_cube_store(
            spec,
            pre,
            target,
            overwrite=overwrite,
            storage_options=storage_options(storage_option),
            compute=runner(client, progress_bar=progress_enabled()),
            strict=strict,
            plan=plan,
            reference_from=reference_from,
        )
    _print_summary(summary)
    return 0


def _update(url: str, end: str | None, catalog: str | None, extra: list[str], storage: dict[str, Any] | None,
            where: Where) -> int:
    """``build-cube --update STORE``: one update, its one-screen summary (one line when nothing is new)."""
    from glacierflow.preprocess.update import update_cube  # deferred: cv2

    if extra:
        raise GlacierflowError(f"--update reads the site and the build flags from the store; drop {', '.join(extra)} "
                               "(only --end, --catalog, --storage-option and the cluster flags apply)")
    with where.client() as client:
        summary = update_cube(url, end=end, catalog=catalog, storage_options=storage,
                              compute=runner(client, progress_bar=progress_enabled()))
    for line in summary.lines():
        out.print(line)
    return 0


def cube_spec_maker(*, start: str | None, end: str | None, catalog: str | None, collection: str,
                    platform: list[str] | None, max_cloud: float, guides: bool, http_timeout: float,
                    http_retries: int, http_retry_delay: float, category: list[str] | None,
                    force: bool) -> Callable[[Site], CubeSpec]:
    """The ``build-cube`` flags as a function from a site to its checked :class:`~glacierflow.specs.CubeSpec`.

    Parameters
    ----------
    start, end
        ``--start``/``--end`` (default: the site's dates).
    catalog, collection, platform, max_cloud
        The search flags (default catalog: Planetary Computer; platforms: ``CubeSpec.platforms``).
    guides, http_timeout, http_retries, http_retry_delay
        The store's and the reads' flags.
    category
        ``--category`` values (default: the spec's).
    force
        ``--force``: build a bbox larger than one Landsat scene.

    Returns
    -------
    Callable
        ``spec_for(site)``; it raises :class:`~glacierflow.errors.SpecError` for a bad flag and refuses a bbox
        too large (unless ``force``) before any search.
    """
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

    return spec_for


def _print_summary(s: BuildSummary) -> None:
    """build-cube's report of one site: scenes found, stacked and used, periods, alignment, the store written."""
    for line in s.lines():
        out.print(line)


def _build_sites(glaciers: list[str], sites_file: Path | None, bbox: Any, epsg: int | None,
                 spec_for: Callable[[Any], CubeSpec], pre: PreprocessSpec, out_store: str | None,
                 out_dir: str | None, overwrite: bool, storage: dict[str, Any] | None, where: Where,
                 strict: bool = False) -> int:
    """build-cube over several sites on one cluster (glacierflow.geo.sites); the summary table; 1 if any failed."""
    from glacierflow.preprocess.build import build_cube_store, default_store_name, plan_build  # deferred: cv2

    if bbox:
        raise GlacierflowError("--bbox gives one site; for several, list NAME W S E N lines in --sites FILE")
    chosen = resolve_sites(glaciers, sites_file, epsg)
    stores = site_stores([s.name for s in chosen], out_store, out_dir, lambda n: default_store_name(n, pre.period))
    specs = {s.name: spec_for(s) for s in chosen}  # every spec checked before a cluster starts
    for url in stores.values():  # and every output: one line before hours of work, not a failed site after
        check_writable(url, storage)
    # every site's search and checks before the cluster starts; a site that fails them is reported, not built
    planned = {r.name: r for r in build_sites({
        name: (stores[name], functools.partial(plan_build, spec, pre, overwrite=overwrite, storage_options=storage,
                                               strict=strict)) for name, spec in specs.items()})}
    ready = {name: spec for name, spec in specs.items() if planned[name].ok}
    built: dict[str, Any] = {}
    if ready:
        with where.client() as client:
            run = runner(client, progress_bar=False)  # several sites at once: no interleaved bars
            built = {r.name: r for r in build_sites({
                name: (stores[name], functools.partial(build_cube_store, spec, pre, overwrite=overwrite,
                                                       storage_options=storage, compute=run, strict=strict,
                                                       plan=planned[name].summary))
                for name, spec in ready.items()
            })}
    results = [built.get(name, planned[name]) for name in specs]
    for line in summary_table(results):
        out.print(line)
    return 1 if any(not r.ok for r in results) else 0
