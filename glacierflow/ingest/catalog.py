"""The only module that talks to a STAC API: search, CQL2 filter, client-side re-check, retries, signing.

:func:`search` asks a STAC API (Planetary Computer, or the offline twin's local server) for the items of one
collection over a bbox and date range, keeps the Landsat platforms and cloud cover asked for, and returns
plain item dicts sorted by datetime. Servers differ: a CQL2 ``filter`` is sent only where the server
advertises filter conformance (rustac's memory backend does not, and returns zero items for any filter),
and every property is re-checked client-side anyway, because servers silently ignore what they do not
support.

Signing is separate from searching: search results are never signed (stores must never hold a token).
Planetary Computer's SAS tokens expire after roughly 45 minutes, so the cube builder calls
:func:`sign_items` right before it builds the stack, not at search time.
"""

from __future__ import annotations

import copy
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from typing import Any
from urllib.parse import urlparse

import requests
from pystac import STACTypeError
from pystac_client import Client
from pystac_client.conformance import ConformanceClasses
from pystac_client.errors import ClientTypeError
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO
from urllib3 import Retry
from urllib3.exceptions import NewConnectionError

from glacierflow.choices import DEFAULT_PLATFORMS
from glacierflow.errors import GlacierflowError
from glacierflow.ingest.items import refused_href

__all__ = [
    "PLANETARY_COMPUTER_URL",
    "SIGNERS",
    "Criteria",
    "Rejection",
    "SearchResult",
    "cql2_filter",
    "default_signer",
    "filter_items",
    "next_page_link",
    "open_client",
    "retry_policy",
    "search",
    "server_supports_filter",
    "sign_items",
]

PLANETARY_COMPUTER_URL = "https://planetarycomputer.microsoft.com/api/stac/v1"
TWIN_HINT = "for the offline twin run `glacierflow twin serve DIR`"
RETRY_STATUSES = (429, 500, 502, 503, 504)
_OGC_FILTER = "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/filter"
_CQL2_JSON = "http://www.opengis.net/spec/cql2/1.0/conf/cql2-json"

BBox = tuple[float, float, float, float]
DateLike = str | date | datetime


# -- signing ------------------------------------------------------------------------------------------

def _sign_none(item: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(item)


def _sign_planetary_computer(item: dict[str, Any]) -> dict[str, Any]:
    import planetary_computer

    return dict(planetary_computer.sign(item, copy=True))


SIGNERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "planetary-computer": _sign_planetary_computer,
    "none": _sign_none,
}
"""Signing functions by name: item dict in, signed copy out. CLI choices come from these keys."""


def default_signer(url: str) -> str:
    """Name of the signer for a STAC API URL: ``planetary-computer`` on planetarycomputer.microsoft.com."""
    host = (urlparse(url).hostname or "").lower()
    return "planetary-computer" if host == "planetarycomputer.microsoft.com" else "none"


def sign_items(items: Iterable[dict[str, Any]],
               signer: str | Callable[[dict[str, Any]], dict[str, Any]]) -> list[dict[str, Any]]:
    """Return signed copies of ``items`` (the input dicts are left untouched).

    Call this right before reading pixels (the cube builder calls it just before ``stackstac.stack``):
    Planetary Computer tokens expire after about 45 minutes, and signed hrefs must never be stored.

    Parameters
    ----------
    items
        Item dicts as returned by :func:`search`.
    signer
        A key of :data:`SIGNERS` or a callable ``dict -> dict``.
    """
    if isinstance(signer, str):
        if signer not in SIGNERS:
            raise GlacierflowError(f"unknown signer '{signer}'; known: {', '.join(SIGNERS)}")
        signer = SIGNERS[signer]
    return [signer(item) for item in items]


# -- criteria and client-side checks ------------------------------------------------------------------

def _parse_time(value: str) -> datetime:
    text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
    out = datetime.fromisoformat(text)
    return out if out.tzinfo else out.replace(tzinfo=UTC)


