"""Glacier outlines (RGI-shaped GeoJSON): one feature per glacier, its id and name, rasterised onto a grid.

A user's outlines file is a GeoJSON FeatureCollection (RGI 7.0 exported with ``ogr2ogr -f GeoJSON``, the
twin's ``outlines.geojson``): polygons or multipolygons in lon/lat, or in the CRS its (legacy) ``crs`` member
names. Each feature is one glacier; its id comes from the first of :data:`ID_KEYS` present in the properties
(else ``glacier-<n>``), its name from :data:`NAME_KEYS` (else the id).

:func:`outline_masks` reprojects each outline to the grid's CRS and rasterises it: a pixel belongs to a
glacier when its centre lies inside the polygon (GDAL's rule without ``all_touched``), so pixel-count areas
are unbiased for outlines much larger than a pixel.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from glacierflow.errors import GlacierflowError

#: property names read as the glacier's id, first present wins (RGI 7.0, RGI 6.0, GLIMS, generic)
ID_KEYS = ("rgi_id", "RGIId", "glac_id", "id")
#: property names read as the glacier's name
NAME_KEYS = ("name", "Name", "glac_name")


@dataclass(frozen=True)
class Outline:
    """One glacier's outline: ``id``, ``name``, the GeoJSON ``geometry`` and the CRS it is written in."""

    id: str
    name: str
    geometry: dict[str, Any]
    crs: str = "EPSG:4326"


def _first(props: dict[str, Any], keys: tuple[str, ...]) -> str:
    for k in keys:
        if props.get(k) not in (None, ""):
            return str(props[k])
    return ""


def read_outlines(path: str | Path) -> list[Outline]:
    """The glaciers of a GeoJSON outlines file, in file order (module notes); one line when it is unusable."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise GlacierflowError(f"cannot read --outline {str(path)!r} ({err}); give GeoJSON outlines (e.g. RGI 7.0; "
                               "a Shapefile converts with `ogr2ogr -f GeoJSON out.geojson in.shp`)") from None
    crs = ((doc.get("crs") or {}).get("properties") or {}).get("name", "EPSG:4326") if isinstance(doc, dict) \
        else "EPSG:4326"
    feats = doc.get("features", [doc] if "geometry" in doc else []) if isinstance(doc, dict) else []
    out, seen = [], set()
    for n, ft in enumerate(feats, 1):
        geom = (ft or {}).get("geometry")
        if not geom or geom.get("type") not in ("Polygon", "MultiPolygon"):
            continue
        props = ft.get("properties") or {}
        gid = _first(props, ID_KEYS) or f"glacier-{n}"
        if gid in seen:
            raise GlacierflowError(f"--outline {path.name}: glacier id {gid!r} appears twice; give each glacier "
                                   "one feature (dissolve multi-part outlines into a MultiPolygon)")
        seen.add(gid)
        out.append(Outline(gid, _first(props, NAME_KEYS) or gid, geom, crs))
    if not out:
        raise GlacierflowError(f"--outline {str(path)!r} holds no polygon features; give glacier outlines "
                               "(GeoJSON polygons, e.g. RGI 7.0)")
    return out


def outline_masks(outlines: list[Outline], epsg: int, transform: Any, shape: tuple[int, int]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Each outline rasterised onto a grid, and its polygon area in the grid's CRS.

    Parameters
    ----------
    outlines
        From :func:`read_outlines`.
    epsg
        The grid's CRS.
    transform
        The grid's affine transform (pixel corners, :class:`affine.Affine`).
    shape
        ``(rows, cols)``.

    Returns
    -------
    masks : numpy.ndarray
        ``(n_outlines, rows, cols)`` bool, pixel centres inside each outline.
    areas : numpy.ndarray
        ``(n_outlines,)`` polygon areas in m² in the grid's CRS (shoelace, holes subtracted).
    """
    from rasterio.features import rasterize
    from rasterio.warp import transform_geom

    masks = np.zeros((len(outlines), *shape), bool)
    areas = np.zeros(len(outlines))
    for k, o in enumerate(outlines):
        geom = transform_geom(o.crs, f"EPSG:{epsg}", o.geometry)
        masks[k] = rasterize([geom], out_shape=shape, transform=transform, fill=0, default_value=1,
                             dtype="uint8").astype(bool)
        areas[k] = polygon_area(geom)
    return masks, areas


def _ring_area(ring: Any) -> float:
    xy = np.asarray(ring, np.float64)[:, :2]
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def polygon_area(geom: dict[str, Any]) -> float:
    """Planar area of a GeoJSON Polygon/MultiPolygon in its own units (outer rings minus holes)."""
    polys = [geom["coordinates"]] if geom["type"] == "Polygon" else geom["coordinates"]
    return float(sum(_ring_area(p[0]) - sum(_ring_area(h) for h in p[1:]) for p in polys if p))
