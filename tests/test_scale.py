"""Scale-out from the command line: build-cube, flow and predict on a real dask-gateway-server (127.0.0.1,
deploy/gateway-config.py, session fixture) write the same stores as local runs; several glaciers in one
build-cube run against two twins behind one STAC server."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from glacierflow.cli.main import main

pytest.importorskip("dask_gateway")
YEAR = ["--start", "2019-01-01", "--end", "2019-12-31", "--period", "6MS"]  # 2 periods: a short tiny run
# Every run computes the same float32 arithmetic on the same inputs, scene by scene (no reduction whose
# order depends on the scheduler): measured max |diff| 0 between gateway and local stores; 1e-5 is the issue's.
TOL = 1e-5


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    got = capsys.readouterr()
    return rc, got.out, got.err


def _max_diff(a: str, b: str, var: str = "ndsi", group: str | None = None) -> float:
    x, y = (xr.open_zarr(p, group=group, decode_coords="all")[var] for p in (a, b))
    assert x.shape == y.shape and np.array_equal(np.isnan(x.values), np.isnan(y.values))
    return float(np.nanmax(np.abs(x.values - y.values))) if x.size else 0.0


def _bbox(meta: dict) -> list[str]:
    return [f"{v:.6f}" for v in meta["bbox"]]


@pytest.fixture(scope="session")
def two_twins(tiny_twin, tmp_path_factory):
    """Tiny twins of parvati (UTM 43N) and aletsch (UTM 32N) behind one rustac STAC API and one asset server."""
    from glacierflow.twin.make import make_twin
    from glacierflow.twin.serve import serve_twins

    aletsch = tmp_path_factory.mktemp("twin-aletsch") / "aletsch-tiny"
    make_twin(aletsch, glacier="aletsch", size="tiny", seed=0, realism="basic")
    with serve_twins([tiny_twin, aletsch]) as served:
        yield {"url": served["stac_url"], "parvati": served["metas"][tiny_twin.name],
               "aletsch": served["metas"]["aletsch-tiny"]}


@pytest.fixture(scope="module")
def cubes(two_twins, tmp_path_factory):
    """parvati's cube built by a single-site `build-cube` on the default scheduler (threads)."""
    d = tmp_path_factory.mktemp("scale-cubes")
    argv = ["build-cube", "--bbox", *_bbox(two_twins["parvati"]), *YEAR, "--catalog", two_twins["url"]]
    assert main([*argv, "--out", str(d / "local.zarr")]) == 0
    return {"local": str(d / "local.zarr")}


def test_flow_and_predict_on_the_gateway_write_the_local_stores(cubes, gateway_server, tmp_path, capsys):
    from glacierflow.learn import train
    from glacierflow.specs import ModelSpec, PatchSpec, TrainSpec
    from glacierflow.testing import write_synthetic_cube

    gw = ["--cluster", f"gateway://{gateway_server}", "--workers", "2"]
    vel = {k: str(tmp_path / f"velocity-{k}.zarr") for k in ("threads", "gateway")}
    for kind, where in (("threads", ["--cluster", "threads"]), ("gateway", gw)):
        rc, _, err = _run(capsys, "flow", cubes["local"], "--out", vel[kind], "--pairs", "consecutive", *where)
        assert rc == 0, err
    for var in ("vx", "vy", "v", "v_error"):
        assert _max_diff(vel["threads"], vel["gateway"], var) < TOL
    # predict: a tiny trained run (as tests/test_predict.py trains it) forecast on the gateway and locally
    cube = write_synthetic_cube(str(tmp_path / "cube.zarr"), n_periods=24, size=(48, 64), drift=(0.5, 0.0))
    run = tmp_path / "run"
    train.fit(cube, run, ModelSpec(name="lstm", kwargs={"hidden_size": 16}),
              PatchSpec(size=16, stride=16, test_starts=1, val_starts=1),
              TrainSpec(epochs=1, steps_per_epoch=2, batch_size=8, device="cpu"), progress=False)
    fc = {k: str(tmp_path / f"forecast-{k}.zarr") for k in ("sync", "gateway")}
    for kind, where in (("sync", ["--cluster", "sync"]), ("gateway", gw)):
        rc, _, err = _run(capsys, "predict", str(run), "--cube", cube, "--out", fc[kind], "--device", "cpu",
                          "--last-input", "2023-01-01", *where)
        assert rc == 0, err
    assert _max_diff(fc["sync"], fc["gateway"]) < TOL
    scores = [json.loads(xr.open_zarr(fc[k]).attrs["scores"]) for k in ("sync", "gateway")]
    assert scores[0]["model"]["mse"] == pytest.approx(scores[1]["model"]["mse"], rel=1e-6)


