"""Surface velocity from pairs of acquisitions: ``cube.zarr --flow--> velocity.zarr``.

What is tracked
---------------
By default the cube store's ``guides`` group: the aligned, QA-masked per-scene guide images ECC used
(high-passed grey reflectance, NaN where not observed), paired as acquisitions (:func:`select_pairs`:
``annual`` = 300-430 days apart, ``consecutive``, or ``MIN:MAX`` days; same WRS path first; at most
``max_pairs_per_scene`` pairs per scene). Δt comes from the acquisition times in the ``scenes`` table.
``images="ndsi"`` (or ``auto`` on a store without guides, e.g. a forecast store) tracks the ``ndsi``
periods instead, with Δt from each period's mean acquisition time where the store has one.

Per pair (one Dask task, :func:`_pair_task` through ``xr.apply_ufunc``)
---------------------------------------------------------------------------
1. the matcher (:data:`glacierflow.motion.matching.METHODS`) gives the displacement in pixels, NaN where the
   match is not trusted (low correlation, forward-backward, texture);
2. stable-ground correction: the median displacement over stable ground (off-ice pixels at least
   ``stable_margin`` px from the ice; the ice from ``ice_mask`` or the cube's NDSI climatology,
   :func:`ice_from_climatology`) is subtracted and recorded (``offset_u``, ``offset_v``); the robust
   spread of the corrected stable-ground velocities (1.4826 MAD, RMS of the two components) is the
   pair's 1-sigma error ``pair_error`` (NaN with fewer than :data:`MIN_STABLE` stable pixels: then no
   correction);
3. velocity in m/yr: ``u = cols * dx / years`` (east), ``v = rows * dy / years`` (north: ``dy`` < 0);
4. a per-pixel error (:func:`pixel_error`, not stored): the pair's stable-ground error plus, in
   quadrature, the excess of the pixel's least-squares match error over the stable ground's
   (:func:`glacierflow.motion.matching.match_error`: residual variance x correlation area x inverse structure
   tensor of the window: large where the ice decorrelated, along texture streaks, on wrong matches).

Composite (:func:`composite`)
-----------------------------
Per pixel, pairs further than 3 sigma (the larger of the pixel's error and the robust scatter of the
pairs there) from the per-pixel median are dropped; the rest are averaged with weights
``1 / error**2``. The random error is the larger of the formal error of that mean and the weighted
scatter of one pair, both over ``sqrt(n_eff)``: ``n_eff`` = distinct scenes - 1 (capped at ``n``),
because pairs sharing a scene share its noise. ``speed_error`` adds, in quadrature, the matcher's
smoothing bias ``s2 / 2 * |laplacian(u, v)|`` (:func:`with_smoothing`, ``s2`` the variance of its
window: :func:`window_variance`; the Laplacian of the composite smoothed at the window's scale), an
error common to all pairs. ``n_pairs`` counts the pairs used.
"""

from __future__ import annotations

import json
import math
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from glacierflow.errors import GlacierflowError
from glacierflow.motion.matching import METHODS, match_error, prepare
from glacierflow.specs import CubeSpec, FlowSpec, PreprocessSpec, spec_from_store
from glacierflow.storage import store

DAYS_PER_YEAR = 365.25
MIN_STABLE = 50  # stable-ground pixels a pair needs for its offset and error
MAD_SIGMA = 1.4826  # MAD -> 1-sigma of a normal distribution
COMPOSITE_CHUNK = 256
PAIR_VARS = ("offset_u", "offset_v", "pair_error", "valid_fraction")


