"""The one progress style (glacierflow.progress) and the Dask runner's bars (glacierflow.compute.runner).

Real schedulers: dask's threaded one and an in-process distributed cluster. Two computations of different sizes
run at once on one shared display (a run over several sites): each row must count its own graph's tasks only.
"""

from __future__ import annotations

import io
import sys
import threading

import dask
import dask.array as da
import pytest
from rich.console import Console
from rich.progress import Progress

from glacierflow import progress
from glacierflow.cli.main import main
from glacierflow.compute.runner import runner


def _two_sites_at_once(client) -> tuple[dict, Progress]:
    sums = {"a": da.ones((400, 400), chunks=100).sum(), "b": (2 * da.ones((400, 400), chunks=200)).sum()}
    display = Progress(console=Console(file=io.StringIO(), force_terminal=True, width=100))
    results: dict = {}
    with display:
        threads = [threading.Thread(target=lambda s=s: results.__setitem__(s, runner(client, display, label=s)(
            [sums[s]]))) for s in sums]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return results, display


def _graph_tasks(x) -> int:
    (opt,) = dask.optimize(x)
    return len(dict(opt.__dask_graph__()))


def test_threaded_runner_rows_count_their_own_tasks() -> None:
    from glacierflow.compute.cluster import get_client

    with get_client("threads") as client:
        results, display = _two_sites_at_once(client)
    assert {k: float(v[0]) for k, v in results.items()} == {"a": 160000.0, "b": 320000.0}
    rows = {t.description: (t.completed, t.total) for t in display.tasks}
    # the rows hold different counts (16 vs 4 chunks): each is its own graph's, finished; no cross-talk
    assert rows["a"][0] == rows["a"][1] and rows["b"][0] == rows["b"][1] and rows["a"][1] > rows["b"][1] > 0
    assert rows["a"][1] >= _graph_tasks(da.ones((400, 400), chunks=100).sum()) - 1


def test_distributed_runner_follows_the_scheduler() -> None:
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as c, \
            distributed.Client(c) as client:
        results, display = _two_sites_at_once(client)
    assert {k: float(v[0]) for k, v in results.items()} == {"a": 160000.0, "b": 320000.0}
    rows = {t.description: (t.completed, t.total) for t in display.tasks}
    assert rows["a"][0] == rows["a"][1] and rows["b"][0] == rows["b"][1] and rows["a"][1] > rows["b"][1] > 0


def test_bars_draw_only_for_someone_watching_and_quiet_silences_them(monkeypatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert progress.enabled() and not progress.bars().disable
    assert progress.bars(False).disable  # the caller's own switch
    try:
        progress.set_quiet(True)
        assert not progress.enabled() and progress.bars().disable
        with progress.bar("quiet", total=3) as advance:  # same API, draws nothing
            advance()
    finally:
        progress.set_quiet(False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert not progress.enabled()  # a log or a pipe: results only


def test_quiet_flag_reaches_the_library(monkeypatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert main(["--version", "--quiet"]) == 0  # the shared options apply before any command runs
    assert not progress.enabled()  # training's and the twin's bars included: they ask the library
    assert main(["--version"]) == 0
    assert progress.enabled()


def test_bars_draw_in_a_notebook_kernel(tmp_path) -> None:
    """A real IPython kernel (nbclient): gf.write's bar arrives as an ipywidgets view, on either scheduler."""
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in [
        "import dask, distributed, glacierflow as gf\nfrom glacierflow import progress\n"
        "from glacierflow.testing import synthetic_cube\nprint(progress.in_notebook(), progress.enabled())",
        "ds = synthetic_cube(n_periods=4, size=32).chunk({'time': 1})\n"
        "with dask.config.set(scheduler='threads'):\n    gf.write(ds, 'threads.zarr')",
        "with distributed.Client(processes=False, n_workers=1, dashboard_address=None):\n"
        "    gf.write(ds, 'distributed.zarr')",
    ]]
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert nb.cells[0].outputs[0]["text"].split() == ["True", "True"]
    for cell in nb.cells[1:]:
        kinds = [k for o in cell.outputs for k in o.get("data", {})]
        assert "application/vnd.jupyter.widget-view+json" in kinds, cell.outputs  # the live bar
        # no warnings of ours; distributed's own log records (e.g. a CancelledError it logs while an
        # in-process Client shuts down on a loaded machine, seen here after the monitor tests) are its noise
        ours = [o for o in cell.outputs if o.get("name") == "stderr" and " - distributed." not in o["text"]]
        assert not ours, cell.outputs
    assert (tmp_path / "threads.zarr").is_dir() and (tmp_path / "distributed.zarr").is_dir()
