"""Surface velocity from pairs of acquisitions: ``cube.zarr --flow--> velocity.zarr`` (ITS_LIVE names).

What is tracked
---------------
By default the cube store's ``guides`` group: the aligned, QA-masked per-scene guide images (a texture band,
``red`` by default, high-passed; NaN where not observed), paired as acquisitions (:func:`select_pairs`:
``auto`` = 16 days to ``max_days`` (546) apart, a year first, as ITS_LIVE; ``annual``, ``consecutive`` or
``MIN:MAX`` days; same WRS path first; at most ``max_pairs_per_scene`` pairs per scene). Δt comes from the
acquisition times in the ``scenes`` table. ``images="ndsi"`` (or ``auto`` on a store without guides, e.g. a
forecast store) tracks the ``ndsi`` periods instead, with Δt from each period's mean acquisition time.

Per pair (one Dask task, :func:`_pair_task` through ``xr.apply_ufunc``)
---------------------------------------------------------------------------
1. the matcher (:data:`glacierflow.motion.matching.METHODS`; ``ncc``: the autoRIFT way, its search centred
   on a prior: a ``--reference`` velocity x Δt, :func:`reference_prior`, or a coarse first pass) gives the
   displacement in pixels, NaN where the match is not trusted;
2. stable-ground correction: the median displacement over stable ground (off-ice pixels at least
   ``stable_margin`` px from the ice; the ice from ``--outline`` or, with a warning, the cube's NDSI
   climatology, :func:`ice_from_climatology`) is subtracted and recorded (``stable_shift_x``,
   ``stable_shift_y``); the robust spread of the corrected stable-ground velocities (1.4826 MAD, RMS of the
   two components) is the pair's 1-sigma error ``pair_error`` (NaN with fewer than :data:`MIN_STABLE`
   stable pixels: then no correction);
3. velocity in m/yr: ``vx = cols * dx / years`` (east), ``vy = rows * dy / years`` (north: ``dy`` < 0);
4. per-pixel errors per component (:func:`pixel_error`, kept per pair as ``pixel_error_x``/``_y``): the
   pair's stable-ground spread of that component plus, in quadrature, the excess of the pixel's
   least-squares match error over the stable ground's (:func:`glacierflow.motion.matching.match_error`).

Composite (:func:`composite`)
-----------------------------
Per pixel, pairs further than 3 sigma from the per-pixel median are dropped; each component of the rest is
averaged with weights ``1 / error**2`` of that component (the per-pixel errors are per component: the pair's
stable-ground spread along x and along y, and the least-squares covariance's diagonal). Each component's
random error is the larger of the formal error of its mean and the weighted scatter of one pair, both over
``sqrt(n_eff)`` (``n_eff`` = distinct scenes - 1); ``vx_error`` and ``vy_error`` add, in quadrature, the
matcher's smoothing bias ``s2 / 2 * |laplacian|`` of their own component, ``v_error`` the components'
random errors projected on the flow direction plus ``s2 / 2 * |laplacian(vx, vy)|`` (:func:`with_smoothing`).
``count`` counts the pairs used.

:func:`velocity` returns the lazy dataset under working names (``u``, ``v``, ``speed`` per pair along
``time``, ``u_composite``...); :func:`its_live` lays it out as the store (composite at the root, ``pairs``
group on ``mid_date``), which :func:`write_velocity` writes and :func:`open_velocity` reads.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from glacierflow.errors import GlacierflowError
from glacierflow.motion.composite import composite, window_variance, with_smoothing
from glacierflow.motion.masks import (
    MIN_STABLE,
    ice_from_climatology,
    read_ice_mask,
    stable_ground,
    stable_offset,
)
from glacierflow.motion.matching import METHODS, match_error, prepare
from glacierflow.motion.pairs import check_cube, grid_step, scene_guides, search_px, select_pairs, tracked_images
from glacierflow.specs import CubeSpec, FlowSpec, PreprocessSpec, spec_from_store
from glacierflow.storage import cf, cubes, stac_out, store

DAYS_PER_YEAR = 365.25
PAIR_VARS = ("offset_u", "offset_v", "pair_error", "valid_fraction")


# ------------------------------------------------------------------------------------------ pairs










# ------------------------------------------------------------------------------------------ ice mask






# ------------------------------------------------------------------------------------------ per pair


def _pair_task(a: np.ndarray, b: np.ndarray, stable: np.ndarray, years: np.ndarray, search: np.ndarray,
               *, method: str, kind: str, spec: FlowSpec, dx: float, dy: float,
               prior: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """One block of pairs (one pair per block): u, v, their errors (m/yr) and the pair's scalars (module doc)."""
    a = np.asarray(a)
    shape = a.shape
    lead = int(np.prod(shape[:-2]))
    a, b = a.reshape(lead, *shape[-2:]), np.asarray(b).reshape(lead, *shape[-2:])
    st = np.broadcast_to(np.asarray(stable, bool), shape).reshape(lead, *shape[-2:])
    yrs = np.broadcast_to(np.asarray(years, np.float64), shape[:-2]).reshape(-1)
    srch = np.broadcast_to(np.asarray(search), shape[:-2]).reshape(-1)
    u, v, eu, ev = (np.empty(a.shape, np.float32) for _ in range(4))
    scalars = np.empty((4, lead), np.float32)
    window = spec.chip if method == "ncc" else spec.texture_box
    for k in range(lead):
        pa, pb = prepare(a[k], kind), prepare(b[k], kind)
        disp = METHODS[method](pa, pb, spec, int(srch[k]), prior=None if prior is None else prior * yrs[k])
        mc, mr, sc, sr, _ = stable_offset(disp[0], disp[1], st[k])
        fu, fv = dx / yrs[k], dy / yrs[k]
        u[k] = (disp[0] - mc) * fu
        v[k] = (disp[1] - mr) * fv
        err = (sc * abs(fu), sr * abs(fv))
        eu[k], ev[k] = pixel_error(match_error(pa, pb, disp, window), st[k], err, abs(fu), abs(fv))
        scalars[:, k] = (mc * fu, mr * fv, math.sqrt((err[0] ** 2 + err[1] ** 2) / 2.0),
                         float(np.isfinite(disp[0]).mean()))
    return (*(x.reshape(shape) for x in (u, v, eu, ev)), *(s.reshape(shape[:-2]) for s in scalars))


