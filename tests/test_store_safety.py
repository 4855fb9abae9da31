"""What may never be lost: --overwrite replaces only glacierflow stores and never an input of the run; a run
stopped at any step of the safe replace leaves the previous or the new store complete (never neither), and the
next run recovers it; one writer per store; a store of another layout version is one line.

Crashes are injected deterministically: :func:`store.replace_store` calls ``step(name)`` after each step, and an
exception raised there stops it at that point with no cleanup, as a SIGKILL would (the process-level kills are in
test_faults_interrupt.py and test_store_azure.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from glacierflow import cli
from glacierflow.errors import GlacierflowError
from glacierflow.storage import store
from glacierflow.testing import tiny_store_dataset, write_synthetic_cube

from .azurite import CONTAINER, start_azurite


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Azurite, the real Azure Blob emulator (tests/azurite.py)."""
    pytest.importorskip("adlfs")
    yield from start_azurite(tmp_path_factory.mktemp("azurite"))


class Killed(BaseException):
    """Raised at a step of the replace: the run stops there."""


def _crash_at(name: str):
    def step(done: str) -> None:
        if done == name:
            raise Killed(name)
    return step


def _tree(url: str, so: dict | None = None) -> xr.DataTree:
    """The whole store, every group, variable, coordinate and attribute, loaded."""
    return xr.open_datatree(url, engine="zarr", consolidated=False, decode_coords="all", storage_options=so).load()


def _two_groups(value: float) -> xr.DataTree:
    scenes = xr.Dataset({"used": ("scene", np.array([True, value > 1.5])), "shift_x": ("scene", [value, -value])})
    return xr.DataTree.from_dict({"/": tiny_store_dataset(value).assign_attrs(label=f"v{value}"), "scenes": scenes})


