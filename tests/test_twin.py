"""The offline twin: real COGs, PC-shaped items, ground truth, served by real STAC server software."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from scipy import ndimage

from glacierflow.cli.main import main
from glacierflow.errors import GlacierflowError
from glacierflow.ingest import catalog
from glacierflow.twin.make import load_twin_meta, make_twin
from glacierflow.twin.serve import serve_twin
from glacierflow.twin.world import ndsi_snow

from .conftest import load_pc_fixture


def _items(twin: Path) -> list[dict]:
    return json.loads((twin / "items.json").read_text())["features"]


def test_meta_and_layout(tiny_twin: Path) -> None:
    meta = load_twin_meta(tiny_twin)
    assert meta["epsg"] == 32643 and meta["glacier"] == "parvati"
    items = _items(tiny_twin)
    assert len(items) == meta["n_items"] == meta["n_landsat8"] + meta["n_landsat7"]
    assert meta["n_landsat7"] >= 1
    truth = xr.open_zarr(tiny_twin / "truth.zarr", consolidated=False, decode_coords="all")
    assert list(truth["item_id"].values) == [i["id"] for i in items]
    assert truth["ndsi"].shape == (len(items), *meta["shape"])
    assert "spatial_ref" in truth.coords and truth.spatial_ref.attrs["epsg"] == 32643


def test_every_cog_opens_with_the_right_encoding(tiny_twin: Path) -> None:
    for item in _items(tiny_twin):
        props = item["properties"]
        for key, asset in item["assets"].items():
            with rasterio.open(tiny_twin / asset["href"]) as src:
                assert src.dtypes[0] == "uint16"
                assert src.crs.to_epsg() == props["proj:epsg"]
                assert list(src.transform)[:6] == props["proj:transform"]
                assert [src.height, src.width] == props["proj:shape"]
                assert src.block_shapes[0][0] < src.height and src.overviews(1), "a COG is tiled and has overviews"
                if key == "qa_pixel":
                    assert src.nodata == 1
                else:
                    assert src.nodata == 0
                    assert src.scales[0] == pytest.approx(2.75e-5) and src.offsets[0] == pytest.approx(-0.2)
                    rb = asset["raster:bands"][0]
                    assert (rb["scale"], rb["offset"], rb["nodata"]) == (2.75e-05, -0.2, 0)


def test_items_have_the_schema_of_real_planetary_computer_items(tiny_twin: Path) -> None:
    real = load_pc_fixture("landsat-c2-l2_items_4_2024-04.json")[0]
    real_le07 = load_pc_fixture("landsat-c2-l2_LE07_item_trimmed.json")
    items = _items(tiny_twin)
    l8 = next(i for i in items if i["properties"]["platform"] == "landsat-8")
    l7 = next(i for i in items if i["properties"]["platform"] == "landsat-7")
    assert set(l8) == set(real)
    assert set(l8["properties"]) == set(real["properties"])
    assert l8["stac_extensions"] == real["stac_extensions"]
    for key in ("green", "swir16", "qa_pixel"):
        assert set(l8["assets"][key]) == set(real["assets"][key]), key
        assert l8["assets"][key]["roles"] == real["assets"][key]["roles"]
        assert l8["assets"][key]["type"] == real["assets"][key]["type"]
        assert l8["assets"][key]["raster:bands"] == real["assets"][key]["raster:bands"]
    real_bits = [(b["name"], b["offset"]) for b in real["assets"]["qa_pixel"]["classification:bitfields"]]
    twin_bits = [(b["name"], b["offset"]) for b in l8["assets"]["qa_pixel"]["classification:bitfields"]]
    assert twin_bits[:8] == real_bits[:8]
    for key, prop in [("proj:epsg", int), ("eo:cloud_cover", float), ("landsat:wrs_path", str)]:
        assert isinstance(l8["properties"][key], prop)
    # band numbering per platform, as upstream: OLI green = B3, swir16 = B6; ETM+ green = B2, swir16 = B5
    # (the trimmed real LE07 item has no green asset: ETM+ green is band 2 upstream)
    for item, ref, keys in ((l8, real, ("green", "swir16")), (l7, real_le07, ("swir16",))):
        for key in keys:
            assert item["assets"][key]["eo:bands"][0]["name"] == ref["assets"][key]["eo:bands"][0]["name"]
            assert item["assets"][key]["href"][-7:] == ref["assets"][key]["href"][-7:]
    assert l7["assets"]["green"]["href"].endswith("_SR_B2.TIF")
    assert l8["properties"]["datetime"].endswith("Z") and len(l8["properties"]["datetime"]) == 27


def test_defects_are_present(tiny_twin: Path) -> None:
    truth = xr.open_zarr(tiny_twin / "truth.zarr", consolidated=False)
    items = _items(tiny_twin)
    cc = np.array([i["properties"]["eo:cloud_cover"] for i in items])
    assert np.allclose(cc, truth["cloud_cover"].values)
    assert (cc > 20).any() and (cc <= 20).sum() > len(cc) / 2
    vf = truth["valid_fraction"].values
    assert (vf < 0.5).any(), "some partial footprints leave > 50 % nodata"
    assert (np.abs(truth["shift_x"]) <= 2).all() and truth["shift_x"].std() > 0.5
    # qa_pixel agrees with the DN nodata and the truth's defect flags on one partial scene
    i = int(np.argmin(vf))
    a = items[i]["assets"]
    with rasterio.open(tiny_twin / a["green"]["href"]) as g, rasterio.open(tiny_twin / a["qa_pixel"]["href"]) as q:
        dn, qa = g.read(1), q.read(1)
    fill = (qa & 1) == 1
    assert np.array_equal(fill, dn == 0)
    assert np.array_equal(fill, (truth["defects"][i].values & 1) == 1)
    assert abs(fill.mean() - (1 - vf[i])) < 1e-9


def test_velocity_truth_is_plausible(tiny_twin: Path) -> None:
    truth = xr.open_zarr(tiny_twin / "truth.zarr", consolidated=False)
    speed = np.hypot(truth["u"], truth["v"]).values
    mask = truth["glacier_mask"].values
    assert mask.mean() > 0.02
    assert 100 < speed[mask].max() <= 150 and np.median(speed[mask]) > 10
    assert (speed[~mask] == 0).all()


def test_recorded_shift_reproduces_the_scene(tiny_twin: Path) -> None:
    truth = xr.open_zarr(tiny_twin / "truth.zarr", consolidated=False)
    items = _items(tiny_twin)
    checked = 0
    for i, item in enumerate(items):
        if truth["cloud_cover"][i] > 1 or truth["valid_fraction"][i] < 0.99:
            continue
        a = item["assets"]
        with rasterio.open(tiny_twin / a["green"]["href"]) as g, rasterio.open(tiny_twin / a["swir16"]["href"]) as s:
            green = g.read(1).astype(np.float32) * 2.75e-5 - 0.2
            swir = s.read(1).astype(np.float32) * 2.75e-5 - 0.2
            ok = g.read_masks(1) > 0
        scene = ndsi_snow(green, swir)
        t = truth["ndsi"][i].values
        if (t > 0).mean() > 0.95 or (t > 0).mean() < 0.05:
            continue  # uniform snow or bare: a shift is not observable
        sx, sy = float(truth["shift_x"][i]), float(truth["shift_y"][i])
        good = ok & (truth["defects"][i].values == 0)
        good[:4], good[-4:], good[:, :4], good[:, -4:] = False, False, False, False

        def err(dx: float, dy: float, t: np.ndarray = t, scene: np.ndarray = scene, good: np.ndarray = good) -> float:
            moved = ndimage.shift(t, (dy, dx), order=1, mode="nearest")
            return float(np.mean(np.abs(moved - scene)[good]))

        e_true, e_none, e_flip = err(sx, sy), err(0, 0), err(-sx, -sy)
        assert e_true < 0.05, (item["id"], e_true)
        if abs(sx) + abs(sy) > 1:
            assert e_true < 0.8 * e_none and e_true < 0.8 * e_flip, (e_true, e_none, e_flip)
        checked += 1
    assert checked >= 3


def test_basic_truth_has_the_clean_red_band(tiny_twin: Path) -> None:
    """The basic world's ``red_clean`` (the truth-image bound's input) is the red COG without clouds and shifts."""
    truth = xr.open_zarr(tiny_twin / "truth.zarr", consolidated=False)
    items = _items(tiny_twin)
    i = next(k for k, it in enumerate(items) if truth["cloud_cover"][k] <= 1 and truth["valid_fraction"][k] >= 0.99)
    with rasterio.open(tiny_twin / items[i]["assets"]["red"]["href"]) as src:
        red = src.read(1).astype(np.float32) * 2.75e-5 - 0.2
    sx, sy = float(truth["shift_x"][i]), float(truth["shift_y"][i])
    good = truth["defects"][i].values == 0
    good[:4], good[-4:], good[:, :4], good[:, -4:] = False, False, False, False

    def err(dx: float, dy: float) -> np.ndarray:
        return np.abs(ndimage.shift(truth["red_clean"][i].values, (dy, dx), order=1, mode="nearest") - red)[good]

    # reflectance (the red band spans 0.04-0.85): measured median 0.002 on the small twin, DN quantisation
    assert float(np.median(err(sx, sy))) < 0.01
    if abs(sx) + abs(sy) > 1:  # and the recorded shift explains the scene better than none
        assert float(np.mean(err(sx, sy))) < float(np.mean(err(0.0, 0.0)))


def test_search_served_twin_exact_scenes_and_pagination(served_twin: dict, tiny_twin: Path) -> None:
    items = _items(tiny_twin)
    meta = load_twin_meta(tiny_twin)
    start, end = "2019-03-01", "2020-02-29"
    expected = sorted(
        i["id"] for i in items
        if i["properties"]["platform"] == "landsat-8" and i["properties"]["eo:cloud_cover"] <= 20
        and start <= i["properties"]["datetime"][:10] <= end
    )
    res = catalog.search(served_twin["stac_url"], bbox=meta["bbox"], start=start, end=end, limit=5)
    assert sorted(res.ids) == expected
    assert res.pages > 2, "limit 5 must have needed several pages"
    assert res.ids == sorted(res.ids, key=lambda x: x.split("_")[3])
    # Landsat-7 items are in the catalog, and only the platform filter removes them
    everything = catalog.search(served_twin["stac_url"], bbox=meta["bbox"], start=start, end=end,
                                platforms=None, max_cloud=None)
    platforms = {i["properties"]["platform"] for i in everything.items}
    assert platforms == {"landsat-8", "landsat-7"}
    # a bbox far away finds nothing
    far = catalog.search(served_twin["stac_url"], bbox=(8.0, 46.4, 8.1, 46.5), start=start, end=end)
    assert far.items == []


def test_assets_are_read_over_http_with_range_requests(served_twin: dict) -> None:
    res = catalog.search(served_twin["stac_url"], bbox=served_twin["meta"]["bbox"], start="2019-01-01",
                         end="2020-12-31")
    href = res.items[0]["assets"]["green"]["href"]
    assert href.startswith("http://127.0.0.1:")
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"), rasterio.open(href) as src:
        win = src.read(1, window=((10, 20), (10, 20)))
        assert win.shape == (10, 10) and win.dtype == np.uint16 and src.overviews(1)
    import httpx

    r = httpx.get(href, headers={"Range": "bytes=0-99"})
    assert r.status_code == 206 and len(r.content) == 100


@pytest.mark.pgstac
def test_search_pgstac_served_twin_uses_server_filter(tiny_twin: Path) -> None:
    from glacierflow.twin.stac_servers import pgstac_available

    if not pgstac_available():
        pytest.skip("PostgreSQL + PostGIS not installed; run scripts/setup-services.sh")
    meta = load_twin_meta(tiny_twin)
    items = _items(tiny_twin)
    with serve_twin(tiny_twin, backend="pgstac") as served:
        res = catalog.search(served["stac_url"], bbox=meta["bbox"], start="2019-01-01", end="2020-12-31",
                             limit=7, max_cloud=10)
    assert res.server_filter
    expected = sorted(i["id"] for i in items if i["properties"]["platform"] == "landsat-8"
                      and i["properties"]["eo:cloud_cover"] <= 10)
    assert sorted(res.ids) == expected
    assert res.rejected == [], "pgstac honoured the filter, so nothing was left to reject client-side"


# --------------------------------------------------------------------------------------- bad input
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "glacierflow", *args], capture_output=True, text=True, timeout=120)


def test_unknown_glacier_is_one_line(tmp_path: Path) -> None:
    # through ``python -m glacierflow``: the exit status of main() reaches the shell
    r = _cli("twin", "make", str(tmp_path / "t"), "--glacier", "parvatti")
    assert r.returncode == 2
    assert r.stderr == ("error: unknown glacier 'parvatti' (did you mean 'parvati'?); known: aletsch, parvati; "
                        "or pass --bbox W S E N\n")
    assert not (tmp_path / "t").exists()


def test_existing_dir_refused_and_overwrite_is_safe(tiny_twin: Path, tmp_path: Path) -> None:
    with pytest.raises(GlacierflowError, match="--overwrite"):
        make_twin(tiny_twin, size="tiny")
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.txt").write_text("precious")
    with pytest.raises(GlacierflowError, match="not a glacierflow twin"):
        make_twin(other, size="tiny", overwrite=True)
    assert (other / "thesis.txt").read_text() == "precious"


def test_incomplete_or_foreign_twin_dir(tmp_path: Path) -> None:
    with pytest.raises(GlacierflowError, match="does not exist"):
        load_twin_meta(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "items.json").write_text("{}")
    with pytest.raises(GlacierflowError, match="not a complete glacierflow twin"):
        load_twin_meta(tmp_path / "half")
    (tmp_path / "half" / "twin.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(GlacierflowError, match="format 99"):
        load_twin_meta(tmp_path / "half")


def test_port_in_use_is_a_clear_error(tiny_twin: Path, capsys: pytest.CaptureFixture) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(GlacierflowError, match=f"port {port}.*in use"):
            with serve_twin(tiny_twin, port=port):
                pass
        before = signal.getsignal(signal.SIGTERM)
        rc = main(["twin", "serve", str(tiny_twin), "--port", str(port)])
    err = capsys.readouterr().err
    assert rc == 2 and "in use" in err and err.count("\n") == 1 and "Traceback" not in err
    assert signal.getsignal(signal.SIGTERM) is before, "the command restores the SIGTERM handler it set"


def test_landsat9_from_november_2021_like_planetary_computer() -> None:
    """The schedule adds Landsat 9 (8 days after Landsat 8 on the main path) from 2021-11-01 only; its items
    carry Planetary Computer's Landsat-9 properties (LC09 ids, platform, instruments, DOI, band names)."""
    from glacierflow.geo.glaciers import get_site
    from glacierflow.twin import stac_items
    from glacierflow.twin.make import LANDSAT9_START, schedule

    acqs = schedule(get_site("parvati"), "2021-06-01", "2022-03-31", seed=0, realism="himalaya", size="tiny")
    l9 = [a for a in acqs if a.platform == "landsat-9"]
    assert len(l9) >= 8 and all(a.datetime >= f"{LANDSAT9_START:%Y-%m-%d}" for a in l9)
    assert all(a.item_id.startswith("LC09_L2SP_") for a in l9) and [a.index for a in acqs] == list(range(len(acqs)))
    assert not [a for a in schedule(get_site("parvati"), "2019-01-01", "2020-12-31", seed=0) if a.platform ==
                "landsat-9"], "no Landsat 9 before late 2021"
    real = next(i for i in load_pc_fixture("landsat-c2-l2_items-page_limit1_2025-03.json")["features"]
                if i["properties"]["platform"] == "landsat-9")
    spec = stac_items.PLATFORMS["landsat-9"]
    assert spec["instruments"] == real["properties"]["instruments"] and spec["doi"] == real["properties"]["sci:doi"]
    for asset in ("green", "swir16"):
        band = real["assets"][asset]["eo:bands"][0]
        number, wavelength, _ = spec["bands"][asset]
        assert (f"{spec['band_prefix']}{number}", wavelength) == (band["name"], band["center_wavelength"])
