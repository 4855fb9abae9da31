"""Real STAC API server software on 127.0.0.1, serving a list of item dicts.

Two backends, both served by ``rustac serve`` (the Rust STAC server shipped in the ``rustac`` wheel):

- :class:`RustacMemoryServer`: rustac's in-process memory backend. Light (pip only), starts in a fraction
  of a second; it does **not** advertise CQL2 filter conformance and returns zero items for any ``filter``.
- :class:`PgstacServer`: a private PostgreSQL cluster with PostGIS and pgstac (the kind of backend Planetary
  Computer runs), loaded with pypgstac and served by ``rustac serve --pgstac DSN``. Supports CQL2 filters.

Both are classes with ``start()`` / ``stop()`` (for ``glacierflow twin serve``, which keeps a server up
until Ctrl-C) and context managers (:func:`rustac_memory_server`, :func:`pgstac_server`) that yield the API
root URL. The items' asset hrefs are served as given (the caller serves the files); the items' navigation
links (``self``, ``root``, ``parent``, ``collection``) are dropped because the server writes its own.
The collection document served always has the items' collection id and an extent that covers the items,
so pystac-client's collection search finds it.

Child processes run in their own session, so a Ctrl-C in the terminal reaches only Python, which then stops
them in order (rustac first, then PostgreSQL).
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import errno
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from glacierflow.errors import GlacierflowError

__all__ = [
    "PgstacServer",
    "RustacMemoryServer",
    "StacServer",
    "collection_for_items",
    "free_port",
    "pgstac_available",
    "pgstac_server",
    "rustac_memory_server",
]

_NAV_RELS = frozenset({"self", "root", "parent", "collection", "items"})
_START_TIMEOUT_S = 30.0
_POSTGRES_USER = "postgres"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_in_use(port: int) -> str:
    return f"port {port} is in use; pass --port or stop the other server"


def _check_port_free(port: int) -> None:
    """Raise a one-line GlacierflowError if ``port`` on 127.0.0.1 is taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise GlacierflowError(_port_in_use(port)) from None
            msg = f"cannot bind 127.0.0.1:{port} ({err.strerror}); pass another --port"
            raise GlacierflowError(msg) from None