def _to_datetime(value: DateLike, *, end: bool) -> datetime:
    """A UTC datetime; a bare date means the start (or, for ``end``, the last microsecond) of that day."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime.combine(value, time.max if end else time.min, tzinfo=UTC)
    text = str(value).strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            return _to_datetime(date.fromisoformat(text), end=end)
        return _parse_time(text)
    except ValueError:
        raise GlacierflowError(f"bad date '{value}'; use YYYY-MM-DD or an ISO 8601 datetime") from None


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Criteria:
    """What a search asks for; every field is re-checked client-side by :func:`filter_items`."""

    bbox: BBox
    start: datetime
    end: datetime
    collection: str = "landsat-c2-l2"
    platforms: tuple[str, ...] | None = DEFAULT_PLATFORMS
    max_cloud: float | None = 20.0
    categories: tuple[str, ...] | None = None  # landsat:collection_category (T1, T2, RT); None keeps all

    def __post_init__(self) -> None:
        if len(self.bbox) != 4:
            raise GlacierflowError(f"bbox {self.bbox} must be (west, south, east, north) in lon/lat")
        west, south, east, north = self.bbox
        if not (-180 <= west <= east <= 180 and -90 <= south <= north <= 90):
            raise GlacierflowError(f"bbox {list(self.bbox)} is not (west, south, east, north) in lon/lat "
                                   "degrees with west <= east; split a bbox that crosses the antimeridian")
        if self.start > self.end:
            raise GlacierflowError(f"start {_iso(self.start)} is after end {_iso(self.end)}; swap the dates")
        if self.max_cloud is not None and not 0 <= self.max_cloud <= 100:
            raise GlacierflowError(f"max cloud cover {self.max_cloud} must be between 0 and 100")

    @classmethod
    def parse(cls, bbox: Sequence[float], start: DateLike, end: DateLike, collection: str = "landsat-c2-l2",
              platforms: Sequence[str] | None = DEFAULT_PLATFORMS, max_cloud: float | None = 20.0,
              categories: Sequence[str] | None = None) -> Criteria:
        """Build from user values: dates as ``YYYY-MM-DD`` (inclusive days, UTC) or ISO datetimes."""
        if len(bbox) != 4:
            raise GlacierflowError(f"bbox {list(bbox)} must be 4 numbers: west, south, east, north")
        return cls(bbox=(float(bbox[0]), float(bbox[1]), float(bbox[2]), float(bbox[3])),
                   start=_to_datetime(start, end=False), end=_to_datetime(end, end=True),
                   collection=collection, platforms=tuple(platforms) if platforms is not None else None,
                   max_cloud=float(max_cloud) if max_cloud is not None else None,
                   categories=tuple(categories) if categories is not None else None)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready search parameters (for store provenance attrs)."""
        return {
            "bbox": list(self.bbox), "start": _iso(self.start), "end": _iso(self.end),
            "collection": self.collection,
            "platforms": list(self.platforms) if self.platforms is not None else None,
            "max_cloud": self.max_cloud,
            "categories": list(self.categories) if self.categories is not None else None,
        }


@dataclass(frozen=True)
class Rejection:
    """An item the search returned but glacierflow did not keep, and why."""

    item_id: str
    reason: str  # "duplicate", "collection", "datetime", "bbox", "platform", "cloud", "category", "href"
    detail: str
    properties: dict[str, Any] = field(default_factory=dict, compare=False)  # the item's, for reports


def _item_bbox(item: dict[str, Any]) -> BBox | None:
    b = item.get("bbox")
    if b and len(b) in (4, 6):
        return (b[0], b[1], b[-3], b[-2]) if len(b) == 6 else (b[0], b[1], b[2], b[3])
    coords: list[tuple[float, float]] = []

    def walk(c: Any) -> None:
        if c and isinstance(c[0], (int, float)):
            coords.append((c[0], c[1]))
        else:
            for sub in c:
                walk(sub)

    walk((item.get("geometry") or {}).get("coordinates", []))
    if not coords:
        return None
    xs, ys = zip(*coords, strict=True)
    return (min(xs), min(ys), max(xs), max(ys))


def _intersects(a: BBox, b: BBox) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def _item_interval(item: dict[str, Any]) -> tuple[datetime, datetime] | None:
    p = item.get("properties", {})
    try:
        if p.get("datetime"):
            t = _parse_time(p["datetime"])
            return t, t
        if p.get("start_datetime") and p.get("end_datetime"):
            return _parse_time(p["start_datetime"]), _parse_time(p["end_datetime"])
    except ValueError:
        return None
    return None


