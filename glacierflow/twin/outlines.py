"""Glacier outlines of the twin in RGI's shape: ``outlines.geojson`` beside the truth store.

One lon/lat polygon per glacier (the largest connected piece of its ice at ``t_ref``), with the
properties RGI 7.0 outlines carry that users select on (``rgi_id``, ``name``, ``area_km2``), so that
``glacierflow flow CUBE --outline outlines.geojson`` reads the twin's outlines as it reads RGI's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.features import shapes
from rasterio.warp import transform_geom

from glacierflow.twin.grid import Grid

RGI_REGION = "14"  # South Asia West (the twin's sites lie in the Himalaya; Aletsch would be 11)


def outline_features(ice: np.ndarray, glacier_id: np.ndarray, grid: Grid, site_name: str) -> list[dict[str, Any]]:
    """GeoJSON features, one per glacier index present in ``ice``: the largest piece of each, in lon/lat."""
    feats = []
    for k in sorted(int(v) for v in np.unique(glacier_id[ice])):
        part = (ice & (glacier_id == k)).astype(np.uint8)
        polys = [(g, v) for g, v in shapes(part, mask=part.astype(bool), transform=grid.affine) if v == 1]
        if not polys:
            continue
        geom = max(polys, key=lambda p: len(p[0]["coordinates"][0]))[0]
        lonlat = transform_geom(f"EPSG:{grid.epsg}", "EPSG:4326", geom, precision=7)
        name = site_name.capitalize() + ("" if k == 0 else f" tributary {k}")
        feats.append({
            "type": "Feature",
            "properties": {"rgi_id": f"RGI2000-v7.0-G-{RGI_REGION}-{90000 + k:05d}", "name": name,
                           "area_km2": round(float(part.sum()) * abs(grid.transform[0] * grid.transform[4]) / 1e6, 4)},
            "geometry": {"type": "Polygon", "coordinates": lonlat["coordinates"]},
        })
    return feats


def write_outlines(path: Path, ice: np.ndarray, glacier_id: np.ndarray, grid: Grid, site_name: str) -> int:
    """Write ``outlines.geojson`` (a FeatureCollection in lon/lat); returns the number of glaciers."""
    feats = outline_features(ice, glacier_id, grid, site_name)
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return len(feats)
