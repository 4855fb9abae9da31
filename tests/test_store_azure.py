"""Safe writes to az:// against Azurite, the real Azure Blob emulator (tests/azurite.py; no mocks).

What is faked: only the cloud itself (Azurite on 127.0.0.1 instead of Azure), and, in the interruption test, the
moment a write is killed (a real SIGKILL of a real writer process, at a chosen blob operation).
"""

from __future__ import annotations

import base64
import subprocess
import sys
import textwrap
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from glacierflow.errors import GlacierflowError
from glacierflow.storage import cloud
from glacierflow.storage.store import open_store, write_store
from glacierflow.testing import tiny_store_dataset

from .azurite import CONTAINER, KEY, leaks, start_azurite

pytest.importorskip("adlfs")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    yield from start_azurite(tmp_path_factory.mktemp("azurite"))


def _url(name: str) -> str:
    return f"az://{CONTAINER}/{name}-{uuid.uuid4().hex[:6]}.zarr"


def test_az_store_write_overwrite_and_failed_write(azurite: dict) -> None:
    so = azurite["options"]
    url = _url("parvati-3ms")
    write_store(tiny_store_dataset(1.0), url, storage_options=so)
    ds = open_store(url, storage_options=so, require=("ndsi",))
    assert float(ds["ndsi"].mean()) == 1.0 and ds.spatial_ref.attrs["epsg"] == 32643
    with pytest.raises(GlacierflowError, match="--overwrite"):
        write_store(tiny_store_dataset(2.0), url, storage_options=so)

    def boom(delayed: object) -> None:
        raise RuntimeError("connection lost")

    with pytest.raises(RuntimeError):
        write_store(tiny_store_dataset(5.0), url, overwrite=True, storage_options=so, compute=boom)
    assert float(open_store(url, storage_options=so)["ndsi"].mean()) == 1.0
    write_store(tiny_store_dataset(2.0), url, overwrite=True, storage_options=so)
    again = xr.open_zarr(url, storage_options=so, consolidated=False, decode_coords="all")
    np.testing.assert_array_equal(again["ndsi"].values, np.full((2, 4, 5), 2.0, np.float32))


# A writer process that SIGKILLs itself at its N-th call of one adlfs operation: chunk uploads (_pipe_file, during
# the computation) and blob copies (_cp_file: the previous store to its backup, then the new store into place).
_KILLER = textwrap.dedent("""
    import os, signal, sys
    import adlfs
    sys.path.insert(0, {repo!r})
    from glacierflow.storage.store import write_store
    from glacierflow.testing import tiny_store_dataset

    op, at, url, conn = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    original, calls = getattr(adlfs.AzureBlobFileSystem, op), [0]

    async def killing(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return await original(self, *args, **kwargs)

    setattr(adlfs.AzureBlobFileSystem, op, killing)
    write_store(tiny_store_dataset(5.0), url, overwrite=True, storage_options={{"connection_string": conn}})
    print("not killed", calls[0])
""")


