from __future__ import annotations

import pytest

from glacierflow.errors import GlacierflowError, SpecError
from glacierflow.geo.glaciers import GLACIERS, get_site, site_from_bbox, utm_epsg
from glacierflow.specs import resolve_site


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
    with pytest.raises(SpecError, match="W < E") as err:
        site_from_bbox((10, 46, 9, 47))
    assert err.value.field == "bbox"
    assert str(err.value).startswith("bbox 10 46 9 47 of site")


def test_resolve_site() -> None:
    with pytest.raises(SpecError) as err:
        resolve_site("parvati", (1, 2, 3, 4), None)
    assert err.value.fields == ("glacier", "bbox")
    assert str(err.value) == "glacier and bbox were both given; pass one of them"
    with pytest.raises(SpecError, match="glacier NAME or bbox"):
        resolve_site(None, None, None)
    assert resolve_site(None, (7.9, 46.4, 8.2, 46.6), None).epsg == 32632
    assert resolve_site(None, (7.9, 46.4, 8.2, 46.6), 2056).epsg == 2056
    parvati = resolve_site("parvati", None, 32644)
    assert (parvati.epsg, parvati.bbox) == (32644, GLACIERS["parvati"].bbox)
