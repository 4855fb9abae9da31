"""Running a stage's lazy results on a Dask client, with the one progress style (:mod:`glacierflow.progress`).

On a distributed client (local cluster, scheduler address, Gateway) the bar follows the scheduler's count of
finished tasks, as ``distributed.progress`` does; on the threaded or synchronous scheduler a dask callback
counts the tasks. Several runners can share one :func:`glacierflow.progress.bars` display, one row each (a run
over several sites).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from rich.progress import Progress

from glacierflow.progress import bars


def runner(client: object, progress_bar: bool | Progress = True, label: str = "computing") -> Callable[[list], list]:
    """A ``compute(list_of_dask_objects) -> results`` callable, with a progress bar when someone watches.

    Parameters
    ----------
    client
        A ``distributed.Client``, or the threaded scheduler's stand-in (anything without ``compute``/``gather``).
    progress_bar
        True: a bar of its own (drawn only where :func:`glacierflow.progress.enabled`); False: none; a rich
        ``Progress`` from :func:`glacierflow.progress.bars`: a row ``label`` on that shared display.
    label
        The row's description.

    Returns
    -------
    Callable
        ``run(objs) -> results`` (the computed values, in order).
    """
    import dask

    distributed = hasattr(client, "compute") and hasattr(client, "gather")

    def run(objs: list) -> list:
        shared = progress_bar if isinstance(progress_bar, Progress) else None
        with bars(bool(progress_bar)) if shared is None else contextlib.nullcontext(shared) as display:
            task = display.add_task(label, total=None)  # a shared display keeps the row, full when done
            if distributed:
                futures = client.compute(objs)  # type: ignore[attr-defined]
                if not display.disable:
                    _follow(client, futures, display, task)
                return client.gather(futures)  # type: ignore[attr-defined]
            counting = {} if display.disable else {"callbacks": [_counter(display, task)]}
            return list(dask.compute(*objs, **counting))

    return run


def _counter(display: Progress, task: Any) -> tuple[Any, ...]:
    """Local-scheduler callbacks advancing ``task`` as tasks finish.

    dask's documented 5-tuple ``(start, start_state, pretask, posttask, finish)``, passed per compute
    (``callbacks=``), never registered globally, so concurrent computations (several sites) each count only
    their own tasks.
    """
    def start_state(dsk: Any, state: dict[str, Any]) -> None:
        total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
        display.update(task, total=total, completed=len(state["finished"]))

    def posttask(key: Any, result: Any, dsk: Any, state: dict[str, Any], worker_id: Any) -> None:
        display.update(task, completed=len(state["finished"]))

    return (None, start_state, None, posttask, None)


def _follow(client: Any, futures: Any, display: Progress, task: Any) -> None:
    """Advance ``task`` with the scheduler's count of finished tasks until ``futures`` are done (or one failed).

    distributed's own progress bars follow the scheduler through ``ProgressBar.listen``; this one draws on the
    rich display instead of printing its own text bar. Errors are left to ``gather`` (which raises them).
    """
    from distributed.diagnostics.progressbar import TextProgressBar

    class RichBar(TextProgressBar):
        def _draw_bar(self, remaining: int = 0, all: int = 0, **kwargs: Any) -> None:  # noqa: A002 -- its name
            display.update(task, total=all, completed=all - remaining)

        def _draw_stop(self, **kwargs: Any) -> None:
            return None

    # blocks until done, drawing as the scheduler reports
    RichBar(futures, scheduler=client.scheduler.address, complete=True)
