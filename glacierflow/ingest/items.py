"""Search results -> the plain item dicts stackstac 0.5.1 reads.

``proj:epsg`` restored from pystac's ``proj:code``, only the needed assets, only allowed platforms (Landsat
4/5/7 share ``landsat-c2-l2`` with other band numbers), links dropped (stackstac would otherwise try to
resolve the API root through pystac).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from glacierflow import choices
from glacierflow.errors import GlacierflowError

logger = logging.getLogger(__name__)

DEFAULT_ASSETS: tuple[str, ...] = ("green", "swir16", "qa_pixel")
DEFAULT_PLATFORMS: tuple[str, ...] = choices.DEFAULT_PLATFORMS


def _epsg_from_code(code: Any) -> int | None:
    """``"EPSG:32643"`` -> 32643; anything else (None, other authorities) -> None."""
    if isinstance(code, str) and code.upper().startswith("EPSG:"):
        try:
            return int(code.split(":", 1)[1])
        except ValueError:
            return None
    return None


def _restore_epsg(fields: dict[str, Any]) -> None:
    """In place: set integer ``proj:epsg`` from ``proj:code`` (pystac >= 1.12 schema) where missing."""
    if fields.get("proj:epsg") is None and "proj:code" in fields:
        epsg = _epsg_from_code(fields["proj:code"])
        if epsg is not None:
            fields["proj:epsg"] = epsg
    elif fields.get("proj:epsg") is not None:
        fields["proj:epsg"] = int(fields["proj:epsg"])


def _as_plain(item: Any) -> dict[str, Any]:
    """A deep-copied plain STAC dict from a dict or a pystac Item (no link resolution, no network)."""
    if isinstance(item, Mapping):
        return copy.deepcopy(dict(item))
    to_dict = getattr(item, "to_dict", None)
    if to_dict is None:
        raise GlacierflowError(
            f"cannot read STAC item of type {type(item).__name__}; pass STAC item dicts or pystac Items"
        )
    # transform_hrefs=False: otherwise pystac resolves the root link over the network.
    return to_dict(transform_hrefs=False, include_self_link=False)


def normalise_items_with_report(
    items: Iterable[Any],
    *,
    assets: Sequence[str] = DEFAULT_ASSETS,
    platforms: Sequence[str] | None = DEFAULT_PLATFORMS,
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Like :func:`normalise_items`, also returning ``{item id: why it was dropped}``."""
    wanted = list(assets)
    allowed = None if platforms is None else {p.lower() for p in platforms}
    kept: list[dict[str, Any]] = []
    dropped: dict[str, str] = {}
    for raw in items:
        item = _as_plain(raw)
        item_id = str(item.get("id", f"<item {len(kept) + len(dropped)}>"))
        props = item.setdefault("properties", {})
        platform = str(props.get("platform", "")).lower()
        if allowed is not None and platform not in allowed:
            dropped[item_id] = f"platform {platform or 'missing'!r} not in {sorted(allowed)}"
            continue
        if not props.get("datetime"):
            dropped[item_id] = "no datetime"
            continue
        item_assets = item.get("assets", {})
        missing = [a for a in wanted if a not in item_assets]
        if missing:
            dropped[item_id] = f"missing assets {missing}"
            continue
        _restore_epsg(props)
        item["assets"] = {key: item_assets[key] for key in wanted}
        for asset in item["assets"].values():
            _restore_epsg(asset)
        item.pop("links", None)  # stackstac/pystac would try to resolve the API root
        kept.append(item)
    if dropped:
        reasons = sorted(set(dropped.values()))
        logger.warning(
            "dropped %d of %d items: %s", len(dropped), len(kept) + len(dropped), "; ".join(reasons)
        )
    return kept, dropped


def normalise_items(
    items: Iterable[Any],
    *,
    assets: Sequence[str] = DEFAULT_ASSETS,
    platforms: Sequence[str] | None = DEFAULT_PLATFORMS,
) -> list[dict[str, Any]]:
    """Plain STAC dicts that stackstac 0.5.1 stacks correctly.

    Parameters
    ----------
    items
        STAC item dicts (as the API returns them) or pystac Items (``proj:code`` schema).
    assets
        Asset keys to keep; items lacking one of them are dropped.
    platforms
        Allowed ``platform`` values (case-insensitive); ``None`` keeps every platform.

    Returns
    -------
    list of dict
        Deep copies (the input is never modified) with integer ``proj:epsg`` at item and asset level, only
        ``assets``, no links. Dropped items are logged (``glacierflow.ingest.cube`` logger, with the reason); use
        :func:`normalise_items_with_report` to get them as a dict.
    """
    return normalise_items_with_report(items, assets=assets, platforms=platforms)[0]


#: URL schemes an asset href may have (plain paths too); anything else never reaches GDAL: ``/vsi...`` paths (GDAL's
#: virtual file systems: another server, an archive member, a subfile), ``ftp:``, ``data:``, ``file`` URLs of hosts.
HREF_SCHEMES = ("http", "https", "file", "s3", "gs", "az", "abfs", "abfss")


def refused_href(item: Mapping[str, Any]) -> str | None:
    """Why one of an item's asset hrefs is refused (scheme not in :data:`HREF_SCHEMES`, or ``/vsi``), else None."""
    from urllib.parse import urlparse

    for key, asset in (item.get("assets") or {}).items():
        href = str((asset or {}).get("href", "")) if isinstance(asset, Mapping) else ""
        scheme = urlparse(href).scheme.lower()
        if href.lstrip().lower().startswith("/vsi") or (len(scheme) > 1 and scheme not in HREF_SCHEMES):
            return (f"asset {key} href {href[:80]!r}: scheme not allowed (allowed: {', '.join(HREF_SCHEMES)} "
                    "or a path)")
    return None
