"""What every Dask worker needs before it runs glacierflow tasks, wherever it runs (local, scheduler, Gateway).

:class:`WorkerSetup` is a :class:`distributed.WorkerPlugin`: registered once per client
(:func:`prepare_workers`, called by :func:`glacierflow.compute.cluster.get_client`), it runs on every worker present
and on every worker that joins later (adaptive scaling) and

- sets the GDAL HTTP settings of :data:`glacierflow.ingest.readers.GDAL_ENV` in the worker's environment (GDAL reads
  its configuration from the environment; stackstac also applies them per read),
- makes OpenCV sequential (``cv2.setNumThreads(0)``: Dask's threads are the parallelism; OpenCV's own pool
  on top oversubscribes the cores),
- checks that the worker's glacierflow is the client's version.

A worker with another glacierflow (an old worker image) fails the check, and the client reports it as one
line (:class:`glacierflow.errors.GlacierflowError`) instead of the pickling traceback the first task would
otherwise end in. :func:`worker_report` says what a worker has (tests call it on gateway workers).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from typing import Any

import distributed

from glacierflow import __version__
from glacierflow.errors import GlacierflowError, first_line

logger = logging.getLogger(__name__)

PLUGIN_NAME = "glacierflow-worker-setup"


class WorkerVersionError(RuntimeError):
    """A worker's glacierflow is not the client's (raised on the worker, re-raised on the client)."""


def gdal_settings() -> dict[str, str]:
    """The GDAL configuration options every worker gets (from :data:`glacierflow.ingest.readers.GDAL_ENV`)."""
    from glacierflow.ingest.readers import GDAL_ENV

    return {str(k): str(v) for k, v in GDAL_ENV.always.options.items()}


class WorkerSetup(distributed.WorkerPlugin):
    """Worker plugin: GDAL HTTP settings, sequential OpenCV, glacierflow version check.

    Parameters
    ----------
    version
        The client's glacierflow version; a worker with another one raises :class:`WorkerVersionError`.
    gdal
        GDAL configuration options to set in the worker's environment (default :func:`gdal_settings`).
    opencv_threads
        ``cv2.setNumThreads`` on the worker (0: sequential).
    """

    def __init__(self, version: str = __version__, gdal: dict[str, str] | None = None,
                 opencv_threads: int = 0) -> None:
        self.version = version
        self.gdal = dict(gdal_settings() if gdal is None else gdal)
        self.opencv_threads = opencv_threads

    def setup(self, worker: distributed.Worker) -> None:
        """Check the version first (nothing is changed on a worker that cannot run our tasks), then set up."""
        here = importlib.metadata.version("glacierflow")
        if here != self.version:
            raise WorkerVersionError(
                f"glacierflow version mismatch: the client has {self.version}, worker {worker.address} has {here}"
            )
        os.environ.update(self.gdal)
        import cv2

        cv2.setNumThreads(self.opencv_threads)
        worker.glacierflow_setup = {"version": here, "gdal": dict(self.gdal),  # type: ignore[attr-defined]
                                    "opencv_threads": self.opencv_threads}


def worker_report(dask_worker: distributed.Worker) -> dict[str, Any]:
    """What one worker has: glacierflow version, the GDAL settings in its environment, OpenCV threads.

    Run it with ``client.run(worker_report)``; ``setup`` is what :class:`WorkerSetup` recorded (None if the
    plugin never ran on this worker).
    """
    import cv2

    return {
        "version": importlib.metadata.version("glacierflow"),
        "gdal": {k: os.environ.get(k) for k in gdal_settings()},
        "opencv_threads": cv2.getNumThreads(),
        "setup": getattr(dask_worker, "glacierflow_setup", None),
        "pid": os.getpid(),
    }


def _worker_versions(client: distributed.Client) -> str:
    """``"2 workers have glacierflow 0.1"``-style text, asked with a stdlib function (loads on any worker)."""
    try:
        got = client.run(importlib.metadata.version, "glacierflow", on_error="return")
    except Exception as err:  # the message is best effort; the caller's error stands on its own
        return f"worker versions unknown ({first_line(err)})"
    seen = sorted({v if isinstance(v, str) else "none" for v in got.values()})
    return f"workers have glacierflow {', '.join(seen)}"


def prepare_workers(client: distributed.Client, plugin: WorkerSetup | None = None) -> None:
    """Register :class:`WorkerSetup` on ``client``'s cluster; a worker that fails it is one line.

    Call it once the first worker is up: a worker present now reports its failure to this call, one that
    joins later logs it (and its tasks then fail).

    Raises
    ------
    GlacierflowError
        A worker has another glacierflow version, or cannot load this one's worker setup at all.
    """
    plugin = plugin or WorkerSetup()
    try:
        client.register_plugin(plugin, name=PLUGIN_NAME)
    except WorkerVersionError as err:
        raise GlacierflowError(
            f"{first_line(err)}; install glacierflow=={plugin.version} where the workers run "
            "(the gateway's worker image: --cluster-option image=...), or run this glacierflow there"
        ) from None
    except Exception as err:  # unpicklable plugin on a worker without (this) glacierflow, and the like
        raise GlacierflowError(
            f"Dask workers cannot load glacierflow {plugin.version}'s worker setup ({type(err).__name__}: "
            f"{first_line(err)}); {_worker_versions(client)}; install glacierflow=={plugin.version} there"
        ) from None
