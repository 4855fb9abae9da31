"""``glacierflow twin make``: write the offline twin (COGs + STAC items + truth store).

Layout of a twin directory::

    twin.json          format version, glacier, grid, AOI bbox, counts (written last: completion marker)
    collection.json    the landsat-c2-l2 collection document
    items.json         FeatureCollection of all items (asset hrefs relative to the directory)
    assets/<id>/*.TIF  Cloud-Optimized GeoTIFFs (uint16 DN, scale 2.75e-5, offset -0.2, nodata 0; qa_pixel)
    outlines.geojson   glacier outlines in RGI's shape (one lon/lat polygon per glacier: rgi_id, name)
    truth.zarr         clean NDSI per acquisition, shifts, defects, true velocity, glacier mask (and, for the
                       himalaya realism, u_t/v_t, terrain_dx/terrain_dy, ndsi_surface, debris_mask)

The world itself comes from the ``REALISMS`` registry (:mod:`glacierflow.twin.realism`): ``basic`` (the
original world, bit for bit) or ``himalaya`` (the default).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
import zarr

from glacierflow import __version__
from glacierflow.errors import GlacierflowError
from glacierflow.geo.glaciers import Site, get_site
from glacierflow.storage import cf
from glacierflow.twin import stac_items
from glacierflow.twin.grid import SIZES, Grid, deliver_in_zone, footprint, make_grid, write_cog
from glacierflow.twin.outlines import write_outlines
from glacierflow.twin.realism import DEFAULT_REALISM, REALISMS, ScheduleContext
from glacierflow.twin.scene import Acquisition, sun_angles
from glacierflow.twin.world import World

FORMAT_VERSION = 2  # 2: red and nir08 assets, outlines.geojson (older twins lack what build-cube stacks)
REVISIT = 16  # days
#: Landsat 9's first Collection-2 acquisitions in the archive (operations from late October 2021)
LANDSAT9_START = datetime(2021, 11, 1, tzinfo=UTC)






def _decimal_year(t: datetime) -> float:
    start = datetime(t.year, 1, 1, tzinfo=UTC)
    return t.year + (t - start).total_seconds() / (365.25 * 86400)


def schedule(
    site: Site, start: str, end: str, seed: int, realism: str = "basic", size: str = "tiny"
) -> list[Acquisition]:
    """Landsat-8 acquisitions every 16 days, plus a few Landsat-7 ones 8 days out of phase.

    The realism's schedule hook may then change clouds and categories and add a second WRS path
    (``himalaya``); ``basic`` is the original schedule, draw for draw. From :data:`LANDSAT9_START` on,
    Landsat 9 images the main path 8 days after Landsat 8 (:func:`_landsat9`, its own random draws, so
    every earlier acquisition is drawn as before).
    """
    rng = np.random.default_rng(seed + 7)
    t0 = datetime.fromisoformat(start).replace(tzinfo=UTC)
    t1 = datetime.fromisoformat(end).replace(tzinfo=UTC) + timedelta(days=1)
    hour = (10.5 - site.centre[0] / 15.0) % 24  # ~10:30 local solar time
    t = t0 + timedelta(hours=hour, minutes=int(rng.integers(0, 10)), seconds=float(rng.uniform(0, 59)))
    # rough WRS-2 path/row of the site (parvati: 147/038, aletsch: 195/028 upstream; close enough here)
    path = int(round((180 - site.centre[0]) / 360 * 233 + 81)) % 233 + 1
    row = int(round(60 - 0.69 * site.centre[1]))
    dates: list[tuple[datetime, str]] = []
    while t < t1:
        dates.append((t, "landsat-8"))
        if rng.random() < 0.1:
            dates.append((t + timedelta(days=8, seconds=float(rng.uniform(-30, 30))), "landsat-7"))
        t += timedelta(days=REVISIT, seconds=float(rng.uniform(-3, 3)))
    dates = sorted(d for d in dates if d[0] < t1)
    out = []
    for i, (dt, platform) in enumerate(dates):
        r = rng.random()
        cloud = rng.uniform(0.0, 0.03) if r < 0.6 else rng.uniform(0.03, 0.15) if r < 0.85 else rng.uniform(0.3, 0.7)
        f = rng.random()
        valid = rng.uniform(0.2, 0.42) if f < 0.12 else rng.uniform(0.75, 0.95) if f < 0.27 else 1.0
        prefix = stac_items.PLATFORMS[platform]["prefix"]
        day = dt.strftime("%Y%m%d")
        item_id = f"{prefix}_L2SP_{path:03d}{row:03d}_{day}_02_T1"
        product_id = f"{prefix}_L2SP_{path:03d}{row:03d}_{day}_{(dt + timedelta(days=9)).strftime('%Y%m%d')}_02_T1"
        out.append(
            Acquisition(
                index=i,
                item_id=item_id,
                product_id=product_id,
                platform=platform,
                datetime=dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                year=_decimal_year(dt),
                shift_x=float(rng.uniform(-2, 2)),
                shift_y=float(rng.uniform(-2, 2)),
                cloud_target=float(cloud),
                valid_target=float(valid),
                stripes=int(rng.integers(1, 4)) if rng.random() < 0.1 or platform == "landsat-7" else 0,
                seed=int(rng.integers(0, 2**31 - 1)),
            )
        )
    out = [replace(a, wrs_path=path, wrs_row=row, sun_elevation=sun_angles(a.year)[0],
                   sun_azimuth=sun_angles(a.year)[1]) for a in out]
    hook = _realism(realism).schedule
    if hook is not None:
        out = hook(out, ScheduleContext(seed=seed, size=size, end=t1, epsg=site.epsg))
    out = sorted(out + _landsat9(out, path, seed, t1), key=lambda a: a.datetime)
    return [replace(a, index=i) for i, a in enumerate(out)]


def _landsat9(acqs: list[Acquisition], path: int, seed: int, end: datetime) -> list[Acquisition]:
    """Landsat-9 acquisitions 8 days after each Landsat-8 one of WRS ``path`` from :data:`LANDSAT9_START` on."""
    rng = np.random.default_rng([seed, 9])
    out = []
    for a in (a for a in acqs if a.platform == "landsat-8"):
        when = datetime.strptime(a.datetime, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC) + timedelta(
            days=8, seconds=float(rng.uniform(-30, 30)))
        if a.wrs_path != path or not LANDSAT9_START <= when < end:
            continue
        day, processed = when.strftime("%Y%m%d"), (when + timedelta(days=9)).strftime("%Y%m%d")
        stem = f"LC09_L2SP_{a.wrs_path:03d}{a.wrs_row:03d}_{day}"
        year = _decimal_year(when)
        elevation, azimuth = sun_angles(year)
        out.append(replace(
            a, item_id=f"{stem}_02_T1", product_id=f"{stem}_{processed}_02_T1", platform="landsat-9",
            datetime=when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), year=year, category="T1",
            shift_x=float(rng.uniform(-2, 2)), shift_y=float(rng.uniform(-2, 2)),
            cloud_target=float(rng.uniform(0.0, 0.15)), valid_target=1.0, stripes=0,
            seed=int(rng.integers(0, 2**31 - 1)), sun_elevation=elevation, sun_azimuth=azimuth,
        ))
    return out


def check_realism(realism: str, max_speed: float | None = None, glacier_width: float | None = None) -> Any:
    """The registry entry for ``realism``, after checking the options it is given (errors name the flags)."""
    level = _realism(realism)
    if not level.options and (max_speed is not None or glacier_width is not None):
        raise GlacierflowError(f"--max-speed and --glacier-width need --realism himalaya (not {realism!r})")
    if max_speed is not None and not 0 < max_speed <= 3000:
        raise GlacierflowError(f"--max-speed {max_speed} must be in (0, 3000] m/yr")
    if glacier_width is not None and not 2 <= glacier_width <= 200:
        raise GlacierflowError(f"--glacier-width {glacier_width} must be in [2, 200] pixels")
    return level


def _realism(name: str) -> Any:
    if name not in REALISMS:
        raise GlacierflowError(f"unknown twin realism {name!r}; choose one of: {', '.join(REALISMS)}")
    return REALISMS[name]


# ---------------------------------------------------------------------------------------------
# rendering one acquisition (runs in worker processes; the world is built once per process)
_WORLD: World | None = None
_RENDER: Any = None


def init_worker(shape: tuple[int, int], seed: int, realism: str = "basic", max_speed: float | None = None,
                 glacier_width: float | None = None) -> None:
    """Set up a render worker process: build the world of ``realism`` once (the renderers read it)."""
    global _WORLD, _RENDER
    level = _realism(realism)
    _WORLD = level.world(shape, seed, max_speed, glacier_width)
    _RENDER = level.render










def _render_and_write(args: tuple[Acquisition, Grid, str]) -> dict[str, Any]:
    acq, grid, out = args
    assert _WORLD is not None
    res = _RENDER(_WORLD, acq)
    root = Path(out)
    folder = root / "assets" / acq.item_id
    folder.mkdir(parents=True, exist_ok=True)
    names = stac_items.asset_filenames(acq.product_id, acq.platform)
    delivered, item_grid = (res, grid) if acq.epsg in (None, grid.epsg) else deliver_in_zone(res, grid, acq.epsg)
    for key in (*[k for k in stac_items.REFLECTANCE_ASSETS if k in delivered], "qa_pixel"):
        write_cog(folder / names[key], delivered[key], item_grid, 1 if key == "qa_pixel" else 0,
                   key != "qa_pixel")
    g = zarr.open_group(str(root / "truth.zarr"), mode="r+")
    g["ndsi"][acq.index] = res["truth"]
    g["defects"][acq.index] = res["defects"]
    for name, layer in res.get("extra", {}).items():
        g[name][acq.index] = layer
    geometry, bbox = footprint(delivered["valid"], item_grid)
    hrefs = {k: f"assets/{acq.item_id}/{v}" for k, v in names.items()}
    return {
        "grid": item_grid,
        "index": acq.index,
        "cloud_cover": res["cloud_cover"],
        "valid_fraction": res["valid_fraction"],
        "geometry": geometry,
        "bbox": bbox,
        "hrefs": hrefs,
    }


def _truth_template(world: World, grid: Grid, acqs: list[Acquisition], layers: tuple[str, ...] = ()) -> xr.Dataset:
    import dask.array as da

    y, x = grid.coords()
    h, w = grid.shape
    n = len(acqs)
    times = pd.to_datetime([a.datetime for a in acqs]).tz_localize(None)
    ds = xr.Dataset(
        {
            "ndsi": (("time", "y", "x"), da.zeros((n, h, w), dtype=np.float32, chunks=(1, h, w))),
            "defects": (("time", "y", "x"), da.zeros((n, h, w), dtype=np.uint8, chunks=(1, h, w))),
            "item_id": ("time", np.array([a.item_id for a in acqs], dtype=object)),
            "platform": ("time", np.array([a.platform for a in acqs], dtype=object)),
            "shift_x": ("time", np.array([a.shift_x for a in acqs], np.float64)),
            "shift_y": ("time", np.array([a.shift_y for a in acqs], np.float64)),
            "u": (("y", "x"), world.u),
            "v": (("y", "x"), world.v),
            "glacier_mask": (("y", "x"), world.glacier_mask),
            "elevation": (("y", "x"), world.elevation),
        },
        coords={"time": times, "y": y, "x": x},
    )
    ds["ndsi"].attrs.update(description="clean snow-mask NDSI (>= 0.3 else 0) before clouds, gaps and shifts")
    ds["defects"].encoding["_FillValue"] = None  # 0 means "no defect", not missing
    ds["defects"].attrs.update(description="bit flags: 1 gap/fill, 2 cloud or dilated cloud, 4 cloud shadow")
    ds["shift_x"].attrs.update(units="pixel", description="scene[r, c] = truth[r - shift_y, c - shift_x]")
    ds["shift_y"].attrs.update(units="pixel")
    ds["u"].attrs.update(units="m/yr", description="true surface velocity, +east")
    ds["v"].attrs.update(units="m/yr", description="true surface velocity, +north")
    ds["glacier_mask"].attrs.update(description=f"ice extent at decimal year {world.t_ref}")
    if layers:
        ds = _realistic_truth(ds, world, acqs, layers)
    from glacierflow.storage.store import add_spatial_ref

    ds = add_spatial_ref(ds, grid.epsg)
    return ds


LAYER_ATTRS = {
    "ndsi_surface": {"description": "snow-mask NDSI of the surface under flat, unshadowed light (no terrain "
                     "illumination); `ndsi` is what a clear, perfectly registered scene shows"},
    "red_clean": {"description": "red surface reflectance of the clear, perfectly registered scene (terrain "
                  "light, no clouds, gaps or shifts): the images a perfect red-band tracker would see"},
    "u_t": {"units": "m/yr", "description": "true surface velocity at the acquisition (seasonal), +east"},
    "v_t": {"units": "m/yr", "description": "true surface velocity at the acquisition (seasonal), +north"},
    "terrain_dx": {"units": "pixel", "description": "terrain-dependent misregistration beyond shift_x: "
                   "scene[r, c] = ndsi[r - shift_y - terrain_dy[r, c], c - shift_x - terrain_dx[r, c]]"},
    "terrain_dy": {"units": "pixel", "description": "terrain-dependent misregistration beyond shift_y"},
}


def _realistic_truth(ds: xr.Dataset, world: Any, acqs: list[Acquisition], layers: tuple[str, ...]) -> xr.Dataset:
    """Per-acquisition truth layers and the realistic world's additions (debris mask, per-scene geometry)."""
    import dask.array as da

    n, (h, w) = len(acqs), world.shape
    for name in layers:
        ds[name] = (("time", "y", "x"), da.zeros((n, h, w), dtype=np.float32, chunks=(1, h, w)))
        ds[name].attrs.update(LAYER_ATTRS.get(name, {}))
    if not hasattr(world, "debris_mask"):  # the basic world: its clean red band only (the bound's input)
        return ds
    ds["debris_mask"] = (("y", "x"), world.debris_mask)
    ds["debris_mask"].attrs.update(description="debris-covered ice (NDSI < 0.3) at decimal year "
                                   f"{world.t_ref}")
    ds["elevation"].attrs.update(units="m", description="true terrain; the products' DEM is off by dem_error")
    ds["dem_error"] = (("y", "x"), world.dem_error)
    ds["dem_error"].attrs.update(units="m")
    lags = np.arange(0, 731, 8, dtype=np.float64)
    ds["texture_correlation"] = (("lag_days",), world.texture_correlation(lags))
    ds = ds.assign_coords(lag_days=("lag_days", lags, {"units": "days"}))
    ds["texture_correlation"].attrs.update(
        description="correlation of the ice surface texture between two acquisitions lag_days apart (the "
        "part a tracker can match; the rest decorrelated), averaged over the first acquisition")
    ds["wrs_path"] = ("time", np.array([a.wrs_path for a in acqs], np.int16))
    ds["wrs_row"] = ("time", np.array([a.wrs_row for a in acqs], np.int16))
    ds["collection_category"] = ("time", np.array([a.category for a in acqs], dtype=object))
    ds["sun_elevation"] = ("time", np.array([a.sun_elevation for a in acqs], np.float64))
    ds["sun_azimuth"] = ("time", np.array([a.sun_azimuth for a in acqs], np.float64))
    ds["view_angle"] = ("time", np.degrees(np.arctan([a.view_tan for a in acqs])))
    ds["view_angle"].attrs.update(units="degree", description="signed off-nadir view angle at the site")
    ds["speed_factor"] = ("time", np.array([world.speed_season.factor(a.year) for a in acqs], np.float64))
    ds["speed_factor"].attrs.update(description="u_t = u * speed_factor (seasonal speed-up; 1 on average)")
    ds["defects"].attrs.update(description="bit flags: 1 gap/fill, 2 cloud or dilated cloud, 4 cloud shadow, "
                               "8 terrain shadow, 16 QA omission (cloud not flagged), 32 QA commission "
                               "(clear pixel flagged cloud)")
    return ds


