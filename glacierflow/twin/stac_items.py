"""STAC item and collection documents shaped like Planetary Computer's ``landsat-c2-l2``.

Field names, extensions and asset layout follow the real responses (see the tests, which compare
against unmodified Planetary Computer JSON). Asset hrefs are written relative to the twin directory;
the server rewrites them to HTTP URLs.
"""

from __future__ import annotations

from typing import Any

STAC_EXTENSIONS = [
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/eo/v1.0.0/schema.json",
    "https://stac-extensions.github.io/view/v1.0.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "https://landsat.usgs.gov/stac/landsat-extension/v1.1.1/schema.json",
    "https://stac-extensions.github.io/classification/v1.0.0/schema.json",
    "https://stac-extensions.github.io/scientific/v1.0.0/schema.json",
]
COG = "image/tiff; application=geotiff; profile=cloud-optimized"
SCALE, OFFSET = 2.75e-05, -0.2

# platform -> (file prefix, instrument tag, eo band name prefix, {asset: (band number, wavelength, fwhm)})
PLATFORMS: dict[str, dict[str, Any]] = {
    "landsat-8": {
        "prefix": "LC08",
        "instruments": ["oli", "tirs"],
        "band_prefix": "OLI_B",
        "doi": "10.5066/P9OGBGM6",
        "folder": "oli-tirs",
        "bands": {"green": (3, 0.56, 0.06), "swir16": (6, 1.61, 0.09)},
    },
    "landsat-7": {
        "prefix": "LE07",
        "instruments": ["etm+"],
        "band_prefix": "ETM_B",
        "doi": "10.5066/P9C7I13B",
        "folder": "etm",
        "bands": {"green": (2, 0.56, 0.08), "swir16": (5, 1.65, 0.2)},
    },
}
# Landsat 9 (OLI-2/TIRS-2): Landsat 8's band numbers, QA bits, DOI and folder; Planetary Computer lists its
# instruments as ["oli", "tirs"] too (see ../shared/fixtures/planetary-computer/, LC09 items)
PLATFORMS["landsat-9"] = {**PLATFORMS["landsat-8"], "prefix": "LC09"}
_DESCRIPTIONS = {
    "green": ("Green Band", "Visible green"),
    "red": ("Red Band", "Visible red"),
    "nir08": ("Near Infrared Band 0.8", "Near infrared"),
    "swir16": ("Short-wave Infrared Band 1.6", "Short-wave infrared"),
}
# red and NIR by sensor (the ``band_prefix`` of a platform: OLI and OLI-2 share band numbers), as in
# Planetary Computer's items: (band number, centre wavelength, full width at half maximum)
RED_NIR: dict[str, dict[str, tuple[int, float, float]]] = {
    "OLI_B": {"red": (4, 0.65, 0.04), "nir08": (5, 0.87, 0.03)},
    "ETM_B": {"red": (3, 0.66, 0.06), "nir08": (4, 0.84, 0.13)},
}
#: every reflectance asset the twin writes, in item order
REFLECTANCE_ASSETS = ("green", "red", "nir08", "swir16")


def band_info(platform: str, key: str) -> tuple[int, float, float]:
    """``(band number, centre wavelength, fwhm)`` of reflectance asset ``key`` on ``platform``."""
    spec = PLATFORMS[platform]
    return spec["bands"][key] if key in spec["bands"] else RED_NIR[spec["band_prefix"]][key]

QA_BITFIELDS = [
    ("fill", 0, 1, "Image or fill data", ["not_fill", "fill"]),
    ("dilated_cloud", 1, 1, "Dilated cloud", ["not_dilated", "dilated"]),
    ("cirrus", 2, 1, "Cirrus mask", ["not_cirrus", "cirrus"]),
    ("cloud", 3, 1, "Cloud mask", ["not_cloud", "cloud"]),
    ("cloud_shadow", 4, 1, "Cloud shadow mask", ["not_shadow", "shadow"]),
    ("snow", 5, 1, "Snow/Ice mask", ["not_snow", "snow"]),
    ("clear", 6, 1, "Cloud or dilated cloud bits are set", ["not_clear", "clear"]),
    ("water", 7, 1, "Water mask", ["not_water", "water"]),
    ("cloud_confidence", 8, 2, "Cloud confidence levels", ["not_set", "low", "medium", "high"]),
    ("cloud_shadow_confidence", 10, 2, "Cloud shadow confidence levels", ["not_set", "low", "reserved", "high"]),
    ("snow_confidence", 12, 2, "Snow/Ice confidence levels", ["not_set", "low", "reserved", "high"]),
    ("cirrus_confidence", 14, 2, "Cirrus confidence levels", ["not_set", "low", "reserved", "high"]),
]