def pixel_error(px: np.ndarray, stable: np.ndarray, pair_error: tuple[float, float], fu: float,
                fv: float) -> np.ndarray:
    """A pair's per-pixel 1-sigma velocity errors (m/yr), ``(2, H, W)`` (east, north), from :func:`match_error`.

    Per component, the stable-ground spread (``pair_error``: east, north) measures the whole error where the
    ground is still (the registration and the matcher on static texture); on top of it each pixel adds the
    part of its least-squares error above the typical stable-ground one (decorrelated ice, the aperture
    problem, wrong matches): ``sqrt(pair_error^2 + max(lk^2 - median_stable(lk)^2, 0))``. Without a
    stable-ground error, the least-squares error alone.
    """
    out = np.empty(px.shape, np.float32)
    for k, (f, pe) in enumerate(zip((fu, fv), pair_error, strict=True)):
        lk2 = (px[k] * f) ** 2
        ref = lk2[stable & np.isfinite(lk2)]
        if not math.isfinite(pe) or ref.size < MIN_STABLE:
            out[k] = np.sqrt(lk2)
        else:
            out[k] = np.sqrt(pe**2 + np.clip(lk2 - float(np.median(ref)), 0.0, None))
    return out


# ------------------------------------------------------------------------------------------ velocity
def velocity(cube_ds: xr.Dataset, spec: FlowSpec | None = None, *, guides: xr.DataArray | None = None,
             ice_mask: xr.DataArray | None = None, reference: xr.Dataset | None = None,
             only_pairs: list[tuple[int, int]] | None = None) -> xr.Dataset:
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
    reference
        A velocity dataset with ``vx``, ``vy`` (m/yr) and a CRS: the search prior, reprojected onto the
        cube grid (:func:`reference_prior`); default a coarse first pass per pair.
    only_pairs
        Index pairs into the tracked images (time-sorted) to match instead of :func:`select_pairs`'s
        (``flow --update``: only the pairs its store lacks).

    Returns
    -------
    xarray.Dataset
        Per pair (dim ``time`` = midpoint of the two acquisitions): ``u``, ``v``, ``speed`` (float32 m/yr,
        +u east, +v north), ``offset_u``, ``offset_v``, ``pair_error``, ``valid_fraction``; coordinates
        ``time_start``, ``time_end``, ``dt_days``, ``scene_start``, ``scene_end``; the composite
        (:func:`composite`). One Dask task per pair; nothing is computed here.
    """
    spec = spec or FlowSpec()
    images, kind = _grid_images(cube_ds, guides, spec)
    times = pd.DatetimeIndex(images["time"].values)
    pairs = list(only_pairs) if only_pairs is not None else \
        _pairs_or_error(times, spec, images["wrs_path"].values if "wrs_path" in images.coords else None)
    dx, dy = grid_step(cube_ds["x"], "x"), grid_step(cube_ds["y"], "y")
    stable = stable_ground(ice_mask if ice_mask is not None else ice_from_climatology(cube_ds, spec),
                           spec.stable_margin)
    i_idx, j_idx = [i for i, _ in pairs], [j for _, j in pairs]
    start, end = times[i_idx], times[j_idx]
    dt_days = np.asarray((end - start) / pd.Timedelta(days=1), dtype=np.float64)
    years = dt_days / DAYS_PER_YEAR
    search = np.array([search_px(spec, y, min(abs(dx), abs(dy))) for y in years], np.int64)
    img = images.drop_vars([c for c in images.coords if c not in ("y", "x")])
    img = img.chunk({"scene": 1, "y": -1, "x": -1})
    a = img.isel(scene=i_idx).rename(scene="time")
    b = img.isel(scene=j_idx).rename(scene="time")
    pp = [xr.DataArray(v, dims="time").chunk({"time": 1}) for v in (years, search)]
    outs = xr.apply_ufunc(
        _pair_task, a, b, stable, *pp,
        input_core_dims=[["y", "x"]] * 3 + [[], []],
        output_core_dims=[["y", "x"]] * 4 + [[]] * 4,
        kwargs={"method": spec.method, "kind": kind, "spec": spec, "dx": dx, "dy": dy,
                "prior": None if reference is None else reference_prior(reference, cube_ds, dx, dy)},
        dask="parallelized", output_dtypes=[np.float32] * 8,
    )
    coords = _pair_coords(cube_ds, start, end, dt_days)
    if kind == "guide":
        ids = np.array([str(s) for s in images["scene"].values], dtype=np.dtypes.StringDType())
        coords.update(scene_start=("time", ids[i_idx]), scene_end=("time", ids[j_idx]))
    out = xr.Dataset(_pair_vars(outs, "spatial_ref" in coords), coords=coords)
    eu, ev = (o.transpose("time", "y", "x").reset_coords(drop=True) for o in outs[2:4])
    comp = composite(out.assign(error_u=eu, error_v=ev), scenes=np.stack([i_idx, j_idx], axis=1))
    comp["stable_ground"] = stable.assign_coords(y=cube_ds["y"], x=cube_ds["x"]).reset_coords(drop=True)
    s2 = window_variance(spec)
    comp["speed_error"] = with_smoothing(comp["speed_error"], comp["u_composite"], comp["v_composite"], s2)
    comp["u_error"] = with_smoothing(comp["u_error"], comp["u_composite"], None, s2)
    comp["v_error"] = with_smoothing(comp["v_error"], comp["v_composite"], None, s2)
    attrs = {"units": "m yr-1", "long_name": "1-sigma velocity error of the pair per pixel (the composite's weights)"}
    # kept per pair: flow --update recomposes with them
    out = out.assign({**comp, "pixel_error_x": eu.assign_attrs(attrs), "pixel_error_y": ev.assign_attrs(attrs)})
    for name in ("time_start", "time_end"):  # acquisition times as the catalogue gives them (microseconds)
        out[name].encoding.update(units="microseconds since 1970-01-01", dtype="int64")
    out["time"].encoding.update(units="seconds since 1970-01-01", dtype="int64")
    out.attrs["flow_spec"] = spec.to_json()
    out.attrs["tracked"] = "guides" if kind == "guide" else "ndsi"
    return out


def reference_prior(ref: xr.Dataset, cube_ds: xr.Dataset, dx: float, dy: float) -> np.ndarray:
    """A reference velocity (``vx``, ``vy`` m/yr, any CRS) as pixels per year on the cube grid, ``(2, H, W)``.

    Reprojected with rasterio (bilinear); NaN (no reference) becomes 0. ``vx`` east / ``dx`` gives columns,
    ``vy`` north / ``dy`` rows (``dy`` < 0 on a north-up grid: north is up).
    """
    from rasterio.transform import from_origin
    from rasterio.warp import Resampling, reproject

    def transform_of(ds: xr.Dataset) -> tuple[Any, int]:
        x, y = ds["x"].values, ds["y"].values
        sx, sy = float(x[1] - x[0]), float(y[1] - y[0])
        return from_origin(x[0] - sx / 2, y[0] - sy / 2, sx, -sy), store.epsg_of(ds)

    try:
        src_t, src_epsg = transform_of(ref)
    except (GlacierflowError, KeyError, IndexError) as err:
        raise GlacierflowError(f"--reference has no usable grid or CRS ({err}); give a store with vx, vy on "
                               "(y, x) and a spatial_ref") from None
    dst_t, dst_epsg = transform_of(cube_ds)
    out = np.full((2, cube_ds.sizes["y"], cube_ds.sizes["x"]), np.nan, np.float32)
    for k, name in enumerate(("vx", "vy")):
        src = np.asarray(ref[name].transpose("y", "x").values, np.float32)
        reproject(src, out[k], src_transform=src_t, src_crs=f"EPSG:{src_epsg}", src_nodata=np.nan,
                  dst_transform=dst_t, dst_crs=f"EPSG:{dst_epsg}", dst_nodata=np.nan, resampling=Resampling.bilinear)
    return np.nan_to_num(np.stack([out[0] / dx, out[1] / dy])).astype(np.float32)


def _grid_images(cube_ds: xr.Dataset, guides: xr.DataArray | None, spec: FlowSpec) -> tuple[xr.DataArray, str]:
    """The tracked images (:func:`tracked_images`) on the cube's own grid coordinates, and their kind."""
    images, kind = tracked_images(cube_ds, guides, spec)
    if (images.sizes["y"], images.sizes["x"]) != (cube_ds.sizes["y"], cube_ds.sizes["x"]):
        raise GlacierflowError("the guides and the cube have different grids; rebuild the cube store")
    return images.assign_coords(y=cube_ds["y"].values, x=cube_ds["x"].values), kind


