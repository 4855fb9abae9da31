"""Session fixture: a real dask-gateway-server (deploy/gateway-config.py, local backend) on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from glacierflow.twin.stac_servers import free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _wait_healthy(address: str, proc: subprocess.Popen[bytes], log: Path, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(f"{address}/api/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"gateway did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def gateway_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a dask-gateway-server with basic auth, set in Dask config meanwhile.

    Its clusters are processes of this machine running this environment's ``dask`` (so this glacierflow).
    """
    pytest.importorskip("dask_gateway_server")
    pytest.importorskip("dask_gateway")  # registers the gateway.* config defaults before we set auth
    import dask

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
    log_path = tmp / "server.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(BIN / "dask-gateway-server"), "-f", str(REPO / "deploy" / "gateway-config.py")],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp,
    )  # fmt: skip
    address = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(address, proc, log_path)
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
