"""The only place that creates a Dask client.

One string picks where the work runs (the CLI's ``--cluster`` flag):

- ``None`` / ``"threads"`` (the default, :data:`DEFAULT_CLUSTER`): no cluster, dask's threaded scheduler on
  this machine, one thread per core (``--workers N``: N threads).
- ``"local"``: a :class:`distributed.LocalCluster` on this machine with the mix of :func:`local_mix` (one
  worker process, one thread per core); ``"local:N"``: N single-threaded workers; ``"local:NxT"``: N workers
  with T threads each.
- ``"tcp://host:port"``: an existing scheduler (left running on close).
- ``"gateway"``: a new cluster from the Dask Gateway named in Dask config (``gateway.address``, env
  ``DASK_GATEWAY__ADDRESS``, with ``gateway.auth``; Planetary Computer's hub sets both).
- ``"gateway://http://host:port"``: a new cluster from the Gateway at that address.
- ``"sync"``: no cluster, dask's synchronous scheduler (debugging).

``workers`` (the CLI's ``--workers N|MIN:MAX``, :func:`parse_workers`) sizes what is started: N workers, or
adaptive scaling between MIN and MAX (LocalCluster and Gateway). A Gateway cluster without it scales adaptively
over :data:`GATEWAY_WORKERS` (a Gateway's own default is no worker at all). ``cluster_options`` (the CLI's
``--cluster-option KEY=VALUE``, :func:`parse_cluster_options`) are checked against the Gateway's own options.
Authentication comes from Dask config / the environment (``gateway.auth``: a JupyterHub token on hubs,
``DASK_GATEWAY__AUTH__TYPE=basic`` in the tests).

Every distributed client gets :class:`glacierflow.compute.workers.WorkerSetup` on its workers (GDAL HTTP settings,
sequential OpenCV, the glacierflow version check) once the first worker is up.

Everything :func:`get_client` starts it also stops: closing the returned object (or leaving its ``with``
block, also on Ctrl-C) shuts down the LocalCluster or the Gateway cluster.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import dask
import distributed

from glacierflow.errors import GlacierflowError

logger = logging.getLogger(__name__)

#: where every stage runs when ``--cluster`` is not given (one default for build-cube, flow, ...): dask's threaded
#: scheduler, by measurement (benchmarks/README.md, build-cube on the 1-year full twin, 2 cores): 12 s of CPU
#: against 21 s for ``local`` (a LocalCluster's processes, scheduler and transfers); GDAL reads, OpenCV and
#: numpy release the GIL. ``local``, ``tcp://...`` and ``gateway`` stay one flag away.
DEFAULT_CLUSTER = "threads"
#: Gateway workers when ``workers`` is not given: adaptive between these (a Gateway starts with none)
GATEWAY_WORKERS = (1, 4)
#: seconds to wait for the first worker of a new cluster before giving up with a one-line error
WORKER_TIMEOUT = 300.0

Workers = int | tuple[int, int] | None


def parse_workers(text: str | None) -> Workers:
    """``--workers`` text: ``"N"`` -> N, ``"MIN:MAX"`` -> ``(MIN, MAX)`` (adaptive), None -> None."""
    if text is None or not str(text).strip():
        return None
    lo, sep, hi = str(text).strip().partition(":")
    ok = lo.isdigit() and (not sep or hi.isdigit())
    if ok and not sep and int(lo) >= 1:
        return int(lo)
    if ok and sep and int(hi) >= 1 and int(lo) <= int(hi):
        return int(lo), int(hi)
    raise GlacierflowError(f"bad --workers {text!r}; use N (N >= 1) or MIN:MAX (adaptive, MIN <= MAX), e.g. 2:8")


def parse_cluster_options(pairs: Iterable[str] | None) -> dict[str, Any] | None:
    """``--cluster-option KEY=VALUE`` pairs; VALUE read as JSON where it parses (``4``, ``2.5``, ``true``)."""
    opts: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise GlacierflowError(f"bad --cluster-option {pair!r}; use KEY=VALUE, e.g. worker_memory=8")
        try:
            opts[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            opts[key.strip()] = value
    return opts or None


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

    def __init__(self, scheduler: str, num_workers: int | None = None) -> None:
        self.scheduler = scheduler
        self._config = dask.config.set(
            {"scheduler": scheduler, **({"num_workers": num_workers} if num_workers else {})})

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


def _local(n_workers: int | None, threads: int | None = None, adapt: tuple[int, int] | None = None
           ) -> ManagedClient:
    if adapt is not None:
        n, threads = adapt[0], 1
    elif n_workers is None and threads is None:
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
        if adapt is not None:
            cluster.adapt(minimum=adapt[0], maximum=adapt[1])
        client = ManagedClient(cluster)
    except BaseException:
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
        dashboard_address="127.0.0.1:0",  # a free port (no clash with a notebook's 8787), this machine only
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


def close_gateway(gateway: Any) -> None:
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
    """Stop a Gateway cluster and close its own ``Gateway`` client (see :func:`close_gateway`)."""
    try:
        cluster.shutdown()
    finally:
        if hasattr(cluster, "gateway"):
            vars(cluster.gateway).pop("_loop_runner", None)


def gateway_options(gateway: Any, given: Mapping[str, Any] | None) -> Any:
    """The gateway's cluster options with ``given`` set, each checked by the gateway's own option types."""
    options = gateway.cluster_options()
    for key, value in (given or {}).items():
        if key not in options:
            known = ", ".join(sorted(options)) or "none"
            raise GlacierflowError(
                f"unknown Dask Gateway cluster option {key!r} (--cluster-option); this gateway has: {known}"
            )
        try:
            options[key] = value
        except (TypeError, ValueError) as err:
            raise GlacierflowError(f"bad --cluster-option {key}={value!r}: {err}") from None
    return options


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
            options = gateway_options(gateway, cluster_options)
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
        workers = GATEWAY_WORKERS if workers is None else workers
        if isinstance(workers, tuple):
            cluster.adapt(minimum=workers[0], maximum=workers[1])
        else:
            cluster.scale(workers)
        client = ManagedClient(cluster.scheduler_address, security=cluster.security, set_as_default=True)
        client.gateway_cluster_name = cluster.name  # type: ignore[attr-defined]
        client.gateway_dashboard = cluster.dashboard_link  # type: ignore[attr-defined]  # proxied: reachable
    except BaseException:
        if cluster is not None:
            _shutdown_cluster(cluster)
        close_gateway(gateway)
        raise
    client._add_cleanup(lambda: close_gateway(gateway))
    client._add_cleanup(lambda: _shutdown_cluster(cluster))
    return client


def get_client(
    spec: str | None = None,
    *,
    workers: Workers = None,
    cluster_options: Mapping[str, Any] | None = None,
    timeout: float = 10.0,
    worker_timeout: float = WORKER_TIMEOUT,
    setup_workers: bool = True,
) -> distributed.Client | LocalScheduler:
    """Connect to (or start) the Dask cluster named by ``spec``.

    Parameters
    ----------
    spec
        Where to run, see the module docstring: ``None``/``"threads"``, ``"local"``, ``"local:N"``,
        ``"tcp://host:port"``, ``"gateway"``, ``"gateway://http://host:port"``, ``"sync"``.
    workers
        ``N`` or ``(min, max)`` (adaptive), see :func:`parse_workers`. Local: N single-threaded worker
        processes (default: :func:`local_mix`); threads: N threads; Gateway: N workers or adaptive (default
        :data:`GATEWAY_WORKERS`). Not for ``sync`` or an existing scheduler (it has its own workers).
    cluster_options
        Gateway cluster options (e.g. ``{"worker_memory": 8, "image": "..."}`` on Planetary Computer);
        unknown names raise a :class:`GlacierflowError` listing the gateway's options.
    timeout
        Seconds to wait for a scheduler address to answer.
    worker_timeout
        Seconds to wait for the first worker of a Gateway cluster or scheduler (none: a one-line error).
    setup_workers
        Register :class:`glacierflow.compute.workers.WorkerSetup` (GDAL settings, OpenCV threads, version check).

    Returns
    -------
    distributed.Client or LocalScheduler
        Use it as a context manager (or call ``close()``): whatever was started here is shut down.

    Raises
    ------
    GlacierflowError
        Unknown spec, unreachable scheduler or gateway, missing gateway address, no worker in time, a worker
        with another glacierflow version.
    """
    text = DEFAULT_CLUSTER if spec is None else spec.strip()
    gateway = text == "gateway" or text.startswith("gateway://")
    if cluster_options and not gateway:
        raise GlacierflowError(f"--cluster-option is for a Dask Gateway cluster, not --cluster {text!r}")
    client = _start(text, spec, workers, cluster_options, timeout)
    if isinstance(client, LocalScheduler):
        return client
    try:
        _ready(client, workers if not gateway or workers is not None else GATEWAY_WORKERS, worker_timeout,
               setup_workers)
    except BaseException:
        client.close()
        raise
    return client


def _start(text: str, spec: str | None, workers: Workers, cluster_options: Mapping[str, Any] | None,
           timeout: float) -> ManagedClient | LocalScheduler:
    """Start or connect (see :func:`get_client`); workers are not waited for here."""
    if text in ("threads", "sync", "synchronous", "single-threaded"):
        if workers is not None and (text != "threads" or isinstance(workers, tuple)):
            raise GlacierflowError(f"--workers {_workers_text(workers)} does not apply to --cluster {text}; "
                                   "use --cluster threads --workers N or --cluster local --workers N")
        return LocalScheduler("sync" if text != "threads" else "threads", num_workers=workers)  # type: ignore[arg-type]
    if text == "local" or text.startswith("local:"):
        if text.startswith("local:"):
            if workers is not None:
                raise GlacierflowError(f"--cluster {text} and --workers {_workers_text(workers)} both give the "
                                       "worker count; use --cluster local --workers N")
            count, _, per = text.split(":", 1)[1].partition("x")
            if not count.isdigit() or int(count) < 1 or (per and (not per.isdigit() or int(per) < 1)):
                raise GlacierflowError(f"bad worker count in --cluster {spec!r}; use e.g. local:4 or local:1x2")
            return _local(int(count), int(per) if per else 1)
        if isinstance(workers, tuple):
            return _local(None, None, adapt=workers)
        return _local(workers, None)
    if text.startswith(("tcp://", "tls://", "ws://", "wss://", "inproc://", "ucx://")):
        if workers is not None:
            raise GlacierflowError(f"--workers does not apply to an existing scheduler ({text}): it has its own "
                                   "workers; size it where it was started, or use --cluster gateway")
        return _scheduler(text, timeout)
    if text == "gateway":
        return _gateway(None, workers, cluster_options)
    if text.startswith("gateway://"):
        address = text[len("gateway://") :]
        if not address.startswith(("http://", "https://")):
            raise GlacierflowError(f"bad gateway address in --cluster {spec!r}; use gateway://http://host:port")
        return _gateway(address, workers, cluster_options)
    raise GlacierflowError(f"unknown --cluster {spec!r}; use one of {SPEC_FORMS}")


def _workers_text(workers: Workers) -> str:
    return f"{workers[0]}:{workers[1]}" if isinstance(workers, tuple) else str(workers)


def _ready(client: ManagedClient, workers: Workers, worker_timeout: float, setup: bool) -> None:
    """Wait for the first worker (unless adaptive from 0), then set every worker up."""
    minimum = workers[0] if isinstance(workers, tuple) else 1
    if minimum >= 1:
        try:
            client.wait_for_workers(1, timeout=worker_timeout)
        except TimeoutError:
            where = getattr(client, "gateway_cluster_name", None)
            raise GlacierflowError(
                f"no Dask worker joined {'Gateway cluster ' + where if where else client.scheduler.address} "
                f"within {worker_timeout:g} s; check the gateway's capacity and --cluster-option values "
                "(worker_memory, worker_cores), or use --cluster local"
            ) from None
    if setup:
        from glacierflow.compute.workers import prepare_workers

        prepare_workers(client)


def dashboard(client: object) -> str | None:
    """The dashboard URL of a distributed client (None for ``threads``/``sync``).

    A Gateway cluster's is the gateway's proxied address (the scheduler's own is private to the gateway).
    """
    try:
        return getattr(client, "gateway_dashboard", None) or getattr(client, "dashboard_link", None)
    except Exception:  # a scheduler without a dashboard (bokeh missing) raises from the property
        return None