def _pairs_or_error(times: pd.DatetimeIndex, spec: FlowSpec, paths: np.ndarray | None) -> list[tuple[int, int]]:
    """:func:`select_pairs`, or one line saying why there are none and what to widen."""
    pairs = select_pairs(times, spec, paths)
    if not pairs:
        raise GlacierflowError(
            f"no {spec.pairs} pairs among {len(times)} acquisitions"
            + (f" ({times[0]:%Y-%m-%d}..{times[-1]:%Y-%m-%d})" if len(times) else "")
            + "; widen the date range or choose other --pairs (annual, consecutive, MIN:MAX days)"
        )
    return pairs


_PAIR_ATTRS = {
    "offset_u": ("m yr-1", "stable-ground median velocity east removed"),
    "offset_v": ("m yr-1", "stable-ground median velocity north removed"),
    "pair_error": ("m yr-1", "1-sigma velocity error per component from the stable-ground spread"),
    "valid_fraction": ("1", "fraction of pixels with a valid match"),
}


def _pair_vars(outs: tuple[xr.DataArray, ...], has_crs: bool) -> dict[str, xr.DataArray]:
    """The per-pair variables with their units and names, from the outputs of :func:`_pair_task`."""
    grid = {"grid_mapping": "spatial_ref"} if has_crs else {}
    u, v = (o.transpose("time", "y", "x") for o in outs[:2])
    data_vars = {
        "u": u.assign_attrs(units="m yr-1", long_name="surface velocity east", **grid),
        "v": v.assign_attrs(units="m yr-1", long_name="surface velocity north", **grid),
        "speed": np.hypot(u, v).astype(np.float32).assign_attrs(units="m yr-1", long_name="surface speed", **grid),
    }
    for name, out in zip(PAIR_VARS, outs[4:], strict=True):
        data_vars[name] = out.assign_attrs(units=_PAIR_ATTRS[name][0], long_name=_PAIR_ATTRS[name][1])
    return {k: v.reset_coords(drop=True) for k, v in data_vars.items()}


