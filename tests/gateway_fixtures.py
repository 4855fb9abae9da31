"""Session fixture: a real dask-gateway-server (deploy/gateway-config.py, local backend) on 127.0.0.1."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def gateway_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a dask-gateway-server with basic auth, set in Dask config meanwhile.

    Its clusters are processes of this machine running this environment's ``dask`` (so this glacierflow).
    """
    pytest.importorskip("dask_gateway_server")
    pytest.importorskip("dask_gateway")
    if not (Path(sys.executable).parent / "dask-gateway-server").exists():
        pytest.skip("dask-gateway-server not installed in this environment")
    from glacierflow.testing import local_gateway

    with local_gateway(str(tmp_path_factory.mktemp("gateway"))) as address:
        yield address
