"""Glacier registry: name -> site (bbox in lon/lat, UTM EPSG, default dates).

Only glaciers whose coordinates can be verified are listed. Parvati and Aletsch come from the
paper's research code; Aletsch sits in UTM zone 32N (EPSG:32632), which the original code got wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

from glacierflow.errors import GlacierflowError, SpecError

BBox = tuple[float, float, float, float]


@dataclass(frozen=True)
class Site:
    """A glacier site.

    Parameters
    ----------
    name
        Registry key.
    bbox
        ``(west, south, east, north)`` in degrees (WGS84).
    epsg
        UTM EPSG code of the site's zone.
    start, end
        Default date range (ISO dates) for searches.
    """

    name: str
    bbox: BBox
    epsg: int
    start: str = "2013-01-01"
    end: str = "2021-12-31"

    def __post_init__(self) -> None:
        w, s, e, n = self.bbox
        if not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
            box = " ".join(f"{v:g}" for v in self.bbox)
            raise SpecError("bbox", f"{box} of site {self.name!r} must be W S E N degrees with W < E and S < N")

    @property
    def centre(self) -> tuple[float, float]:
        """``(lon, lat)`` of the bbox centre."""
        w, s, e, n = self.bbox
        return (w + e) / 2, (s + n) / 2


GLACIERS: dict[str, Site] = {
    "parvati": Site(
        "parvati", (77.4879532598204, 31.992646374004327, 77.82063300835557, 32.225292222190056), 32643
    ),
    "aletsch": Site(
        "aletsch", (7.889556884765626, 46.382464893261165, 8.22257995605469, 46.57160668424229), 32632
    ),
}


def utm_epsg(lon: float, lat: float) -> int:
    """UTM EPSG code (WGS84, 326xx north / 327xx south) of the zone containing ``(lon, lat)``.

    Norway's and Svalbard's zone exceptions are applied as in the UTM definition.
    """
    if not (-180 <= lon <= 180 and -80 <= lat <= 84):
        raise GlacierflowError(f"no UTM zone for lon={lon}, lat={lat}; pass --epsg explicitly")
    zone = int((lon + 180) // 6) + 1
    zone = min(zone, 60)
    if 56 <= lat < 64 and 3 <= lon < 12:
        zone = 32
    if 72 <= lat < 84 and 0 <= lon < 42:
        zone = 31 if lon < 9 else 33 if lon < 21 else 35 if lon < 33 else 37
    return (32600 if lat >= 0 else 32700) + zone


def get_site(name: str) -> Site:
    """Look a glacier up by name (case-insensitive); unknown names give a one-line error."""
    key = name.strip().lower()
    if key not in GLACIERS:
        known = ", ".join(sorted(GLACIERS))
        raise GlacierflowError(f"unknown glacier {name!r}; known: {known}; or pass --bbox W S E N")
    return GLACIERS[key]


def site_from_bbox(bbox: BBox, epsg: int | None = None, name: str = "custom") -> Site:
    """A site for an arbitrary bbox; the UTM EPSG is computed from the bbox centre if not given."""
    w, s, e, n = bbox
    if epsg is None:
        epsg = utm_epsg((w + e) / 2, (s + n) / 2)
    return Site(name, (float(w), float(s), float(e), float(n)), int(epsg))
