"""Running a stage's lazy results on a Dask client, with a progress bar on a terminal."""

from __future__ import annotations

import sys
from collections.abc import Callable


def runner(client: object, progress_bar: bool = True) -> Callable[[list], list]:
    """A ``compute(list_of_dask_objects) -> results`` callable, with a progress bar on a terminal."""
    import dask

    progress_bar = progress_bar and sys.stderr.isatty()

    if hasattr(client, "compute") and hasattr(client, "gather"):
        from distributed import progress

        def run(objs: list) -> list:
            futures = client.compute(objs)  # type: ignore[attr-defined]
            if progress_bar:
                progress(futures)
            return client.gather(futures)  # type: ignore[attr-defined]

        return run

    def run_local(objs: list) -> list:
        from dask.diagnostics import ProgressBar

        if progress_bar:
            with ProgressBar(out=sys.stderr):
                return list(dask.compute(*objs))
        return list(dask.compute(*objs))

    return run_local