def _check(item: dict[str, Any], crit: Criteria) -> tuple[str, str] | None:
    """First failing check as (reason, detail), or None if the item passes."""
    p = item.get("properties", {})
    if item.get("collection") != crit.collection:
        return "collection", f"collection {item.get('collection')!r} is not {crit.collection!r}"
    interval = _item_interval(item)
    if interval is None:
        return "datetime", "no valid datetime"
    if interval[1] < crit.start or interval[0] > crit.end:
        return "datetime", f"{_iso(interval[0])} outside {_iso(crit.start)}/{_iso(crit.end)}"
    box = _item_bbox(item)
    if box is None or not _intersects(box, crit.bbox):
        return "bbox", f"bbox {box} does not intersect {list(crit.bbox)}"
    if crit.platforms is not None and p.get("platform") not in crit.platforms:
        return "platform", f"platform {p.get('platform')!r} not in {list(crit.platforms)}"
    if crit.max_cloud is not None:
        cloud = p.get("eo:cloud_cover")
        if not isinstance(cloud, (int, float)):
            return "cloud", "no eo:cloud_cover"
        if cloud > crit.max_cloud:
            return "cloud", f"eo:cloud_cover {cloud} > {crit.max_cloud}"
    category = p.get("landsat:collection_category")
    if crit.categories is not None and category is not None and category not in crit.categories:
        return "category", f"landsat:collection_category {category!r} not in {list(crit.categories)}"
    href = refused_href(item)  # before any signing or GDAL open
    return ("href", href) if href else None


def filter_items(
    items: Iterable[dict[str, Any]], crit: Criteria
) -> tuple[list[dict[str, Any]], list[Rejection]]:
    """Re-check items client-side: returns (kept sorted by datetime then id, rejected in arrival order).

    Duplicates by id are rejected after the first occurrence; each rejection names the first check that
    failed, in the order collection, datetime, bbox, platform, cloud, category.
    """
    kept: list[dict[str, Any]] = []
    rejected: list[Rejection] = []
    seen: set[str] = set()
    for item in items:
        item_id = str(item.get("id"))
        if item_id in seen:
            rejected.append(Rejection(item_id, "duplicate", "id returned more than once",
                                      dict(item.get("properties") or {})))
            continue
        seen.add(item_id)
        failed = _check(item, crit)
        if failed is None:
            kept.append(item)
        else:
            rejected.append(Rejection(item_id, *failed, dict(item.get("properties") or {})))
    kept.sort(key=lambda it: (_item_interval(it)[0], str(it.get("id"))))  # type: ignore[index]
    return kept, rejected


def cql2_filter(crit: Criteria) -> dict[str, Any] | None:
    """CQL2-JSON filter for cloud cover, platform and collection category, or None when none is restricted."""
    args: list[dict[str, Any]] = []
    if crit.max_cloud is not None:
        args.append({"op": "<=", "args": [{"property": "eo:cloud_cover"}, crit.max_cloud]})
    if crit.platforms is not None:
        args.append({"op": "in", "args": [{"property": "platform"}, list(crit.platforms)]})
    if crit.categories is not None:
        args.append({"op": "in", "args": [{"property": "landsat:collection_category"}, list(crit.categories)]})
    if not args:
        return None
    return args[0] if len(args) == 1 else {"op": "and", "args": args}


def next_page_link(page: dict[str, Any]) -> dict[str, Any] | None:
    """The ``next`` link of an items page (FeatureCollection), or None on the last page."""
    return next((link for link in page.get("links", []) if link.get("rel") == "next"), None)


# -- talking to the API -------------------------------------------------------------------------------

def _reason(err: BaseException) -> str:
    """A short, one-line reason for a failed request."""
    status = getattr(err, "status_code", None)
    text = str(err)
    if status:
        body = " ".join(text.split())[:120]
        return f"HTTP {status}" + (f" {body}" if body else "")
    for needle, short in (("Connection refused", "connection refused"), ("timed out", "timed out"),
                          ("Name or service not known", "unknown host"), ("Max retries", "no answer")):
        if needle in text:
            return short
    return " ".join(text.split())[:120] or type(err).__name__


def _unreachable(url: str, err: BaseException) -> GlacierflowError:
    status = getattr(err, "status_code", None)
    if isinstance(status, int) and 400 <= status < 500 and status != 429:  # a server answered: not this API
        return GlacierflowError(
            f"{url} is not a STAC API root (it answered HTTP {status}); check --catalog, e.g. "
            f"{PLANETARY_COMPUTER_URL}; {TWIN_HINT}"
        )
    return GlacierflowError(
        f"cannot reach STAC API at {url}: {_reason(err)}; is the server running? {TWIN_HINT}"
    )