@dataclass(frozen=True)
class TwinSpec:
    """What a twin is made of: the checked arguments of :func:`make_twin`."""

    site: Site
    size: str
    start: str
    end: str
    seed: int
    realism: str
    max_speed: float | None
    glacier_width: float | None


def make_twin(
    out_dir: str | os.PathLike[str],
    glacier: str = "parvati",
    size: str = "tiny",
    start: str | None = None,
    end: str | None = None,
    seed: int = 0,
    overwrite: bool = False,
    workers: int | None = None,
    progress: Any = None,
    realism: str = DEFAULT_REALISM,
    max_speed: float | None = None,
    glacier_width: float | None = None,
) -> dict[str, Any]:
    """Generate a twin directory; returns its ``twin.json`` content.

    The twin is built in a temporary sibling directory and moved into place at the end, so an
    interrupted run never leaves a half-written twin where a good one was.

    Parameters
    ----------
    realism
        A key of ``REALISMS``: ``"himalaya"`` (default) or ``"basic"`` (the original world, bit for bit).
    max_speed
        Annual-mean centreline speed of the main glacier (m/yr; default 150); himalaya only.
    glacier_width
        Width of the main glacier at its head (pixels; default 9 % of the grid); himalaya only.
    """
    if size not in SIZES:
        raise GlacierflowError(f"unknown twin size {size!r}; choose one of: {', '.join(SIZES)}")
    level = check_realism(realism, max_speed, glacier_width)
    site = get_site(glacier)
    start, end = _date_range(size, start, end)
    spec = TwinSpec(site, size, start, end, seed, realism, max_speed, glacier_width)
    out = Path(out_dir)
    _check_out_dir(out, overwrite)
    t_start = time.perf_counter()
    grid = make_grid(site, size)
    acqs = schedule(site, start, end, seed, realism, size)
    if not acqs:
        raise GlacierflowError(f"no Landsat acquisitions between {start} and {end}; widen the date range")
    tmp = _partial_dir(out)
    try:
        world = level.world(grid.shape, seed, max_speed, glacier_width)
        template = _truth_template(world, grid, acqs, level.truth_layers)
        cf.conform(template).to_zarr(tmp / "truth.zarr", compute=False, consolidated=False)
        n_outlines = write_outlines(tmp / "outlines.geojson", world.glacier_mask, world.glacier_id, grid,
                                    spec.site.name)
        results = _render_scenes(spec, grid, acqs, tmp, workers, progress)
        _write_scene_stats(tmp / "truth.zarr", results)
        items = _write_catalog(tmp, spec, acqs, results)
        meta = _twin_meta(spec, grid, acqs, n_items=len(items), seconds=time.perf_counter() - t_start)
        if level.options:
            meta["max_speed"] = 150.0 if max_speed is None else float(max_speed)
            meta["glacier_width"] = glacier_width
        meta["n_outlines"] = n_outlines
        meta["bytes"] = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
        (tmp / "twin.json").write_text(json.dumps(meta, indent=1))
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _date_range(size: str, start: str | None, end: str | None) -> tuple[str, str]:
    """``(start, end)``: the size's default span where not given; errors for bad or reversed dates."""
    start = start or SIZES[size]["start"]
    end = end or SIZES[size]["end"]
    try:
        if datetime.fromisoformat(start) >= datetime.fromisoformat(end):
            raise GlacierflowError(f"--start {start} must be before --end {end}")
    except ValueError as e:
        raise GlacierflowError(f"bad date ({e}); use YYYY-MM-DD") from None
    return start, end


