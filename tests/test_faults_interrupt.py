"""Interruptions, for real: ``python -m glacierflow`` killed (SIGINT, SIGKILL) mid-write, train killed
mid-epoch, a disk that fills up. What must hold: the previous store or checkpoint is untouched and
readable (the whole store: every group, variable, coordinate and attribute), nothing half-written looks
complete, and running again gives what an uninterrupted run gives.

No race with the machine's speed: the killed writer runs the real CLI with one extra task in its write's
computation (:data:`HELD`) that touches a marker file and then waits for the signal (with a timeout), so the
signal always lands mid-computation, the partial store in place, however fast the rest of the work is; train
is held likewise right after logging its first step of epoch 2 (:data:`HELD_TRAIN`).
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
import torch
import xarray as xr

from glacierflow import cli
from glacierflow.errors import GlacierflowError
from glacierflow.preprocess.build import build_cube_store
from glacierflow.specs import CubeSpec, FlowSpec, PredictSpec, PreprocessSpec
from glacierflow.storage import store
from glacierflow.testing import assert_stores_identical, open_tree, write_synthetic_cube

from .test_faults import END, START, reference  # noqa: F401 - the undisturbed tiny-twin build (fixture)

# SIGTERM (what a scheduler or `kill` sends) behaves as SIGINT: exit 130, "interrupted", the partial store removed
KILLS = {"SIGINT": (signal.SIGINT, 130), "SIGTERM": (signal.SIGTERM, 130), "SIGKILL": (signal.SIGKILL, -signal.SIGKILL)}


#: ``python -c HELD MARKER ARGV...``: the CLI, its store write computing one more task that touches MARKER and
#: waits until the partial store is gone (the signal handled) or 120 s, so the signal lands mid-computation.
HELD = """
import sys, time
from pathlib import Path
import dask
from glacierflow.storage import store
from glacierflow.cli.main import main

marker, original = Path(sys.argv[1]), store.write

def held(data, url, *args, compute=None, **kwargs):
    target = Path(url)

    def wait():  # until the signal's handling has removed the partial store (or 120 s)
        marker.touch()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and any(target.parent.glob(f".{target.name}.partial-*")):
            time.sleep(0.01)

    def run(objs):
        return (compute or (lambda o: dask.compute(*o)))([*objs, dask.delayed(wait, pure=False)()])
    return original(data, url, *args, compute=run, **kwargs)

store.write = held
sys.exit(main(sys.argv[2:]))
"""


def _start(cmd: list[str]) -> subprocess.Popen:
    # SIGINT as a terminal delivers it: the default disposition, whatever this process (a test run that
    # started Dask clusters, which may leave SIGINT ignored) would hand down
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _signal_when(proc: subprocess.Popen, ready: Any, sig: signal.Signals) -> tuple[int, str]:
    deadline = time.monotonic() + 300
    while proc.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.005)
    if proc.poll() is None:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _interrupt_write(argv: list[str], sig: signal.Signals, tmp: Path) -> tuple[int, str]:
    """Run the CLI on ``argv``, send ``sig`` mid-computation of its store write (:data:`HELD`); (status, stderr)."""
    marker = tmp / f"writing-{time.monotonic_ns()}"
    proc = _start([sys.executable, "-c", HELD, str(marker), *argv])
    code, err = _signal_when(proc, marker.exists, sig)
    assert marker.exists(), f"{argv[0]} ended before its write computed: {code} {err[-2000:]}"
    return code, err


#: ``python -c HELD_TRAIN MARKER ARGV...``: train, held right after it logs the first training step of epoch 2
#: (the row is in loss.csv, epoch 1's checkpoints are written) until the test's signal lands (120 s at most).
HELD_TRAIN = """
import sys, time
from pathlib import Path
from glacierflow.learn import train
from glacierflow.cli.main import main

marker, original = Path(sys.argv[1]), train.LossLog.write

def held(self, step, epoch, tr, val, lr):
    original(self, step, epoch, tr, val, lr)
    if epoch == 2 and tr is not None and not marker.exists():
        marker.touch()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.01)

