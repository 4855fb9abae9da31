"""catalog.search against real STAC servers: filters, client-side re-check, pagination, retries, errors."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from glacierflow.errors import GlacierflowError
from glacierflow.ingest import catalog
from glacierflow.ingest.catalog import (
    PLANETARY_COMPUTER_URL,
    SIGNERS,
    Criteria,
    default_signer,
    filter_items,
    next_page_link,
    search,
    sign_items,
)
from glacierflow.twin.stac_servers import PgstacServer, free_port

from .conftest import load_pc_fixture, varied_items

# eastern Australia: items 8..14 of varied_items() intersect it (see conftest)
AUS = (150.0, -36.0, 154.0, -28.0)
KENYA = (36.0, -2.0, 38.0, -1.0)
L8_CLEAR = ["LC08_L2SP_089081_20231008_02_T1",  # 2023-02-10, 9.33 % cloud
            "LC08_L2SP_089083_20231008_02_T1",  # 2023-03-22, 0.02 %
            "LC08_L2SP_089085_20231008_02_T1"]  # 2023-05-01, 19.89 %
ALL_AUS = ["LC08_L2SP_089079_20231008_02_T1", "LC09_L2SP_089080_20231008_02_T1", *L8_CLEAR[:1],
           "LC09_L2SP_089082_20231008_02_T1", L8_CLEAR[1], "LC09_L2SP_089084_20231008_02_T1", L8_CLEAR[2]]
LE07 = "LE07_L2SP_168061_20121222_02_T1"
L8 = ("landsat-8",)  # the tests below that check one platform's filtering (the default is Landsat 8 and 9)


def _is_pgstac(server) -> bool:
    return isinstance(server, PgstacServer)


def test_search_keeps_l8_clear_items_sorted(stac_server):
    result = search(stac_server.url, bbox=AUS, start="2023-01-01", end="2023-12-31", platforms=L8)
    assert result.ids == L8_CLEAR
    assert all(isinstance(item, dict) and item["collection"] == "landsat-c2-l2" for item in result.items)
    if _is_pgstac(stac_server):
        # filter conformance advertised: CQL2 sent, the server itself dropped the other 4
        assert result.server_filter is True
        assert result.returned == 3 and result.rejected == []
    else:
        # rustac memory advertises no filter: nothing sent, everything re-checked here
        assert result.server_filter is False
        assert result.returned == 7
        assert {(r.item_id, r.reason) for r in result.rejected} == {
            ("LC09_L2SP_089080_20231008_02_T1", "platform"),  # 20.65 % but Landsat-9: platform checked first
            ("LC09_L2SP_089082_20231008_02_T1", "platform"),
            ("LC09_L2SP_089084_20231008_02_T1", "platform"),
            ("LC08_L2SP_089079_20231008_02_T1", "cloud"),  # 25.31 %
        }
    assert result.parameters()["max_cloud"] == 20.0
    assert result.parameters()["server_filter"] is result.server_filter


def test_search_datetime_bounds_are_inclusive_days(stac_server):
    # 089081 is at 2023-02-10T23:43, 089085 at 2023-05-01T23:44: bare dates cover whole days
    assert search(stac_server.url, bbox=AUS, start="2023-02-10", end="2023-05-01", platforms=L8).ids == L8_CLEAR
    assert search(stac_server.url, bbox=AUS, start="2023-02-11", end="2023-04-30",
                  platforms=L8).ids == [L8_CLEAR[1]]
    assert search(stac_server.url, bbox=AUS, start="2023-03-01", end="2023-12-31",
                  platforms=L8).ids == L8_CLEAR[1:]


def test_default_platforms_are_landsat_8_and_9(stac_server):
    """OLI and OLI-2 share bands and QA bits: both kept by default; Landsat 7 still rejected by platform."""
    result = search(stac_server.url, bbox=AUS, start="2023-01-01", end="2023-12-31")
    clear = [i for i in ALL_AUS if i not in ("LC08_L2SP_089079_20231008_02_T1",  # 25.31 % cloud
                                             "LC09_L2SP_089080_20231008_02_T1")]  # 20.65 %
    assert result.ids == clear and {it["properties"]["platform"] for it in result.items} == {"landsat-8",
                                                                                          "landsat-9"}
    assert result.parameters()["platforms"] == ["landsat-8", "landsat-9"]
    if not _is_pgstac(stac_server):
        assert {r.reason for r in result.rejected} == {"cloud"}
    le7 = search(stac_server.url, bbox=KENYA, start="2023-01-01", end="2023-12-31")
    assert le7.ids == [] and [r.reason for r in le7.rejected] in ([], ["platform"])


def test_search_follows_pagination(stac_server):
    result = search(stac_server.url, bbox=AUS, start="2023-01-01", end="2023-12-31",
                    platforms=None, max_cloud=None, limit=3)
    assert result.pages == 3  # 3 + 3 + 1 via `next` links
    assert result.ids == ALL_AUS
    assert result.rejected == []
    limited = search(stac_server.url, bbox=AUS, start="2023-01-01", end="2023-12-31",
                     platforms=None, max_cloud=None, limit=3, max_items=4)
    assert limited.returned == 4 and len(limited.ids) == 4


def test_search_platform_filter(stac_server):
    result = search(stac_server.url, bbox=KENYA, start="2023-01-01", end="2023-12-31",
                    platforms=("landsat-8", "landsat-9"))
    assert result.items == []
    if _is_pgstac(stac_server):
        assert result.returned == 0 and result.rejected == []
    else:
        assert [(r.item_id, r.reason) for r in result.rejected] == [(LE07, "platform")]
    message = str(result.empty_error())
    assert "\n" not in message
    assert "bbox [36.0, -2.0, 38.0, -1.0]" in message and "2023-01-01..2023-12-31" in message
    assert "platform landsat-8,landsat-9" in message and "cloud cover <= 20%" in message
    with pytest.raises(GlacierflowError):
        result.raise_if_empty()
    le7 = search(stac_server.url, bbox=KENYA, start="2023-01-01", end="2023-12-31", platforms=("landsat-7",))
    assert le7.ids == [LE07]
    assert le7.items[0]["properties"]["platform"] == "landsat-7"


def test_collection_not_found(rustac_server):
    with pytest.raises(GlacierflowError) as err:
        search(rustac_server.url, bbox=AUS, start="2023-01-01", end="2023-12-31", collection="sentinel-2-l2a")
    assert str(err.value) == (f"collection 'sentinel-2-l2a' not found at {rustac_server.url}; "
                              "available: landsat-c2-l2")


def test_server_down_is_one_line():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(GlacierflowError) as err:
        search(url, bbox=AUS, start="2023-01-01", end="2023-12-31", retries=1, backoff=0.01)
    assert str(err.value) == (f"cannot reach STAC API at {url}: connection refused; is the server running? "
                              "for the offline twin run `glacierflow twin serve DIR`")


def test_unknown_host_and_refused_connection_are_not_retried():
    """One attempt, however many retries are allowed: nothing answers there, retrying only delays the error
    (62 s with 5 retries at 2 s before). Timeouts, resets and HTTP 5xx keep their retries."""
    from urllib3.exceptions import (
        ConnectTimeoutError,
        MaxRetryError,
        NameResolutionError,
        NewConnectionError,
        ProtocolError,
        ReadTimeoutError,
    )

    policy = catalog.retry_policy(retries=5, backoff=30.0)
    for dead in (NameResolutionError("nonexistent.invalid", None, OSError("Name or service not known")),
                 NewConnectionError(None, "[Errno 111] Connection refused")):
        with pytest.raises(MaxRetryError):
            policy.increment("GET", "/collections", error=dead)
    again = policy.increment("GET", "/", error=ConnectTimeoutError("timed out"))
    assert (again.total, again.connect) == (4, 4)
    again = policy.increment("GET", "/", error=ReadTimeoutError(None, "/", "read timed out"))
    assert (again.total, again.read) == (4, 4)
    again = policy.increment("GET", "/", error=ProtocolError("Connection reset by peer"))
    assert (again.total, again.read) == (4, 4)
    assert set(catalog.RETRY_STATUSES) >= {500, 502, 503, 504} and policy.is_retry("GET", 503)
    # end to end, with the retries a user gets by default: the one line, from the first attempt
    url = "http://nonexistent.invalid/api"  # RFC 6761: never resolves, also offline
    with pytest.raises(GlacierflowError) as err:
        search(url, bbox=AUS, start="2023-01-01", end="2023-12-31", retries=5, backoff=30.0)
    assert str(err.value).startswith(f"cannot reach STAC API at {url}: unknown host")


@pytest.mark.parametrize("kwargs, match", [
    ({"bbox": (154, -36, 150, -28)}, "is not \\(west, south, east, north\\)"),
    ({"bbox": (150, -36, 154)}, "must be 4 numbers"),
    ({"start": "2023-12-31", "end": "2023-01-01"}, "is after end"),
    ({"start": "31/12/2023"}, "bad date '31/12/2023'"),
    ({"max_cloud": 120}, "between 0 and 100"),
])
def test_bad_arguments(kwargs, match):
    args = {"bbox": AUS, "start": "2023-01-01", "end": "2023-12-31", **kwargs}
    with pytest.raises(GlacierflowError, match=match):
        search("http://127.0.0.1:9", **args)  # rejected before any request


# -- a real HTTP proxy in front of rustac that fails on purpose ---------------------------------------

class FlakyProxy:
    """Forwards to ``upstream``; the first requests (of method ``only``, if given) get the planned
    failures ("503" or "slow")."""

    def __init__(self, upstream: str, plan: list[str], slow_s: float = 1.0, only: str | None = None) -> None:
        self.upstream, self.plan, self.slow_s, self.only = upstream, list(plan), slow_s, only
        self.log: list[tuple[str, str, int]] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy.lock:
                    planned = proxy.plan and proxy.only in (None, self.command)
                    action = proxy.plan.pop(0) if planned else "pass"
                if action == "503":
                    self._reply(503, b'{"code":"unavailable"}')
                else:
                    if action == "slow":
                        time.sleep(proxy.slow_s)
                    resp = httpx.request(self.command, proxy.upstream + self.path, content=body or None,
                                         headers={"Content-Type": "application/json"} if body else None)
                    self._reply(resp.status_code, resp.content.replace(proxy.upstream.encode(),
                                                                       proxy.url.encode()))
                with proxy.lock:
                    proxy.log.append((self.command, action, 503 if action == "503" else 200))

            def _reply(self, status: int, payload: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout) and retried

            do_GET = _handle
            do_POST = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FlakyProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def flaky(rustac_server) -> Iterator[type[FlakyProxy]]:
    yield lambda plan, **kw: FlakyProxy(rustac_server.url.rstrip("/"), plan, **kw)


def test_retries_on_503(flaky):
    with flaky(["503", "503"]) as proxy:
        result = search(proxy.url, bbox=AUS, start="2023-01-01", end="2023-12-31", backoff=0.01, platforms=L8)
    assert result.ids == L8_CLEAR
    assert [status for _, _, status in proxy.log[:3]] == [503, 503, 200]


def test_retries_on_503_during_search_pages(flaky, rustac_server):
    # the first search page (POST /search) fails twice
    with flaky(["503", "503"], only="POST") as proxy:
        result = search(proxy.url, bbox=AUS, start="2023-01-01", end="2023-12-31", backoff=0.01,
                        platforms=None, max_cloud=None, limit=3)
    assert result.ids == ALL_AUS and result.pages == 3
    posts = [status for method, _, status in proxy.log if method == "POST"]
    assert posts == [503, 503, 200, 200, 200]  # 2 failures, then 3 pages


def test_gives_up_after_retries(flaky):
    with flaky(["503"] * 10) as proxy:
        with pytest.raises(GlacierflowError) as err:
            search(proxy.url, bbox=AUS, start="2023-01-01", end="2023-12-31", retries=2, backoff=0.01)
    assert str(err.value).startswith(f"cannot reach STAC API at {proxy.url}: HTTP 503")
    assert len(proxy.log) == 3  # first try + 2 retries


def test_retries_on_timeout(flaky):
    with flaky(["slow"], slow_s=1.5) as proxy:
        # the first request sleeps 1.5 s > timeout 0.5 s: a result means the timeout was retried
        result = search(proxy.url, bbox=AUS, start="2023-01-01", end="2023-12-31", timeout=0.5, backoff=0.01,
                        platforms=L8)
    assert result.ids == L8_CLEAR


# -- offline parts ------------------------------------------------------------------------------------

def test_real_get_items_page_fixture():
    page = load_pc_fixture("landsat-c2-l2_items-page_GET_2025-07.json")
    link = next_page_link(page)
    assert link is not None and link["method"] == "GET"
    assert link["href"].endswith("token=next:landsat-c2-l2:LC09_L2SR_084056_20250722_02_T1")
    assert next_page_link({"type": "FeatureCollection", "features": [], "links": []}) is None
    crit = Criteria.parse((160, -22, 166, -10), "2025-07-22", "2025-07-22", platforms=("landsat-9",))
    kept, rejected = filter_items(page["features"], crit)
    # ascending by time; 084072 (23.02 %) is too cloudy; the other four lie outside the bbox
    assert [it["id"][10:16] for it in kept] == ["084067", "084068", "084069", "084073", "084074"]
    assert [(r.item_id[10:16], r.reason) for r in rejected] == [
        ("084082", "bbox"), ("084072", "cloud"), ("084060", "bbox"), ("084057", "bbox"), ("084056", "bbox"),
    ]
    limit1 = load_pc_fixture("landsat-c2-l2_items-page_limit1_2025-03.json")
    assert "limit=1&token=next:landsat-c2-l2:LC09_L2SP_090091" in next_page_link(limit1)["href"]


def test_category_filter_on_real_t2_items():
    page = load_pc_fixture("landsat-c2-l2_items-page_GET_2025-07.json")
    crit = Criteria.parse((160, -22, 166, -10), "2025-07-22", "2025-07-22", platforms=("landsat-9",),
                          categories=("T1",))
    kept, rejected = filter_items(page["features"], crit)
    # the real page holds T2 items 084068 and 084069 inside the bbox (084072, also T2, is too cloudy first)
    assert [it["id"][10:16] for it in kept] == ["084067", "084073", "084074"]
    cat = sorted((r.item_id[10:16], r.detail) for r in rejected if r.reason == "category")
    assert cat == [("084068", "landsat:collection_category 'T2' not in ['T1']"),
                   ("084069", "landsat:collection_category 'T2' not in ['T1']")]
    both = Criteria.parse((160, -22, 166, -10), "2025-07-22", "2025-07-22", platforms=("landsat-9",),
                          categories=("T1", "T2"))
    assert len(filter_items(page["features"], both)[0]) == 5
    assert catalog.cql2_filter(crit)["args"][-1] == {
        "op": "in", "args": [{"property": "landsat:collection_category"}, ["T1"]]}


def test_filter_items_rejects_each_reason():
    items = varied_items()
    base = items[10]  # LC08 089083, 2023-03-22, 0.02 %, in AUS
    wrong_coll = {**copy.deepcopy(base), "id": "x-coll", "collection": "landsat-c2-l1"}
    no_cloud = copy.deepcopy(base)
    no_cloud["id"] = "x-nocloud"
    del no_cloud["properties"]["eo:cloud_cover"]
    interval = copy.deepcopy(base)
    interval["id"] = "x-interval"
    interval["properties"].update(datetime=None, start_datetime="2022-12-30T00:00:00Z",
                                  end_datetime="2023-01-02T00:00:00Z")
    crit = Criteria.parse(AUS, "2023-01-01", "2023-12-31", platforms=L8)
    kept, rejected = filter_items([base, base, wrong_coll, items[0], no_cloud, interval, items[11]], crit)
    assert [it["id"] for it in kept] == ["x-interval", base["id"]]  # interval overlaps the start
    assert [r.reason for r in rejected] == ["duplicate", "collection", "bbox", "cloud", "platform"]
    assert rejected[3].detail == "no eo:cloud_cover"
    assert catalog.cql2_filter(crit) == {"op": "and", "args": [
        {"op": "<=", "args": [{"property": "eo:cloud_cover"}, 20.0]},
        {"op": "in", "args": [{"property": "platform"}, ["landsat-8"]]},
    ]}
    assert catalog.cql2_filter(Criteria.parse(AUS, "2023-01-01", "2023-12-31", platforms=None,
                                              max_cloud=None)) is None


def test_signers_offline():
    assert set(SIGNERS) == {"planetary-computer", "none"}
    assert default_signer(PLANETARY_COMPUTER_URL) == "planetary-computer"
    assert default_signer("http://127.0.0.1:8080") == "none"
    assert default_signer("https://example.org/planetarycomputer.microsoft.com") == "none"
    item = copy.deepcopy(varied_items()[-1])
    for asset in item["assets"].values():  # local hrefs only: signing Azure hrefs offline hangs for minutes
        asset["href"] = "http://127.0.0.1:9/" + asset["href"].rsplit("/", 1)[-1]
    before = copy.deepcopy(item)
    for name in SIGNERS:
        signed = sign_items([item], name)
        assert signed == [before] and signed[0] is not item
    assert item == before
    tagged = sign_items([item], lambda it: {**it, "signed": True})
    assert tagged[0]["signed"] is True
    with pytest.raises(GlacierflowError, match="unknown signer 'azure'; known: planetary-computer, none"):
        sign_items([item], "azure")
