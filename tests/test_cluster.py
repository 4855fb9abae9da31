"""get_client against real schedulers: LocalCluster, a scheduler address, dask-gateway-server on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dask
import dask.array as da
import distributed
import numpy as np
import pytest

from glacierflow.cluster import LocalScheduler, _close_gateway, get_client
from glacierflow.errors import GlacierflowError
from glacierflow.twin.stac_servers import free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _expected_sum() -> float:
    return float(np.arange(10_000, dtype=np.float64).sum() * 2)


def _array() -> da.Array:
    return da.arange(10_000, chunks=1_000, dtype=np.float64) * 2


def test_threads_and_sync_restore_config():
    before = dask.config.get("scheduler", None)
    with get_client("sync") as sched:
        assert isinstance(sched, LocalScheduler)
        assert dask.config.get("scheduler") == "sync"
        assert float(_array().sum().compute()) == _expected_sum()
    assert dask.config.get("scheduler", None) == before
    with get_client("threads"):
        assert dask.config.get("scheduler") == "threads"


def test_local_cluster_and_scheduler_address():
    with get_client("local:2") as client:
        info = client.scheduler_info()
        workers = info["workers"].values()
        assert len(workers) == 2
        assert all(w["nthreads"] == 1 for w in workers)
        assert float(client.compute(_array().sum()).result()) == _expected_sum()
        cluster = client.cluster
        # a second client on the same scheduler by address: closing it leaves the cluster running
        with get_client(client.scheduler.address) as other:
            assert float(other.compute(_array().sum()).result()) == _expected_sum()
        assert cluster.status.name == "running"
    assert cluster.status.name == "closed"  # the LocalCluster started by get_client is shut down


def test_unreachable_scheduler_is_one_line():
    port = free_port()
    with pytest.raises(GlacierflowError) as err:
        get_client(f"tcp://127.0.0.1:{port}", timeout=1)
    msg = str(err.value)
    assert f"tcp://127.0.0.1:{port}" in msg and "--cluster local" in msg and "\n" not in msg


def test_bad_specs():
    with pytest.raises(GlacierflowError, match="unknown --cluster 'kubernetes'"):
        get_client("kubernetes")
    with pytest.raises(GlacierflowError, match="local:4"):
        get_client("local:zero")
    with pytest.raises(GlacierflowError, match="gateway://http"):
        get_client("gateway://127.0.0.1:8000")
    pytest.importorskip("dask_gateway")  # load gateway.* defaults first, or leaving set() would drop them
    with dask.config.set({"gateway.address": None}):
        with pytest.raises(GlacierflowError, match="DASK_GATEWAY__ADDRESS"):
            get_client("gateway")


@pytest.fixture(scope="module")
def gateway_server(tmp_path_factory):
    """A real dask-gateway-server (deploy/gateway-config.py) on 127.0.0.1 with basic auth."""
    pytest.importorskip("dask_gateway_server")
    pytest.importorskip("dask_gateway")  # registers the gateway.* config defaults before we set auth
    if not (BIN / "dask-gateway-server").exists():
        pytest.skip("dask-gateway-server not installed in this environment")
    tmp = tmp_path_factory.mktemp("gateway")
    port, api_port = free_port(), free_port()
    env = dict(
        os.environ,
        GLACIERFLOW_GATEWAY_ADDRESS=f"127.0.0.1:{port}",
        GLACIERFLOW_GATEWAY_API_ADDRESS=f"127.0.0.1:{api_port}",
        GLACIERFLOW_GATEWAY_PASSWORD="test-password",
        GLACIERFLOW_GATEWAY_DIR=str(tmp),
        GLACIERFLOW_GATEWAY_BIN=str(BIN),
    )
    log = open(tmp / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(BIN / "dask-gateway-server"), "-f", str(REPO / "deploy" / "gateway-config.py")],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp,
    )  # fmt: skip
    address = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{address}/api/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gateway did not start:\n{(tmp / 'server.log').read_text()[-3000:]}")
            time.sleep(0.2)
        auth = {
            "gateway.auth.type": "basic",
            "gateway.auth.kwargs": {"username": "alice", "password": "test-password"},
        }
        with dask.config.set(auth):
            yield address
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _list_clusters(address: str) -> list:
    from dask_gateway import Gateway

    gateway = Gateway(address)
    try:
        return gateway.list_clusters()
    finally:
        _close_gateway(gateway)


def test_gateway_cluster_computes_and_shuts_down(gateway_server):
    with get_client(f"gateway://{gateway_server}", workers=2, cluster_options={"worker_memory": 1}) as client:
        client.wait_for_workers(2, timeout=60)
        assert float(client.compute(_array().sum()).result()) == _expected_sum()
        workers = client.scheduler_info()["workers"].values()
        assert len(workers) == 2
        assert all(w["memory_limit"] == 2**30 for w in workers)  # our cluster option reached the workers
        # worker-side warnings reach the client (how cube.py reports unreadable files)
        with pytest.warns(UserWarning, match="from a gateway worker"):
            client.submit(distributed.warn, "from a gateway worker", pure=False).result()
            time.sleep(0.5)
        assert len(_list_clusters(gateway_server)) == 1
    assert _list_clusters(gateway_server) == []  # get_client shut its cluster down


def test_gateway_from_dask_config_and_errors(gateway_server):
    with dask.config.set({"gateway.address": gateway_server}):
        with get_client("gateway", workers=1) as client:
            client.wait_for_workers(1, timeout=60)
            assert int(client.submit(sum, [1, 2, 3]).result()) == 6
        with pytest.raises(
            GlacierflowError, match="unknown Dask Gateway cluster option 'gpus'.*worker_memory"
        ):
            get_client("gateway", cluster_options={"gpus": 1})
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(GlacierflowError) as err:
        get_client(f"gateway://{dead}")
    msg = str(err.value)
    assert dead in msg and "\n" not in msg and "--cluster local" in msg
