"""``glacierflow twin serve``: the twin's COGs over HTTP (range requests) + a real STAC API server.

GDAL reads the COGs with HTTP range requests, as it reads Azure blob storage on Planetary Computer.
The asset server is Starlette's ``StaticFiles`` (which answers ``Range``) under uvicorn; the STAC API is
real STAC server software from :mod:`glacierflow.twin.stac_servers` (rustac's memory backend by default,
pgstac on request).
"""

from __future__ import annotations

import contextlib
import copy
import errno
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from glacierflow.errors import GlacierflowError
from glacierflow.twin.make import load_twin_meta
from glacierflow.twin.stac_servers import free_port

BACKENDS = ("rustac", "pgstac")


def _check_port(port: int, what: str) -> None:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise GlacierflowError(
                    f"port {port} ({what}) is in use; pass another --port, or stop the process using it"
                ) from None
            raise


class AssetServer:
    """Serve a directory over HTTP with range requests (uvicorn + Starlette StaticFiles).

    It runs in a child process: GDAL's HTTP reads in this process may hold the GIL, which would starve a
    server thread in the same process.
    """

    def __init__(self, root: Path, port: int | None = None):
        self.root = Path(root)
        self.port = port or free_port()
        _check_port(self.port, "asset server")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of the served directory."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> AssetServer:
        """Start and wait until the server answers."""
        cmd = [sys.executable, "-m", "glacierflow.twin.asset_server", str(self.root), str(self.port)]
        self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      start_new_session=True)
        deadline = time.monotonic() + 20
        while True:
            if self._proc.poll() is not None:
                err = (self._proc.stderr.read() if self._proc.stderr else b"").decode(errors="replace")
                last = err.strip().splitlines()[-1] if err.strip() else "no output"
                raise GlacierflowError(f"the asset server could not start on port {self.port}: {last}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise GlacierflowError(f"the asset server did not answer on port {self.port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server process."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None


def acquired_by(item: dict[str, Any], until: str | None) -> bool:
    """Whether ``item`` was acquired on or before the day ``until`` (``YYYY-MM-DD``; None: always)."""
    if until is None:
        return True
    import pandas as pd

    day = pd.Timestamp(str(until)[:10], tz="UTC") + pd.Timedelta(days=1)
    return pd.Timestamp(item["properties"]["datetime"]) < day


def served_items(twin_dir: Path, asset_url: str, until: str | None = None
                 ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The twin's items with asset hrefs rewritten to ``asset_url``, and its collection.

    ``until``: only the items acquired on or before that day (the world as of that date).
    """
    items = [it for it in json.loads((twin_dir / "items.json").read_text())["features"] if acquired_by(it, until)]
    collection = json.loads((twin_dir / "collection.json").read_text())
    out = []
    for item in items:
        item = copy.deepcopy(item)
        for asset in item["assets"].values():
            if "://" not in asset["href"]:
                asset["href"] = f"{asset_url}/{asset['href'].lstrip('./')}"
        out.append(item)
    return out, collection


@contextlib.contextmanager
def serve_twins(twin_dirs: list[str | Path], port: int | None = None, backend: str = "rustac",
                until: str | None = None) -> Iterator[dict[str, Any]]:
    """Serve several twins (e.g. two glaciers) behind **one** STAC API and one asset server.

    Yields ``{"stac_url", "asset_url", "metas"}`` with ``metas`` the twins' metadata by folder name. Item
    ids must differ between the twins (twins of different glaciers do: their WRS path/row differ).
    """
    from glacierflow.twin import stac_servers

    if backend not in BACKENDS:
        raise GlacierflowError(f"unknown STAC backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    dirs = [Path(d).resolve() for d in twin_dirs]
    metas = {d.name: load_twin_meta(d) for d in dirs}
    root = Path(os.path.commonpath(dirs)) if len(dirs) > 1 else dirs[0].parent
    assets = AssetServer(root).start()
    try:
        items, collection = [], None
        for d in dirs:
            got, collection = served_items(d, f"{assets.url}/{d.relative_to(root).as_posix()}", until)
            items += got
        ids = [it["id"] for it in items]
        if len(set(ids)) != len(ids):
            raise GlacierflowError("the twins share item ids; serve twins of different glaciers or seeds apart")
        work = root / f".twins.serve-{assets.port}"
        work.mkdir(exist_ok=True)
        try:
            server = stac_servers.rustac_memory_server if backend == "rustac" else stac_servers.pgstac_server
            with server(items, collection, work, port=port) as stac_url:
                yield {"stac_url": stac_url.rstrip("/"), "asset_url": assets.url, "metas": metas}
        finally:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    finally:
        assets.stop()


@contextlib.contextmanager
def serve_twin(
    twin_dir: str | Path, port: int | None = None, backend: str = "rustac", asset_port: int | None = None,
    until: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Serve a twin; yields ``{"stac_url", "asset_url", "meta"}`` and stops everything on exit.

    Parameters
    ----------
    twin_dir
        A directory written by ``glacierflow twin make``.
    port
        STAC API port (default: a free one).
    backend
        ``rustac`` (memory backend: light, ignores CQL2 filters) or ``pgstac`` (PostgreSQL + PostGIS +
        pgstac, as Planetary Computer runs; needs ``scripts/setup-services.sh``).
    asset_port
        Port of the COG server (default: a free one).
    until
        Serve the world as of this day (``YYYY-MM-DD``): items acquired later are hidden (tests and the demo
        watch scenes arrive by serving the same twin again with a later date).
    """
    from glacierflow.twin import stac_servers

    if backend not in BACKENDS:
        raise GlacierflowError(f"unknown STAC backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    twin_dir = Path(twin_dir)
    meta = load_twin_meta(twin_dir)
    if port is not None:
        _check_port(port, "STAC API")
    assets = AssetServer(twin_dir, asset_port).start()
    try:
        items, collection = served_items(twin_dir, assets.url, until)
        work = twin_dir.parent / f".{twin_dir.name}.serve-{assets.port}"
        work.mkdir(exist_ok=True)
        try:
            server = stac_servers.rustac_memory_server if backend == "rustac" else stac_servers.pgstac_server
            with server(items, collection, work, port=port) as stac_url:
                yield {"stac_url": stac_url.rstrip("/"), "asset_url": assets.url, "meta": meta}
        finally:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    finally:
        assets.stop()
