from __future__ import annotations

import pytest

from glacierflow.config import CubeSpec, PreprocessSpec, resolve_site
from glacierflow.errors import GlacierflowError
from glacierflow.glaciers import GLACIERS, get_site, site_from_bbox, utm_epsg


def test_registry_epsg_is_the_utm_zone_of_the_bbox_centre() -> None:
    for site in GLACIERS.values():
        assert utm_epsg(*site.centre) == site.epsg, site.name
    assert get_site("Aletsch").epsg == 32632  # the research code used 32643 for every glacier


@pytest.mark.parametrize(
    ("lon", "lat", "epsg"),
    [(77.65, 32.1, 32643), (8.05, 46.47, 32632), (-73.5, -49.3, 32718), (5.5, 60.5, 32632), (15.0, 78.0, 32633),
     (179.9, 10.0, 32660), (-180.0, 10.0, 32601)],
)
def test_utm_epsg(lon: float, lat: float, epsg: int) -> None:
    assert utm_epsg(lon, lat) == epsg


def test_bad_names_and_boxes() -> None:
    with pytest.raises(GlacierflowError, match="known: aletsch, parvati"):
        get_site("parvatti")
    with pytest.raises(GlacierflowError, match="W < E"):
        site_from_bbox((10, 46, 9, 47))
    with pytest.raises(GlacierflowError, match="either --glacier or --bbox"):
        resolve_site("parvati", (1, 2, 3, 4), None)
    assert resolve_site(None, (7.9, 46.4, 8.2, 46.6), None).epsg == 32632
    assert resolve_site(None, (7.9, 46.4, 8.2, 46.6), 2056).epsg == 2056


def test_specs_validate_and_round_trip() -> None:
    spec = CubeSpec(name="p", bbox=(1.0, 2.0, 3.0, 4.0), epsg=32631, start="2019-01-01", end="2019-12-31",
                    catalog="http://x", platforms=("landsat-8", "landsat-9"))
    assert CubeSpec.from_dict(__import__("json").loads(spec.to_json())) == spec
    with pytest.raises(GlacierflowError, match="before"):
        CubeSpec(name="p", bbox=(1, 2, 3, 4), epsg=1, start="2020-01-01", end="2019-01-01", catalog="x")
    with pytest.raises(GlacierflowError, match="--max-missing"):
        PreprocessSpec(max_missing=1.5)
    with pytest.raises(GlacierflowError, match="--period"):
        PreprocessSpec(period="2W")
