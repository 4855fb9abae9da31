"""What every command shares: the typer ``app`` and its groups, the option types, storage and cluster flags.

* Choices come from the registries: ``config.PERIODS`` and ``config.MOTIONS`` are checked as choices;
  glacier names (:data:`glacierflow.geo.glaciers.GLACIERS`), ``--pairs`` (``config.PAIR_KINDS``) and
  ``--category`` (``config.CATEGORIES``) are listed from them and checked by the registry or the spec (their
  errors say more than "not one of"); the twin's sizes and backends are checked by the twin, whose modules
  are too heavy to import for ``--help``. Defaults are the specs' own (``CubeSpec.max_cloud``, ...) and
  ``cluster.DEFAULT_CLUSTER``; shared options (site and search, storage, cluster, overwrite) are defined
  once below and reused by every command.
* Specs raise :class:`~glacierflow.errors.SpecError` naming their *fields*; :func:`flag_for` turns those
  into the flags a user types (``--start 2020-01-01 must be before --end 2019-01-01``).
* Help is plain click formatting (no rich panels), readable in an 80-column terminal.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import typer
from rich.console import Console

import glacierflow
from glacierflow.compute.cluster import (
    DEFAULT_CLUSTER,
    GATEWAY_WORKERS,
    SPEC_FORMS,
    dashboard,
    get_client,
    parse_cluster_options,
    parse_workers,
)
from glacierflow.errors import GlacierflowError
from glacierflow.geo.glaciers import GLACIERS
from glacierflow.specs import DEVICES, OBJECTIVES, CubeSpec
from glacierflow.storage.cloud import remember
from glacierflow.storage.store import check_writable

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
        print(f"glacierflow {glacierflow.__version__}")
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
    """The command-line flag for a spec field (``max_cloud`` -> ``--max-cloud``).

    Parameters
    ----------
    field
        The spec's field name.
    spec
        The spec's class name, for a flag that only one spec spells differently (keys ``"Spec.field"``).

    Returns
    -------
    str
        The flag as a user types it, both halves for a boolean pair (``--guides/--no-guides``).
    """
    return FLAGS.get(f"{spec}.{field}") or FLAGS.get(field) or "--" + field.replace("_", "-")


# ------------------------------------------------------------------------------------- registry choices
# CLI choices are the registries' keys (typer shows and checks a Literal as a choice). Glacier names are
# only listed: the registry looks them up itself (case-insensitive, and its error names the way out, --bbox).
GLACIER_NAMES = "|".join(GLACIERS)
Device = Literal[DEVICES]  # type: ignore[valid-type]
Objective = Literal[OBJECTIVES]  # type: ignore[valid-type]


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
    """``--storage-option KEY=VALUE`` pairs as fsspec options (``true``/``false``/numbers parsed).

    Parameters
    ----------
    pairs
        The flag's values, as typed.

    Returns
    -------
    dict or None
        The fsspec options (their secrets remembered, to be redacted from every error line); None without any.

    Raises
    ------
    GlacierflowError
        A pair without ``=``.
    """
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


def check_writable_output(url: str, pairs: list[str] | None, inputs: tuple[str | None, ...] = ()) -> None:
    """One line, before any work, when the output ``url`` cannot be written (see :func:`store.check_writable`).

    Parameters
    ----------
    url
        The output store (path or fsspec URL).
    pairs
        The command's ``--storage-option`` values.
    inputs
        What the run reads: an output equal to one of them, inside one or holding one is refused.
    """
    check_writable(url, storage_options(pairs), inputs)


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

        Yields
        ------
        Any
            The Dask client (or the threaded scheduler's stand-in).
        """
        with sigterm_interrupts(), get_client(self.cluster, workers=self.workers,
                                              cluster_options=self.options) as client:
            link = dashboard(client)
            if link:
                out.print(f"Dask dashboard: {link}")
            yield client


DEFAULT_WHERE = Where()  # a command's `where` default; computes always passes the one its flags give


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises :class:`KeyboardInterrupt` meanwhile (in the main thread; elsewhere signals are left alone).

    Yields
    ------
    None
    """
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

    Parameters
    ----------
    command
        The command function, with a keyword parameter ``where``.

    Returns
    -------
    Callable
        The wrapper typer registers: the command's own parameters and the three flags.
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
        where = Where(cluster, parse_workers(workers), parse_cluster_options(cluster_option))
        return command(*args, where=where, **kwargs)

    del wrapper.__wrapped__  # typer reads the signature below, not the command's
    wrapper.__signature__ = sig.replace(parameters=keep + added)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in keep + added}
    return wrapper
