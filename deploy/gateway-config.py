"""dask-gateway-server config for a local/test deployment of glacierflow.

Run: ``dask-gateway-server -f deploy/gateway-config.py`` with the environment variables below. Clusters are
plain processes on this machine (``UnsafeLocalBackend``: every user's scheduler and workers run as the
server's OS user), so this is for tests, demos and a single-user workstation, never a shared server.

Environment
-----------
GLACIERFLOW_GATEWAY_ADDRESS       public HTTP + scheduler proxy, default ``127.0.0.1:8000``
GLACIERFLOW_GATEWAY_API_ADDRESS   private API, default ``127.0.0.1:8001``
GLACIERFLOW_GATEWAY_PASSWORD      shared password for basic auth (required)
GLACIERFLOW_GATEWAY_DIR           working folder for clusters (default: a new temporary folder)
GLACIERFLOW_GATEWAY_BIN           folder holding the ``dask`` executable of the environment the schedulers and
                                  workers run in (must have glacierflow installed); default: this Python's
GLACIERFLOW_GATEWAY_MAX_WORKERS   per-cluster worker cap, default 8
"""

# ruff: noqa: F821  (``c`` is injected by traitlets when the server loads this file)

import os
import sys
import tempfile
from pathlib import Path

from dask_gateway_server.options import Float, Integer, Options

env = os.environ
password = env.get("GLACIERFLOW_GATEWAY_PASSWORD")
if not password:
    raise SystemExit("set GLACIERFLOW_GATEWAY_PASSWORD to the shared password clients will use")
bin_dir = Path(env.get("GLACIERFLOW_GATEWAY_BIN") or Path(sys.executable).parent)
work_dir = env.get("GLACIERFLOW_GATEWAY_DIR") or tempfile.mkdtemp(prefix="glacierflow-gateway-")

c.DaskGateway.address = env.get("GLACIERFLOW_GATEWAY_API_ADDRESS", "127.0.0.1:8001")
# One port serves HTTP and proxies scheduler TCP; a separate Proxy.tcp_address made clients time out here.
c.Proxy.address = env.get("GLACIERFLOW_GATEWAY_ADDRESS", "127.0.0.1:8000")

c.DaskGateway.backend_class = "dask_gateway_server.backends.local.UnsafeLocalBackend"
c.LocalBackend.clusters_directory = str(Path(work_dir) / "clusters")

c.DaskGateway.authenticator_class = "dask_gateway_server.auth.SimpleAuthenticator"
c.SimpleAuthenticator.password = password

# The `dask-scheduler` / `dask-worker` scripts are gone from recent distributed: use `dask scheduler`.
c.ClusterConfig.scheduler_cmd = [str(bin_dir / "dask"), "scheduler"]
c.ClusterConfig.worker_cmd = [str(bin_dir / "dask"), "worker", "--host", "127.0.0.1"]  # listen on this machine only
# glacierflow's workers: one thread each (GDAL / OpenCV), GDAL settings travel with the graph (cube.GDAL_ENV).
c.ClusterConfig.worker_threads = 1
c.ClusterConfig.cluster_max_workers = int(env.get("GLACIERFLOW_GATEWAY_MAX_WORKERS", "8"))
c.ClusterConfig.idle_timeout = 1800  # seconds; a forgotten cluster goes away

# What a client may ask for with `get_client("gateway", cluster_options={...})`.
c.Backend.cluster_options = Options(
    Integer("worker_cores", default=1, min=1, max=4, label="Worker cores"),
    Float("worker_memory", default=2, min=0.5, max=16, label="Worker memory (GiB)"),
    handler=lambda options: {
        "worker_cores": options.worker_cores,
        "worker_threads": options.worker_cores,
        "worker_memory": int(options.worker_memory * 2**30),
    },
)