# ------------------------------------------------------------------------------------------ pairs
def select_pairs(times: Any, spec: FlowSpec, paths: Any = None) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)``, ``times[i] < times[j]``, of the acquisitions (or periods) to match.

    Parameters
    ----------
    times
        Acquisition times (anything :class:`pandas.DatetimeIndex` accepts), sorted ascending.
    spec
        ``pairs`` (``annual``, ``consecutive`` or ``MIN:MAX`` days) and ``max_pairs_per_scene``.
    paths
        WRS path per time (optional): same-path pairs (the same viewing geometry) come first.

    Returns
    -------
    list of tuple of int
        Sorted. ``consecutive``: each time with the next one on its path (the next one at all where
        its path has none). Day ranges: candidates inside the range, same path first, then the Δt
        closest to the middle of the range, each index in at most ``max_pairs_per_scene`` pairs.
    """
    t = pd.DatetimeIndex(times)
    if not t.is_monotonic_increasing:
        raise GlacierflowError("acquisition times are not sorted ascending; rebuild the cube store")
    n = len(t)
    path = np.zeros(n, int) if paths is None else np.asarray(paths)
    days = np.asarray((t.values[None, :] - t.values[:, None]) / np.timedelta64(1, "D"), dtype=float)
    limit = spec.max_pairs_per_scene
    count = np.zeros(n, int)
    out = []
    if spec.pairs == "consecutive":
        for i in range(n - 1):
            later = [j for j in range(i + 1, n) if days[i, j] > 0]
            same = [j for j in later if path[j] == path[i]]
            j = (same or later or [None])[0]
            if j is not None and count[i] < limit and count[j] < limit:
                out.append((i, j))
                count[[i, j]] += 1
        return sorted(out)
    low, high = spec.day_range  # type: ignore[misc]
    mid = (low + high) / 2.0
    ii, jj = np.nonzero((days >= low) & (days <= high))
    order = sorted(zip(ii, jj, strict=True), key=lambda p: (path[p[0]] != path[p[1]], abs(days[p] - mid), p))
    for i, j in order:
        if count[i] < limit and count[j] < limit:
            out.append((int(i), int(j)))
            count[[i, j]] += 1
    return sorted(out)


def scene_guides(guides: xr.Dataset, scenes: xr.Dataset) -> xr.DataArray:
    """The guide images ``guide(scene, y, x)`` with ``time`` and ``wrs_path`` per scene, sorted by time.

    ``guides`` is the cube store's ``guides`` group (``scene`` = item ids), ``scenes`` its ``scenes``
    table (``item_id``, ``time``, ``wrs_path``). The small table is read here (the pairs depend on it).
    """
    table = scenes[["item_id", "wrs_path"]].compute(scheduler="sync")
    ids = [str(s) for s in table["item_id"].values]
    where = {s: k for k, s in enumerate(ids)}
    missing = [str(s) for s in guides["scene"].values if str(s) not in where]
    if missing:
        raise GlacierflowError(f"guide scene {missing[0]} is not in the scenes table; rebuild the cube store")
    rows = [where[str(s)] for s in guides["scene"].values]
    g = guides["guide"].assign_coords(
        time=("scene", _scene_times(table, ids)[rows]),
        wrs_path=("scene", np.asarray(table["wrs_path"].values[rows], dtype=np.int64)),
    )
    return g.sortby("time")


def _scene_times(table: xr.Dataset, ids: list[str]) -> np.ndarray:
    """Acquisition time per row of the scenes table.

    Where the table's ``time`` is not per scene (a store written with the root's ``time`` over the
    table's), the acquisition date from the Landsat product ids (``..._YYYYMMDD_...``).
    """
    if "time" in table.variables and table["time"].dims == ("scene",):
        return pd.DatetimeIndex(table["time"].values).values
    try:
        return pd.DatetimeIndex([pd.Timestamp(i.split("_")[3]) for i in ids]).values
    except (IndexError, ValueError):
        raise GlacierflowError("the scenes table has no acquisition time per scene; rebuild the cube store") from None


def _tracked(cube: xr.Dataset, guides: xr.DataArray | None, spec: FlowSpec) -> tuple[xr.DataArray, str]:
    """The images to pair, ``(scene, y, x)`` with ``time`` (and ``wrs_path``) coords, and their kind."""
    images = spec.images
    if images == "auto":  # guides where there are; a forecast store's NDSI; a --no-guides cube: say so
        images = "guides" if guides is not None else "ndsi"
        if guides is None and "cube_spec" in cube.attrs:
            raise GlacierflowError(
                "the cube store has no guides group (built with --no-guides); rebuild it with build-cube "
                "--guides --overwrite, or track its NDSI periods with --images ndsi"
            )
    if images == "guides":
        if guides is None:
            raise GlacierflowError("the store has no guides group; rebuild it with build-cube --guides --overwrite")
        return guides.astype(np.float32), "guide"
    check_cube(cube)
    nd = cube["ndsi"].rename(time="scene")
    times = pd.DatetimeIndex(cube["time"].values)
    if "time_mean" in cube:  # mean acquisition time of each period: the real Δt
        mean = pd.DatetimeIndex(cube["time_mean"].compute(scheduler="sync").values)
        times = pd.DatetimeIndex(np.where(mean.isna(), times, mean))
    nd = nd.assign_coords(time=("scene", times.values))
    if "interpolated" in cube:  # interpolated periods carry no observation: never paired
        interp = np.asarray(cube["interpolated"].compute(scheduler="sync").values, bool)
        nd = nd.isel(scene=np.flatnonzero(~interp))
    return nd.astype(np.float32), "ndsi"


def search_px(spec: FlowSpec, years: float, pixel: float) -> int:
    """NCC search range (px) of a pair: ``spec.search`` or ``ceil(max_speed * years / pixel) + 2``."""
    return int(spec.search or math.ceil(spec.max_speed * years / pixel) + 2)


# ------------------------------------------------------------------------------------------ ice mask
def ice_from_climatology(cube: xr.Dataset, spec: FlowSpec) -> xr.DataArray:
    """Lazy ice mask ``(y, x)``: snow or ice (``ndsi > 0``) in at least ``ice_fraction`` of the observed periods."""
    check_cube(cube, need_pairs=False)
    nd = cube["ndsi"]
    if "interpolated" in cube:
        interp = np.asarray(cube["interpolated"].compute(scheduler="sync").values, bool)
        nd = nd.isel(time=np.flatnonzero(~interp))
    snowy = (nd > 0).where(np.isfinite(nd)).mean("time")
    return (snowy >= spec.ice_fraction).rename("ice").reset_coords(drop=True)


def read_ice_mask(path: str, cube: xr.Dataset) -> xr.DataArray:
    """An ice mask from a user file on the cube grid: a raster (non-zero = ice) or GeoJSON outlines.

    Rasters are reprojected onto the cube grid (nearest); GeoJSON polygons (e.g. RGI outlines, lon/lat
    or with a ``crs``) are rasterised onto it. Read eagerly: a user's mask is small.
    """
    import rasterio
    from rasterio.features import rasterize
    from rasterio.transform import from_origin
    from rasterio.warp import Resampling, reproject, transform_geom

    x, y = cube["x"].values, cube["y"].values
    dx, dy = _grid_step(cube["x"], "x"), _grid_step(cube["y"], "y")
    transform = from_origin(x[0] - dx / 2, y[0] - dy / 2, dx, -dy)
    epsg = store.epsg_of(cube)
    shape = (len(y), len(x))
    try:
        if str(path).lower().endswith((".json", ".geojson")):
            with open(path) as f:
                doc = json.load(f)
            crs = doc.get("crs", {}).get("properties", {}).get("name", "EPSG:4326")
            feats = doc.get("features", [doc] if "geometry" in doc else [])
            geoms = [transform_geom(crs, f"EPSG:{epsg}", ft["geometry"]) for ft in feats if ft.get("geometry")]
            mask = rasterize(geoms, out_shape=shape, transform=transform, fill=0, default_value=1) if geoms \
                else np.zeros(shape, np.uint8)
        else:
            with rasterio.open(path) as src:
                mask = np.zeros(shape, np.float32)
                reproject(rasterio.band(src, 1), mask, dst_transform=transform, dst_crs=f"EPSG:{epsg}",
                          resampling=Resampling.nearest, dst_nodata=0)
    except (OSError, rasterio.errors.RasterioError, json.JSONDecodeError, KeyError) as err:
        raise GlacierflowError(f"cannot read --ice-mask {path!r} ({err}); give a GeoTIFF or a GeoJSON file") from None
    ice = np.asarray(mask) != 0
    if not ice.any():
        raise GlacierflowError(f"--ice-mask {path!r} has no ice over the cube; check its extent and CRS")
    return xr.DataArray(ice, dims=("y", "x"), coords={"y": cube["y"], "x": cube["x"]}, name="ice")


def stable_ground(ice: xr.DataArray, margin: int) -> xr.DataArray:
    """Lazy stable-ground mask: off ice and at least ``margin`` pixels from it."""
    def far(block: np.ndarray) -> np.ndarray:
        from scipy import ndimage

        if not block.any():
            return np.ones(block.shape, bool)
        return ndimage.distance_transform_edt(~block) >= max(margin, 1)

    data = ice.data if isinstance(ice.data, da.Array) else da.from_array(np.asarray(ice.data))
    data = data.astype(bool).rechunk(-1)
    return xr.DataArray(data.map_blocks(far, dtype=bool), dims=("y", "x"), name="stable")


# ------------------------------------------------------------------------------------------ per pair
def stable_offset(cols: np.ndarray, rows: np.ndarray, stable: np.ndarray) -> tuple[float, float, float, float, int]:
    """Median stable-ground displacement and its robust spread (px): ``(col, row, sd_col, sd_row, n)``."""
    ok = stable & np.isfinite(cols) & np.isfinite(rows)
    n = int(ok.sum())
    if n < MIN_STABLE:
        return 0.0, 0.0, math.nan, math.nan, n
    c, r = cols[ok].astype(np.float64), rows[ok].astype(np.float64)
    mc, mr = float(np.median(c)), float(np.median(r))
    return mc, mr, MAD_SIGMA * float(np.median(np.abs(c - mc))), MAD_SIGMA * float(np.median(np.abs(r - mr))), n


def _pair_task(a: np.ndarray, b: np.ndarray, stable: np.ndarray, years: np.ndarray, search: np.ndarray,
               *, method: str, kind: str, spec: FlowSpec, dx: float, dy: float) -> tuple[np.ndarray, ...]:
    """One block of pairs (one pair per block): u, v, error (m/yr) and the pair's scalars (module doc)."""
    a = np.asarray(a)
    shape = a.shape
    lead = int(np.prod(shape[:-2]))
    a, b = a.reshape(lead, *shape[-2:]), np.asarray(b).reshape(lead, *shape[-2:])
    st = np.broadcast_to(np.asarray(stable, bool), shape).reshape(lead, *shape[-2:])
    yrs = np.broadcast_to(np.asarray(years, np.float64), shape[:-2]).reshape(-1)
    srch = np.broadcast_to(np.asarray(search), shape[:-2]).reshape(-1)
    u, v, e = (np.empty(a.shape, np.float32) for _ in range(3))
    scalars = np.empty((4, lead), np.float32)
    window = spec.chip if method == "ncc" else spec.texture_box
    for k in range(lead):
        pa, pb = prepare(a[k], kind), prepare(b[k], kind)
        disp = METHODS[method](pa, pb, spec, int(srch[k]))
        mc, mr, sc, sr, _ = stable_offset(disp[0], disp[1], st[k])
        fu, fv = dx / yrs[k], dy / yrs[k]
        u[k] = (disp[0] - mc) * fu
        v[k] = (disp[1] - mr) * fv
        err = math.sqrt(((sc * fu) ** 2 + (sr * fv) ** 2) / 2.0)
        e[k] = pixel_error(match_error(pa, pb, disp, window), st[k], err, abs(fu), abs(fv))
        scalars[:, k] = (mc * fu, mr * fv, err, float(np.isfinite(disp[0]).mean()))
    return (u.reshape(shape), v.reshape(shape), e.reshape(shape), *(s.reshape(shape[:-2]) for s in scalars))


