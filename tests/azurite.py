"""Azurite, the real Azure Blob emulator (installed into .services/ by scripts/setup-services.sh), for az:// tests.

What is faked: only the cloud itself. Azurite speaks the Blob REST API on 127.0.0.1; adlfs and Zarr use it exactly
as they would use Azure storage. It runs with one account of ours (``AZURITE_ACCOUNTS``) whose key is
recognisable, so that tests can look for it in everything glacierflow writes or prints.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from glacierflow.twin.stac_servers import free_port

REPO = Path(__file__).resolve().parents[1]
AZURITE = REPO / ".services" / "node_modules" / ".bin" / "azurite-blob"
ACCOUNT = "gftestaccount"
# A fake account key (base64, as Azure keys are) that reads as what it is wherever it turns up.
KEY_TEXT = b"glacierflow-fake-account-key-must-never-leak-0123456789"
KEY = base64.b64encode(KEY_TEXT).decode()
CONTAINER = "glacierflow"


def start_azurite(location: Path) -> Iterator[dict]:
    """Start Azurite on a free port; yield ``{"connection_string", "port", "location", "options"}``."""
    exe = AZURITE if AZURITE.exists() else shutil.which("azurite-blob")
    if exe is None:
        pytest.skip("Azurite not installed; run scripts/setup-services.sh")
    import adlfs

    port = free_port()
    proc = subprocess.Popen(
        [str(exe), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(location), "--silent",
         "--skipApiVersionCheck", "--loose", "--disableTelemetry"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "AZURITE_ACCOUNTS": f"{ACCOUNT}:{KEY}"})
    conn = (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT};")
    deadline = time.monotonic() + 30
    while True:  # wait for the port first: the Azure SDK's own retries back off for many seconds
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.terminate()
                pytest.fail("Azurite did not start")
            time.sleep(0.1)
    fs = adlfs.AzureBlobFileSystem(connection_string=conn, use_listings_cache=False)
    fs.mkdir(CONTAINER)
    try:
        yield {"connection_string": conn, "port": port, "location": location,
               "options": {"connection_string": conn}, "fs": fs}
    finally:
        from glacierflow.storage.cloud import close_filesystems

        close_filesystems()
        proc.terminate()
        proc.wait(timeout=10)


def leaks(paths: list[Path], *texts: str) -> list[str]:
    """Where the fake key (as text or decoded) appears: files under ``paths`` and the given ``texts``."""
    needles = [KEY.encode(), KEY_TEXT]
    found = [f"text {i}" for i, t in enumerate(texts) if any(n.decode() in t for n in needles)]
    for root in paths:
        for f in [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]:
            data = f.read_bytes()
            found += [str(f) for n in needles if n in data]
    return found
