"""Cube builder: real Planetary Computer item JSON (metadata only) and tiny local COGs (pixels)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from pyproj import CRS, Transformer
from rasterio.transform import from_origin

from glacierflow.errors import GlacierflowError
from glacierflow.ingest.cube import build_cube, snapped_bounds
from glacierflow.ingest.items import normalise_items, normalise_items_with_report
from glacierflow.preprocess.qa import read_errors
from glacierflow.testing import raise_if_computes

# stackstac 0.5.1 and rasterio use ``affine * tuple``, which affine >= 2.4 flags as pending deprecation
pytestmark = pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")

FIXTURES = Path(__file__).resolve().parent / "data" / "planetary-computer"
L89 = ("landsat-8", "landsat-9")  # the fixtures are Landsat-9; the default keeps Landsat-8 only


def _load(name: str):
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture
def no_compute():
    """Any dask compute inside the block fails: building a cube must stay lazy."""
    with raise_if_computes():
        yield


def _check_grid(cube, epsg: int, bbox) -> None:
    assert cube.dims == ("time", "band", "y", "x")
    assert cube.dtype == np.float32
    assert list(cube.band.values) == ["green", "swir16", "qa_pixel"]
    assert cube.attrs["epsg"] == epsg
    assert cube.spatial_ref.attrs["epsg"] == epsg
    assert CRS.from_wkt(cube.spatial_ref.attrs["crs_wkt"]).to_epsg() == epsg
    dx, dy = np.diff(cube.x.values), np.diff(cube.y.values)
    assert np.all(dx == 30.0) and np.all(dy == -30.0)
    # pixel centres on whole multiples of 30 m (Landsat C2 grid: corners at 15 m + k * 30 m)
    assert np.all(cube.x.values % 30 == 0) and np.all(cube.y.values % 30 == 0)
    minx, miny, maxx, maxy = Transformer.from_crs(4326, epsg, always_xy=True).transform_bounds(
        *bbox, densify_pts=21
    )
    # the grid covers the projected bbox and overshoots it by less than one pixel on each side
    left, top = cube.x.values[0] - 15, cube.y.values[0] + 15
    right, bottom = cube.x.values[-1] + 15, cube.y.values[-1] - 15
    assert left <= minx < left + 30 and right - 30 < maxx <= right
    assert bottom <= miny < bottom + 30 and top - 30 < maxy <= top
    assert cube.sizes["x"] == round((right - left) / 30) and cube.sizes["y"] == round((top - bottom) / 30)
    assert cube.attrs["transform"] == [30.0, 0.0, left, 0.0, -30.0, top]
    # one asset of one scene per chunk, full y/x
    assert cube.data.chunksize == (1, 1, cube.sizes["y"], cube.sizes["x"])
    assert np.all(np.diff(cube.time.values).astype("int64") >= 0)


BBOX_4 = (148.0, -42.5, 148.2, -42.3)  # inside LC09 089089 and 089090 (EPSG:32655)


def test_plain_dicts_lazy_grid(no_compute):
    items = _load("landsat-c2-l2_items_4_2024-04.json")
    original = json.dumps(items, sort_keys=True)
    cube = build_cube(items, bbox_lonlat=BBOX_4, epsg=32655, platforms=L89)
    assert json.dumps(items, sort_keys=True) == original  # the caller's items are not modified
    _check_grid(cube, 32655, BBOX_4)
    assert sorted(cube.id.values) == ["LC09_L2SP_089089_20240417_02_T1", "LC09_L2SP_089090_20240417_02_T1"]
    assert list(cube.platform.values) == ["landsat-9", "landsat-9"]
    by_id = {it["id"]: it["properties"]["eo:cloud_cover"] for it in items}
    assert [float(c) for c in cube["eo:cloud_cover"].values] == pytest.approx(
        [by_id[i] for i in cube.id.values]
    )
    assert set(cube.attrs["dropped_items"]) == {
        "LC09_L2SP_089088_20240417_02_T2",
        "LC09_L2SP_089087_20240417_02_T2",
    }


def test_pystac_items_proj_code(no_compute):
    raw = _load("landsat-c2-l2_items_4_2024-04.json")
    items = [pystac.Item.from_dict(d) for d in raw]
    props = items[0].to_dict(transform_hrefs=False)["properties"]
    assert props.get("proj:code") == "EPSG:32655" and "proj:epsg" not in props  # the pystac >= 1.12 trap

    plain = normalise_items(items, platforms=L89)
    assert [p["properties"]["proj:epsg"] for p in plain] == [32655, 32655, 32655, 32656]
    assert all(isinstance(p["properties"]["proj:epsg"], int) for p in plain)
    assert all(set(p["assets"]) == {"green", "swir16", "qa_pixel"} for p in plain)
    assert all("links" not in p for p in plain)

    from_pystac = build_cube(items, bbox_lonlat=BBOX_4, epsg=32655, platforms=L89)
    from_dicts = build_cube(raw, bbox_lonlat=BBOX_4, epsg=32655, platforms=L89)
    _check_grid(from_pystac, 32655, BBOX_4)
    for name in ("x", "y", "time", "id", "band"):
        np.testing.assert_array_equal(from_pystac[name].values, from_dicts[name].values)


def test_mixed_epsg_explicit(no_compute):
    items = _load("landsat-c2-l2_items_20_mixed-epsg_2023-10.json")
    assert {it["properties"]["proj:epsg"] for it in items} == {32655, 32656, 3031}
    bbox = (150.0, -40.0, 150.5, -39.5)  # overlaps 089088 (zone 55) and 089087 (zone 56)
    cube = build_cube(items, bbox_lonlat=bbox, epsg=32656, platforms=L89)
    _check_grid(cube, 32656, bbox)
    assert cube.attrs["resampling"] == {"green": "bilinear", "swir16": "bilinear", "qa_pixel": "nearest"}
    zones = {it["id"]: it["properties"]["proj:epsg"] for it in items}
    assert {zones[i] for i in cube.id.values} == {32655, 32656}
    # same items through pystac (proj:code) on zone 55 instead
    cube55 = build_cube(
        [pystac.Item.from_dict(d) for d in items], bbox_lonlat=bbox, epsg=32655, platforms=L89
    )
    _check_grid(cube55, 32655, bbox)
    assert sorted(cube55.id.values) == sorted(cube.id.values)


def test_landsat7_filtered():
    le07 = _load("landsat-c2-l2_LE07_item_trimmed.json")
    l9 = _load("landsat-c2-l2_items_4_2024-04.json")
    kept, dropped = normalise_items_with_report([le07, *l9], platforms=L89)
    assert [k["id"] for k in kept] == [d["id"] for d in l9]
    assert list(dropped) == ["LE07_L2SP_168061_20121222_02_T1"]
    assert "landsat-7" in dropped["LE07_L2SP_168061_20121222_02_T1"]
    # default platforms: Landsat 8 and 9 (the same bands and QA bits); Landsat 7 still dropped
    assert [k["id"] for k in normalise_items([le07, *l9])] == [d["id"] for d in l9]
    with pytest.raises(GlacierflowError, match="landsat-7"):
        build_cube([le07], bbox_lonlat=(36.5, -1.5, 36.6, -1.4), epsg=32737, platforms=L89)


def test_errors_are_one_line():
    items = _load("landsat-c2-l2_items_4_2024-04.json")
    with pytest.raises(GlacierflowError, match="overlaps bbox"):
        build_cube(items, bbox_lonlat=(10, 10, 10.1, 10.1), epsg=32632, platforms=L89)
    with pytest.raises(GlacierflowError, match="invalid epsg"):
        build_cube(items, bbox_lonlat=BBOX_4, epsg=None, platforms=L89)  # type: ignore[arg-type]
    with pytest.raises(GlacierflowError, match="invalid bbox"):
        snapped_bounds((148.2, -42.3, 148.0, -42.5), 32655)


# ------------------------------------------------------------------------------------ real pixels

EPSG = 32643
ORIGIN = (600015.0, 3550005.0)  # Landsat-style grid corner: 15 m + k * 30 m
H, W = 20, 24
SCALE, OFFSET = 2.75e-5, -0.2


def _write_tif(path: Path, data: np.ndarray) -> str:
    profile = dict(
        driver="GTiff", height=H, width=W, count=1, dtype="uint16", crs=f"EPSG:{EPSG}",
        transform=from_origin(*ORIGIN, 30, 30), tiled=True, blockxsize=16, blockysize=16,
    )  # fmt: skip
    # no GeoTIFF nodata tag: DN 0 must be masked by glacierflow from raster:bands, as stackstac ignores it
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    return str(path)


def _item(tmp: Path, name: str, date: str, arrays: dict[str, np.ndarray], pystac_style: bool = False) -> dict:
    refl = {"scale": SCALE, "offset": OFFSET, "nodata": 0, "data_type": "uint16", "spatial_resolution": 30}
    qa = {"nodata": 1, "unit": "bit index", "data_type": "uint16", "spatial_resolution": 30}
    to_ll = Transformer.from_crs(EPSG, 4326, always_xy=True)
    x0, y0 = ORIGIN
    w, s, e, n = to_ll.transform_bounds(x0, y0 - 30 * H, x0 + 30 * W, y0)
    proj = {"proj:code": f"EPSG:{EPSG}"} if pystac_style else {"proj:epsg": EPSG}
    assets = {
        key: {
            "href": _write_tif(tmp / f"{name}_{key}.tif", arr),
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "raster:bands": [qa if key == "qa_pixel" else refl],
        }
        for key, arr in arrays.items()
    }
    return {
        "type": "Feature", "stac_version": "1.0.0", "id": name, "bbox": [w, s, e, n],
        "geometry": {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]},
        "properties": {
            "datetime": date, "platform": "landsat-8", "eo:cloud_cover": 12.5,
            "proj:shape": [H, W], "proj:transform": [30.0, 0.0, x0, 0.0, -30.0, y0], **proj,
        },
        "assets": assets, "links": [],
    }  # fmt: skip


def _inner_bbox() -> tuple[float, float, float, float]:
    x0, y0 = ORIGIN
    to_ll = Transformer.from_crs(EPSG, 4326, always_xy=True)
    return to_ll.transform_bounds(x0 + 90, y0 - 30 * H + 90, x0 + 30 * W - 90, y0 - 90)


def test_pixels_rescale_and_masks(tmp_path):
    rng = np.random.default_rng(0)
    scenes = {}
    items = []
    for k, date in enumerate(["2020-07-03T05:00:00Z", "2020-06-17T05:00:00Z", "2020-07-19T05:00:00Z"]):
        green = rng.integers(7300, 40000, (H, W), dtype=np.uint16)
        swir = rng.integers(7300, 40000, (H, W), dtype=np.uint16)
        # clear / cloud / snow codes, fill bit 0 off
        qa = rng.choice(np.array([21824, 22280, 55052, 23888], np.uint16), (H, W))
        green[5, 6] = 0  # nodata
        swir[7, 8] = 0
        qa[9, 10] = 1  # fill
        qa[9, 11] = 0b1000000000000011  # fill bit plus other bits
        arrays = {"green": green, "swir16": swir, "qa_pixel": qa}
        scenes[f"S{k}"] = arrays
        items.append(_item(tmp_path, f"S{k}", date, arrays, pystac_style=(k == 1)))

    bbox = _inner_bbox()
    cube = build_cube(items, bbox_lonlat=bbox, epsg=EPSG)
    assert list(cube.id.values) == ["S1", "S0", "S2"]  # sorted by time
    cols = ((cube.x.values - ORIGIN[0] - 15) / 30).astype(int)
    rows = ((ORIGIN[1] - 15 - cube.y.values) / 30).astype(int)
    inside_c, inside_r = (cols >= 0) & (cols < W), (rows >= 0) & (rows < H)
    assert inside_c.sum() >= W - 6 and inside_r.sum() >= H - 6

    values = cube.compute(scheduler="sync")
    for t, item_id in enumerate(cube.id.values):
        arrays = scenes[str(item_id)]
        sub = values.isel(time=t).values[:, inside_r][:, :, inside_c]
        r, c = rows[inside_r], cols[inside_c]
        for b, key in enumerate(["green", "swir16"]):
            dn = arrays[key][np.ix_(r, c)]
            expected = np.where(dn == 0, np.nan, dn.astype(np.float64) * SCALE + OFFSET)
            np.testing.assert_allclose(sub[b], expected, rtol=0, atol=2e-6)
        qa = arrays["qa_pixel"][np.ix_(r, c)]
        expected_qa = np.where(qa & 1, np.nan, qa.astype(np.float64))
        np.testing.assert_array_equal(sub[2], expected_qa)  # raw bits, exact
        assert np.isnan(sub[0][list(r).index(5), list(c).index(6)])
        assert np.isnan(sub[2][list(r).index(9), list(c).index(11)])
        assert sub[2][list(r).index(9), list(c).index(12)] in (21824, 22280, 55052, 23888)
        # outside the scene footprint: NaN
        assert np.all(np.isnan(values.isel(time=t).values[:, ~inside_r, :]))


def test_missing_file_becomes_a_read_error_in_the_data(tmp_path, caplog):
    arrays = {
        "green": np.full((H, W), 20000, np.uint16),
        "swir16": np.full((H, W), 10000, np.uint16),
        "qa_pixel": np.full((H, W), 21824, np.uint16),
    }
    good = _item(tmp_path, "good", "2021-01-01T00:00:00Z", arrays)
    bad = _item(tmp_path, "bad", "2021-01-17T00:00:00Z", arrays)
    bad["assets"]["swir16"]["href"] = str(tmp_path / "gone.tif") + "?st=2026&sig=SECRET"  # like a signed URL
    bbox = _inner_bbox()

    cube = build_cube([good, bad], bbox_lonlat=bbox, epsg=EPSG)
    with caplog.at_level("WARNING", logger="glacierflow.ingest.cube"):
        values = cube.compute(scheduler="sync")
    assert any("gone.tif" in r.getMessage() for r in caplog.records)
    assert not any("SECRET" in r.getMessage() for r in caplog.records)  # tokens never reach the logs
    bad_t = list(cube.id.values).index("bad")
    # the unreadable window is -inf (not NaN, which means "outside the footprint"): found in the graph
    assert np.all(np.isneginf(values.isel(time=bad_t).sel(band="swir16")))
    np.testing.assert_array_equal(read_errors(values).values, [[False] * 3, [False, True, False]])
    inner = values.isel(time=bad_t).sel(band="green").values
    assert np.nanmax(inner) == pytest.approx(20000 * SCALE + OFFSET, abs=1e-6)

    strict = build_cube([good, bad], bbox_lonlat=bbox, epsg=EPSG, on_read_error="raise")
    with pytest.raises(RuntimeError, match="gone.tif"):
        strict.compute(scheduler="sync")


def test_other_utm_zone_bilinear_reflectance_nearest_qa(tmp_path):
    """A scene in zone 43 stacked on a zone-44 grid (Parvati lies 0.2 deg from the boundary)."""
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    yy, xx = np.mgrid[0:H, 0:W]
    green = (8000 + 900 * xx + 500 * yy).astype(np.uint16)  # smooth: bilinear differs from nearest
    qa = np.where((xx + yy) % 3 == 0, 21824, 22280).astype(np.uint16)
    arrays = {"green": green, "swir16": (green // 2).astype(np.uint16), "qa_pixel": qa}
    item = _item(tmp_path, "z43", "2021-03-01T05:00:00Z", arrays)
    for key, nodata in (("green", 0), ("swir16", 0), ("qa_pixel", 1)):  # real COGs carry the nodata tag
        with rasterio.open(item["assets"][key]["href"], "r+") as dst:
            dst.nodata = nodata
    cube = build_cube([item], bbox_lonlat=_inner_bbox(), epsg=32644)
    assert cube.attrs["resampling"] == {"green": "bilinear", "swir16": "bilinear", "qa_pixel": "nearest"}
    values = cube.compute(scheduler="sync").isel(time=0)
    res, _, left, _, _, top = cube.attrs["transform"]
    grid = dict(crs="EPSG:32644", transform=from_origin(left, top, res, res), width=cube.sizes["x"],
                height=cube.sizes["y"])
    independent = {}
    for key, how in (("green", Resampling.bilinear), ("qa_pixel", Resampling.nearest)):
        with rasterio.open(item["assets"][key]["href"]) as src, WarpedVRT(src, resampling=how, **grid) as vrt:
            independent[key] = vrt.read(1, masked=True)
    g_ref = independent["green"].astype(np.float64) * SCALE + OFFSET
    got = values.sel(band="green").values
    inside = ~np.ma.getmaskarray(g_ref) & np.isfinite(got)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(got[inside], g_ref.data[inside], atol=2e-6)  # same GDAL warp: exact
    q = values.sel(band="qa_pixel").values
    qa_ok = ~np.ma.getmaskarray(independent["qa_pixel"]) & np.isfinite(q)
    np.testing.assert_array_equal(q[qa_ok], independent["qa_pixel"].data[qa_ok])
    assert set(np.unique(q[qa_ok])) <= {21824.0, 22280.0}, "nearest never invents QA codes"
    dn = np.round((got[inside] - OFFSET) / SCALE)
    assert not np.isin(dn, green).all(), "reflectance was interpolated, not picked"