def _pair_coords(cube_ds: xr.Dataset, start: pd.DatetimeIndex, end: pd.DatetimeIndex,
                 dt_days: np.ndarray) -> dict[str, Any]:
    """Coordinates of the pair dimension (``time`` = midpoint) and the cube's grid and ``spatial_ref``."""
    coords: dict[str, Any] = {
        "time": ("time", np.asarray((start + (end - start) / 2).round("s"), dtype="datetime64[ns]")),  # a label
        "time_start": ("time", np.asarray(start, dtype="datetime64[ns]")),
        "time_end": ("time", np.asarray(end, dtype="datetime64[ns]")),
        "dt_days": ("time", dt_days),
        "y": cube_ds["y"].variable,
        "x": cube_ds["x"].variable,
    }
    if "spatial_ref" in cube_ds.coords or "spatial_ref" in cube_ds.variables:
        coords["spatial_ref"] = cube_ds["spatial_ref"].variable
    return coords


# ------------------------------------------------------------------------------------------ composite


















# ------------------------------------------------------------------------------------------ store
VELOCITY_FORMAT = 2  # 2: ITS_LIVE names (vx, vy, v, ...; per pair in the ``pairs`` group on mid_date)
store.FORMATS["flow_spec"] = VELOCITY_FORMAT  # the layout version every store reader checks (storage.store)
_CF = {
    "vx": ("m yr-1", "land_ice_surface_x_velocity", "surface velocity east (+x)"),
    "vy": ("m yr-1", "land_ice_surface_y_velocity", "surface velocity north (+y)"),
    "v": ("m yr-1", "land_ice_surface_velocity", "surface speed"),
    "v_error": ("m yr-1", None, "1-sigma error of the speed (random error and the matcher's smoothing bias)"),
    "vx_error": ("m yr-1", None, "1-sigma error of vx (random error and the matcher's smoothing bias)"),
    "vy_error": ("m yr-1", None, "1-sigma error of vy (random error and the matcher's smoothing bias)"),
    "count": ("1", None, "number of valid pairs in the composite"),
    "stable_shift_x": ("m yr-1", None, "stable-ground median velocity east removed from the pair"),
    "stable_shift_y": ("m yr-1", None, "stable-ground median velocity north removed from the pair"),
    "pair_error": ("m yr-1", None, "1-sigma velocity error per component from the stable-ground spread"),
    "valid_fraction": ("1", None, "fraction of pixels with a valid match"),
    "dt_days": ("days", None, "time between the two acquisitions"),
}