def _leftovers(url: str, so: dict | None = None) -> list[str]:
    """Hidden siblings of ``url`` (``.<name>.old-*``, ``.partial-*``, ``.lock``)."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(url, **(so or {}))
    parent, _, name = path.rstrip("/").rpartition("/")
    return [e for e in fs.ls(parent, detail=False) if e.rstrip("/").rpartition("/")[2].startswith(f".{name}.")]


# -- --overwrite replaces only glacierflow stores ------------------------------------------------------------

def _user_files(target: Path) -> None:
    target.mkdir()
    (target / "thesis.tex").write_text("years of work")
    (target / "data.csv").write_text("1,2,3")


def _a_file(target: Path) -> None:
    target.write_text("not a directory")


def _foreign_zarr(target: Path) -> None:
    tiny_store_dataset(7.0).to_zarr(str(target), consolidated=False)  # Zarr, but no glacierflow_complete


@pytest.mark.parametrize("holds, words", [(_user_files, "2 entries (data.csv, thesis.tex)"), (_a_file, "a file"),
                                          (_foreign_zarr, "a Zarr store not written by glacierflow")])
def test_overwrite_never_replaces_what_glacierflow_did_not_write(tmp_path: Path, holds, words: str) -> None:
    target = tmp_path / "out.zarr"
    holds(target)
    before = sorted((p.relative_to(tmp_path), p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file())
    with pytest.raises(GlacierflowError) as err:
        store.write(tiny_store_dataset(1.0), str(target), overwrite=True)
    msg = str(err.value)
    assert msg.startswith(f"refusing to replace {target}: it holds {words}") and "\n" not in msg, msg
    after = sorted((p.relative_to(tmp_path), p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file())
    assert after == before, "nothing touched, nothing left behind"


def test_overwrite_refuses_a_non_store_prefix_on_an_object_store() -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe({"/gf-prefix/out.zarr/report.pdf": b"%PDF", "/gf-prefix/out.zarr/notes/a.txt": b"a"})
    with pytest.raises(GlacierflowError, match=r"refusing to replace memory://gf-prefix/out.zarr: it holds 2 entries"):
        store.write(tiny_store_dataset(1.0), "memory://gf-prefix/out.zarr", overwrite=True)
    assert sorted(fs.find("/gf-prefix")) == ["/gf-prefix/out.zarr/notes/a.txt", "/gf-prefix/out.zarr/report.pdf"]


def test_overwrite_refuses_a_non_store_prefix_on_azurite(azurite: dict) -> None:
    so, fs = azurite["options"], azurite["fs"]
    prefix = f"{CONTAINER}/user-{uuid.uuid4().hex[:6]}.zarr"
    fs.pipe({f"{prefix}/report.pdf": b"%PDF", f"{prefix}/zarr.json": b'{"attributes": {"owner": "me"}}'})
    with pytest.raises(GlacierflowError, match=r"refusing to replace az://.*: it holds a Zarr store not written by"):
        store.write(tiny_store_dataset(1.0), f"az://{prefix}", overwrite=True, storage_options=so)
    assert sorted(p.rsplit("/", 1)[1] for p in fs.find(prefix)) == ["report.pdf", "zarr.json"]
    assert fs.cat_file(f"{prefix}/report.pdf") == b"%PDF"


def test_overwrite_replaces_an_incomplete_glacierflow_store(tmp_path: Path) -> None:
    target = tmp_path / "s.zarr"
    ds = tiny_store_dataset(1.0)
    ds.attrs[store.COMPLETE] = False  # what a write killed before its marker leaves at a target (object stores)
    ds.to_zarr(str(target), consolidated=False)
    with pytest.raises(GlacierflowError, match=r"already exists \(incomplete\); pass --overwrite"):
        store.write(tiny_store_dataset(2.0), str(target))
    store.write(tiny_store_dataset(2.0), str(target), overwrite=True)
    assert float(store.open_store(str(target))["ndsi"].mean()) == 2.0


# -- output == input, each stage -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cube(tmp_path_factory: pytest.TempPathFactory) -> str:
    d = tmp_path_factory.mktemp("inputs")
    return write_synthetic_cube(str(d / "cube.zarr"), n_periods=8, size=(20, 30), period="3MS")


def _argv(stage: str, cube: str, out: str) -> list[str]:
    run = str(Path(cube).parent / "run")
    return {"flow": ["flow", cube, "--out", out, "--overwrite"],
            "predict": ["predict", run, "--cube", cube, "--out", out, "--overwrite"],
            "train": ["train", cube, "--out", out, "--model", "lstm"],
            "finetune": ["finetune", run, "--cube", cube, "--out", out]}[stage]


@pytest.mark.parametrize("stage", ["flow", "predict", "train", "finetune"])
@pytest.mark.parametrize("where", ["the cube", "its directory"])
def test_an_output_that_is_or_holds_an_input_is_refused(cube: str, stage: str, where: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = cube if where == "the cube" else str(Path(cube).parent)
    before = _tree(cube)
    assert cli.main(_argv(stage, cube, out)) == 2
    err = capsys.readouterr().err.strip()
    relation = "is" if where == "the cube" else "contains"
    assert err.startswith(f"error: output {out} {relation} the input ") and "\n" not in err, err
    xr.testing.assert_identical(_tree(cube), before)


def test_an_output_inside_an_input_directory_is_allowed(tmp_path: Path) -> None:
    store.check_writable(str(tmp_path / "run" / "forecast.zarr"), inputs=(str(tmp_path / "run"),))
    with pytest.raises(GlacierflowError, match="is the input"):  # the same store through a relative path
        store.check_writable(os.path.relpath(tmp_path / "c.zarr"), inputs=(str(tmp_path / "c.zarr"),))


# -- a run stopped at each step of the replace ---------------------------------------------------------------

LOCAL_EXPECT = {"start": "old", "old-moved": "old", "new-moved": "new", "done": "new"}
REMOTE_EXPECT = {"start": "old", "old-copied": "old", "old-removed": "old", "new-body-copied": "old",
                 "new-copied": "new", "partial-removed": "new", "done": "new"}


def stop_replace_at(step: str, url: str, so: dict | None = None) -> dict[str, xr.DataTree]:
    """Write the old store at ``url``, a finished new one beside it, and replace, stopped after ``step``."""
    store.write(_two_groups(1.0), url, storage_options=so)
    head, _, name = url.rpartition("/")
    partial = f"{head}/.{name}.partial-test"
    store.write(_two_groups(2.0), partial, storage_options=so)
    trees = {"old": _tree(url, so), "new": _tree(partial, so)}
    with pytest.raises(Killed):
        store.replace_store(partial, url, so, step=_crash_at(step))
    return trees


def check_never_neither(url: str, step: str, expect: str, trees: dict[str, xr.DataTree],
                        so: dict | None = None) -> None:
    """Readable at once (old or new, whole); the next run recovers the expected one and leaves nothing."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "reading the previous store kept at ..."
        root = store.open_store(url, so).load()
    assert any(root.identical(t.to_dataset(inherit=False)) for t in trees.values()), f"{step}: neither store"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = store.recover(url, so)
    if _leftovers(url, so) == [] and line is None:
        assert step == "done", step
    else:
        assert line is not None and "\n" not in line and [str(w.message) for w in caught] == [line], (step, line)
    assert store.is_complete(url, so), step
    xr.testing.assert_identical(_tree(url, so), trees[expect])
    assert _leftovers(url, so) == [], step


