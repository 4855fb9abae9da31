"""get_client against real schedulers: LocalCluster, a scheduler address, dask-gateway-server on 127.0.0.1."""

from __future__ import annotations

import time

import dask
import dask.array as da
import distributed
import numpy as np
import pytest

from glacierflow import __version__
from glacierflow.compute.cluster import LocalScheduler, close_gateway, get_client, parse_cluster_options, parse_workers
from glacierflow.compute.workers import WorkerSetup, gdal_settings, prepare_workers, worker_report
from glacierflow.errors import GlacierflowError
from glacierflow.twin.stac_servers import free_port


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
    with pytest.raises(GlacierflowError, match="existing scheduler"):
        get_client("tcp://127.0.0.1:1", workers=2)
    with pytest.raises(GlacierflowError, match="gateway://http"):
        get_client("gateway://127.0.0.1:8000")
    pytest.importorskip("dask_gateway")  # load gateway.* defaults first, or leaving set() would drop them
    with dask.config.set({"gateway.address": None}):
        with pytest.raises(GlacierflowError, match="DASK_GATEWAY__ADDRESS"):
            get_client("gateway")


def _list_clusters(address: str) -> list:
    from dask_gateway import Gateway

    gateway = Gateway(address)
    try:
        return gateway.list_clusters()
    finally:
        close_gateway(gateway)


def test_gateway_cluster_computes_and_shuts_down(gateway_server):
    with get_client(f"gateway://{gateway_server}", workers=2, cluster_options={"worker_memory": 1}) as client:
        client.wait_for_workers(2, timeout=60)
        assert float(client.compute(_array().sum()).result()) == _expected_sum()
        workers = client.scheduler_info()["workers"].values()
        assert len(workers) == 2
        assert all(w["memory_limit"] == 2**30 for w in workers)  # our cluster option reached the workers
        # worker-side warnings reach the client (how cube.py reports unreadable files)
        with pytest.warns(UserWarning, match="from a gateway worker") as seen:
            client.submit(distributed.warn, "from a gateway worker", pure=False).result()
            deadline = time.monotonic() + 30  # it arrives asynchronously: wait for it, with a timeout
            while not any("from a gateway worker" in str(w.message) for w in seen) and time.monotonic() < deadline:
                time.sleep(0.01)
        # every gateway worker was set up by glacierflow's worker plugin: asked on the workers themselves
        reports = client.run(worker_report)
        assert len(reports) == 2 and len({r["pid"] for r in reports.values()}) == 2
        for r in reports.values():
            assert r["version"] == __version__ and r["setup"]["version"] == __version__
            assert r["gdal"] == gdal_settings() and r["gdal"]["GDAL_HTTP_MAX_RETRY"] == "5"  # unset by default
            assert r["opencv_threads"] == 1  # cv2.setNumThreads(0): sequential (default: one per core)
        # a client of another version: the workers refuse, and it is one line naming both versions
        with pytest.raises(GlacierflowError) as err:
            prepare_workers(client, WorkerSetup(version="0.0.1+other"))
        msg = str(err.value)
        assert "version mismatch" in msg and "0.0.1+other" in msg and __version__ in msg and "\n" not in msg
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


def test_workers_and_cluster_option_parsing():
    assert parse_workers(None) is None and parse_workers("3") == 3 and parse_workers("2:20") == (2, 20)
    assert parse_workers("0:4") == (0, 4)
    for bad in ("0", "4:2", "x", "2:", "-1"):
        with pytest.raises(GlacierflowError, match=f"bad --workers '{bad}'"):
            parse_workers(bad)
    assert parse_cluster_options(["worker_cores=2", "worker_memory=2.5", "image=pangeo/x:1", "gpu=true"]) == {
        "worker_cores": 2, "worker_memory": 2.5, "image": "pangeo/x:1", "gpu": True}
    with pytest.raises(GlacierflowError, match="bad --cluster-option 'cores'; use KEY=VALUE"):
        parse_cluster_options(["cores"])
    with pytest.raises(GlacierflowError, match="--cluster-option is for a Dask Gateway"):
        get_client("local", cluster_options={"worker_cores": 2})
    with pytest.raises(GlacierflowError, match="does not apply to --cluster sync"):
        get_client("sync", workers=2)
    with pytest.raises(GlacierflowError, match="both give the worker count"):
        get_client("local:2", workers=2)


def test_local_workers_fixed_and_adaptive():
    with get_client("threads", workers=3):
        assert dask.config.get("num_workers") == 3
    with get_client("local", workers=(1, 2)) as client:
        assert float(client.compute(_array().sum()).result()) == _expected_sum()
        assert client.cluster._adaptive is not None  # adaptive between 1 and 2 workers
        assert (client.cluster._adaptive.minimum, client.cluster._adaptive.maximum) == (1, 2)
        # the local workers got the worker setup too
        for r in client.run(worker_report).values():
            assert r["setup"] is not None and r["gdal"]["GDAL_HTTP_TIMEOUT"] == "60"