def pixel_error(px: np.ndarray, stable: np.ndarray, pair_error: float, fu: float, fv: float) -> np.ndarray:
    """A pair's per-pixel 1-sigma velocity error per component (m/yr) from :func:`match_error`'s pixels.

    The stable-ground spread ``pair_error`` measures the whole error where the ground is still (the
    registration and the matcher on static texture); on top of it each pixel adds the part of its
    least-squares error above the typical stable-ground one (decorrelated ice, the aperture problem,
    wrong matches): ``sqrt(pair_error^2 + max(lk^2 - median_stable(lk)^2, 0))``. Without a
    stable-ground error, the least-squares error alone.
    """
    lk2 = ((px[0] * fu) ** 2 + (px[1] * fv) ** 2) / 2.0
    ref = lk2[stable & np.isfinite(lk2)]
    if not math.isfinite(pair_error) or ref.size < MIN_STABLE:
        return np.sqrt(lk2).astype(np.float32)
    excess = np.clip(lk2 - float(np.median(ref)), 0.0, None)
    return np.sqrt(pair_error**2 + excess).astype(np.float32)


def _grid_step(coord: xr.DataArray, name: str) -> float:
    values = np.asarray(coord.values, dtype=np.float64)  # index coordinate: in memory, no compute
    if values.size < 2:
        raise GlacierflowError(f"cube has {values.size} pixel(s) along {name}; need at least 2")
    steps = np.diff(values)
    if not np.allclose(steps, steps[0], rtol=1e-6, atol=1e-6) or steps[0] == 0:
        raise GlacierflowError(f"cube {name} coordinate is not a regular grid; rebuild the cube store")
    return float(steps[0])