def test_killed_az_write_leaves_the_previous_store_readable(azurite: dict, tmp_path: Path) -> None:
    so, fs = azurite["options"], azurite["fs"]
    first = _url("killed")
    write_store(tiny_store_dataset(1.0), first, storage_options=so)
    n_objects = len(fs.find(first[len("az://"):]))
    # kill points (before the N-th call runs): mid-computation, mid-backup of the old store, mid-copy of the new
    # one (the old one removed: n_objects copies made the backup)
    points = [("_pipe_file", 3), ("_cp_file", n_objects // 2), ("_cp_file", n_objects + 2)]
    urls = [first] + [_url("killed") for _ in points[1:]]
    for url in urls[1:]:
        write_store(tiny_store_dataset(1.0), url, storage_options=so)
    script = tmp_path / "killer.py"
    script.write_text(_KILLER.format(repo=str(REPO)))
    procs = [subprocess.Popen([sys.executable, str(script), op, str(at), url, azurite["connection_string"]],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for (op, at), url in zip(points, urls, strict=True)]
    for proc, point in zip(procs, points, strict=True):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == -9, (point, out, err[-2000:])  # killed where intended, not finished
    reference = _url("reference")
    write_store(tiny_store_dataset(1.0), reference, storage_options=so)
    before = open_store(reference, storage_options=so).load()  # the store has one group: its root is all of it
    for url, point in zip(urls, points, strict=True):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = open_store(url, storage_options=so, require=("ndsi",)).load()
            xr.testing.assert_identical(ds, before)  # the previous store, whole: values, coordinates, attributes
        replaced = [w for w in caught if "was being replaced" in str(w.message)]
        # killed after the old store's root metadata went: read from the kept copy, and said so
        assert bool(replaced) == (point[1] > n_objects), point
        write_store(tiny_store_dataset(2.0), url, overwrite=True, storage_options=so)  # the next run finishes the job
        assert float(open_store(url, storage_options=so)["ndsi"].mean()) == 2.0
        name = url.rsplit("/", 1)[1]
        assert not [p for p in fs.ls(CONTAINER, detail=False) if p.rsplit("/", 1)[1].startswith(f".{name}.old-")]


def test_credentials_from_the_environment_and_errors_without_them(azurite: dict, monkeypatch) -> None:
    url = _url("env")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite["connection_string"])
    write_store(tiny_store_dataset(3.0), url)  # adlfs' own variable, no options given
    assert float(open_store(url)["ndsi"].mean()) == 3.0
    # the environment's credentials are passed on explicitly: they reach workers whose environment lacks them
    assert cloud.storage_options(url, None)["connection_string"] == azurite["connection_string"]
    for var in cloud.ENV["az"].values():
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(GlacierflowError) as err:
        open_store(url)
    line = str(err.value)
    assert "\n" not in line and url in line and "AZURE_STORAGE_CONNECTION_STRING" in line
    assert "--storage-option" in line
    other = base64.b64encode(b"some-other-account-key-0123456789").decode()
    wrong = azurite["connection_string"].replace(KEY, other)
    with pytest.raises(GlacierflowError, match=r"credentials refused: HTTP 403") as err:
        write_store(tiny_store_dataset(3.0), _url("wrong"), storage_options={"connection_string": wrong})
    assert not leaks([], str(err.value)) and other not in str(err.value)
    with pytest.raises(GlacierflowError, match=r"credentials refused or missing: AzureSigningError"):
        write_store(tiny_store_dataset(3.0), _url("wrong"),
                    storage_options={"connection_string": wrong.replace(other, "x=")})


def test_secrets_never_reach_store_attributes(azurite: dict) -> None:
    url = _url("attrs")
    ds = tiny_store_dataset(1.0)
    ds.attrs["note"] = f"written with {azurite['connection_string']}"  # e.g. a URL or message quoting the key
    write_store(ds, url, storage_options=azurite["options"])
    stored = open_store(url, storage_options=azurite["options"])
    assert stored.attrs["note"] == "written with <redacted>"
    blobs = azurite["fs"].find(url[len("az://"):])
    assert blobs and not leaks([], *(azurite["fs"].cat_file(b).decode("latin-1") for b in blobs))


@pytest.mark.skipif(__import__("importlib").util.find_spec("s3fs") is not None,
                    reason="not applicable here: s3fs is installed (the test checks the line without it)")
def test_s3_without_its_package_is_one_line() -> None:
    with pytest.raises(GlacierflowError, match=r"^store s3://bucket/c\.zarr needs the s3fs package: pip install s3fs$"):
        open_store("s3://bucket/c.zarr")


def test_environment_credentials_reach_workers_without_them(azurite: dict, monkeypatch) -> None:
    import distributed

    for var in cloud.ENV["az"].values():
        monkeypatch.delenv(var, raising=False)
    # the worker process starts before the credentials are in the environment: it never sees them
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                                  host="127.0.0.1") as cluster, distributed.Client(cluster) as client:
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite["connection_string"])
        assert client.run(lambda: __import__("os").environ.get("AZURE_STORAGE_CONNECTION_STRING")) == {
            w: None for w in client.scheduler_info()["workers"]}
        url = _url("worker-env")
        # chunks written by the worker
        write_store(tiny_store_dataset(4.0), url, compute=lambda d: client.compute(d, sync=True))
        assert float(open_store(url)["ndsi"].mean()) == 4.0
