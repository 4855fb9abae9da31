"""Injected faults, for real: a STAC server failing mid-pagination, broken assets, a stalling asset server.

The faults come from :mod:`tests.fault_proxy`, an HTTP proxy in front of the real servers (rustac serving
STAC, the twin's asset server serving real COGs read by GDAL); nothing in glacierflow or its libraries is
patched. Settings are short (HTTP timeout 1 s, retry delay 0.1 s) so that each test takes seconds.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
import rasterio

from glacierflow import cli
from glacierflow.compute.runner import runner
from glacierflow.errors import GlacierflowError
from glacierflow.ingest.catalog import search
from glacierflow.preprocess.build import build_cube_store
from glacierflow.specs import CubeSpec, PreprocessSpec
from glacierflow.storage.store import is_complete, open_store
from glacierflow.testing import assert_stores_identical
from glacierflow.twin.make import load_twin_meta
from glacierflow.twin.serve import AssetServer, served_items
from glacierflow.twin.stac_servers import rustac_memory_server

from .fault_proxy import FaultProxy
from .test_catalog import ALL_AUS, AUS

START, END = "2019-04-01", "2019-09-30"  # 6 months of the tiny twin: ~10 scenes, a build takes ~2 s
FAST = {"http_timeout": 1.0, "http_retries": 2, "http_retry_delay": 0.1}


# -- STAC API ----------------------------------------------------------------------------------------------

def _aus(url: str, **kw: Any) -> Any:
    return search(url, bbox=AUS, start="2023-01-01", end="2023-12-31", platforms=None, max_cloud=None, limit=3,
                  backoff=0.01, **kw)


def test_stac_500s_and_a_dropped_connection_mid_pagination_are_retried(rustac_server, tmp_path: Path) -> None:
    direct = _aus(rustac_server.url)
    # each page is a POST /search (pages 2 and 3 carry the `next` token in the body): page 1 passes, then
    # two requests get HTTP 500 and one has its connection closed without an answer; then all pass
    rules = [{"match": "^/search", "method": "POST", "action": "status", "status": 500, "skip": 1, "times": 2},
             {"match": "^/search", "method": "POST", "action": "drop", "skip": 1, "times": 1}]
    with FaultProxy(int(rustac_server.url.rstrip("/").rsplit(":", 1)[1]), rules, tmp_path / "log") as proxy:
        flaky = _aus(proxy.url, retries=3)
        actions = [e["action"] for e in proxy.events() if e["method"] == "POST"]
    assert actions == ["pass", "status", "status", "drop", "pass", "pass"], actions  # page 2 retried 3 times
    assert flaky.ids == direct.ids == ALL_AUS and flaky.pages == direct.pages == 3
    strip = [{k: v for k, v in it.items() if k != "links"} for it in flaky.items]
    assert strip == [{k: v for k, v in it.items() if k != "links"} for it in direct.items]  # identical items


@pytest.mark.parametrize("action", ["status", "drop"])
def test_stac_server_that_stays_down_mid_pagination_is_one_clear_line(rustac_server, tmp_path: Path,
                                                                      action: str) -> None:
    rules = [{"match": "^/search", "method": "POST", "action": action, "status": 500, "skip": 1, "times": -1}]
    with FaultProxy(int(rustac_server.url.rstrip("/").rsplit(":", 1)[1]), rules, tmp_path / "log") as proxy:
        with pytest.raises(GlacierflowError) as err:
            _aus(proxy.url, retries=2)
        faults = [e for e in proxy.events() if e["action"] == action]
    assert len(faults) == 3, faults  # the first try and 2 retries of page 2, then it gives up
    msg = str(err.value)
    assert msg.startswith(f"search at {proxy.url} failed: ") and "\n" not in msg and "retry later" in msg
    assert ("HTTP 500" in msg) if action == "status" else ("HTTP" not in msg), msg


# -- assets ------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _served(twin: Path, rules: list[dict[str, Any]], log: Path) -> Iterator[tuple[str, FaultProxy]]:
    """The twin's COGs behind the fault proxy, its items (hrefs through the proxy) behind rustac."""
    assets = AssetServer(twin).start()
    try:
        with FaultProxy(assets.port, rules, log) as proxy:
            items, collection = served_items(twin, proxy.url)
            work = twin.parent / f"stac-{proxy.port}"
            work.mkdir()
            with rustac_memory_server(items, collection, work) as stac_url:
                yield stac_url.rstrip("/"), proxy
    finally:
        assets.stop()