@pytest.mark.parametrize("step", store.LOCAL_STEPS)
def test_local_replace_stopped_at_each_step_keeps_a_complete_store(tmp_path: Path, step: str) -> None:
    url = str(tmp_path / "s.zarr")
    trees = stop_replace_at(step, url)
    check_never_neither(url, step, LOCAL_EXPECT[step], trees)


@pytest.mark.parametrize("step", store.REMOTE_STEPS)
def test_object_store_replace_stopped_at_each_step_keeps_a_complete_store(tmp_path: Path, step: str) -> None:
    url = f"memory://gf-replace-{tmp_path.name}/s.zarr"
    trees = stop_replace_at(step, url)
    check_never_neither(url, step, REMOTE_EXPECT[step], trees)


@pytest.mark.parametrize("step", store.REMOTE_STEPS)
def test_azure_replace_stopped_at_each_step_keeps_a_complete_store(azurite: dict, step: str) -> None:
    url, so = f"az://{CONTAINER}/replace-{uuid.uuid4().hex[:6]}.zarr", azurite["options"]
    trees = stop_replace_at(step, url, so)
    check_never_neither(url, step, REMOTE_EXPECT[step], trees, so)


def test_the_next_write_recovers_first_and_says_so(tmp_path: Path) -> None:
    url = str(tmp_path / "s.zarr")
    stop_replace_at("old-moved", url)  # the window: no store at the target at all
    assert not (tmp_path / "s.zarr").exists()
    with pytest.warns(UserWarning, match=r"a write was killed here before; restored the previous store from .*"
                                         r"\.s\.zarr\.old-.*removed 1 leftover copy"):
        with pytest.raises(GlacierflowError, match="already exists"):  # recovered, then refused without --overwrite
            store.write(tiny_store_dataset(3.0), url)
    assert float(store.open_store(url)["ndsi"].mean()) == 1.0 and _leftovers(url) == []


# -- one writer per store -----------------------------------------------------------------------------------

_SLOW_WRITER = """
import sys, time, dask
sys.path.insert(0, {repo!r})
from pathlib import Path
from glacierflow.storage import store
from glacierflow.testing import tiny_store_dataset

url, release = sys.argv[1], Path(sys.argv[2])
def compute(objs):
    deadline = time.monotonic() + 120
    while not release.exists() and time.monotonic() < deadline:  # wait for the test's go, with a timeout
        time.sleep(0.01)
    return dask.compute(*objs)
store.write(tiny_store_dataset(4.0), url, overwrite=True, compute=compute)
"""