def _cf(da: xr.DataArray, name: str, gridded: bool) -> xr.DataArray:
    units, standard, long_name = _CF[name]
    attrs = {"units": units, "long_name": long_name, **({"standard_name": standard} if standard else {})}
    if gridded:
        attrs["grid_mapping"] = "spatial_ref"
    return da.assign_attrs(attrs)


def its_live(ds: xr.Dataset) -> xr.DataTree:
    """The velocity store's layout (DESIGN.md, ITS_LIVE names) from :func:`velocity`'s dataset.

    Root: the composite ``vx``, ``vy``, ``v``, ``v_error``, ``vx_error``, ``vy_error``, ``count`` on
    ``(y, x)``; group ``pairs`` on ``mid_date``: ``vx``, ``vy``, ``v``, ``acquisition_date_img1``,
    ``acquisition_date_img2``, ``dt_days``, ``stable_shift_x``, ``stable_shift_y``, ``pair_error``,
    ``valid_fraction`` (and ``scene_img1``/``scene_img2`` item ids when scenes were tracked).
    """
    grid = "spatial_ref" in ds.coords
    keep = {"y": ds["y"], "x": ds["x"], **({"spatial_ref": ds["spatial_ref"]} if grid else {})}
    root = xr.Dataset({
        "vx": _cf(ds["u_composite"], "vx", grid), "vy": _cf(ds["v_composite"], "vy", grid),
        "v": _cf(ds["speed_composite"], "v", grid), "v_error": _cf(ds["speed_error"], "v_error", grid),
        "vx_error": _cf(ds["u_error"], "vx_error", grid),
        "vy_error": _cf(ds["v_error"], "vy_error", grid), "count": _cf(ds["n_pairs"], "count", grid),
        "stable_ground": ds["stable_ground"].assign_attrs(
            long_name="stable ground: off the ice by the margin (where the pair offsets and errors come from)"),
    }, coords=keep, attrs=dict(ds.attrs, Conventions="CF-1.10", velocity_format=VELOCITY_FORMAT))
    names = {"u": "vx", "v": "vy", "speed": "v", "offset_u": "stable_shift_x", "offset_v": "stable_shift_y",
             "pair_error": "pair_error", "valid_fraction": "valid_fraction"}
    pairs = xr.Dataset({new: ds[old].rename(time="mid_date").variable for old, new in names.items()},
                       coords={"mid_date": ("mid_date", ds["time"].values, ds["time"].attrs), **keep})
    for new in names.values():
        pairs[new] = _cf(pairs[new], new, new in ("vx", "vy", "v") and grid)
    pairs = pairs.assign_coords(
        acquisition_date_img1=("mid_date", ds["time_start"].values), acquisition_date_img2=("mid_date",
                                                                                          ds["time_end"].values),
        dt_days=("mid_date", ds["dt_days"].values, {"units": "days"}))
    for k in ("scene_start", "scene_end"):
        if k in ds.coords:
            pairs = pairs.assign_coords({k.replace("start", "img1").replace("end", "img2"): ("mid_date",
                                                                                           ds[k].values)})
    for name in ("acquisition_date_img1", "acquisition_date_img2"):
        pairs[name].encoding.update(units="microseconds since 1970-01-01", dtype="int64")
    pairs["mid_date"].encoding.update(units="seconds since 1970-01-01", dtype="int64")
    pairs.attrs = {"title": "one velocity field per pair of acquisitions (mid_date: the midpoint)"}
    root, pairs = _extras(ds, root, pairs)
    return xr.DataTree.from_dict({"/": root, "pairs": pairs})