class FailFastRetry(Retry):
    """urllib3 ``Retry`` that gives up at once where no server will answer: an unknown host, a refused connection.

    Retried (up to the counts): HTTP 429/5xx, timeouts (connect and read) and connections reset or dropped
    mid-request. Not retried: a name that does not resolve and a port nobody listens on
    (:class:`urllib3.exceptions.NewConnectionError`, which also covers ``NameResolutionError``); retrying
    those only delays the same one-line error by the whole backoff (62 s with 5 retries at 2 s).
    """

    def increment(self, method: str | None = None, url: str | None = None, *args: Any, error: Exception | None = None,
                  **kwargs: Any) -> FailFastRetry:
        """As :meth:`urllib3.util.Retry.increment`, but an unknown host or refused connection re-raises at once."""
        if isinstance(error, NewConnectionError):
            # no connect retry left: urllib3 raises MaxRetryError, which requests reports as ConnectionError
            return Retry.increment(self.new(connect=0), method, url, *args, error=error, **kwargs)
        return super().increment(method, url, *args, error=error, **kwargs)


def retry_policy(retries: int = 3, backoff: float = 0.5) -> FailFastRetry:
    """The STAC client's retry policy: ``retries`` tries on 429/5xx, timeouts and resets; none on a dead host.

    Exponential backoff ``backoff * 2**n`` seconds, honouring ``Retry-After``.
    """
    return FailFastRetry(total=retries, connect=retries, read=retries, status=retries, backoff_factor=backoff,
                         status_forcelist=RETRY_STATUSES, allowed_methods=None, raise_on_status=False)


def open_client(url: str, *, retries: int = 3, backoff: float = 0.5, timeout: float = 30.0) -> Client:
    """Open a pystac-client :class:`Client` with retries on 429/5xx, timeouts and reset connections.

    An unknown host or a refused connection fails at once (:class:`FailFastRetry`).

    Parameters
    ----------
    url
        STAC API root.
    retries
        Retries per request (:func:`retry_policy`, exponential backoff ``backoff * 2**n`` seconds, honouring
        ``Retry-After``); 0 disables them.
    backoff
        Backoff factor in seconds.
    timeout
        Connect and read timeout per request, in seconds.
    """
    io = StacApiIO(max_retries=retry_policy(retries, backoff), timeout=timeout)
    try:
        client = Client.open(url, stac_io=io)
    except (APIError, requests.RequestException, OSError) as err:
        raise _unreachable(url, err) from None
    except (ValueError, STACTypeError, ClientTypeError) as err:  # not JSON, or JSON but not a STAC catalog
        raise GlacierflowError(f"{url} is not a STAC API ({' '.join(str(err).split())[:100]}); "
                               f"check the URL, {TWIN_HINT}") from None
    if not client.conforms_to(ConformanceClasses.ITEM_SEARCH):
        raise GlacierflowError(f"{url} does not offer STAC item search; point --stac-url at a STAC API root")
    return client


def server_supports_filter(client: Client) -> bool:
    """Whether the API advertises CQL2 filter conformance with the JSON encoding."""
    conforms = list(client.to_dict().get("conformsTo", []) or [])
    advertised = client.conforms_to(ConformanceClasses.FILTER) or _OGC_FILTER in conforms
    encodings = [uri for uri in conforms if "/spec/cql2/" in uri and uri.endswith(("cql2-json", "cql2-text"))]
    return advertised and (not encodings or _CQL2_JSON in encodings)


@dataclass(frozen=True)
class SearchResult:
    """What :func:`search` found.

    Attributes
    ----------
    items
        Kept item dicts (unsigned), sorted by datetime then id, one per id.
    rejected
        Items the server returned that failed a client-side check, with the reason.
    server_filter
        Whether a CQL2 filter was sent (the server advertised filter conformance).
    url
        The STAC API root searched.
    criteria
        What was asked for.
    """

    items: list[dict[str, Any]]
    rejected: list[Rejection]
    server_filter: bool
    url: str
    criteria: Criteria
    pages: int = 0
    returned: int = field(default=0)

    @property
    def ids(self) -> list[str]:
        """Ids of the kept items, in order."""
        return [str(item["id"]) for item in self.items]

    def reasons(self) -> dict[str, int]:
        """Number of rejected items per reason."""
        return dict(Counter(r.reason for r in self.rejected))

    def parameters(self) -> dict[str, Any]:
        """JSON-ready search parameters for provenance (no tokens)."""
        return {"url": self.url, **self.criteria.as_dict(), "server_filter": self.server_filter}

    def empty_error(self) -> GlacierflowError:
        """A one-line error naming bbox, dates and filters, for callers that treat no items as a mistake."""
        c = self.criteria
        platforms = ",".join(c.platforms) if c.platforms is not None else "any"
        cloud = f"<= {c.max_cloud:g}%" if c.max_cloud is not None else "any"
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(self.reasons().items())) or "none returned"
        return GlacierflowError(
            f"no items in '{c.collection}' at {self.url} for bbox {list(c.bbox)}, "
            f"{_iso(c.start)[:10]}..{_iso(c.end)[:10]}, platform {platforms}, cloud cover {cloud} "
            f"(rejected: {why}); widen the dates or bbox, or relax the cloud/platform filters"
        )

    def raise_if_empty(self) -> SearchResult:
        """Return self, or raise :meth:`empty_error` when nothing was kept."""
        if not self.items:
            raise self.empty_error()
        return self


