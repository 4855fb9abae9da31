"""Many glaciers in one ``build-cube`` run: the sites, their stores, their graphs on one cluster, one summary.

Sites come from repeated ``--glacier NAME`` flags and/or a ``--sites FILE`` (:func:`read_sites`). Each site
is :func:`glacierflow.preprocess.build.build_cube_store` in a thread of its own, all on the same Dask client, so every
site's graphs are on the cluster together (the cluster interleaves their tasks; no site waits for another to
finish). A site that fails (no scenes, an unreachable catalog, a bad bbox) is reported in the summary and the
others carry on.

Sites file format (plain text, one site per line; ``#`` starts a comment, blank lines are skipped; fields are
separated by spaces or commas)::

    parvati                                   # a glacier of the registry (glacierflow.geo.glaciers.GLACIERS)
    aletsch
    my-icefield  7.80 46.30 8.00 46.45        # NAME W S E N: a bbox in degrees, UTM zone from its centre
    south-col    86.90 27.95 87.00 28.02 32645   # NAME W S E N EPSG: with an explicit output EPSG

NAME is also the ``{name}`` of the store path: letters, digits, ``_ - .``; each name once.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from glacierflow.errors import GlacierflowError, first_line
from glacierflow.geo.glaciers import Site, get_site, site_from_bbox

#: at most this many sites' graphs are in flight at once (each holds its graph and search results)
MAX_SITES_IN_FLIGHT = 16
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _site_line(fields: list[str], where: str) -> Site:
    name = fields[0]
    if not _NAME.match(name) or ".." in name:
        raise GlacierflowError(f"{where}: bad site name {name!r}; use letters, digits, '_', '-', '.'")
    if len(fields) == 1:
        return get_site(name)
    if len(fields) not in (5, 6):
        raise GlacierflowError(f"{where}: expected NAME, or NAME W S E N [EPSG]; got {len(fields)} fields")
    try:
        bbox = tuple(float(v) for v in fields[1:5])
        epsg = int(fields[5]) if len(fields) == 6 else None
    except ValueError:
        raise GlacierflowError(f"{where}: W S E N must be numbers and EPSG an integer: {' '.join(fields)}") from None
    return site_from_bbox(bbox, epsg, name=name)  # type: ignore[arg-type]


def read_sites(path: str | Path) -> list[Site]:
    """The sites of a sites file (format in the module notes)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise GlacierflowError(f"cannot read --sites {str(path)!r}: {err.strerror or err}") from None
    sites = []
    for n, line in enumerate(text.splitlines(), 1):
        fields = [f for f in re.split(r"[\s,]+", line.split("#", 1)[0].strip()) if f]
        if fields:
            sites.append(_site_line(fields, f"--sites {path.name} line {n}"))
    if not sites:
        raise GlacierflowError(f"--sites {str(path)!r} lists no site; one NAME or NAME W S E N [EPSG] per line")
    return sites


def resolve_sites(glaciers: Iterable[str], sites_file: str | Path | None, epsg: int | None) -> list[Site]:
    """Sites of ``--glacier`` (repeatable) and ``--sites``, in that order; ``epsg`` overrides every site's."""
    sites = [get_site(g) for g in glaciers] + (read_sites(sites_file) if sites_file else [])
    seen: set[str] = set()
    for s in sites:
        if s.name in seen:
            raise GlacierflowError(f"site {s.name!r} is given twice; each store is named after its site")
        seen.add(s.name)
    return [replace(s, epsg=int(epsg)) for s in sites] if epsg is not None else sites


def site_stores(names: Iterable[str], out: str | None, out_dir: str | None,
                default: Callable[[str], str]) -> dict[str, str]:
    """Store path of each site: ``--out`` template with ``{name}``, or ``--out-dir``/default name."""
    names = list(names)
    if out and out_dir:
        raise GlacierflowError("--out and --out-dir were both given; use --out-dir DIR or --out 'TEMPLATE{name}'")
    if out:
        if "{name}" not in out:
            raise GlacierflowError(f"--out {out!r} names one store for {len(names)} sites; put {{name}} in it, "
                                   "e.g. --out 'cubes/{name}.zarr', or use --out-dir")
        return {n: out.replace("{name}", n) for n in names}
    base = (out_dir or ".").rstrip("/")
    return {n: f"{base}/{default(n)}" for n in names}


@dataclass(frozen=True)
class SiteResult:
    """One site's outcome: its :class:`glacierflow.preprocess.build.BuildSummary`, or the one-line error."""

    name: str
    store: str
    summary: Any = None
    error: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether the site's store was written."""
        return not self.error


def _one(name: str, store: str, build: Callable[[str], Any]) -> SiteResult:
    t0 = time.perf_counter()
    try:
        summary = build(store)
    except GlacierflowError as err:
        return SiteResult(name, store, error=str(err), seconds=time.perf_counter() - t0)
    except Exception as err:  # one site's crash is reported with the others', not a lost run
        return SiteResult(name, store, error=f"{type(err).__name__}: {first_line(err)}",
                          seconds=time.perf_counter() - t0)
    return SiteResult(name, store, summary=summary, seconds=time.perf_counter() - t0)


def build_sites(jobs: dict[str, tuple[str, Callable[[str], Any]]]) -> list[SiteResult]:
    """Run ``build(store)`` of every site at once (threads on one Dask client); results in the given order.

    Parameters
    ----------
    jobs
        ``{name: (store, build)}``; ``build(store)`` builds one site's cube store and returns its summary.
    """
    if not jobs:
        return []
    pool = ThreadPoolExecutor(max_workers=min(len(jobs), MAX_SITES_IN_FLIGHT), thread_name_prefix="glacierflow-site")
    try:
        futures = {name: pool.submit(_one, name, store, build) for name, (store, build) in jobs.items()}
        return [futures[name].result() for name in jobs]
    finally:
        # Ctrl-C: return at once (the caller then closes the cluster, which ends the running builds; their
        # safe writes leave no partial store) instead of waiting for every site to finish
        pool.shutdown(wait=False, cancel_futures=True)


def summary_table(results: list[SiteResult]) -> list[str]:
    """The run's summary, one row per site (markdown table)."""
    rows = ["| site | status | scenes used / found | periods | seconds | store or error |",
            "|---|---|---|---|---|---|"]
    for r in results:
        if r.ok:
            s = r.summary
            rows.append(f"| {r.name} | ok | {s.scenes_used} / {s.scenes_found} | {s.periods} | {r.seconds:.1f} "
                        f"| {r.store} |")
        else:
            rows.append(f"| {r.name} | FAILED | | | {r.seconds:.1f} | {r.error.replace('|', '/')} |")
    failed = sum(not r.ok for r in results)
    rows.append(f"{len(results) - failed} of {len(results)} sites written" + (f", {failed} failed" if failed else ""))
    return rows
