"""One progress style for every stage: rich bars on a terminal and in Jupyter, nothing under ``--quiet`` or in logs.

Every progress display of glacierflow goes through here (Dask computations in :mod:`glacierflow.compute.runner`,
training epochs, twin rendering), so they look alike, all obey ``--quiet`` and all draw in a notebook (rich
renders there through ipywidgets). One :func:`bars` display holds any number of rows, which is how a run over
several sites shows one bar per site::

    from glacierflow.progress import bars

    with bars() as progress:                                   # silent when not wanted (see enabled())
        rows = {site: progress.add_task(site, total=len(work[site])) for site in work}
        ...
        progress.advance(rows[site])                           # from any thread

A single bar: ``with bar("rendering", total=n) as advance: ... advance()``.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

_STATE = {"quiet": False}


def set_quiet(quiet: bool) -> None:
    """Silence (or allow) every progress display of this process: the command line's ``--quiet``.

    Parameters
    ----------
    quiet
        True: :func:`enabled` is False whatever a caller asks.
    """
    _STATE["quiet"] = bool(quiet)


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (where rich draws through ipywidgets)."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()  # type: ignore[attr-defined]
    except AttributeError:
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def enabled(requested: bool = True) -> bool:
    """Whether to draw progress: asked for, not ``--quiet``, and someone watching (a terminal or a notebook).

    Parameters
    ----------
    requested
        The caller's own switch (a function's ``progress=`` argument).

    Returns
    -------
    bool
        False in logs, pipes and CI (a redirected stderr), so they keep only the results; in a notebook, True
        where ipywidgets is installed (``pip install ipywidgets``).
    """
    if not requested or _STATE["quiet"]:
        return False
    if in_notebook():  # rich draws there through ipywidgets; without them it would only warn, at every refresh
        return importlib.util.find_spec("ipywidgets") is not None
    return sys.stderr.isatty()


def default_columns() -> tuple[ProgressColumn, ...]:
    """Description, bar, done/total, percentage, elapsed and remaining time."""
    return (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
            TimeElapsedColumn(), TimeRemainingColumn())


def bars(show: bool | None = None, *columns: ProgressColumn | str, transient: bool = True) -> Progress:
    """A rich progress display on stderr (a context manager); one row per ``add_task``.

    Parameters
    ----------
    show
        None: :func:`enabled`; False: a display that draws nothing (same API, so callers need no branch); True:
        :func:`enabled` still decides (``--quiet``, no terminal).
    *columns
        rich columns (default :func:`default_columns`).
    transient
        Remove the bars when done (the results stay on stdout).

    Returns
    -------
    rich.progress.Progress
        ``add_task``, ``advance``, ``update`` are thread-safe; ``.console.print`` prints above the bars.
    """
    draw = enabled(True if show is None else show)
    return Progress(*(columns or default_columns()), console=Console(stderr=True), transient=transient,
                    disable=not draw)


@contextmanager
def bar(description: str, total: float | None = None, show: bool | None = None) -> Iterator[Callable[..., None]]:
    """One progress bar; yields ``advance(n=1)``.

    Parameters
    ----------
    description
        What advances (``"rendering 42 acquisitions"``).
    total
        Steps in all (None: unknown, a pulsing bar).
    show
        As :func:`bars`.

    Yields
    ------
    Callable
        ``advance(n=1)``.
    """
    with bars(show) as progress:
        task = progress.add_task(description, total=total)

        def advance(n: float = 1, **fields: Any) -> None:
            progress.update(task, advance=n, **fields)

        yield advance