def test_build_cube_on_the_gateway_many_sites_in_one_run(two_twins, cubes, gateway_server, tmp_path, capsys):
    """`build-cube --cluster gateway://... --workers 2` for three sites at once: parvati's store is the local
    single-site run's; aletsch's is on its own UTM zone; the site without scenes fails alone."""
    import pyproj

    sites = tmp_path / "sites.txt"
    sites.write_text(
        "# two twins served by one STAC server, and a site the catalog has nothing for\n"
        f"parvati {' '.join(_bbox(two_twins['parvati']))}\n"
        f"aletsch {','.join(_bbox(two_twins['aletsch']))}   # commas work too\n"
        "nowhere 10 10 10.05 10.05\n"
    )
    out_dir = tmp_path / "cubes"
    rc, out, err = _run(capsys, "build-cube", "--sites", str(sites), *YEAR, "--catalog", two_twins["url"],
                        "--out-dir", str(out_dir), "--cluster", f"gateway://{gateway_server}", "--workers", "2")
    assert rc == 1, err  # one site failed: reported, not fatal to the others, and the exit status says so
    link = re.search(r"^Dask dashboard: (\S+)$", out, re.M)
    assert link and link.group(1).startswith(gateway_server)  # the gateway's proxied dashboard of the cluster
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert "| ok |" in rows["parvati"] and "| ok |" in rows["aletsch"]
    assert "| FAILED |" in rows["nowhere"] and "no items" in rows["nowhere"]
    assert "2 of 3 sites written, 1 failed" in out
    assert not (out_dir / "nowhere-6ms.zarr").exists()
    parvati = str(out_dir / "parvati-6ms.zarr")
    assert _max_diff(cubes["local"], parvati) < TOL
    assert _max_diff(cubes["local"], parvati, "guide", "guides") < TOL
    local, gw = (xr.open_zarr(p, group="scenes") for p in (cubes["local"], parvati))
    assert local["used"].values.tolist() == gw["used"].values.tolist()
    for name, epsg in (("parvati", 32643), ("aletsch", 32632)):
        ds = xr.open_zarr(out_dir / f"{name}-6ms.zarr", decode_coords="all")
        assert json.loads(ds.attrs["cube_spec"])["name"] == name
        assert pyproj.CRS.from_wkt(ds["spatial_ref"].attrs["crs_wkt"]).to_epsg() == epsg
        assert int(xr.open_zarr(out_dir / f"{name}-6ms.zarr", group="scenes")["used"].sum()) > 10


def test_cluster_options_are_checked_against_the_gateway(gateway_server, tmp_path, capsys):
    argv = ["flow", str(tmp_path / "missing.zarr"), "--out", str(tmp_path / "v.zarr"),
            "--cluster", f"gateway://{gateway_server}"]
    rc, out, err = _run(capsys, *argv, "--cluster-option", "gpus=1")
    assert rc == 2 and err.count("\n") == 1
    assert "'gpus'" in err and "worker_cores, worker_memory" in err  # the gateway's own option names
    rc, _, err = _run(capsys, *argv, "--cluster-option", "worker_cores=9")  # deploy/: max 4
    assert rc == 2 and err.startswith("error: bad --cluster-option worker_cores=9") and err.count("\n") == 1
    rc, _, err = _run(capsys, *argv, "--workers", "3:1")
    assert rc == 2 and err.startswith("error: bad --workers '3:1'")


