"""Real STAC servers (rustac memory, rustac + pgstac) start, serve the items, and stop cleanly."""

from __future__ import annotations

import socket
import warnings
from pathlib import Path

import httpx
import pytest
from pystac_client import Client

from glacierflow.errors import GlacierflowError
from glacierflow.twin.stac_servers import (
    PgstacServer,
    RustacMemoryServer,
    collection_for_items,
    free_port,
    pgstac_available,
    rustac_memory_server,
)

from .conftest import PGSTAC_SKIP, varied_items

# union of the 21 varied items' bboxes (20 Landsat-9 scenes from Antarctica to Queensland + one in Kenya)
EXPECTED_BBOX = [35.99618514, -76.30742313880607, 156.4631214114148, -0.50129435]


def _refused(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_collection_for_items_sets_id_and_extent(pc_collection):
    items = varied_items()
    doc = collection_for_items(items, pc_collection)
    assert doc["id"] == "landsat-c2-l2"
    assert doc["extent"]["spatial"]["bbox"] == [pytest.approx(EXPECTED_BBOX)]
    # newest: index 0, not shifted; oldest: index 19, shifted back 380 days
    interval = [["2022-09-23T23:39:52.008574Z", "2023-10-08T23:55:50.758410Z"]]
    assert doc["extent"]["temporal"]["interval"] == interval
    assert pc_collection["extent"]["spatial"]["bbox"] == [[-180.0, -90.0, 180.0, 90.0]]  # input untouched
    assert all(link["rel"] not in {"self", "root", "parent"} for link in doc["links"])
    minimal = collection_for_items(items, None)
    assert minimal["id"] == "landsat-c2-l2" and minimal["extent"] == doc["extent"]
    with pytest.raises(GlacierflowError, match="does not match the items' collection 'landsat-c2-l2'"):
        collection_for_items(items, {**pc_collection, "id": "sentinel-2-l2a"})


def test_served_collection_and_items(stac_server):
    client = Client.open(stac_server.url)
    coll = client.get_collection("landsat-c2-l2")
    assert coll.id == "landsat-c2-l2"
    assert coll.extent.spatial.bboxes == [pytest.approx(EXPECTED_BBOX)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # neither server conforms to collection-search: pystac-client filters
        assert [c.id for c in client.collection_search(bbox=[150, -36, 154, -28]).collections()] == [
            "landsat-c2-l2"
        ]
        assert list(client.collection_search(bbox=[-10, 40, 0, 50]).collections()) == []
    ids = [item["id"] for item in client.search(collections=["landsat-c2-l2"], limit=50).items_as_dicts()]
    assert sorted(ids) == sorted(item["id"] for item in varied_items())
    one = client.get_collection("landsat-c2-l2").get_item("LE07_L2SP_168061_20121222_02_T1")
    # navigation links are the server's own, not Planetary Computer's
    assert one.get_self_href().startswith(stac_server.url)
    assert one.assets["red"].href.startswith("https://landsateuwest.blob.core.windows.net/")


def test_rustac_conformance_has_no_filter(rustac_server):
    conforms = httpx.get(rustac_server.url + "/conformance").json()["conformsTo"]
    assert "https://api.stacspec.org/v1.0.0/item-search" in conforms
    assert not any("filter" in uri for uri in conforms)


def test_pgstac_conformance_has_filter(pgstac_stac_server):
    conforms = httpx.get(pgstac_stac_server.url + "/conformance").json()["conformsTo"]
    assert "http://www.opengis.net/spec/cql2/1.0/conf/cql2-json" in conforms
    assert Client.open(pgstac_stac_server.url).conforms_to("FILTER")


def test_rustac_starts_and_stops_cleanly(tmp_path, pc_collection):
    server = RustacMemoryServer(varied_items(), pc_collection, tmp_path)
    url = server.start()
    proc = server._proc
    assert server.startup_s is not None and server.startup_s > 0  # measured (how fast: benchmarks, not tests)
    assert httpx.get(url + "/collections/landsat-c2-l2").status_code == 200
    server.stop()
    assert proc is not None and proc.returncode is not None
    assert _refused(server.port)
    server.stop()  # twice is fine


def test_port_in_use_is_one_clear_line(tmp_path, rustac_server):
    port = rustac_server.port
    with pytest.raises(GlacierflowError) as err:
        with rustac_memory_server(varied_items(), None, tmp_path, port=port):
            pass
    assert str(err.value) == f"port {port} is in use; pass --port or stop the other server"
    # the server already there still answers
    assert httpx.get(rustac_server.url + "/").status_code == 200


def test_explicit_port_is_used(tmp_path):
    port = free_port()
    with rustac_memory_server(varied_items(), None, tmp_path, port=port) as url:
        assert url == f"http://127.0.0.1:{port}"
    assert _refused(port)


def test_no_items_is_an_error(tmp_path):
    with pytest.raises(GlacierflowError, match="no items to serve"):
        RustacMemoryServer([], None, tmp_path)


@pytest.mark.pgstac
@pytest.mark.skipif(not pgstac_available(), reason=PGSTAC_SKIP)
def test_pgstac_lifecycle_removes_everything(tmp_path):
    server = PgstacServer(varied_items()[:3], None, tmp_path)
    url = server.start()
    pgdir, pg_port = server._pgdir, server.pg_port
    assert pgdir is not None and (pgdir / "data" / "postmaster.pid").exists()
    features = httpx.get(url + "/search", params={"limit": 10}).json()["features"]
    assert sorted(f["id"] for f in features) == sorted(item["id"] for item in varied_items()[:3])
    server.stop()
    assert not Path(pgdir).exists()
    assert _refused(pg_port) and _refused(server.port)
    assert server.dsn is None