def _spec(twin: Path, stac_url: str, **kw: Any) -> CubeSpec:
    meta = load_twin_meta(twin)
    return CubeSpec(name="t", bbox=tuple(meta["bbox"]), epsg=meta["epsg"], start=START, end=END, catalog=stac_url,
                    **kw)


def _victims(twin: Path, n: int) -> list[dict[str, Any]]:
    """``n`` clear Landsat-8 scenes of the test window (each would be used)."""
    items = json.loads((twin / "items.json").read_text())["features"]
    ok = [i for i in items if i["properties"]["platform"] == "landsat-8" and START <= i["properties"]["datetime"]
          <= END and i["properties"]["eo:cloud_cover"] < 5]
    assert len(ok) >= n
    return ok[:n]


@pytest.fixture
def reference(tiny_cube_summer: dict[str, Any]) -> dict[str, Any]:
    """The undisturbed build of the test window (session fixture), for comparison."""
    return tiny_cube_summer


def _damage(twin: Path) -> dict[str, tuple[str, str]]:
    """Break three scenes' assets in three ways; returns {item id: (asset, damage)}."""
    crs_v, trunc_v, gone_v = _victims(twin, 3)
    cog = twin / crs_v["assets"]["green"]["href"]
    with rasterio.open(cog) as src:  # the same pixels, declared in the neighbouring UTM zone
        profile, data = src.profile, src.read()
    profile.update(crs="EPSG:32644")
    with rasterio.open(cog, "w", **profile) as dst:
        dst.write(data)
    tif = twin / trunc_v["assets"]["swir16"]["href"]
    tif.write_bytes(tif.read_bytes()[:3000])  # header intact, tiles cut off
    (twin / gone_v["assets"]["qa_pixel"]["href"]).unlink()  # HTTP 404
    return {crs_v["id"]: ("green", "crs"), trunc_v["id"]: ("swir16", "truncated"),
            gone_v["id"]: ("qa_pixel", "missing")}


def test_missing_truncated_and_wrong_crs_assets_drop_their_scene_with_the_reason(
        tiny_twin: Path, tmp_path: Path, reference: dict[str, Any]) -> None:
    twin = tmp_path / "twin"
    shutil.copytree(tiny_twin, twin)
    broken = _damage(twin)
    out = str(tmp_path / "cube.zarr")
    with _served(twin, [], tmp_path / "log") as (stac_url, _), dask.config.set(scheduler="threads"):
        summary = build_cube_store(_spec(twin, stac_url, **FAST), PreprocessSpec(), out)
    assert is_complete(out)
    scenes = open_store(out, group="scenes").load()
    reasons = dict(zip(map(str, scenes["item_id"].values), map(str, scenes["reason"].values), strict=True))
    used = dict(zip(map(str, scenes["item_id"].values), scenes["used"].values.astype(bool), strict=True))
    expect = {"crs": "CRS EPSG:32644, item says EPSG:32643", "truncated": "unreadable swir16",
              "missing": "qa_pixel HTTP 404"}
    for item_id, (_, damage) in broken.items():
        assert reasons[item_id].startswith("read error") and expect[damage] in reasons[item_id], reasons[item_id]
        assert not used[item_id]
    ref_used = dict(zip(map(str, reference["scenes"]["item_id"].values),
                        reference["scenes"]["used"].values.astype(bool), strict=True))
    assert all(ref_used[i] for i in broken), "each damaged scene is used when intact"
    # every other scene is used exactly as in the undamaged build
    assert {i: u for i, u in used.items() if i not in broken} == {i: u for i, u in ref_used.items()
                                                                 if i not in broken}
    assert summary.dropped.get("read error") == 3 and np.isfinite(open_store(out)["ndsi"].values).all()


def _strict_cli(twin: Path, out: Path, log: Path) -> tuple[int, str]:
    """build-cube --strict through the CLI, in-process (a new asset server URL each time: no GDAL cache)."""
    import io
    from contextlib import redirect_stderr

    with _served(twin, [], log) as (stac_url, _):
        spec = _spec(twin, stac_url)
        argv = ["build-cube", "--bbox", *map(str, spec.bbox), "--epsg", str(spec.epsg), "--start", START,
                "--end", END, "--catalog", stac_url, "--out", str(out), "--cluster", "threads", "--strict"]
        err = io.StringIO()
        with redirect_stderr(err):
            code = cli.main(argv)
    return code, err.getvalue().strip()