def test_sites_file_and_outputs_are_checked(tmp_path, capsys):
    sites = tmp_path / "sites.txt"
    sites.write_text("parvati\nbad/name 1 2 3 4\n")
    rc, _, err = _run(capsys, "build-cube", "--sites", str(sites), "--cluster", "sync")
    assert rc == 2 and "line 2: bad site name 'bad/name'" in err
    rc, _, err = _run(capsys, "build-cube", "--glacier", "parvati", "--glacier", "aletsch", "--out", "one.zarr",
                      "--cluster", "sync")
    assert rc == 2 and "put {name} in it" in err
    rc, _, err = _run(capsys, "build-cube", "--glacier", "parvati", "--glacier", "parvati", "--cluster", "sync")
    assert rc == 2 and "'parvati' is given twice" in err
    assert not list(Path(tmp_path).glob("*.zarr"))


def test_ctrl_c_shuts_the_gateway_cluster_down(two_twins, gateway_server, tmp_path):
    """A real `glacierflow build-cube` process, authenticated from the environment, interrupted mid-run."""
    import os
    import signal
    import subprocess
    import sys

    from dask_gateway import Gateway

    from glacierflow.compute.cluster import close_gateway

    env = dict(os.environ, DASK_GATEWAY__AUTH__TYPE="basic", DASK_GATEWAY__AUTH__KWARGS__USERNAME="glacierflow",
               DASK_GATEWAY__AUTH__KWARGS__PASSWORD="test-password", DASK_GATEWAY__ADDRESS=gateway_server)
    sites = tmp_path / "sites.txt"
    sites.write_text("".join(f"{n} {' '.join(_bbox(two_twins[n]))}\n" for n in ("parvati", "aletsch")))
    argv = [sys.executable, "-m", "glacierflow", "build-cube", "--sites", str(sites), *YEAR, "--catalog",
            two_twins["url"], "--out-dir", str(tmp_path / "cubes"), "--cluster", "gateway", "--workers", "1"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # the dashboard line comes once the cluster is up, before any work
        assert line.startswith("Dask dashboard: "), line + proc.stderr.read()
        gateway = Gateway(gateway_server)  # the same user (the fixture's Dask config): sees its clusters
        try:
            assert len(gateway.list_clusters()) == 1
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 130 and err.strip().splitlines()[-1] == "interrupted"
            assert gateway.list_clusters() == []  # shut down on the way out
        finally:
            close_gateway(gateway)
    finally:
        proc.kill() if proc.poll() is None else None
    assert not list((tmp_path / "cubes").glob("*-6ms.zarr"))  # no store under a final name: the run was stopped


def test_sites_file_format(tmp_path):
    from glacierflow.geo.glaciers import GLACIERS
    from glacierflow.geo.sites import read_sites, resolve_sites

    f = tmp_path / "sites.txt"
    f.write_text("# comment\n\naletsch\nbox 86.9,27.95,87.0,28.02\nzoned 86.9 27.95 87.0 28.02 32644  # explicit\n")
    a, box, zoned = read_sites(f)
    assert a == GLACIERS["aletsch"]
    assert box.bbox == (86.9, 27.95, 87.0, 28.02) and box.epsg == 32645  # UTM 45N from the bbox centre
    assert zoned.epsg == 32644 and zoned.name == "zoned"
    both = resolve_sites(["parvati"], f, epsg=None)
    assert [s.name for s in both] == ["parvati", "aletsch", "box", "zoned"]
    f.write_text("box 1 2 3\n")
    with pytest.raises(Exception, match="line 1: expected NAME, or NAME W S E N"):
        read_sites(f)