train.LossLog.write = held
sys.exit(main(sys.argv[2:]))
"""


def _interrupt_train(argv: list[str], sig: signal.Signals, tmp: Path) -> tuple[int, str]:
    """Run ``train`` (:data:`HELD_TRAIN`), send ``sig`` mid-epoch 2; (exit status, stderr)."""
    marker = tmp / f"epoch-2-{time.monotonic_ns()}"
    code, err = _signal_when(_start([sys.executable, "-c", HELD_TRAIN, str(marker), *argv]), marker.exists, sig)
    assert marker.exists(), f"train ended before epoch 2: {code} {err[-2000:]}"
    return code, err


def _check_interrupted(code: int, err: str, kill: str, target: Path, before: Any) -> None:
    sig, expect = KILLS[kill]
    assert code == expect, (code, err)
    if kill in ("SIGINT", "SIGTERM"):
        # the last line, no traceback (flow may print a warning of xarray's time encoding before it)
        assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err, err
        assert not list(target.parent.glob(f".{target.name}.partial-*")), "the partial store is removed"
    assert store.is_complete(str(target)), "the previous store is still complete"
    assert_stores_identical(str(target), before, ignore_attrs=())  # ... and untouched, every group and attr


# -- build-cube, flow, predict killed mid-write ------------------------------------------------------------

@pytest.mark.parametrize("kill", list(KILLS))
def test_build_cube_interrupted_mid_write_keeps_the_previous_store(served_twin: dict, tmp_path: Path,
                                                                   reference: dict[str, Any],  # noqa: F811
                                                                   kill: str) -> None:
    target = tmp_path / "cube.zarr"
    shutil.copytree(reference["out"], target)  # the previous store: a complete build of the same spec
    before = open_tree(str(target))
    m = served_twin["meta"]
    argv = ["build-cube", "--bbox", *map(str, m["bbox"]), "--epsg", str(m["epsg"]), "--start", START, "--end", END,
            "--catalog", served_twin["stac_url"], "--out", str(target), "--overwrite", "--cluster", "threads"]
    code, err = _interrupt_write(argv, KILLS[kill][0], tmp_path)
    _check_interrupted(code, err, kill, target, before)
    # running again completes, and gives the uninterrupted result (a SIGKILL's hidden partial is ignored)
    spec = CubeSpec(name="t", bbox=tuple(m["bbox"]), epsg=m["epsg"], start=START, end=END,
                    catalog=served_twin["stac_url"])
    with dask.config.set(scheduler="threads"):
        build_cube_store(spec, PreprocessSpec(), str(target), overwrite=True)
    assert_stores_identical(str(target), before)  # every group: cube, scenes, guides


@pytest.mark.parametrize("kill", ["SIGINT", "SIGTERM"])
def test_flow_interrupted_mid_write_keeps_the_previous_store(reference: dict[str, Any],  # noqa: F811
                                                            tmp_path: Path, kill: str) -> None:
    from glacierflow.motion.velocity import run_flow

    target = tmp_path / "velocity.zarr"
    spec = FlowSpec(pairs="consecutive")  # the 6-month cube has no annual pairs
    run_flow(reference["out"], str(target), spec)
    before = open_tree(str(target))
    argv = ["flow", reference["out"], "--out", str(target), "--pairs", "consecutive", "--overwrite", "--cluster",
            "threads"]
    code, err = _interrupt_write(argv, KILLS[kill][0], tmp_path)
    _check_interrupted(code, err, kill, target, before)
    run_flow(reference["out"], str(target), spec, overwrite=True)
    assert_stores_identical(str(target), before)


def _train_argv(cube: str, run: Path, epochs: int = 2) -> list[str]:
    return ["train", cube, "--out", str(run), "--model", "lstm", "--option", "hidden_size=8", "--epochs",
            str(epochs), "--device", "cpu", "--batch-size", "2", "--seed", "1", "--steps-per-epoch", "4",
            "--val-samples", "2", "--cluster", "sync", "--test-starts", "1", "--val-starts", "1"]


@pytest.fixture(scope="module")
def learning(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A synthetic monthly cube (24 periods, 60 x 100 px) and a one-epoch LSTM run on it (CLI, in-process)."""
    d = tmp_path_factory.mktemp("learn")
    cube = write_synthetic_cube(str(d / "cube.zarr"), n_periods=24, size=(60, 100), period="1MS",
                                drift=(0.5, 0.2), noise=0.02)
    assert cli.main(_train_argv(cube, d / "run", epochs=1)) == 0
    return {"cube": cube, "run": d / "run"}


@pytest.mark.parametrize("kill", ["SIGKILL", "SIGTERM"])
def test_predict_interrupted_mid_write_keeps_the_previous_store(learning: dict[str, Path], tmp_path: Path,
                                                               kill: str) -> None:
    from glacierflow.forecast.predict import load_forecaster, predict_cube

    run = learning["run"]
    target = tmp_path / "forecast.zarr"
    spec = PredictSpec(device="cpu", batch_size=4)
    predict_cube(load_forecaster(run), str(learning["cube"]), str(target), spec)
    before = open_tree(str(target))
    argv = ["predict", str(run), "--cube", str(learning["cube"]), "--out", str(target), "--overwrite",
            "--device", "cpu", "--batch-size", "4", "--cluster", "sync"]
    code, err = _interrupt_write(argv, KILLS[kill][0], tmp_path)
    _check_interrupted(code, err, kill, target, before)
    predict_cube(load_forecaster(run), str(learning["cube"]), str(target), spec, overwrite=True)
    assert_stores_identical(str(target), before)