def check_cube(cube_ds: xr.Dataset, what: str = "cube", need_pairs: bool = True) -> None:
    """Raise :class:`GlacierflowError` unless ``cube_ds`` looks like a glacierflow cube store."""
    if "ndsi" not in cube_ds.data_vars:
        raise GlacierflowError(
            f"{what} has no 'ndsi' variable; is it a glacierflow cube? build one with build-cube"
        )
    if tuple(cube_ds["ndsi"].dims) != ("time", "y", "x"):
        raise GlacierflowError(f"{what} ndsi has dims {cube_ds['ndsi'].dims}; expected (time, y, x)")
    if need_pairs and cube_ds.sizes["time"] < 2:
        raise GlacierflowError(
            f"{what} has {cube_ds.sizes['time']} period(s); flow needs at least 2 (widen the date range)"
        )


# ------------------------------------------------------------------------------------------ velocity
def velocity(cube_ds: xr.Dataset, spec: FlowSpec | None = None, *, guides: xr.DataArray | None = None,
             ice_mask: xr.DataArray | None = None) -> xr.Dataset:
    """Lazy velocity store dataset (DESIGN.md's contract) for the pairs chosen by ``spec``.

    Parameters
    ----------
    cube_ds
        A cube (or forecast) store dataset: ``ndsi(time, y, x)``, ``spatial_ref``.
    spec
        Flow parameters; default :class:`FlowSpec`.
    guides
        :func:`scene_guides` of the cube store (needed unless ``spec.images`` resolves to ``ndsi``).
    ice_mask
        Boolean ``(y, x)`` ice mask on the cube grid (:func:`read_ice_mask`); default: the cube's NDSI
        climatology (:func:`ice_from_climatology`).

    Returns
    -------
    xarray.Dataset
        Per pair (dim ``time`` = midpoint of the two acquisitions): ``u``, ``v``, ``speed`` (float32 m/yr,
        +u east, +v north), ``offset_u``, ``offset_v``, ``pair_error``, ``valid_fraction``; coordinates
        ``time_start``, ``time_end``, ``dt_days``, ``scene_start``, ``scene_end``; the composite
        (:func:`composite`). One Dask task per pair; nothing is computed here.
    """
    spec = spec or FlowSpec()
    images, kind = _tracked(cube_ds, guides, spec)
    if (images.sizes["y"], images.sizes["x"]) != (cube_ds.sizes["y"], cube_ds.sizes["x"]):
        raise GlacierflowError("the guides and the cube have different grids; rebuild the cube store")
    images = images.assign_coords(y=cube_ds["y"].values, x=cube_ds["x"].values)
    times = pd.DatetimeIndex(images["time"].values)
    paths = images["wrs_path"].values if "wrs_path" in images.coords else None
    pairs = select_pairs(times, spec, paths)
    if not pairs:
        raise GlacierflowError(
            f"no {spec.pairs} pairs among {len(times)} acquisitions"
            + (f" ({times[0]:%Y-%m-%d}..{times[-1]:%Y-%m-%d})" if len(times) else "")
            + "; widen the date range or choose other --pairs (annual, consecutive, MIN:MAX days)"
        )
    dx, dy = _grid_step(cube_ds["x"], "x"), _grid_step(cube_ds["y"], "y")
    ice = ice_mask if ice_mask is not None else ice_from_climatology(cube_ds, spec)
    stable = stable_ground(ice, spec.stable_margin)
    i_idx, j_idx = [i for i, _ in pairs], [j for _, j in pairs]
    start, end = times[i_idx], times[j_idx]
    dt_days = np.asarray((end - start) / pd.Timedelta(days=1), dtype=np.float64)
    years = dt_days / DAYS_PER_YEAR
    search = np.array([search_px(spec, y, min(abs(dx), abs(dy))) for y in years], np.int64)
    img = images.drop_vars([c for c in images.coords if c not in ("y", "x")])
    img = img.chunk({"scene": 1, "y": -1, "x": -1})
    a = img.isel(scene=i_idx).rename(scene="time")
    b = img.isel(scene=j_idx).rename(scene="time")
    per_pair = {"years": years, "search": search}
    pp = [xr.DataArray(v, dims="time").chunk({"time": 1}) for v in per_pair.values()]
    outs = xr.apply_ufunc(
        _pair_task, a, b, stable, *pp,
        input_core_dims=[["y", "x"]] * 3 + [[], []],
        output_core_dims=[["y", "x"]] * 3 + [[]] * 4,
        kwargs={"method": spec.method, "kind": kind, "spec": spec, "dx": dx, "dy": dy},
        dask="parallelized", output_dtypes=[np.float32] * 7,
    )
    has_crs = "spatial_ref" in cube_ds.coords or "spatial_ref" in cube_ds.variables
    grid = {"grid_mapping": "spatial_ref"} if has_crs else {}
    u, v = (o.transpose("time", "y", "x") for o in outs[:2])
    data_vars = {
        "u": u.assign_attrs(units="m yr-1", long_name="surface velocity east", **grid),
        "v": v.assign_attrs(units="m yr-1", long_name="surface velocity north", **grid),
        "speed": np.hypot(u, v).astype(np.float32).assign_attrs(units="m yr-1", long_name="surface speed", **grid),
    }
    pair_attrs = {
        "offset_u": ("m yr-1", "stable-ground median velocity east removed"),
        "offset_v": ("m yr-1", "stable-ground median velocity north removed"),
        "pair_error": ("m yr-1", "1-sigma velocity error per component from the stable-ground spread"),
        "valid_fraction": ("1", "fraction of pixels with a valid match"),
    }
    for name, out in zip(PAIR_VARS, outs[3:], strict=True):
        data_vars[name] = out.assign_attrs(units=pair_attrs[name][0], long_name=pair_attrs[name][1])
    coords: dict[str, Any] = {
        "time": ("time", np.asarray((start + (end - start) / 2).round("s"), dtype="datetime64[ns]")),  # a label
        "time_start": ("time", np.asarray(start, dtype="datetime64[ns]")),
        "time_end": ("time", np.asarray(end, dtype="datetime64[ns]")),
        "dt_days": ("time", dt_days),
        "y": cube_ds["y"].variable,
        "x": cube_ds["x"].variable,
    }
    if kind == "guide":
        ids = np.array([str(s) for s in images["scene"].values], dtype=np.dtypes.StringDType())
        coords.update(scene_start=("time", ids[i_idx]), scene_end=("time", ids[j_idx]))
    if has_crs:
        coords["spatial_ref"] = cube_ds["spatial_ref"].variable
    out = xr.Dataset({k: v.reset_coords(drop=True) for k, v in data_vars.items()}, coords=coords)
    pixel = outs[2].transpose("time", "y", "x").reset_coords(drop=True)
    comp = composite(out.assign(error=pixel), scenes=np.stack([i_idx, j_idx], axis=1))
    comp["speed_error"] = with_smoothing(comp["speed_error"], comp["u_composite"], comp["v_composite"],
                                         window_variance(spec))
    out = out.assign(comp)
    for name in ("time_start", "time_end"):  # acquisition times as the catalogue gives them (microseconds)
        out[name].encoding.update(units="microseconds since 1970-01-01", dtype="int64")
    out["time"].encoding.update(units="seconds since 1970-01-01", dtype="int64")
    out.attrs["flow_spec"] = spec.to_json()
    out.attrs["tracked"] = "guides" if kind == "guide" else "ndsi"
    return out