def test_strict_fails_on_a_broken_asset_naming_it(tiny_twin: Path, tmp_path: Path) -> None:
    twin = tmp_path / "twin"
    shutil.copytree(tiny_twin, twin)
    broken = _damage(twin)
    out = tmp_path / "strict.zarr"
    code, err = _strict_cli(twin, out, tmp_path / "log1")
    assert code == 2 and err.count("\n") == 0 and "Traceback" not in err, err
    # the first broken asset met names itself: by the header check (scene and asset) or by a read (file)
    hrefs = {i: v["assets"][broken[i][0]]["href"] for i, v in ((v["id"], v) for v in _victims(twin, 3))}
    named = [i for i in broken if (i in err and broken[i][0] in err) or Path(hrefs[i]).name in err]
    assert len(named) == 1 and err.startswith(("error: --strict: scene ", "error: cannot read asset ")), err
    assert not out.exists()
    # repair the wrong-CRS and the missing asset: the truncated COG passes the header check, its tiles
    # fail in the main pass, and --strict names the file
    crs_v, trunc_v, gone_v = _victims(twin, 3)
    for v, asset in ((crs_v, "green"), (gone_v, "qa_pixel")):
        shutil.copy(tiny_twin / v["assets"][asset]["href"], twin / v["assets"][asset]["href"])
    code, err = _strict_cli(twin, out, tmp_path / "log2")
    assert code == 2 and err.count("\n") == 0 and "Traceback" not in err, err
    assert err.startswith("error: cannot read asset ") and Path(trunc_v["assets"]["swir16"]["href"]).name in err
    assert "truncated" in err, err
    assert not out.exists() and not list(tmp_path.glob(".strict.zarr.*")), "no partial store left"


# -- an asset server that refuses (401/403) or fails (5xx) -------------------------------------------------------

@pytest.mark.parametrize("status", [401, 403])
def test_an_asset_refused_for_credentials_is_one_line_saying_so(tiny_twin: Path, tmp_path: Path,
                                                                 status: int) -> None:
    (victim,) = _victims(tiny_twin, 1)
    cog = Path(victim["assets"]["green"]["href"]).name
    rules = [{"match": cog, "action": "status", "status": status, "times": -1}]
    out = tmp_path / "cube.zarr"
    with _served(tiny_twin, rules, tmp_path / "log") as (stac_url, proxy), dask.config.set(scheduler="threads"):
        with pytest.raises(GlacierflowError) as err:
            build_cube_store(_spec(tiny_twin, stac_url, **FAST), PreprocessSpec(), str(out))
        assert any(cog in e["path"] and e["action"] == "status" for e in proxy.events())  # the fault happened
    msg = str(err.value)
    assert msg.startswith("cannot read asset ") and cog in msg and f"HTTP {status}" in msg, msg
    assert "signature" in msg and "\n" not in msg, msg  # the way out: credentials or signing
    assert not out.exists() and not list(tmp_path.glob(".cube.zarr.*")), "nothing written"


def test_an_asset_server_error_is_retried_then_a_read_error_row(tiny_twin: Path, tmp_path: Path,
                                                                 reference: dict[str, Any]) -> None:
    flaky, down = _victims(tiny_twin, 2)
    a, b = (Path(v["assets"]["green"]["href"]).name for v in (flaky, down))
    rules = [{"match": a, "action": "status", "status": 503, "times": 1},  # once: the retry gets it
             {"match": b, "action": "status", "status": 500, "times": -1}]  # always
    out = str(tmp_path / "cube.zarr")
    with _served(tiny_twin, rules, tmp_path / "log") as (stac_url, proxy), dask.config.set(scheduler="threads"):
        build_cube_store(_spec(tiny_twin, stac_url, **FAST), PreprocessSpec(), out)
        seen = {n: [e["action"] for e in proxy.events() if n in e["path"]] for n in (a, b)}
    assert seen[a][0] == "status" and "pass" in seen[a][1:], seen  # retried, then served
    assert len(seen[b]) >= 1 + FAST["http_retries"] and set(seen[b]) == {"status"}, seen  # retried, every time 500
    scenes = open_store(out, group="scenes").load()
    row = {str(i): k for k, i in enumerate(scenes["item_id"].values)}
    assert bool(scenes["used"].values[row[flaky["id"]]])
    reason = str(scenes["reason"].values[row[down["id"]]])
    assert reason.startswith("read error: green") and "500" in reason and not scenes["used"].values[row[down["id"]]]
    used, ref_used = scenes["used"].values.astype(bool), reference["scenes"]["used"].values.astype(bool)
    assert used.sum() == ref_used.sum() - 1


# -- a stalling asset server -------------------------------------------------------------------------------

