"""The only place that creates a Dask client.

One string picks where the work runs (the CLI's ``--cluster`` flag):

- ``None`` / ``"local"``: a :class:`distributed.LocalCluster` on this machine with the mix of
  :func:`local_mix` (measured: one worker process, one thread per core); ``"local:N"``: N single-threaded
  workers; ``"local:NxT"``: N workers with T threads each.
- ``"tcp://host:port"``: an existing scheduler (left running on close).
- ``"gateway"``: a new cluster from the Dask Gateway named in Dask config (``gateway.address``, env
  ``DASK_GATEWAY__ADDRESS``, with ``gateway.auth``; Planetary Computer's hub sets both).
- ``"gateway://http://host:port"``: a new cluster from the Gateway at that address.
- ``"threads"`` / ``"sync"``: no cluster, dask's threaded or synchronous scheduler (tests, debugging).

Everything :func:`get_client` starts it also stops: closing the returned object (or leaving its ``with``
block) shuts down the LocalCluster or the Gateway cluster.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import dask
import distributed

from glacierflow.errors import GlacierflowError

logger = logging.getLogger(__name__)

#: where every stage runs when ``--cluster`` is not given (one default for build-cube, flow, ...)
DEFAULT_CLUSTER = "local"


def local_mix(cores: int) -> tuple[int, int]:
    """``(worker processes, threads per worker)`` of ``--cluster local`` on a machine with ``cores`` cores.

    Chosen by measurement (benchmarks/README.md, build-cube, 1-year full twin, 2 cores): one worker process
    with a thread per core used 38 s of CPU against 57 s for one single-threaded process per core (GDAL
    reads, OpenCV and numpy release the GIL; processes add transfers and serialisation); dask's plain
    threaded scheduler (``--cluster threads``) needed 19 s.
    """
    return 1, cores



SPEC_FORMS = (
    "'local', 'local:N', 'tcp://host:port', 'gateway', 'gateway://http://host:port', 'threads', 'sync'"
)


class ManagedClient(distributed.Client):
    """A :class:`distributed.Client` that also shuts down the cluster glacierflow started for it."""

    _cleanups: list[Callable[[], Any]]

    def _add_cleanup(self, fn: Callable[[], Any]) -> None:
        if not hasattr(self, "_cleanups"):
            self._cleanups = []
        self._cleanups.append(fn)

    def close(self, timeout: Any = distributed.client.no_default) -> Any:
        """Close the client, then the cluster it owns (LocalCluster, Gateway cluster)."""
        result = super().close(timeout=timeout)
        cleanups, self._cleanups = getattr(self, "_cleanups", []), []
        for fn in reversed(cleanups):
            try:
                fn()
            except Exception as err:  # keep closing the rest; a failed shutdown is not the user's data
                logger.warning("glacierflow: cluster shutdown step failed: %r", err)
        return result


class LocalScheduler:
    """No cluster: dask's ``"threads"`` or ``"sync"`` scheduler, set in Dask config until closed.

    Mirrors the parts of :class:`distributed.Client` a caller uses here: ``close()`` and ``with``.
    """

    def __init__(self, scheduler: str) -> None:
        self.scheduler = scheduler
        self._config = dask.config.set(scheduler=scheduler)

    def close(self) -> None:
        """Restore the previous Dask scheduler setting."""
        if self._config is not None:
            self._config.__exit__(None, None, None)
            self._config = None

    def __enter__(self) -> LocalScheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LocalScheduler({self.scheduler!r})"


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _local(n_workers: int | None, threads: int | None = None) -> ManagedClient:
    if n_workers is None and threads is None:
        n, threads = local_mix(_cores())
    else:
        n, threads = n_workers or _cores(), threads or 1
    # Dask's nannies set MALLOC_TRIM_THRESHOLD_=64 KiB, which also switches off glibc's dynamic mmap threshold:
    # every multi-MB scene array is then a fresh mmap (page faults, zeroing). Measured on a 1-year full-twin
    # build-cube with 2 workers: 15.8 s -> 12.0-12.7 s with large arrays kept on the heap (< 16 MiB) and
    # memory returned to the OS in 64 MiB steps.
    with dask.config.set({
        "distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": 1 << 24,
        "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": 1 << 26,
    }):
        cluster = _start_local(n, threads)
    try:
        client = ManagedClient(cluster)
    except Exception:
        cluster.close()
        raise
    client._add_cleanup(cluster.close)
    return client


def _start_local(n: int, threads: int = 1) -> distributed.LocalCluster:
    return distributed.LocalCluster(
        n_workers=n,
        threads_per_worker=threads,
        processes=True,
        memory_limit="auto",  # system memory / n_workers
        host="127.0.0.1",
        dashboard_address=":0",  # a free port, never a clash with a notebook's 8787
        silence_logs=logging.WARNING,
    )


def _scheduler(address: str, timeout: float) -> ManagedClient:
    try:
        return ManagedClient(address, timeout=timeout)
    except (OSError, TimeoutError) as err:
        raise GlacierflowError(
            f"cannot reach Dask scheduler at {address!r} within {timeout:g} s ({type(err).__name__}); "
            "start it, or use --cluster local"
        ) from None


def _close_gateway(gateway: Any) -> None:
    """Close a dask-gateway ``Gateway`` once, for good.

    dask-gateway 2026.3 with distributed 2026.8: ``Gateway.__del__`` closes again and fails on the stopped
    loop ("Accessing the loop property while the loop is not running"); ``__del__`` skips an object without
    ``_loop_runner``, so drop it after the real close.
    """
    try:
        gateway.close()
    finally:
        vars(gateway).pop("_loop_runner", None)


def _shutdown_cluster(cluster: Any) -> None:
    """Stop a Gateway cluster and close its own ``Gateway`` client (see :func:`_close_gateway`)."""
    try:
        cluster.shutdown()
    finally:
        if hasattr(cluster, "gateway"):
            vars(cluster.gateway).pop("_loop_runner", None)


def _gateway(
    address: str | None,
    workers: int | tuple[int, int] | None,
    cluster_options: Mapping[str, Any] | None,
) -> ManagedClient:
    try:
        from dask_gateway import Gateway
    except ImportError:
        raise GlacierflowError(
            "dask-gateway is not installed; pip install 'glacierflow[gateway]', or use --cluster local"
        ) from None

    where = address or dask.config.get("gateway.address", None)
    if not where:
        raise GlacierflowError(
            "no Dask Gateway address: set DASK_GATEWAY__ADDRESS (or gateway.address in Dask config), "
            "or pass gateway://http://host:port"
        )
    gateway = Gateway(address=address) if address else Gateway()
    cluster = None
    try:
        try:
            options = gateway.cluster_options()
            for key, value in (cluster_options or {}).items():
                if key not in options:
                    known = ", ".join(sorted(options)) or "none"
                    raise GlacierflowError(
                        f"unknown Dask Gateway cluster option {key!r}; this gateway has: {known}"
                    )
                options[key] = value
            cluster = gateway.new_cluster(cluster_options=options)
        except GlacierflowError:
            raise
        except (OSError, TimeoutError, ValueError, RuntimeError) as err:
            # aiohttp's connection errors are OSErrors; HTTP 401/404 from the gateway come as ValueError
            detail = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise GlacierflowError(
                f"cannot reach Dask Gateway at {where!r} ({detail}); check the address and "
                "DASK_GATEWAY__AUTH__* settings, or use --cluster local"
            ) from None
        if isinstance(workers, tuple):
            cluster.adapt(minimum=workers[0], maximum=workers[1])
        elif workers:
            cluster.scale(workers)
        client = ManagedClient(cluster.scheduler_address, security=cluster.security, set_as_default=True)
    except BaseException:
        if cluster is not None:
            _shutdown_cluster(cluster)
        _close_gateway(gateway)
        raise
    client._add_cleanup(lambda: _close_gateway(gateway))
    client._add_cleanup(lambda: _shutdown_cluster(cluster))
    return client


def get_client(
    spec: str | None = None,
    *,
    workers: int | tuple[int, int] | None = None,
    cluster_options: Mapping[str, Any] | None = None,
    timeout: float = 10.0,
) -> distributed.Client | LocalScheduler:
    """Connect to (or start) the Dask cluster named by ``spec``.

    Parameters
    ----------
    spec
        Where to run, see the module docstring: ``None``/``"local"``, ``"local:N"``, ``"tcp://host:port"``,
        ``"gateway"``, ``"gateway://http://host:port"``, ``"threads"``, ``"sync"``.
    workers
        Local: number of worker processes (default: one per core). Gateway: ``N`` scales to N workers,
        ``(min, max)`` turns on adaptive scaling; ``None`` leaves the gateway's default (usually none, so
        pass it).
    cluster_options
        Gateway cluster options (e.g. ``{"worker_memory": 8, "image": "..."}`` on Planetary Computer);
        unknown names raise a :class:`GlacierflowError` listing the gateway's options.
    timeout
        Seconds to wait for a scheduler address to answer.

    Returns
    -------
    distributed.Client or LocalScheduler
        Use it as a context manager (or call ``close()``): whatever was started here is shut down.

    Raises
    ------
    GlacierflowError
        Unknown spec, unreachable scheduler or gateway, missing gateway address.
    """
    text = DEFAULT_CLUSTER if spec is None else spec.strip()
    if text in ("threads", "sync", "synchronous", "single-threaded"):
        return LocalScheduler("sync" if text != "threads" else "threads")
    if text == "local" or text.startswith("local:"):
        n = workers if isinstance(workers, int) else None
        threads = None
        if text.startswith("local:"):
            count, _, per = text.split(":", 1)[1].partition("x")
            if not count.isdigit() or int(count) < 1 or (per and (not per.isdigit() or int(per) < 1)):
                raise GlacierflowError(f"bad worker count in --cluster {spec!r}; use e.g. local:4 or local:1x2")
            n, threads = int(count), int(per) if per else 1
        return _local(n, threads)
    if text.startswith(("tcp://", "tls://", "ws://", "wss://", "inproc://", "ucx://")):
        return _scheduler(text, timeout)
    if text == "gateway":
        return _gateway(None, workers, cluster_options)
    if text.startswith("gateway://"):
        address = text[len("gateway://") :]
        if not address.startswith(("http://", "https://")):
            raise GlacierflowError(f"bad gateway address in --cluster {spec!r}; use gateway://http://host:port")
        return _gateway(address, workers, cluster_options)
    raise GlacierflowError(f"unknown --cluster {spec!r}; use one of {SPEC_FORMS}")
