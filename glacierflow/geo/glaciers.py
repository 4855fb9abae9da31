"""Glacier registry: name -> site (bbox in lon/lat, UTM EPSG, default dates).

Only glaciers whose coordinates can be verified are listed. Parvati and Aletsch come from the
paper's research code; Aletsch sits in UTM zone 32N (EPSG:32632), which the original code got wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

from glacierflow.errors import GlacierflowError, SpecError, did_you_mean

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
        problem = bbox_problem(self.bbox)
        if problem:
            box = " ".join(f"{v:g}" for v in self.bbox)
            raise SpecError("bbox", f"{box} of site {self.name!r} must be W S E N degrees with W < E and S < N: "
                            f"{problem}")

    @property
    def centre(self) -> tuple[float, float]:
        """``(lon, lat)`` of the bbox centre."""
        w, s, e, n = self.bbox
        return (w + e) / 2, (s + n) / 2


def bbox_problem(bbox: tuple[float, ...]) -> str:
    """What is wrong with a ``(west, south, east, north)`` bbox in degrees, and how to fix it ('' if nothing).

    Examples
    --------
    >>> bbox_problem((78, 32, 77, 33))
    'west 78 is east of east 77; swap them (a bbox across the antimeridian: split it in two)'
    >>> bbox_problem((77, -95, 78, 32))
    'south -95 lies outside -90..90 degrees of latitude; give latitudes in degrees'
    """
    if len(bbox) != 4:
        return f"{len(bbox)} numbers given; give 4: W S E N"
    w, s, e, n = (float(v) for v in bbox)
    for name, v, lim, what in (("west", w, 180, "longitude"), ("east", e, 180, "longitude"),
                               ("south", s, 90, "latitude"), ("north", n, 90, "latitude")):
        if not -lim <= v <= lim:
            return f"{name} {v:g} lies outside -{lim}..{lim} degrees of {what}; give {what}s in degrees"
    if w >= e:
        return f"west {w:g} is east of east {e:g}; swap them (a bbox across the antimeridian: split it in two)" \
            if w > e else f"west and east are both {w:g}; give a bbox with some width"
    if s >= n:
        return f"south {s:g} is north of north {n:g}; swap them" if s > n else \
            f"south and north are both {s:g}; give a bbox with some height"
    return ""


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
        raise GlacierflowError(f"unknown glacier {name!r}{did_you_mean(key, GLACIERS)}; known: {known}; "
                               "or pass --bbox W S E N")
    return GLACIERS[key]


def site_from_bbox(bbox: BBox, epsg: int | None = None, name: str = "custom") -> Site:
    """A site for an arbitrary bbox; the UTM EPSG is computed from the bbox centre if not given."""
    box = tuple(float(v) for v in bbox)
    if epsg is None and not bbox_problem(box):  # a bad bbox is reported as such, not as a missing UTM zone
        epsg = utm_epsg((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    return Site(name, box, int(epsg or 0))  # type: ignore[arg-type]