def test_a_stalled_asset_read_times_out_and_is_retried(tiny_twin: Path, tmp_path: Path,
                                                       reference: dict[str, Any]) -> None:
    once, always = _victims(tiny_twin, 2)
    a, b = (Path(v["assets"]["green"]["href"]).name for v in (once, always))
    # the asset server sends no byte for 30 s, far beyond the 1 s HTTP timeout: once for one scene's green
    # COG (the retry gets it), at every request for another's (every retry times out)
    rules = [{"match": a, "action": "stall", "seconds": 30, "times": 1},
             {"match": b, "action": "stall", "seconds": 30, "times": -1}]
    out = str(tmp_path / "cube.zarr")
    with _served(tiny_twin, rules, tmp_path / "log") as (stac_url, proxy), dask.config.set(scheduler="threads"):
        build_cube_store(_spec(tiny_twin, stac_url, **FAST), PreprocessSpec(), out)
        seen = {n: [e["action"] for e in proxy.events() if n in e["path"]] for n in (a, b)}
    assert seen[a][0] == "stall" and seen[a][1:] and set(seen[a][1:]) == {"pass"}, seen  # retried, then served
    # each retry timed out too: the window read, then the header check of the scene (uncached after a failure)
    assert set(seen[b]) == {"stall"} and len(seen[b]) >= 1 + FAST["http_retries"], seen
    scenes = open_store(out, group="scenes").load()
    row = {str(i): k for k, i in enumerate(scenes["item_id"].values)}
    assert bool(scenes["used"].values[row[once["id"]]])
    assert str(scenes["reason"].values[row[always["id"]]]) == "read error: green timed out"
    used = scenes["used"].values.astype(bool)
    ref_used = reference["scenes"]["used"].values.astype(bool)
    assert used.sum() == ref_used.sum() - 1 and not used[row[always["id"]]]
    # every other scene is read as if nothing had happened: its table row is the undisturbed build's
    keep = [k for k, i in enumerate(map(str, scenes["item_id"].values)) if i != always["id"]]
    assert list(scenes["item_id"].values) == list(reference["scenes"]["item_id"].values)
    np.testing.assert_array_equal(scenes["valid_fraction"].values, reference["scenes"]["valid_fraction"].values)
    np.testing.assert_array_equal(used[keep], ref_used[keep])


# -- a Dask worker killed ----------------------------------------------------------------------------------

def test_a_worker_killed_mid_build_leaves_the_result_unchanged(served_twin: dict, tmp_path: Path,
                                                               reference: dict[str, Any]) -> None:
    import os
    import signal
    import threading
    import time

    from distributed import Client, LocalCluster

    m = served_twin["meta"]
    spec = CubeSpec(name="t", bbox=tuple(m["bbox"]), epsg=m["epsg"], start=START, end=END,
                    catalog=served_twin["stac_url"])
    out = tmp_path / "cube.zarr"
    killed: list[int] = []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        pids = client.run(os.getpid)
        done = threading.Event()

        go = tmp_path / "go"

        def kill_a_busy_worker() -> None:
            # once the main pass runs (the partial store exists), SIGKILL a worker that is running tasks
            while not done.is_set() and not killed:
                if list(tmp_path.glob(".cube.zarr.partial-*")):
                    busy = [a for a, keys in client.processing().items() if keys and a in pids]
                    if busy:
                        os.kill(pids[busy[0]], signal.SIGKILL)
                        killed.append(pids[busy[0]])
                time.sleep(0.01)
            go.touch()

        def held(objs: list) -> list:
            # one more task in the main pass (the one writing the partial store) that waits for the kill (a shell
            # loop, 120 s at most): the pass cannot end before a worker is killed, however fast the machine is
            if not list(tmp_path.glob(".cube.zarr.partial-*")):
                return runner(client)(objs)
            wait = dask.delayed(subprocess.run, pure=False)(
                ["sh", "-c", f"for i in $(seq 12000); do [ -e '{go}' ] && exit 0; sleep 0.01; done"])
            return runner(client)([*objs, wait])[:-1]

        killer = threading.Thread(target=kill_a_busy_worker, daemon=True)
        killer.start()
        try:
            build_cube_store(spec, PreprocessSpec(), str(out), compute=held)
        finally:
            done.set()
            killer.join(10)
        after = client.run(os.getpid)
    assert len(killed) == 1 and killed[0] not in after.values(), (killed, after)  # a worker really died
    assert_stores_identical(str(out), reference["out"])  # the whole store: cube, scenes, guides, every attribute