# -- train killed mid-epoch, --resume ----------------------------------------------------------------------

def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "loss.csv").open() as f:
        return list(csv.DictReader(f))


def test_train_killed_mid_epoch_resumes_from_last_pt(learning: dict[str, Path], tmp_path: Path) -> None:
    full, part = tmp_path / "full", tmp_path / "part"
    assert cli.main(_train_argv(str(learning["cube"]), full)) == 0

    code, _ = _interrupt_train(_train_argv(str(learning["cube"]), part), signal.SIGKILL, tmp_path)
    assert code == -signal.SIGKILL
    rows = _rows(part)  # killed mid-epoch 2: a training row of it logged, its validation row not
    assert any(r["epoch"] == "2" and r["train_loss"] for r in rows) and not any(
        r["epoch"] == "2" and r["val_loss"] for r in rows), rows
    ck = torch.load(part / "last.pt", weights_only=True)  # whole and loadable: the end of epoch 1
    assert ck["epoch"] == 1
    assert cli.main([*_train_argv(str(learning["cube"]), part), "--resume"]) == 0
    a, b = _rows(full), _rows(part)
    assert [r["step"] for r in a] == [r["step"] for r in b]  # the killed epoch's rows were dropped, then redone
    for ra, rb in zip(a, b, strict=True):
        for k in ("train_loss", "val_loss"):
            # same process layout, same seeds: measured identical to the printed 8 digits
            assert (ra[k] == rb[k]) or float(ra[k]) == pytest.approx(float(rb[k]), rel=1e-5), (ra, rb)
    assert torch.load(part / "last.pt", weights_only=True)["epoch"] == 2
    assert not list(part.glob(".*.tmp*")), "no temporary checkpoint left"


def test_train_sigterm_is_ctrl_c(learning: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    code, err = _interrupt_train(_train_argv(str(learning["cube"]), run, epochs=3), signal.SIGTERM, tmp_path)
    assert code == 130 and err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err, (code, err)
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] >= 1  # whole and loadable
    assert not list(run.glob(".*.tmp*")), "no temporary checkpoint left"


# -- disk full ---------------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """An 8 MiB tmpfs (needs root, as in CI's container); skipped where it cannot be mounted."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root: cannot fill a disk safely here")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}): no disk to fill")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_while_writing_a_store_is_a_clear_error(small_disk: Path) -> None:
    target = small_disk / "store.zarr"
    small = xr.Dataset({"a": (("y", "x"), np.arange(100, dtype=np.float32).reshape(10, 10))})
    store.write(small, str(target))
    files = {p: p.read_bytes() for p in sorted(target.rglob("*")) if p.is_file()}
    rng = np.random.default_rng(0)  # noise does not compress: 12 MiB > the 8 MiB disk
    big = xr.Dataset({"a": (("y", "x"), rng.random((2048, 1536), dtype=np.float32))}).chunk({"y": 256})
    with pytest.raises(GlacierflowError) as err:
        store.write(big, str(target), overwrite=True)
    msg = str(err.value)
    assert "no space left" in msg and str(target) in msg and "\n" not in msg, msg
    assert sorted(p.name for p in small_disk.iterdir()) == ["store.zarr"], "no partial store left"
    assert store.is_complete(str(target))
    assert {p: p.read_bytes() for p in sorted(target.rglob("*")) if p.is_file()} == files, "byte-identical"
    np.testing.assert_array_equal(store.open_store(str(target))["a"].values, small["a"].values)


def test_disk_full_while_saving_a_checkpoint_keeps_the_last_one(learning: dict[str, Path], small_disk: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    run = small_disk / "run"
    shutil.copytree(learning["run"], run)  # a run after one epoch: best.pt + last.pt, 2 x 2.2 MB
    before = (run / "last.pt").read_bytes()
    free = shutil.disk_usage(small_disk).free
    # leave 256 KiB: room for loss.csv and run.json, not for the next 2.2 MB checkpoint
    (small_disk / "filler").write_bytes(b"\0" * max(free - (256 << 10), 0))
    capsys.readouterr()
    assert cli.main([*_train_argv(str(learning["cube"]), run, epochs=2), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot write checkpoint ") and "no space left" in err and "\n" not in err, err
    assert (run / "last.pt").read_bytes() == before, "last.pt untouched"
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1
    assert not list(run.glob(".*.tmp*")), "no half-written checkpoint left"