# ------------------------------------------------------------------------------------------ composite
def _composite_block(u: np.ndarray, v: np.ndarray, err: np.ndarray, *, scenes: np.ndarray | None = None
                     ) -> tuple[np.ndarray, ...]:
    """Error-weighted composite over the last axis (pairs); ``err`` per pixel or per pair (module doc)."""
    u, v = np.moveaxis(u, -1, 0).astype(np.float64), np.moveaxis(v, -1, 0).astype(np.float64)
    e = np.moveaxis(np.asarray(err, np.float64), -1, 0)
    sig = np.broadcast_to(e.reshape(e.shape + (1,) * (u.ndim - e.ndim)), u.shape)
    fin = np.isfinite(u) & np.isfinite(v)
    known = np.isfinite(sig) & (sig > 0)
    if known.any():  # a pixel without an error counts as a typical one
        sig = np.where(known, sig, np.median(sig[known]))
    else:  # no errors at all: equal weights, no rejection, the error from the scatter alone
        sig = np.full(u.shape, np.inf)
    n_fin = fin.sum(0)
    with np.errstate(all="ignore"):
        uf, vf = np.where(fin, u, np.nan), np.where(fin, v, np.nan)
        mu, mv = _nanmedian(uf), _nanmedian(vf)
        spread = MAD_SIGMA * np.maximum(_nanmedian(np.abs(uf - mu)), _nanmedian(np.abs(vf - mv)))
        tol = 3.0 * np.maximum(sig, np.where(n_fin >= 3, spread, 0.0))
        keep = fin & (np.abs(u - mu) <= tol) & (np.abs(v - mv) <= tol)
        w = np.where(keep, 1.0 / sig**2 if known.any() else 1.0, 0.0)
        sw = w.sum(0)
        cu = (w * np.where(keep, u, 0)).sum(0) / sw
        cv = (w * np.where(keep, v, 0)).sum(0) / sw
        n = keep.sum(0)
        n_eff = _independent_pairs(keep, n, scenes)
        dev2 = (np.where(keep, u, 0) - cu) ** 2 + (np.where(keep, v, 0) - cv) ** 2
        one_pair = (w * dev2 / 2).sum(0) / sw * n / np.maximum(n - 1, 1)  # a pair's variance (per component)
        scatter = np.sqrt(one_pair / n_eff)
        formal = np.sqrt(n / (sw * n_eff)) if known.any() else np.zeros(sw.shape)
        error = np.maximum(formal, np.where(n >= 2, scatter, np.nan if not known.any() else 0.0))
    empty = n == 0
    out = [np.where(empty, np.nan, x).astype(np.float32) for x in (cu, cv, np.hypot(cu, cv), error)]
    return (*out, n.astype(np.int16))