def search(url: str, *, bbox: Sequence[float], start: DateLike, end: DateLike,
           collection: str = "landsat-c2-l2", platforms: Sequence[str] | None = DEFAULT_PLATFORMS,
           max_cloud: float | None = 20.0, categories: Sequence[str] | None = None, limit: int = 100,
           client: Client | None = None,
           retries: int = 3, backoff: float = 0.5, timeout: float = 30.0,
           max_items: int | None = None) -> SearchResult:
    """Search a STAC API for the items of ``collection`` over ``bbox`` between ``start`` and ``end``.

    Parameters
    ----------
    url
        STAC API root, e.g. :data:`PLANETARY_COMPUTER_URL` or the twin's ``http://127.0.0.1:PORT``.
    bbox
        (west, south, east, north) in lon/lat degrees.
    start, end
        Inclusive range; a bare ``YYYY-MM-DD`` end means the end of that day (UTC).
    collection
        Collection id.
    platforms
        Platforms to keep (``platform`` property); None keeps all.
    max_cloud
        Keep items with ``eo:cloud_cover <= max_cloud``; None keeps all.
    categories
        Keep items whose ``landsat:collection_category`` is one of these (e.g. ``("T1",)``); None keeps all.
    limit
        Page size asked of the server; ``next`` links are followed until the last page.
    client
        An open pystac-client Client (IO seam); opened from ``url`` with retries when None.
    retries, backoff, timeout
        Retry policy for 429/5xx, timeouts and resets; none for an unknown host or a refused connection
        (:func:`retry_policy`).
    max_items
        Stop after this many items returned by the server (None: all).

    Returns
    -------
    SearchResult
        Kept items (plain, unsigned dicts) and rejections. An empty result is not an error here; call
        ``result.raise_if_empty()`` where it is one.
    """
    crit = Criteria.parse(bbox, start, end, collection, platforms, max_cloud, categories)
    if limit < 1:
        raise GlacierflowError(f"limit {limit} must be at least 1")
    if client is None:
        client = open_client(url, retries=retries, backoff=backoff, timeout=timeout)
    try:
        found = client.get_collection(collection)
    except (APIError, requests.RequestException, OSError) as err:
        raise _unreachable(url, err) from None
    if found is None:
        try:
            known = sorted(c.id for c in client.get_collections())
        except (APIError, requests.RequestException, OSError):
            known = []
        raise GlacierflowError(f"collection '{collection}' not found at {url}; available: "
                               f"{', '.join(known) or 'none'}")
    use_filter = server_supports_filter(client)
    cql2 = cql2_filter(crit) if use_filter else None
    item_search = client.search(
        collections=[collection], bbox=list(crit.bbox), datetime=f"{_iso(crit.start)}/{_iso(crit.end)}",
        limit=limit, max_items=max_items, filter=cql2, filter_lang="cql2-json" if cql2 else None,
    )
    raw: list[dict[str, Any]] = []
    pages = 0
    try:
        for page in item_search.pages_as_dicts():
            pages += 1
            raw.extend(page.get("features", []))
            if max_items is not None and len(raw) >= max_items:
                raw = raw[:max_items]
                break
    except (APIError, requests.RequestException, OSError) as err:
        raise GlacierflowError(f"search at {url} failed: {_reason(err)}; retry later, {TWIN_HINT}") from None
    kept, rejected = filter_items(raw, crit)
    return SearchResult(items=kept, rejected=rejected, server_filter=cql2 is not None, url=url,
                        criteria=crit, pages=pages, returned=len(raw))