def _reflectance_asset(platform: str, key: str, href: str) -> dict[str, Any]:
    spec = PLATFORMS[platform]
    num, wl, fwhm = band_info(platform, key)
    title, desc = _DESCRIPTIONS[key]
    return {
        "href": href,
        "eo:bands": [
            {
                "name": f"{spec['band_prefix']}{num}",
                "common_name": key,
                "description": desc,
                "center_wavelength": wl,
                "full_width_half_max": fwhm,
            }
        ],
        "description": f"Collection 2 Level-2 {title} (SR_B{num}) Surface Reflectance",
        "type": COG,
        "roles": ["data", "reflectance"],
        "title": title,
        "raster:bands": [
            {"scale": SCALE, "nodata": 0, "offset": OFFSET, "data_type": "uint16", "spatial_resolution": 30}
        ],
    }


def _qa_asset(href: str) -> dict[str, Any]:
    return {
        "href": href,
        "classification:bitfields": [
            {
                "name": name,
                "length": length,
                "offset": offset,
                "classes": [{"name": c, "value": i, "description": c.replace("_", " ")} for i, c in enumerate(cls)],
                "description": desc,
            }
            for name, offset, length, desc, cls in QA_BITFIELDS
        ],
        "description": "Collection 2 Level-2 Pixel Quality Assessment Band (QA_PIXEL)",
        "raster:bands": [{"unit": "bit index", "nodata": 1, "data_type": "uint16", "spatial_resolution": 30}],
        "type": COG,
        "roles": ["cloud", "cloud-shadow", "snow-ice", "water-mask"],
        "title": "Pixel Quality Assessment Band",
    }


def asset_filenames(product_id: str, platform: str) -> dict[str, str]:
    """Asset key -> file name, with each platform's own band numbers (as USGS names them)."""
    stem = product_id
    names = {k: f"{stem}_SR_B{band_info(platform, k)[0]}.TIF" for k in REFLECTANCE_ASSETS}
    names["qa_pixel"] = f"{stem}_QA_PIXEL.TIF"
    return names


def make_item(
    *,
    item_id: str,
    platform: str,
    datetime: str,
    created: str,
    epsg: int,
    shape: tuple[int, int],
    transform: list[float],
    geometry: dict[str, Any],
    bbox: list[float],
    cloud_cover: float,
    wrs_path: int,
    wrs_row: int,
    scene_id: str,
    sun_azimuth: float,
    sun_elevation: float,
    hrefs: dict[str, str],
    category: str = "T1",
) -> dict[str, Any]:
    """One item in Planetary Computer's ``landsat-c2-l2`` layout (``category``: T1 or T2)."""
    spec = PLATFORMS[platform]
    return {
        "id": item_id,
        "bbox": bbox,
        "type": "Feature",
        "links": [],
        "assets": {
            **{k: _reflectance_asset(platform, k, hrefs[k]) for k in REFLECTANCE_ASSETS if k in hrefs},
            "qa_pixel": _qa_asset(hrefs["qa_pixel"]),
        },
        "geometry": geometry,
        "collection": "landsat-c2-l2",
        "properties": {
            "gsd": 30,
            "created": created,
            "sci:doi": spec["doi"],
            "datetime": datetime,
            "platform": platform,
            "proj:epsg": int(epsg),
            "proj:shape": [int(shape[0]), int(shape[1])],
            "description": "Landsat Collection 2 Level-2",
            "instruments": list(spec["instruments"]),
            "eo:cloud_cover": float(cloud_cover),
            "proj:transform": [float(v) for v in transform],
            "view:off_nadir": 0,
            "landsat:wrs_row": f"{wrs_row:03d}",
            "landsat:scene_id": scene_id,
            "landsat:wrs_path": f"{wrs_path:03d}",
            "landsat:wrs_type": "2",
            "view:sun_azimuth": float(sun_azimuth),
            "landsat:correction": "L2SP",
            "view:sun_elevation": float(sun_elevation),
            "landsat:cloud_cover_land": float(cloud_cover),
            "landsat:collection_number": "02",
            "landsat:collection_category": category,
        },
        "stac_extensions": list(STAC_EXTENSIONS),
        "stac_version": "1.0.0",
    }


def make_collection(bbox: list[float], start: str, end: str, description: str) -> dict[str, Any]:
    """The ``landsat-c2-l2`` collection document for the twin's extent."""
    return {
        "id": "landsat-c2-l2",
        "type": "Collection",
        "links": [],
        "title": "Landsat Collection 2 Level-2 (glacierflow offline twin)",
        "description": description,
        "extent": {"spatial": {"bbox": [bbox]}, "temporal": {"interval": [[start, end]]}},
        "license": "proprietary",
        "keywords": ["Landsat", "USGS", "NASA", "Satellite", "Reflectance", "synthetic"],
        "providers": [{"name": "glacierflow offline twin", "roles": ["producer", "host"]}],
        "summaries": {"platform": sorted(PLATFORMS), "gsd": [30]},
        "stac_version": "1.0.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/view/v1.0.0/schema.json",
            "https://stac-extensions.github.io/scientific/v1.0.0/schema.json",
            "https://stac-extensions.github.io/raster/v1.0.0/schema.json",
            "https://stac-extensions.github.io/eo/v1.0.0/schema.json",
        ],
    }