def _independent_pairs(keep: np.ndarray, n: np.ndarray, scenes: np.ndarray | None) -> np.ndarray:
    """Effective number of independent pairs per pixel: ``clip(distinct scenes - 1, 1, n)``.

    Pairs that share a scene share its noise: ``k`` pairs among ``d`` distinct scenes carry at most
    ``d - 1`` independent differences (the rank of the pairs' incidence matrix on a connected set).
    Without ``scenes`` (pair -> two scene indices) every pair counts.
    """
    if scenes is None:
        return np.maximum(n, 1).astype(np.float64)
    scenes = np.asarray(scenes, np.int64)
    incidence = np.zeros((scenes.shape[0], int(scenes.max()) + 1), np.float32)
    incidence[np.arange(scenes.shape[0])[:, None], scenes] = 1.0
    flat = keep.reshape(keep.shape[0], -1).T.astype(np.float32)
    distinct = ((flat @ incidence) > 0).sum(1).reshape(n.shape)
    return np.clip(distinct - 1, 1, np.maximum(n, 1)).astype(np.float64)


def _nanmedian(a: np.ndarray) -> np.ndarray:
    """Median over axis 0 ignoring NaN; NaN where all are NaN (without numpy's warning)."""
    empty = ~np.isfinite(a).any(axis=0)
    out = np.nanmedian(np.where(empty[None], 0.0, a), axis=0)
    return np.where(empty, np.nan, out)


def composite(vel: xr.Dataset, scenes: np.ndarray | None = None) -> dict[str, xr.DataArray]:
    """Lazy error-weighted composite over the pairs (module docstring).

    Parameters
    ----------
    vel
        ``u``, ``v`` (``time``, ``y``, ``x``), ``pair_error`` (``time``) and, where there is one, the
        per-pixel error ``error`` (``time``, ``y``, ``x``) that then weighs each pixel of each pair.
    scenes
        ``(pairs, 2)`` scene indices of each pair, for the effective number of independent pairs.

    Returns
    -------
    dict
        ``u_composite``, ``v_composite``, ``speed_composite``, ``speed_error`` (float32 m/yr, dims ``y``,
        ``x``; NaN where no pair has a value) and ``n_pairs`` (int16).
    """
    chunks = {"time": -1, "y": COMPOSITE_CHUNK, "x": COMPOSITE_CHUNK}
    err = vel["error"] if "error" in vel else xr.broadcast(vel["pair_error"], vel["u"])[0]
    u, v, err = (x.chunk(chunks) if vel["u"].chunks else x for x in (vel["u"], vel["v"], err))
    outs = xr.apply_ufunc(
        _composite_block, u, v, err, input_core_dims=[["time"]] * 3, output_core_dims=[[]] * 5,
        kwargs={"scenes": scenes}, dask="parallelized", output_dtypes=[np.float32] * 4 + [np.int16],
    )
    grid = {k: v for k, v in vel["u"].attrs.items() if k == "grid_mapping"}
    names = {
        "u_composite": "error-weighted composite velocity east",
        "v_composite": "error-weighted composite velocity north",
        "speed_composite": "speed of the composite velocity", "speed_error": "1-sigma error of the composite speed",
    }
    out = {k: o.assign_attrs(units="m yr-1", long_name=names[k], **grid) for k, o in zip(names, outs, strict=False)}
    out["n_pairs"] = outs[4].assign_attrs(long_name="number of pairs in the composite")
    return {k: o.reset_coords(drop=True) for k, o in out.items()}


