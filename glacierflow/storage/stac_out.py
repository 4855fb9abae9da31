"""STAC for outputs: a Collection + Item describing a store, beside it in ``STORE.zarr.stac/`` (or ``--stac-out``).

Each store written by build-cube, flow and predict gets ``item.json`` and ``collection.json`` in a sibling
folder (never inside the Zarr hierarchy, where zarr warns about unknown members), so the store can be
catalogued next to the Landsat items it came from:

- projection extension (``proj:code``, ``proj:shape``, ``proj:transform``, ``proj:bbox``) and a lon/lat
  footprint from the store's grid;
- datacube extension (``cube:dimensions`` x/y/time, ``cube:variables`` with units and descriptions);
- xarray-assets extension: one ``zarr`` asset with the ``xarray:open_kwargs`` that open it lazily;
- ``derived_from`` links to every source Landsat item (``<catalog>/collections/<collection>/items/<id>``,
  the scenes the cube used) and, for velocity and forecast stores, to the source cube's own item;
- processing extension: ``processing:software`` (glacierflow and its version), ``processing:level``,
  ``processing:lineage`` and every spec recorded in the store as ``processing:expression``.

Validated by :func:`validate` against the schemas pystac carries and the processing schema shipped in
``stac_schemas/`` (pystac has none for it), offline: a schema that is not at hand is an error, never a fetch.
"""

from __future__ import annotations

import json
import posixpath
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pystac
import xarray as xr
from pystac.extensions.datacube import DatacubeExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.xarray_assets import XarrayAssetsExtension

from glacierflow.errors import GlacierflowError
from glacierflow.storage import store as stores

PROCESSING = "https://stac-extensions.github.io/processing/v1.1.0/schema.json"
PROJJSON = "https://proj.org/schemas/v0.4/projjson.schema.json"
ZARR_MEDIA_TYPE = "application/vnd+zarr"
LEVELS = {"cube": "L3", "velocity": "L3", "forecast": "L4", "truth": "L3"}
LINEAGE = {
    "cube": "Landsat C2 L2 scenes searched by STAC, QA-masked, gap-filled, snow-mask NDSI, ECC-aligned, "
            "averaged per period (glacierflow build-cube)",
    "velocity": "surface velocity tracked between aligned scenes of a cube store (glacierflow flow)",
    "forecast": "snow-mask NDSI forecast of the periods after a cube's last input by a trained model "
                "(glacierflow predict)",
    "truth": "ground truth of the offline twin (glacierflow twin make)",
}


def stac_dir(url: str) -> str:
    """``STORE.zarr.stac``: the sibling folder holding a store's STAC Item and Collection."""
    return f"{url.rstrip('/')}.stac"


def store_kind(ds: xr.Dataset) -> str:
    """``cube``, ``velocity``, ``forecast`` or ``truth``, from the store's variables."""
    names = set(ds.variables)
    if names & {"lead", "forecast_reference_time"}:
        return "forecast"
    if names & {"vx", "u_composite", "speed_composite", "v_error"}:
        return "velocity"
    if names & {"glacier_mask", "defects"}:
        return "truth"
    return "cube"


def beside(url: str, storage_options: dict[str, Any] | None = None) -> str:
    """Write the STAC of the store just written at ``url`` beside it (:func:`write_stac`); returns ``url``.

    The store is complete whatever happens here: a failure to describe it is a warning, not an error.
    """
    import warnings

    try:
        write_stac(url, storage_options=storage_options)
    except (OSError, ValueError, KeyError, GlacierflowError, pystac.STACError) as err:
        warnings.warn(f"STAC metadata for {url} not written: {err}", RuntimeWarning, stacklevel=2)
    return url