def _strip_links(item: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(item)
    out["links"] = [link for link in out.get("links", []) if link.get("rel") not in _NAV_RELS]
    return out


def _item_bbox(item: dict[str, Any]) -> list[float]:
    if item.get("bbox"):
        b = item["bbox"]
        return [b[0], b[1], b[-3], b[-2]] if len(b) == 6 else list(b)
    xs: list[float] = []
    ys: list[float] = []

    def walk(coords: Any) -> None:
        if coords and isinstance(coords[0], (int, float)):
            xs.append(coords[0])
            ys.append(coords[1])
        else:
            for c in coords:
                walk(c)

    walk((item.get("geometry") or {}).get("coordinates", []))
    if not xs:
        raise GlacierflowError(f"item '{item.get('id')}' has neither bbox nor geometry; fix the item JSON")
    return [min(xs), min(ys), max(xs), max(ys)]


def _item_times(item: dict[str, Any]) -> tuple[str, str]:
    p = item.get("properties", {})
    start = p.get("datetime") or p.get("start_datetime")
    end = p.get("datetime") or p.get("end_datetime")
    if not start or not end:
        raise GlacierflowError(f"item '{item.get('id')}' has no datetime; fix the item JSON")
    return start, end


def collection_for_items(items: list[dict[str, Any]], collection: dict[str, Any] | None) -> dict[str, Any]:
    """Return the collection document to serve for ``items``.

    Parameters
    ----------
    items
        STAC item dicts; all must name the same ``collection``.
    collection
        A collection document to start from (e.g. Planetary Computer's ``landsat-c2-l2``), or None for a
        minimal one.

    Returns
    -------
    dict
        A copy whose ``id`` is the items' collection id and whose extent covers the items (the server holds
        exactly these items, so a global extent would make collection search match everywhere).
    """
    ids = sorted({str(item.get("collection")) for item in items})
    if len(ids) != 1 or ids == ["None"]:
        raise GlacierflowError(f"items must name one collection, found {ids}; set each item's 'collection'")
    cid = ids[0]
    if collection is not None and collection.get("id") != cid:
        raise GlacierflowError(
            f"collection id '{collection.get('id')}' does not match the items' collection '{cid}'; "
            "pass the matching collection document"
        )
    doc = copy.deepcopy(collection) if collection is not None else {
        "type": "Collection",
        "stac_version": "1.0.0",
        "id": cid,
        "description": f"{cid} (served by glacierflow)",
        "license": "proprietary",
    }
    doc.setdefault("type", "Collection")
    doc.setdefault("stac_version", "1.0.0")
    doc.setdefault("description", cid)
    doc.setdefault("license", "proprietary")
    doc["links"] = [link for link in doc.get("links", []) if link.get("rel") not in _NAV_RELS]
    boxes = [_item_bbox(item) for item in items]
    times = [_item_times(item) for item in items]
    doc["extent"] = {
        "spatial": {"bbox": [[min(b[0] for b in boxes), min(b[1] for b in boxes),
                              max(b[2] for b in boxes), max(b[3] for b in boxes)]]},
        "temporal": {"interval": [[min(t[0] for t in times), max(t[1] for t in times)]]},
    }
    return doc


def _rustac_command() -> list[str]:
    """Command that runs the rustac CLI installed with the ``rustac`` wheel (next to this Python first)."""
    beside = Path(sys.executable).parent / "rustac"
    found = str(beside) if beside.exists() else shutil.which("rustac")
    if found is None:
        raise GlacierflowError("the rustac CLI is not installed; pip install \"glacierflow[twin]\" (rustac ships it)")
    return [found]


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, port: int, what: str) -> None:
    """Poll ``url`` until it answers 200, failing early if ``proc`` exits."""
    deadline = time.monotonic() + _START_TIMEOUT_S
    while True:
        code = proc.poll()
        if code is not None:
            text = log.read_text(errors="replace") if log.exists() else ""
            if "Address already in use" in text:
                raise GlacierflowError(_port_in_use(port))
            last = next((ln for ln in reversed(text.splitlines()) if ln.strip()), "no output")
            raise GlacierflowError(f"{what} exited with code {code}: {last.strip()}; see {log}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise GlacierflowError(f"{what} did not answer at {url} in {_START_TIMEOUT_S:.0f} s; see {log}")
        time.sleep(0.02)


def _terminate(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


class StacServer:
    """Base class: a STAC API served by ``rustac serve`` on 127.0.0.1.

    Use as ``with Server(...) as url:`` or call :meth:`start` / :meth:`stop` (the CLI's long-running form).
    ``url`` is the API root, e.g. ``http://127.0.0.1:PORT``; ``startup_s`` is the measured start-up time.
    """

    def __init__(self, items: list[dict[str, Any]], collection: dict[str, Any] | None, workdir: Path,
                 port: int | None = None) -> None:
        if not items:
            raise GlacierflowError("no items to serve; make the twin first (`glacierflow twin make DIR`)")
        self.items = [_strip_links(item) for item in items]
        self.collection = collection_for_items(self.items, collection)
        self.workdir = Path(workdir)
        self.port = port
        self.url: str | None = None
        self.startup_s: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_handle: Any = None

    # -- subclasses implement these -------------------------------------------------------------------
    def _start_backend(self) -> list[str]:
        """Prepare the backend; return the extra ``rustac serve`` arguments."""
        raise NotImplementedError

    def _stop_backend(self) -> None:
        """Stop and remove whatever :meth:`_start_backend` created."""

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> str:
        """Start the server, wait until it answers, and return the API root URL."""
        if self._proc is not None:
            raise GlacierflowError(f"server already running at {self.url}; stop it first")
        t0 = time.perf_counter()
        port = self.port if self.port is not None else free_port()
        _check_port_free(port)
        self.workdir.mkdir(parents=True, exist_ok=True)
        atexit.register(self.stop)
        try:
            extra = self._start_backend()
            url = f"http://127.0.0.1:{port}"
            log = self._log_path()
            self._log_handle = open(log, "wb")  # noqa: SIM115 - closed in stop()
            self._proc = subprocess.Popen(
                [*_rustac_command(), "serve", "--addr", f"127.0.0.1:{port}", *extra],
                stdin=subprocess.DEVNULL, stdout=self._log_handle, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            _wait_http(url + "/", self._proc, log, port, "rustac serve")
            _wait_http(f"{url}/collections/{self.collection['id']}", self._proc, log, port, "rustac serve")
        except BaseException:
            self.stop()
            raise
        self.port = port
        self.url = url
        self.startup_s = time.perf_counter() - t0
        return url

    def stop(self) -> None:
        """Stop the server and its backend; safe to call twice."""
        _terminate(self._proc)
        self._proc = None
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        self._stop_backend()
        self.url = None
        atexit.unregister(self.stop)

    def wait(self) -> int:
        """Block until the server process exits (for ``glacierflow twin serve``); return its exit code."""
        if self._proc is None:
            raise GlacierflowError("server is not running; call start() first")
        return self._proc.wait()

    def _log_path(self) -> Path:
        return self.workdir / "rustac-serve.log"

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RustacMemoryServer(StacServer):
    """``rustac serve`` with its in-memory backend, loaded from JSON files written under ``workdir``."""

    def _start_backend(self) -> list[str]:
        coll = self.workdir / "collection.json"
        items = self.workdir / "items.json"
        coll.write_text(json.dumps(self.collection))
        items.write_text(json.dumps({"type": "FeatureCollection", "features": self.items}))
        return [str(coll), str(items)]


def _pg_bindir() -> Path | None:
    """Newest ``/usr/lib/postgresql/*/bin`` holding initdb, or the one on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def _postgis_installed(bindir: Path) -> bool:
    try:
        sharedir = subprocess.run([str(bindir / "pg_config"), "--sharedir"], capture_output=True, text=True,
                                  check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        sharedir = f"/usr/share/postgresql/{bindir.parts[-2]}"
    return bool(glob.glob(os.path.join(sharedir, "extension", "postgis.control")))


def pgstac_available() -> bool:
    """Whether PostgreSQL, PostGIS and pypgstac are installed (``scripts/setup-services.sh`` does that)."""
    bindir = _pg_bindir()
    if bindir is None or not (bindir / "pg_ctl").exists() or not _postgis_installed(bindir):
        return False
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam(_POSTGRES_USER)
        except KeyError:
            return False
    try:
        import pypgstac.load  # noqa: F401
    except ImportError:
        return False
    return True


class PgstacServer(StacServer):
    """A private PostgreSQL + PostGIS + pgstac cluster, served by ``rustac serve --pgstac DSN``.

    The cluster lives in a fresh temporary folder (world-traversable system temp, so the ``postgres`` user
    can reach it when we run as root), listens on 127.0.0.1 at a free port with ``fsync=off``, and is
    stopped and removed by :meth:`stop`.
    """

    def __init__(self, items: list[dict[str, Any]], collection: dict[str, Any] | None, workdir: Path,
                 port: int | None = None, pg_port: int | None = None) -> None:
        super().__init__(items, collection, workdir, port)
        self.pg_port = pg_port
        self.dsn: str | None = None
        self._pgdir: Path | None = None
        self._bindir: Path | None = None

    def _pg_run(self, args: list[str]) -> None:
        assert self._pgdir is not None
        as_root = os.geteuid() == 0
        user = _POSTGRES_USER if as_root else None
        try:
            subprocess.run(args, cwd=self._pgdir, capture_output=True, text=True, check=True, user=user,
                           group=user, start_new_session=True, timeout=120)
        except subprocess.CalledProcessError as err:
            text = (err.stderr or "") + (err.stdout or "")
            log = self._pgdir / "postgres.log"
            if log.exists():
                text += log.read_text(errors="replace")
            last = next((ln for ln in reversed(text.splitlines()) if ln.strip()), "no output")
            raise GlacierflowError(f"{Path(args[0]).name} failed: {last.strip()}") from None

    def _start_backend(self) -> list[str]:
        if not pgstac_available():
            raise GlacierflowError(
                "PostgreSQL + PostGIS + pypgstac are not installed; run scripts/setup-services.sh "
                "(and pip install 'glacierflow[pgstac]') or use the rustac memory server"
            )
        self._bindir = _pg_bindir()
        assert self._bindir is not None
        pg_port = self.pg_port if self.pg_port is not None else free_port()
        _check_port_free(pg_port)
        self._pgdir = Path(tempfile.mkdtemp(prefix="glacierflow-pgstac-"))
        os.chmod(self._pgdir, 0o755)
        if os.geteuid() == 0:
            shutil.chown(self._pgdir, _POSTGRES_USER, _POSTGRES_USER)
        data, sock, log = self._pgdir / "data", self._pgdir / "sock", self._pgdir / "postgres.log"
        self._pg_run([str(self._bindir / "initdb"), "-D", str(data), "-U", _POSTGRES_USER, "--auth=trust",
                      "-E", "UTF8", "--no-sync"])
        self._pg_run(["mkdir", "-p", str(sock)])
        opts = (f"-p {pg_port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off")
        pg_ctl = str(self._bindir / "pg_ctl")
        self._pg_run([pg_ctl, "-D", str(data), "-l", str(log), "-w", "-o", opts, "start"])
        self.dsn = f"postgresql://{_POSTGRES_USER}@127.0.0.1:{pg_port}/postgres"
        self.pg_port = pg_port
        self._load()
        return ["--pgstac", self.dsn]

    def _load(self) -> None:
        """Migrate pgstac, set the search path, and load the collection and items."""
        from pypgstac.db import PgstacDB
        from pypgstac.load import Loader, Methods
        from pypgstac.migrate import Migrate

        assert self.dsn is not None
        with PgstacDB(dsn=self.dsn) as db:
            Migrate(db).run_migration()
        with PgstacDB(dsn=self.dsn) as db:
            conn = db.connect()
            with conn.cursor() as cur:
                cur.execute("ALTER DATABASE postgres SET search_path TO pgstac, public;")
            conn.commit()
        with PgstacDB(dsn=self.dsn) as db:
            loader = Loader(db)
            loader.load_collections(iter([self.collection]), Methods.upsert)
            loader.load_items(iter(copy.deepcopy(self.items)), Methods.upsert)

    def _stop_backend(self) -> None:
        if self._pgdir is None:
            return
        data = self._pgdir / "data"
        if self._bindir is not None and (data / "postmaster.pid").exists():
            with contextlib.suppress(GlacierflowError, subprocess.TimeoutExpired):
                self._pg_run([str(self._bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])
        shutil.rmtree(self._pgdir, ignore_errors=True)
        self._pgdir = None
        self.dsn = None

    def _log_path(self) -> Path:
        return self.workdir / "rustac-serve-pgstac.log"


@contextlib.contextmanager
def rustac_memory_server(items: list[dict[str, Any]], collection: dict[str, Any] | None, workdir: Path,
                         port: int | None = None) -> Iterator[str]:
    """Serve ``items`` with ``rustac serve`` (memory backend) on 127.0.0.1; yield the API root URL.

    Parameters
    ----------
    items
        STAC item dicts (asset hrefs already final HTTP URLs).
    collection
        The collection document, or None to build a minimal one (id and extent from the items).
    workdir
        Folder for the JSON files rustac loads and its log.
    port
        Port to listen on; a free one when None.

    Raises
    ------
    GlacierflowError
        If the port is in use or rustac fails to start.
    """
    with RustacMemoryServer(items, collection, workdir, port) as url:
        yield url


@contextlib.contextmanager
def pgstac_server(items: list[dict[str, Any]], collection: dict[str, Any] | None, workdir: Path,
                  port: int | None = None) -> Iterator[str]:
    """Serve ``items`` from a private PostgreSQL + pgstac cluster via ``rustac serve --pgstac``.

    Parameters are those of :func:`rustac_memory_server`; the cluster lives in a temporary folder that is
    removed at exit. Check :func:`pgstac_available` first.

    Raises
    ------
    GlacierflowError
        If PostgreSQL/PostGIS/pypgstac are missing, the port is in use, or a step fails.
    """
    with PgstacServer(items, collection, workdir, port) as url:
        yield url