def window_variance(spec: FlowSpec) -> float:
    """Variance (px^2, per axis) of the window over which the matcher averages the displacement.

    NCC: a uniform ``chip`` x ``chip`` box, ``(chip^2 - 1) / 12``. Farnebäck (``flags=0``, as
    :func:`glacierflow.motion.matching.farneback_pixels` calls it): OpenCV averages the polynomial
    coefficients over a ``winsize`` box (``FarnebackUpdateFlow_Blur``; the Gaussian window is only used
    with ``OPTFLOW_FARNEBACK_GAUSSIAN``), on top of the polynomial expansion's Gaussian
    (``poly_sigma``): ``(winsize^2 - 1) / 12 + poly_sigma^2``.
    """
    if spec.method == "ncc":
        return (spec.chip**2 - 1) / 12.0
    return (spec.winsize**2 - 1) / 12.0 + spec.poly_sigma**2


def _curvature_scale(s2: float) -> float:
    """Sigma (px) of the Gaussian the composite is smoothed with before its Laplacian.

    The window's own standard deviation, ``sqrt(s2)``: the composite carries no information finer than
    the matcher's window; finer, the 5-point Laplacian measures pixel noise, not the field's curvature.
    """
    return math.sqrt(max(s2, 0.0))


def _smooth_valid(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian of ``sigma`` px over the finite pixels only (normalised convolution); NaN stays NaN."""
    import cv2

    if sigma <= 0:
        return x
    ok = np.isfinite(x)
    k = 2 * math.ceil(3 * sigma) + 1
    num = cv2.GaussianBlur(np.where(ok, x, 0.0), (k, k), sigma, borderType=cv2.BORDER_CONSTANT)
    den = cv2.GaussianBlur(ok.astype(np.float64), (k, k), sigma, borderType=cv2.BORDER_CONSTANT)
    return np.where(ok, num / np.maximum(den, 1e-9), np.nan)


def _smoothing_block(err: np.ndarray, u: np.ndarray, v: np.ndarray, s2: float) -> np.ndarray:
    """``sqrt(err^2 + (s2 / 2 * |laplacian(u, v)|)^2)``.

    The Laplacian of ``u``, ``v`` smoothed at the window's scale (:func:`_curvature_scale`); missing
    neighbours count as the pixel itself.
    """
    def lap(x: np.ndarray) -> np.ndarray:
        out = np.zeros(x.shape, np.float64)
        for axis in (0, 1):
            for step in (1, -1):
                n = np.roll(x, step, axis)
                edge = [slice(None)] * 2
                edge[axis] = slice(0, 1) if step == 1 else slice(-1, None)
                n[tuple(edge)] = np.nan  # no wrap-around
                out += np.where(np.isfinite(n), n - x, 0.0)
        return out

    sigma = _curvature_scale(s2)
    with np.errstate(invalid="ignore"):
        lu, lv = (lap(_smooth_valid(x.astype(np.float64), sigma)) for x in (u, v))
        bias = 0.5 * s2 * np.hypot(lu, lv)
        return np.where(np.isfinite(err), np.hypot(err, bias), np.nan).astype(np.float32)


def with_smoothing(err: xr.DataArray, u: xr.DataArray, v: xr.DataArray, s2: float) -> xr.DataArray:
    """The composite error with the matcher's smoothing bias added (lazy, with the overlap it needs).

    A matcher averages the displacement over its window (variance ``s2`` px^2 per axis,
    :func:`window_variance`), which biases the velocity by ``s2 / 2 * laplacian(velocity)`` (second
    order in the Taylor expansion): largest at the ice margins and on the centre line, common to
    every pair, so the pairs' scatter cannot see it. The curvature is taken on the composite smoothed
    at the window's own scale (:func:`_curvature_scale`). Added in quadrature to the random error.
    """
    if not isinstance(err.data, da.Array):
        data = _smoothing_block(np.asarray(err), np.asarray(u), np.asarray(v), s2)
    else:
        depth = math.ceil(3 * _curvature_scale(s2)) + 2
        data = da.map_overlap(_smoothing_block, err.data, u.data, v.data, depth=depth, boundary="none",
                              dtype=np.float32, s2=s2)
    return err.copy(data=data)


# ------------------------------------------------------------------------------------------ store
def write_velocity(
    ds: xr.Dataset, url: str, overwrite: bool = False, source: str | None = None,
    storage_options: dict[str, Any] | None = None, cube_specs: tuple[CubeSpec, PreprocessSpec] | None = None,
) -> str:
    """Compute and write a velocity dataset with :func:`glacierflow.storage.store.write` (safe write).

    ``source`` (the cube store URL) and ``cube_specs`` (:func:`cube_specs`) are recorded in the attrs.
    """
    from glacierflow import __version__

    ds = ds.copy()
    if cube_specs is not None:
        ds.attrs.update(cube_spec=cube_specs[0].to_json(), preprocess_spec=cube_specs[1].to_json())
    ds.attrs.update(glacierflow_version=__version__, source_cube=source or "",
                    created=pd.Timestamp.now(tz="UTC").isoformat())
    return store.write(ds, url, overwrite=overwrite, storage_options=storage_options)


def open_cube(cube_url: str, storage_options: dict[str, Any] | None = None) -> tuple[xr.Dataset, xr.DataArray | None]:
    """Open a complete cube (or forecast) store lazily, and its guides (:func:`scene_guides`) if it has them."""
    if not store.exists(cube_url, storage_options):
        raise GlacierflowError(f"cube store {cube_url!r} not found; build one with 'glacierflow build-cube'")
    ds = store.open_store(cube_url, storage_options, require=("ndsi",))
    check_cube(ds, what=f"cube store {cube_url!r}", need_pairs=False)
    try:
        g = store.open_store(cube_url, storage_options, group="guides", require=("guide",))
        s = store.open_store(cube_url, storage_options, group="scenes", require=("item_id", "wrs_path"))
    except (GlacierflowError, FileNotFoundError, KeyError, OSError):
        return ds, None
    return ds, scene_guides(g, s)


def cube_specs(cube: xr.Dataset, where: str = "the cube store") -> tuple[CubeSpec, PreprocessSpec]:
    """The :class:`CubeSpec` and :class:`PreprocessSpec` a cube store was built with, read from its attrs."""
    return (
        spec_from_store(cube.attrs, "cube_spec", CubeSpec, where),
        spec_from_store(cube.attrs, "preprocess_spec", PreprocessSpec, where),
    )


def run_flow(
    cube_url: str, out_url: str, spec: FlowSpec | None = None, overwrite: bool = False,
    storage_options: dict[str, Any] | None = None, ice_mask: str | None = None,
) -> dict[str, Any]:
    """Open a cube store, compute the velocities and write the velocity store.

    Returns
    -------
    dict
        Summary from small reads of the written store: ``out``, ``period``, ``method``, ``tracked``,
        ``pairs``, ``median_pair_error_m_per_yr``, ``median_valid_fraction`` (per-pair scalars), and for the
        composite ``composite_median_speed_m_per_yr``, ``composite_valid_fraction``,
        ``median_speed_error_m_per_yr``.
    """
    spec = spec or FlowSpec()
    if not overwrite and store.exists(out_url, storage_options):  # before any work
        raise GlacierflowError(f"store {out_url} already exists; pass --overwrite to replace it")
    cube, guides = open_cube(cube_url, storage_options)
    # a forecast store carries no cube specs (its source cube does): flow reads its NDSI all the same
    specs = cube_specs(cube, f"cube store {cube_url!r}") if "cube_spec" in cube.attrs else None
    ice = read_ice_mask(ice_mask, cube) if ice_mask else None
    ds = velocity(cube, spec, guides=guides, ice_mask=ice)
    write_velocity(ds, out_url, overwrite=overwrite, source=cube_url, storage_options=storage_options,
                   cube_specs=specs)
    return summarise(out_url, storage_options, period=specs[1].period if specs else cube.attrs.get("period", ""))


def summarise(url: str, storage_options: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """The summary of a written velocity store: per-pair scalars and the composite maps only."""
    ds = store.open_store(url, storage_options, require=("u_composite", "pair_error"))
    err = ds["pair_error"].values
    comp, serr = ds["speed_composite"].values, ds["speed_error"].values
    ok = np.isfinite(comp)
    spec = FlowSpec.from_json(ds.attrs["flow_spec"])
    return {
        "out": url, **extra, "method": spec.method, "tracked": ds.attrs.get("tracked", ""),
        "pairs": int(ds.sizes["time"]),
        "median_pair_error_m_per_yr": float(np.nanmedian(err)) if np.isfinite(err).any() else float("nan"),
        "median_valid_fraction": float(np.median(ds["valid_fraction"].values)),
        "composite_median_speed_m_per_yr": float(np.median(comp[ok])) if ok.any() else float("nan"),
        # the scene's median is mostly still ground; the upper tail is the moving ice
        "composite_p95_speed_m_per_yr": float(np.percentile(comp[ok], 95)) if ok.any() else float("nan"),
        "composite_valid_fraction": float(ok.mean()),
        "median_speed_error_m_per_yr": float(np.median(serr[ok])) if ok.any() else float("nan"),
    }
