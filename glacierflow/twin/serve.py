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
import socket
import threading
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
    """Serve a directory over HTTP with range requests (uvicorn + Starlette StaticFiles) in a thread."""

    def __init__(self, root: Path, port: int | None = None):
        import uvicorn
        from starlette.applications import Starlette
        from starlette.routing import Mount
        from starlette.staticfiles import StaticFiles

        self.port = port or free_port()
        _check_port(self.port, "asset server")
        app = Starlette(routes=[Mount("/", StaticFiles(directory=str(root)))])
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def url(self) -> str:
        """Base URL of the served directory."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> AssetServer:
        """Start and wait until the server accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise GlacierflowError(f"the asset server could not start on port {self.port}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Stop the server and join its thread."""
        self._server.should_exit = True
        self._thread.join(timeout=10)


def served_items(twin_dir: Path, asset_url: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The twin's items with asset hrefs rewritten to ``asset_url``, and its collection."""
    items = json.loads((twin_dir / "items.json").read_text())["features"]
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
def serve_twin(
    twin_dir: str | Path, port: int | None = None, backend: str = "rustac", asset_port: int | None = None
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
        items, collection = served_items(twin_dir, assets.url)
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