_EXTRA_NAMES = {"u_composite_true": "vx_true", "v_composite_true": "vy_true", "speed_composite_true": "v_true",
                "u_true": "vx_true", "v_true": "vy_true", "speed_true": "v_true"}
_DONE = {"u", "v", "speed", "offset_u", "offset_v", "pair_error", "valid_fraction", "u_composite", "v_composite",
         "speed_composite", "speed_error", "u_error", "v_error", "n_pairs", "stable_ground"}


def _extras(ds: xr.Dataset, root: xr.Dataset, pairs: xr.Dataset) -> tuple[xr.Dataset, xr.Dataset]:
    """Further variables (e.g. the forecast comparison): per pair into ``pairs``, the rest into the root."""
    per_pair = {}
    for name in ds.data_vars:
        if name in _DONE:
            continue
        new = _EXTRA_NAMES.get(str(name), str(name))
        if "time" in ds[name].dims:
            var = ds[name].variable
            per_pair[new] = xr.Variable(tuple("mid_date" if d == "time" else d for d in var.dims), var.data,
                                        var.attrs)
        else:
            root[new] = ds[name].reset_coords(drop=True)
    coords = {k: ("mid_date", ds[k].values) for k in ds.coords if ds[k].dims == ("time",)
              and k not in ("time", "time_start", "time_end", "dt_days", "scene_start", "scene_end")}
    return root, pairs.assign(per_pair).assign_coords(coords)


