"""STAC for outputs: build-cube, flow and predict write a valid Item + Collection beside each store (offline
validation with pystac), ``derived_from`` the Landsat items the twin's STAC server serves, and a STAC server
serving the outputs finds them by search."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pystac
import pytest

from glacierflow.cli.main import main
from glacierflow.storage import stac_out, store
from glacierflow.twin.stac_servers import RustacMemoryServer

EXTENSIONS = {"projection/v2.0.0", "datacube/v2.2.0", "xarray-assets/v1.0.0", "processing/v1.1.0"}


@pytest.fixture(scope="module")
def outputs(tiny_cube_summer: dict[str, Any], tmp_path_factory) -> dict[str, str]:
    """The summer cube (build-cube) and a velocity store flowed from it (flow)."""
    from glacierflow.motion.velocity import run_flow
    from glacierflow.specs import FlowSpec

    vel = str(tmp_path_factory.mktemp("stac") / "velocity.zarr")
    run_flow(tiny_cube_summer["out"], vel, FlowSpec(pairs="consecutive"))
    return {"cube": tiny_cube_summer["out"], "velocity": vel}


def _read(url: str) -> tuple[dict[str, Any], dict[str, Any]]:
    folder = Path(stac_out.stac_dir(url))
    return json.loads((folder / "item.json").read_text()), json.loads((folder / "collection.json").read_text())


@pytest.mark.parametrize("kind", ["cube", "velocity"])
def test_every_written_store_has_a_valid_item_and_collection_beside_it(outputs, kind):
    item, collection = _read(outputs[kind])
    assert not (Path(outputs[kind]) / "item.json").exists()  # beside the store, never inside the Zarr hierarchy
    schemas = stac_out.validate(item)
    assert {s.split("stac-extensions.github.io/")[-1].removesuffix("/schema.json") for s in schemas[1:]} == EXTENSIONS
    assert stac_out.validate(collection)
    ds = store.open_store(outputs[kind])
    props = item["properties"]
    assert props["proj:code"] == f"EPSG:{store.epsg_of(ds)}" and props["proj:shape"] == [ds.sizes["y"], ds.sizes["x"]]
    assert props["processing:software"]["glacierflow"] == ds.attrs["glacierflow_version"]
    assert "cube_spec" in props["processing:expression"]["expression"]
    assert set(props["cube:variables"]) >= ({"ndsi"} if kind == "cube" else {"vx", "vy", "v", "v_error"})
    # the zarr asset opens the store lazily with the recorded keyword arguments
    asset = item["assets"]["zarr"]
    href = (Path(stac_out.stac_dir(outputs[kind])) / asset["href"]).resolve()
    assert href == Path(outputs[kind]).resolve()
    import xarray as xr

    opened = xr.open_zarr(str(href), **{k: v for k, v in asset["xarray:open_kwargs"].items() if k != "engine"})
    assert opened["x"].size == ds["x"].size
    # pystac reads them back
    assert pystac.Item.from_dict(item).id == item["id"]


def test_derived_from_links_resolve_to_the_landsat_items_the_cube_used(outputs, served_twin, tiny_cube_summer):
    item, _ = _read(outputs["cube"])
    scenes = tiny_cube_summer["scenes"]
    used = sorted(str(i) for i, u in zip(scenes["item_id"].values, scenes["used"].values, strict=True) if u)
    links = [ln for ln in item["links"] if ln["rel"] == "derived_from"]
    assert sorted(ln["title"] for ln in links) == used
    got = httpx.get(links[0]["href"], timeout=10).json()  # served by the twin's STAC API
    assert got["id"] == links[0]["title"] and got["collection"] == "landsat-c2-l2"
    vel, _ = _read(outputs["velocity"])
    vlinks = [ln["href"] for ln in vel["links"] if ln["rel"] == "derived_from"]
    assert vlinks[0] == f"{stac_out.stac_dir(outputs['cube'])}/item.json" and len(vlinks) == 1 + len(used)


def test_a_stac_server_serving_the_outputs_finds_them_by_search(outputs, tmp_path):
    from pystac_client import Client

    items = [_read(outputs[k])[0] for k in ("cube", "velocity")]
    for it in items:  # one collection for the server: the cube's
        it["collection"] = "glacierflow-outputs"
    _, coll = _read(outputs["cube"])
    coll = {**coll, "id": "glacierflow-outputs", "links": []}
    with RustacMemoryServer(items, coll, tmp_path) as url:
        found = list(Client.open(url).search(collections=["glacierflow-outputs"], bbox=items[0]["bbox"]).items())
    assert sorted(i.id for i in found) == sorted(i["id"] for i in items)
    assert {i.properties["proj:code"] for i in found} == {items[0]["properties"]["proj:code"]}


def test_stac_command_writes_under_stac_out(outputs, tmp_path):
    assert main(["stac", outputs["cube"], "--stac-out", str(tmp_path / "meta")]) == 0
    item = json.loads((tmp_path / "meta" / "item.json").read_text())
    assert item["assets"]["zarr"]["href"] == outputs["cube"] and stac_out.validate(item)
