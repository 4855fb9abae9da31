"""Safe writes to az:// against Azurite, the real Azure Blob emulator (installed by scripts/setup-services.sh).

What is faked: only the cloud itself. Azurite speaks the Blob REST API on 127.0.0.1; adlfs and Zarr use it
exactly as they would use Azure storage.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from glacierflow.errors import GlacierflowError
from glacierflow.store import open_store, write_store
from glacierflow.twin.stac_servers import free_port

from .test_store import _ds

pytest.importorskip("adlfs")
REPO = Path(__file__).resolve().parents[1]
AZURITE = REPO / ".services" / "node_modules" / ".bin" / "azurite-blob"
# The emulator's documented development account (public, not a secret).
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    exe = AZURITE if AZURITE.exists() else shutil.which("azurite-blob")
    if exe is None:
        pytest.skip("Azurite not installed; run scripts/setup-services.sh")
    port = free_port()
    proc = subprocess.Popen(
        [str(exe), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location",
         str(tmp_path_factory.mktemp("azurite")), "--silent", "--skipApiVersionCheck", "--loose",
         "--disableTelemetry"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    conn = (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")
    import adlfs

    fs = adlfs.AzureBlobFileSystem(connection_string=conn, use_listings_cache=False)
    deadline = time.monotonic() + 20
    while True:
        try:
            fs.mkdir("glacierflow")
            break
        except Exception:  # noqa: BLE001 - Azurite still starting
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.terminate()
                pytest.fail("Azurite did not start")
            time.sleep(0.2)
    del fs
    yield {"connection_string": conn, "use_listings_cache": False}
    _close_filesystems(adlfs.AzureBlobFileSystem)
    proc.terminate()
    proc.wait(timeout=10)


def _close_filesystems(cls: type) -> None:
    """Close every ``cls`` filesystem now, while the event loops that opened their clients still run.

    adlfs closes its Azure clients in ``weakref.finalize(fs, sync, fs.loop, close_service_client, fs)``; the
    finalizer holds ``fs`` itself, so it never runs before interpreter exit, when the loops have stopped
    ("RuntimeError: Loop is not running" tracebacks, unclosed aiohttp sessions). Run those finalizers here:
    on fsspec's loop for sync instances, on zarr's loop for the asynchronous ones zarr opened (``loop=None``).
    """
    from zarr.core.sync import sync as zarr_sync

    cls.clear_instance_cache()
    for finalizer in list(weakref.finalize._registry):  # the registry of live finalizers (stdlib, since 3.4)
        info = finalizer.peek()
        if info is None or not isinstance(info[0], cls) or len(info[2]) != 3:
            continue
        loop, close, fs = info[2]
        if loop is not None and not loop.is_closed():
            finalizer()
        elif finalizer.detach() is not None:
            zarr_sync(close(fs))


def test_az_store_write_overwrite_and_failed_write(azurite: dict) -> None:
    url = "az://glacierflow/parvati-3ms.zarr"
    write_store(_ds(1.0), url, storage_options=azurite)
    ds = open_store(url, storage_options=azurite, require=("ndsi",))
    assert float(ds["ndsi"].mean()) == 1.0 and ds.spatial_ref.attrs["epsg"] == 32643
    with pytest.raises(GlacierflowError, match="--overwrite"):
        write_store(_ds(2.0), url, storage_options=azurite)

    def boom(delayed: object) -> None:
        raise RuntimeError("connection lost")

    with pytest.raises(RuntimeError):
        write_store(_ds(5.0), url, overwrite=True, storage_options=azurite, compute=boom)
    assert float(open_store(url, storage_options=azurite)["ndsi"].mean()) == 1.0
    write_store(_ds(2.0), url, overwrite=True, storage_options=azurite)
    again = xr.open_zarr(url, storage_options=azurite, consolidated=False, decode_coords="all")
    np.testing.assert_array_equal(again["ndsi"].values, np.full((2, 4, 5), 2.0, np.float32))