def _check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty output without ``overwrite``, and never overwrite a directory that is not a twin."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise GlacierflowError(f"{out} already exists and is not empty; pass --overwrite to replace it")
        if not (out / "twin.json").exists() and not (out / "items.json").exists():
            raise GlacierflowError(f"refusing to overwrite {out}: it is not a glacierflow twin directory")


def _partial_dir(out: Path) -> Path:
    """A fresh, empty temporary sibling of ``out`` to build the twin in."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def _render_scenes(spec: TwinSpec, grid: Grid, acqs: list[Acquisition], tmp: Path, workers: int | None,
                   progress: Any) -> list[dict[str, Any]]:
    """Render and write every acquisition in worker processes; their results in acquisition order."""
    n_workers = workers or min(2, os.cpu_count() or 1)
    jobs = [(a, grid, str(tmp)) for a in acqs]
    results: list[dict[str, Any]] = [{}] * len(acqs)
    with ProcessPoolExecutor(n_workers, initializer=init_worker,
                             initargs=(grid.shape, spec.seed, spec.realism, spec.max_speed,
                                       spec.glacier_width)) as pool:
        for res in pool.map(_render_and_write, jobs, chunksize=2):
            results[res["index"]] = res
            if progress is not None:
                progress()
    return results


def _write_scene_stats(truth: Path, results: list[dict[str, Any]]) -> None:
    """Add each scene's cloud cover and valid fraction to the truth store."""
    cf.conform(xr.Dataset(  # conform: an append replaces the root attributes (Conventions)
        {
            "cloud_cover": ("time", np.array([r["cloud_cover"] for r in results])),
            "valid_fraction": ("time", np.array([r["valid_fraction"] for r in results])),
        }
    )).to_zarr(truth, mode="a", consolidated=False)