def open_velocity(url: str, storage_options: dict[str, Any] | None = None,
                  group: str | None = None) -> xr.Dataset:
    """Open a velocity store's root (or its ``pairs`` group) lazily; one line for a store of an older layout."""
    if not store.exists(url, storage_options):
        raise GlacierflowError(f"velocity store {url!r} not found; write one with 'glacierflow flow CUBE --out'")
    root = store.open_store(url, storage_options)
    if root.attrs.get("velocity_format") != VELOCITY_FORMAT:
        raise GlacierflowError(
            f"{url} is a velocity store of an older layout (u/v names, before ITS_LIVE names); rebuild it with "
            f"'glacierflow flow CUBE --out {url} --overwrite'")
    return root if group is None else store.open_store(url, storage_options, group=group)


def write_velocity(
    ds: xr.Dataset, url: str, overwrite: bool = False, source: str | None = None,
    storage_options: dict[str, Any] | None = None, cube_specs: tuple[CubeSpec, PreprocessSpec] | None = None,
) -> str:
    """Compute and write a velocity dataset (:func:`velocity`) in the store layout (:func:`its_live`).

    Written with :func:`glacierflow.storage.store.write` (safe write). ``source`` (the cube store URL) and
    ``cube_specs`` (:func:`cube_specs`) are recorded in the attrs.
    """
    from glacierflow import __version__

    ds = ds.copy()
    if cube_specs is not None:
        ds.attrs.update(cube_spec=cube_specs[0].to_json(), preprocess_spec=cube_specs[1].to_json())
    ds.attrs.update(glacierflow_version=__version__, source_cube=source or "",
                    created=pd.Timestamp.now(tz="UTC").isoformat())
    return stac_out.beside(store.write(cf.conform(its_live(ds)), url, overwrite=overwrite,
                                       storage_options=storage_options), storage_options)


def open_cube(cube_url: str, storage_options: dict[str, Any] | None = None) -> tuple[xr.Dataset, xr.DataArray | None]:
    """Open a complete cube (or forecast) store lazily, and its guides (:func:`scene_guides`) if it has them."""
    ds = cubes.open_cube(cube_url, storage_options).data
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


def guide_note(cube: xr.Dataset, guides: xr.DataArray | None) -> str:
    """One line when the cube's guides predate ``--guide-band`` (the grey green/SWIR mix); else ''."""
    if guides is None or "preprocess_spec" not in cube.attrs:
        return ""
    if "guide_band" in json.loads(cube.attrs["preprocess_spec"]):
        return ""
    return ("note: this cube's guides are the grey 0.114 green + 0.886 swir16 mix (built before --guide-band); "
            "rebuild it with build-cube --overwrite to track the red band, where ice shows its texture")


@dataclass(frozen=True)
class FlowSummary:
    """What ``flow`` did, from small reads of the written store; :meth:`lines` is what the CLI prints."""

    out: str
    method: str
    tracked: str
    pairs: int
    pair_kind: str
    median_pair_error: float  # m/yr
    median_valid_fraction: float
    median_speed: float  # composite, m/yr
    p95_speed: float
    valid_fraction: float  # composite
    median_speed_error: float
    stable_median: float  # composite speed on stable ground, m/yr
    notes: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        """The summary as the CLI prints it."""
        return [*self.notes,
                f"{self.pairs} {self.pair_kind} pairs of {self.tracked} ({self.method}); median pair error "
                f"{self.median_pair_error:.1f} m/yr, median valid fraction {self.median_valid_fraction:.2f}",
                f"composite: median speed {self.median_speed:.1f} m/yr (95th percentile {self.p95_speed:.0f} m/yr) "
                f"over {100 * self.valid_fraction:.0f}% of pixels, median speed error {self.median_speed_error:.1f} "
                f"m/yr; stable ground median speed {self.stable_median:.1f} m/yr",
                f"written: {self.out}"]