def _wait_for(event, what: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not event():
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{what} never happened: {proc.communicate()}")
        time.sleep(0.01)


def test_a_second_writer_of_the_same_store_gets_one_line(tmp_path: Path) -> None:
    url = str(tmp_path / "s.zarr")
    store.write(tiny_store_dataset(1.0), url)
    script, release = tmp_path / "writer.py", tmp_path / "go"
    script.write_text(_SLOW_WRITER.format(repo=str(Path(__file__).resolve().parents[1])))
    proc = subprocess.Popen([sys.executable, str(script), url, str(release)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: any(tmp_path.glob(".s.zarr.partial-*/zarr.json")), "the first writer's write", proc)
        with pytest.raises(GlacierflowError) as err:
            store.write(tiny_store_dataset(2.0), url, overwrite=True)
        msg = str(err.value)
        assert msg.startswith(f"store {url} is being written by another run (pid {proc.pid} on ") and "\n" not in msg
        assert "remove " in msg and ".s.zarr.lock" in msg, msg
    finally:
        release.touch()
        out, errs = proc.communicate(timeout=120)
    assert proc.returncode == 0, errs
    assert float(store.open_store(url)["ndsi"].mean()) == 4.0, "the first writer finished undisturbed"
    assert _leftovers(url) == [], "its lock released"


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path: Path) -> None:
    import json
    import socket

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = tmp_path / ".s.zarr.lock"
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": int(gone.stdout), "since": 0, "token": "x"}))
    with pytest.warns(UserWarning, match=rf"taking over the stale writer lock of pid {int(gone.stdout)}"):
        store.write(tiny_store_dataset(1.0), str(tmp_path / "s.zarr"))
    assert not lock.exists() and store.is_complete(str(tmp_path / "s.zarr"))


# -- a store of another layout version ------------------------------------------------------------------------

def test_an_older_or_newer_layout_is_one_line_naming_both_versions(tmp_path: Path) -> None:
    url = str(tmp_path / "velocity.zarr")
    ds = tiny_store_dataset(1.0).assign_attrs({"flow_spec": "{}", store.FORMAT: 1, "glacierflow_version": "0.1"})
    store.write(ds, url)
    with pytest.raises(GlacierflowError) as err:
        store.open_store(url, format=2)  # a stage that needs layout 2 of this kind of store
    msg = str(err.value)
    assert "older layout glacierflow_format=1 (written by glacierflow 0.1)" in msg and "needs layout 2" in msg
    assert msg.endswith(f"rebuild it with `glacierflow flow CUBE --out {url} --overwrite`") and "\n" not in msg
    store.write(ds.assign_attrs({store.FORMAT: 9}), url, overwrite=True)
    with pytest.raises(GlacierflowError, match=r"layout glacierflow_format=9, .* reads layout 2: upgrade glacierflow"):
        store.open_store(url, format=2)


def test_a_bumped_layout_of_one_kind_of_store_is_read_from_its_attributes(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    velocity, cube = str(tmp_path / "velocity.zarr"), str(tmp_path / "cube.zarr")
    store.write(tiny_store_dataset(1.0).assign_attrs(flow_spec="{}", cube_spec="{}"), velocity)
    store.write(tiny_store_dataset(1.0).assign_attrs(cube_spec="{}"), cube)
    written = int(store.open_store(velocity).attrs[store.FORMAT])  # today's velocity layout (2 since ITS_LIVE names)
    monkeypatch.setitem(store.FORMATS, "flow_spec", written + 1)  # a later glacierflow's velocity layout
    with pytest.raises(GlacierflowError) as err:
        store.open_store(velocity)  # any reader, no format given: the store's kind says which layout it needs
    assert f"older layout glacierflow_format={written} " in str(err.value)
    assert f"needs layout {written + 1}: rebuild it with `glacierflow flow CUBE --out {velocity}" in str(err.value)
    assert float(store.open_store(cube)["ndsi"].mean()) == 1.0  # other kinds unaffected
    store.write(tiny_store_dataset(2.0).assign_attrs(flow_spec="{}"), velocity, overwrite=True)  # rebuilt: stamped
    assert store.open_store(velocity).attrs[store.FORMAT] == written + 1


def test_a_lock_from_another_host_is_stale_only_after_a_day(tmp_path: Path) -> None:
    import json

    url, lock = str(tmp_path / "s.zarr"), tmp_path / ".s.zarr.lock"
    lock.write_text(json.dumps({"host": "other-host", "pid": 1, "since": time.time() - 3600, "token": "x"}))
    with pytest.raises(GlacierflowError, match=r"being written by another run \(pid 1 on other-host, since "):
        store.write(tiny_store_dataset(1.0), url)  # an hour old: that run may still be going
    assert lock.exists() and not (tmp_path / "s.zarr").exists()
    lock.write_text(json.dumps({"host": "other-host", "pid": 1, "since": time.time() - store.STALE_LOCK_S - 60,
                                "token": "x"}))
    with pytest.warns(UserWarning, match="taking over the stale writer lock of pid 1 on other-host"):
        store.write(tiny_store_dataset(1.0), url)
    assert not lock.exists() and store.is_complete(url)