def _stac_item(a: Acquisition, r: dict[str, Any], created: str) -> dict[str, Any]:
    """The STAC item of acquisition ``a`` from its render result ``r``."""
    wrs_path, wrs_row = a.wrs_path, a.wrs_row
    doy = (a.year % 1) * 365.25  # scene_id's day of year
    return stac_items.make_item(
        item_id=a.item_id,
        platform=a.platform,
        datetime=a.datetime,
        created=created,
        epsg=r["grid"].epsg,
        shape=r["grid"].shape,
        transform=list(r["grid"].transform),
        geometry=r["geometry"],
        bbox=r["bbox"],
        cloud_cover=r["cloud_cover"],
        wrs_path=wrs_path,
        wrs_row=wrs_row,
        scene_id=f"{a.item_id[:2]}{a.item_id[3]}{wrs_path:03d}{wrs_row:03d}{a.datetime[:4]}"
        f"{int(doy) + 1:03d}LGN00",
        sun_azimuth=a.sun_azimuth,
        sun_elevation=a.sun_elevation,
        hrefs=r["hrefs"],
        category=a.category,
    )


def _write_catalog(tmp: Path, spec: TwinSpec, acqs: list[Acquisition],
                   results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Write ``collection.json`` and ``items.json``; returns the items."""
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    items = [_stac_item(a, r, created) for a, r in zip(acqs, results, strict=True)]
    full_bbox = [
        min(i["bbox"][0] for i in items),
        min(i["bbox"][1] for i in items),
        max(i["bbox"][2] for i in items),
        max(i["bbox"][3] for i in items),
    ]
    collection = stac_items.make_collection(
        full_bbox,
        acqs[0].datetime,
        acqs[-1].datetime,
        f"Synthetic Landsat-8/7 Collection 2 Level-2 scenes of the {spec.site.name} glacier written by "
        f"glacierflow {__version__} (seed {spec.seed}); ground truth in truth.zarr.",
    )
    (tmp / "collection.json").write_text(json.dumps(collection, indent=1))
    (tmp / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    return items


def _twin_meta(spec: TwinSpec, grid: Grid, acqs: list[Acquisition], n_items: int, seconds: float) -> dict[str, Any]:
    """The ``twin.json`` content (less the realism's options and the byte count)."""
    return {
        "format_version": FORMAT_VERSION,
        "glacierflow_version": __version__,
        "glacier": spec.site.name,
        "size": spec.size,
        "seed": spec.seed,
        "start": spec.start,
        "end": spec.end,
        "epsg": grid.epsg,
        "shape": list(grid.shape),
        "transform": list(grid.transform),
        "bbox": list(grid.aoi),
        "n_items": n_items,
        "n_landsat8": sum(a.platform == "landsat-8" for a in acqs),
        "n_landsat7": sum(a.platform == "landsat-7" for a in acqs),
        "n_landsat9": sum(a.platform == "landsat-9" for a in acqs),
        "realism": spec.realism,
        "wrs_paths": sorted({a.wrs_path for a in acqs}),
        "n_t2": sum(a.category == "T2" for a in acqs),
        "n_other_zone": sum(a.epsg not in (None, grid.epsg) for a in acqs),
        "generation_seconds": round(seconds, 1),
        "grid": asdict(grid),
    }


def _move_into_place(tmp: Path, out: Path) -> None:
    """Replace ``out`` (if any) with the finished twin in ``tmp``."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def load_twin_meta(twin_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check ``twin.json``; clear errors for missing, incomplete or foreign directories."""
    d = Path(twin_dir)
    if not d.is_dir():
        raise GlacierflowError(f"twin directory {d} does not exist; create it with `glacierflow twin make {d}`")
    meta_path = d / "twin.json"
    if not meta_path.exists():
        raise GlacierflowError(
            f"{d} is not a complete glacierflow twin (no twin.json); rebuild it with "
            f"`glacierflow twin make {d} --overwrite`"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise GlacierflowError(f"{meta_path} is corrupt ({e}); rebuild with --overwrite") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise GlacierflowError(
            f"{d} was written by twin format {meta.get('format_version')!r}, this glacierflow reads "
            f"{FORMAT_VERSION}; rebuild it with `glacierflow twin make {d} --overwrite`"
        )
    for name in ("items.json", "collection.json", "truth.zarr"):
        if not (d / name).exists():
            raise GlacierflowError(f"{d} is incomplete ({name} missing); rebuild it with --overwrite")
    return meta