def run_flow(
    cube_url: str, out_url: str, spec: FlowSpec | None = None, overwrite: bool = False,
    storage_options: dict[str, Any] | None = None, outline: str | None = None, reference: str | None = None,
) -> FlowSummary:
    """Open a cube store, compute the velocities and write the velocity store (ITS_LIVE names).

    ``outline``: ice outlines (GeoJSON/Shapefile or a raster mask, :func:`read_ice_mask`); without, the
    cube's NDSI climatology with a warning. ``reference``: a velocity store whose ``vx``/``vy`` centre the
    search (:func:`reference_prior`).
    """
    spec = spec or FlowSpec()
    if not overwrite and store.exists(out_url, storage_options):  # before any work
        raise GlacierflowError(f"store {out_url} already exists; pass --overwrite to replace it")
    cube, guides = open_cube(cube_url, storage_options)
    # a forecast store carries no cube specs (its source cube does): flow reads its NDSI all the same
    specs = cube_specs(cube, f"cube store {cube_url!r}") if "cube_spec" in cube.attrs else None
    notes = [n for n in (guide_note(cube, guides),) if n]
    if outline:
        ice = read_ice_mask(outline, cube)
    else:
        ice = None
        notes.append("warning: no --outline: ice and stable ground come from the cube's NDSI climatology, "
                     "which may call snowy rock ice; pass RGI outlines (--outline FILE) for a trustworthy error")
    ref = open_reference(reference, storage_options) if reference else None
    spec = spec.replace(outline=outline or "", reference=reference or "")
    ds = velocity(cube, spec, guides=guides, ice_mask=ice, reference=ref)
    write_velocity(ds, out_url, overwrite=overwrite, source=cube_url, storage_options=storage_options,
                   cube_specs=specs)
    return summarise(out_url, storage_options, notes=tuple(notes))


def open_reference(url: str, storage_options: dict[str, Any] | None) -> xr.Dataset:
    """The ``--reference`` store's ``vx``/``vy`` (any store with them on (y, x) and a CRS)."""
    if not store.exists(url, storage_options):
        raise GlacierflowError(f"--reference {url!r} not found; give a velocity store with vx, vy (m/yr)")
    ds = store.open_store(url, storage_options)
    if "vx" not in ds or "vy" not in ds:
        raise GlacierflowError(f"--reference {url!r} has no vx/vy variables (m/yr); give an ITS_LIVE-style store")
    return ds


def summarise(url: str, storage_options: dict[str, Any] | None = None, notes: tuple[str, ...] = ()) -> FlowSummary:
    """The :class:`FlowSummary` of a written velocity store: per-pair scalars and the composite maps only."""
    root = open_velocity(url, storage_options)
    pairs = open_velocity(url, storage_options, group="pairs")
    err = pairs["pair_error"].values
    comp, serr = root["v"].values, root["v_error"].values
    ok = np.isfinite(comp)
    spec = FlowSpec.from_json(root.attrs["flow_spec"])
    stable = root["stable_ground"].values.astype(bool)

    def med(x: np.ndarray) -> float:
        return float(np.nanmedian(x)) if np.isfinite(x).any() else float("nan")

    return FlowSummary(
        out=url, method=spec.method, tracked=root.attrs.get("tracked", ""), pairs=int(pairs.sizes["mid_date"]),
        pair_kind=spec.pairs, median_pair_error=med(err), median_valid_fraction=med(pairs["valid_fraction"].values),
        median_speed=med(comp[ok]), p95_speed=float(np.percentile(comp[ok], 95)) if ok.any() else float("nan"),
        valid_fraction=float(ok.mean()), median_speed_error=med(serr[ok]),
        stable_median=med(np.where(stable, comp, np.nan)), notes=notes,
    )
