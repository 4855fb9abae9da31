"""Every stage on az:// (Azurite, tests/azurite.py): build-cube, flow and predict write cloud stores that read back
lazily and equal the local ones; train and evaluate read cloud cubes; the account key shows up nowhere.

What is faked: only the cloud (Azurite on 127.0.0.1). The credentials go in as a user passes them, through
``--storage-option`` (the library's ``storage_options`` for train), with a recognisable fake account key.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import dask.array as da
import pytest
import xarray as xr

from glacierflow.cli.main import main
from glacierflow.storage.store import open_store, write_store
from glacierflow.testing import write_synthetic_cube

from .azurite import CONTAINER, leaks, start_azurite

pytest.importorskip("adlfs")


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    yield from start_azurite(tmp_path_factory.mktemp("azurite-stages"))


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


VOLATILE = {"created"}  # when the store was written


def _same(local_url: str, az_url: str, so: dict, group: str | None = None,
          sources: tuple[str, str] | None = None) -> xr.Dataset:
    """Open both stores lazily and check they are identical (attributes naming their URLs or ``sources`` aside)."""
    here = open_store(local_url, group=group)
    there = open_store(az_url, so, group=group)
    assert all(isinstance(v.data, da.Array) for v in there.data_vars.values())  # read back lazily
    xr.testing.assert_identical(here.drop_attrs(deep=False), there.drop_attrs(deep=False))
    assert set(here.attrs) == set(there.attrs)
    for key, value in here.attrs.items():
        if key in VOLATILE:
            continue
        mine, theirs = str(value), str(there.attrs[key])
        for a, b in [(local_url, az_url), *([sources] if sources else [])]:
            mine, theirs = (t.replace(a, "<url>").replace(b, "<url>") for t in (mine, theirs))
        assert mine == theirs, key
    return there


def test_build_cube_and_flow_on_az_equal_local(served_twin, azurite, tmp_path, capsys) -> None:
    so = ["--storage-option", f"connection_string={azurite['connection_string']}"]
    bbox = [f"{v:.6f}" for v in served_twin["meta"]["bbox"]]
    name = uuid.uuid4().hex[:6]
    cube_az, vel_az = f"az://{CONTAINER}/{name}/cube.zarr", f"az://{CONTAINER}/{name}/velocity.zarr"
    cube, vel = str(tmp_path / "cube.zarr"), str(tmp_path / "velocity.zarr")
    build = ["build-cube", "--bbox", *bbox, "--start", "2019-01-01", "--end", "2019-12-31",
             "--catalog", served_twin["stac_url"], "--period", "6MS", "--cluster", "threads"]
    printed = []
    for out_url, extra in ((cube, []), (cube_az, so)):
        rc, out, err = _run(capsys, *build, "--out", out_url, *extra)
        assert rc == 0, err
        printed += [out, err]
    for cube_url, vel_url, extra in ((cube, vel, []), (cube_az, vel_az, so)):
        rc, out, err = _run(capsys, "flow", cube_url, "--out", vel_url, "--pairs", "consecutive",
                            "--cluster", "threads", *extra)
        assert rc == 0, err
        printed += [out, err]
    opts = {"connection_string": azurite["connection_string"]}
    for group in (None, "scenes", "guides"):
        _same(cube, cube_az, opts, group)
    velocity = _same(vel, vel_az, opts, sources=(cube, cube_az))
    assert float(abs(velocity["vx"]).max()) > 0  # a velocity field, not zeros
    # an existing az:// store is refused in one line, as a local one
    rc, _, err = _run(capsys, *build, "--out", cube_az, *so)
    assert rc == 2 and err.startswith(f"error: store {cube_az} already exists") and err.count("\n") == 1
    blobs = azurite["fs"].find(f"{CONTAINER}/{name}")
    assert not leaks([], *printed, err, *(azurite["fs"].cat_file(b).decode("latin-1") for b in blobs))


def test_train_evaluate_predict_read_az_cubes(azurite, tmp_path, capsys) -> None:
    from glacierflow.learn import train
    from glacierflow.specs import ModelSpec, PatchSpec, TrainSpec

    opts = {"connection_string": azurite["connection_string"]}
    so = ["--storage-option", f"connection_string={azurite['connection_string']}"]
    name = uuid.uuid4().hex[:6]
    cube = write_synthetic_cube(str(tmp_path / "cube.zarr"), n_periods=24, size=(48, 64), drift=(0.5, 0.0))
    cube_az = write_store(open_store(cube), f"az://{CONTAINER}/{name}/cube.zarr", storage_options=opts)
    run = tmp_path / "run"
    train.fit(cube_az, run, ModelSpec(name="lstm", kwargs={"hidden_size": 16}), PatchSpec(size=16, stride=16),
              TrainSpec(epochs=1, steps_per_epoch=2, batch_size=8, device="cpu"), progress=False,
              storage_options=opts)
    rc, out, err = _run(capsys, "evaluate", str(run), "--cluster", "threads", *so)  # the run's own cube: the az:// one
    assert rc == 0, err
    assert "persistence" in out and "lstm" in out
    printed = [out, err]
    fc, fc_az = str(tmp_path / "forecast.zarr"), f"az://{CONTAINER}/{name}/forecast.zarr"
    for cube_url, out_url, extra in ((cube, fc, []), (cube_az, fc_az, so)):
        rc, out, err = _run(capsys, "predict", str(run), "--cube", cube_url, "--out", out_url, "--last-input",
                            "2023-01-01", "--device", "cpu", "--batch-size", "5", "--cluster", "sync", *extra)
        assert rc == 0, err
        printed += [out, err]
    there = _same(fc, fc_az, opts, sources=(cube, cube_az))
    assert there.attrs["source_cube"] == cube_az
    # without credentials: one line naming the store and what to set
    rc, _, err = _run(capsys, "predict", str(run), "--cube", cube_az, "--out", fc_az + "2")
    assert rc == 2 and err.count("\n") == 1 and f"az://{CONTAINER}/{name}/" in err and "--storage-option" in err
    assert "AZURE_STORAGE_CONNECTION_STRING" in err
    blobs = azurite["fs"].find(f"{CONTAINER}/{name}")
    assert not leaks([run], *printed, err, *(azurite["fs"].cat_file(b).decode("latin-1") for b in blobs))