def write_stac(url: str, out_dir: str | None = None, storage_options: dict[str, Any] | None = None) -> str:
    """Describe the complete store at ``url`` and write ``item.json`` + ``collection.json``; returns the folder.

    ``out_dir`` defaults to :func:`stac_dir` (beside the store, same filesystem and options); both files are
    validated offline (:func:`validate`) before they are written.
    """
    import fsspec

    folder = (out_dir or stac_dir(url)).rstrip("/")
    href = posixpath.relpath(url.rstrip("/"), folder) if out_dir is None else url
    item, collection = describe(url, storage_options, asset_href=href)
    for d in (item, collection):
        validate(d)
    fs, path = fsspec.core.url_to_fs(folder, **(storage_options or {}))
    fs.makedirs(path, exist_ok=True)
    for name, d in (("item.json", item), ("collection.json", collection)):
        with fs.open(f"{path}/{name}", "w") as f:
            f.write(json.dumps(d, indent=1))
    return folder


def describe(url: str, storage_options: dict[str, Any] | None = None,
             asset_href: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(item, collection)`` as dicts for the store at ``url`` (links between them relative, no self links)."""
    ds = stores.open_store(url, storage_options)
    kind = store_kind(ds)
    name = posixpath.basename(url.rstrip("/")).removesuffix(".zarr")
    bbox, footprint, native = _footprint(ds)
    start, end = _time_range(ds)
    item = pystac.Item(id=f"{kind}-{name}", geometry=footprint, bbox=bbox, datetime=None,
                       start_datetime=start, end_datetime=end,
                       properties={"title": str(ds.attrs.get("title", f"glacierflow {kind} store {name}")),
                                   "created": str(ds.attrs.get("created", "")) or None})
    item.properties = {k: v for k, v in item.properties.items() if v is not None}
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    proj.code, proj.shape, proj.bbox = f"EPSG:{stores.epsg_of(ds)}", [ds.sizes["y"], ds.sizes["x"]], native
    proj.transform = _transform(ds)
    _datacube(DatacubeExtension.ext(item, add_if_missing=True), ds)
    asset = pystac.Asset(href=asset_href or url, media_type=ZARR_MEDIA_TYPE, roles=["data"],
                         title=f"{kind} store (Zarr)")
    item.add_asset("zarr", asset)
    XarrayAssetsExtension.ext(asset, add_if_missing=True).open_kwargs = {
        "engine": "zarr", "consolidated": True, "decode_coords": "all"}
    item.properties.update(_processing(ds, kind))
    item.stac_extensions.append(PROCESSING)
    for link in _sources(ds, url, storage_options):
        item.add_link(link)
    collection = _collection(kind, item, bbox, start, end)
    item_d = item.to_dict(include_self_link=False, transform_hrefs=False)
    item_d["collection"] = collection["id"]
    item_d["links"] += [{"rel": r, "href": "./collection.json", "type": "application/json"}
                        for r in ("collection", "parent", "root")]
    return item_d, collection


def _footprint(ds: xr.Dataset) -> tuple[list[float], dict[str, Any], list[float]]:
    """Lon/lat bbox and polygon of the pixel edges (each edge densified), and the bbox in the store's CRS."""
    from pyproj import Transformer

    x, y = np.asarray(ds["x"].values, float), np.asarray(ds["y"].values, float)
    hx, hy = abs(x[1] - x[0]) / 2, abs(y[1] - y[0]) / 2
    left, right, bottom, top = x.min() - hx, x.max() + hx, y.min() - hy, y.max() + hy
    t = np.linspace(0, 1, 11)[:-1]  # 10 points per edge, counter-clockwise from the lower left corner
    ring_x = np.concatenate([left + (right - left) * t, np.full(10, right), right - (right - left) * t,
                             np.full(10, left)])
    ring_y = np.concatenate([np.full(10, bottom), bottom + (top - bottom) * t, np.full(10, top),
                             top - (top - bottom) * t])
    lon, lat = Transformer.from_crs(f"EPSG:{stores.epsg_of(ds)}", "EPSG:4326", always_xy=True).transform(ring_x,
                                                                                                        ring_y)
    ring = [[round(float(a), 7), round(float(b), 7)] for a, b in zip(lon, lat, strict=True)]
    ring.append(ring[0])
    bbox = [float(np.min(lon)), float(np.min(lat)), float(np.max(lon)), float(np.max(lat))]
    return bbox, {"type": "Polygon", "coordinates": [ring]}, [float(left), float(bottom), float(right), float(top)]


def _transform(ds: xr.Dataset) -> list[float]:
    """GDAL-style affine of the pixel corners as STAC writes it: ``[a, b, c, d, e, f]``."""
    x, y = np.asarray(ds["x"].values, float), np.asarray(ds["y"].values, float)
    dx, dy = float(x[1] - x[0]), float(y[1] - y[0])
    return [dx, 0.0, float(x[0] - dx / 2), 0.0, dy, float(y[0] - dy / 2)]


def _time_dim(ds: xr.Dataset) -> str | None:
    return next((str(d) for d in ds.dims if d in ds.coords and np.issubdtype(ds[d].dtype, np.datetime64)), None)


def _time_range(ds: xr.Dataset) -> tuple[pd.Timestamp, pd.Timestamp]:
    """First and last time (the last period's end where ``time_bnds`` exist); the creation time if none."""
    tdim = _time_dim(ds)
    if tdim is None:
        now = pd.Timestamp(ds.attrs.get("created") or pd.Timestamp.now(tz="UTC"))
        return now, now
    times = pd.DatetimeIndex(ds[tdim].values)
    end = pd.Timestamp(ds["time_bnds"].values.max()) if "time_bnds" in ds.variables else times.max()
    return times.min().tz_localize("UTC"), end.tz_localize("UTC")


def _datacube(cube: Any, ds: xr.Dataset) -> None:
    """``cube:dimensions`` (x, y and the time dimension) and ``cube:variables`` on them."""
    from pystac.extensions.datacube import Dimension, Variable

    epsg = stores.epsg_of(ds)
    dims: dict[str, Any] = {}
    for axis in ("x", "y"):
        v = np.asarray(ds[axis].values, float)
        dims[axis] = Dimension({"type": "spatial", "axis": axis, "extent": [float(v.min()), float(v.max())],
                                "step": float(v[1] - v[0]), "reference_system": epsg})
    tdim = _time_dim(ds)
    if tdim:
        t = pd.DatetimeIndex(ds[tdim].values)
        dims[tdim] = Dimension({"type": "temporal", "extent": [f"{t.min():%Y-%m-%dT%H:%M:%SZ}",
                                                               f"{t.max():%Y-%m-%dT%H:%M:%SZ}"]})
    cube.dimensions = dims
    variables = {}
    for name, var in ds.data_vars.items():
        if not set(var.dims) <= set(dims):
            continue  # bounds and per-scene tables: not on the cube's dimensions
        d = {"dimensions": [str(x) for x in var.dims], "type": "data"}
        d.update({k: str(var.attrs[a]) for k, a in (("unit", "units"), ("description", "long_name"))
                  if a in var.attrs})
        variables[str(name)] = Variable(d)
    cube.variables = variables


def _processing(ds: xr.Dataset, kind: str) -> dict[str, Any]:
    from glacierflow import __version__

    specs = {}
    for key, value in ds.attrs.items():
        if str(key).endswith("_spec") and isinstance(value, str):
            try:
                specs[str(key)] = json.loads(value)
            except ValueError:
                specs[str(key)] = value
    out: dict[str, Any] = {"processing:software": {"glacierflow": str(ds.attrs.get("glacierflow_version",
                                                                                       __version__))},
                           "processing:level": LEVELS[kind], "processing:lineage": LINEAGE[kind]}
    if specs:
        out["processing:expression"] = {"format": "glacierflow-specs", "expression": specs}
    return out


def source_items(cube_url: str, storage_options: dict[str, Any] | None = None) -> tuple[list[str], str, str]:
    """``(item ids, catalog URL, collection)`` of the scenes a cube store used; empty where unknown."""
    try:
        cube = stores.open_store(cube_url, storage_options)
        table = stores.open_store(cube_url, storage_options, group="scenes")
    except (OSError, KeyError, ValueError, GlacierflowError):
        return [], "", ""
    spec = json.loads(cube.attrs.get("cube_spec", "{}"))
    used = table["used"].values.astype(bool) if "used" in table else np.ones(table.sizes.get("scene", 0), bool)
    ids = [str(i) for i, u in zip(table["item_id"].values, used, strict=True) if u] if "item_id" in table else []
    return ids, str(spec.get("catalog", "")), str(spec.get("collection", ""))


def _sources(ds: xr.Dataset, url: str, storage_options: dict[str, Any] | None) -> list[pystac.Link]:
    """``derived_from``: the Landsat items of the (source) cube, and the source cube's own item."""
    source = url if store_kind(ds) == "cube" else str(ds.attrs.get("source_cube", ""))
    links = []
    if source and source != url:
        links.append(pystac.Link("derived_from", f"{stac_dir(source)}/item.json", pystac.MediaType.JSON,
                                 title="source cube store"))
    ids, catalog, collection = source_items(source, storage_options) if source else ([], "", "")
    base = f"{catalog.rstrip('/')}/collections/{collection}/items" if catalog and collection else ""
    for item_id in ids:
        links.append(pystac.Link("derived_from", f"{base}/{item_id}" if base else item_id,
                                 pystac.MediaType.GEOJSON, title=item_id, extra_fields={"item_id": item_id}))
    return links


def _collection(kind: str, item: pystac.Item, bbox: list[float], start: pd.Timestamp,
                end: pd.Timestamp) -> dict[str, Any]:
    extent = pystac.Extent(pystac.SpatialExtent([bbox]), pystac.TemporalExtent([[start, end]]))
    collection = pystac.Collection(
        id=f"glacierflow-{kind}", description=f"glacierflow {kind} stores: {LINEAGE[kind]}", extent=extent,
        license="other", title=f"glacierflow {kind}",
        providers=[pystac.Provider("glacierflow", roles=[pystac.ProviderRole.PROCESSOR],
                                   extra_fields={"processing:software":
                                                 item.properties["processing:software"],
                                                 "processing:level": LEVELS[kind]})],
        stac_extensions=[PROCESSING])
    d = collection.to_dict(include_self_link=False, transform_hrefs=False)
    d["links"] = [{"rel": "root", "href": "./collection.json", "type": "application/json"},
                  {"rel": "item", "href": "./item.json", "type": "application/geo+json"}]
    return d


def offline_validator() -> Any:
    """Validator of pystac with the processing schema shipped here, and no network (an empty allow list)."""
    from pystac.validation import JsonSchemaSTACValidator

    validator = JsonSchemaSTACValidator(allow_list=[])
    shipped = resources.files("glacierflow.storage").joinpath("stac_schemas/processing/v1.1.0.json")
    validator.schema_cache[PROCESSING] = json.loads(shipped.read_text())
    # the projection extension's schema refers to PROJJSON v0.4 (for proj:projjson, which is never written
    # here): PROJ's own PROJJSON schema, shipped with pyproj (a later version), stands in for it offline
    import pyproj

    projjson = json.loads((Path(pyproj.datadir.get_data_dir()) / "projjson.schema.json").read_text())
    validator.schema_cache[PROJJSON] = {**projjson, "$id": PROJJSON}
    return validator


def validate(d: dict[str, Any]) -> list[str]:
    """Validate a STAC Item or Collection dict offline (core + every extension); the schema URIs checked."""
    return pystac.validation.validate_dict(d, validator=offline_validator())
