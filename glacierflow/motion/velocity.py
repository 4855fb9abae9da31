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

import math
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
from glacierflow.storage import cf, stac_out, store

DAYS_PER_YEAR = 365.25
PAIR_VARS = ("offset_u", "offset_v", "pair_error", "valid_fraction")


# ------------------------------------------------------------------------------------------ pairs










# ------------------------------------------------------------------------------------------ ice mask






# ------------------------------------------------------------------------------------------ per pair


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
    images, kind = _grid_images(cube_ds, guides, spec)
    times = pd.DatetimeIndex(images["time"].values)
    pairs = _pairs_or_error(times, spec, images["wrs_path"].values if "wrs_path" in images.coords else None)
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
        output_core_dims=[["y", "x"]] * 3 + [[]] * 4,
        kwargs={"method": spec.method, "kind": kind, "spec": spec, "dx": dx, "dy": dy},
        dask="parallelized", output_dtypes=[np.float32] * 7,
    )
    coords = _pair_coords(cube_ds, start, end, dt_days)
    if kind == "guide":
        ids = np.array([str(s) for s in images["scene"].values], dtype=np.dtypes.StringDType())
        coords.update(scene_start=("time", ids[i_idx]), scene_end=("time", ids[j_idx]))
    out = xr.Dataset(_pair_vars(outs, "spatial_ref" in coords), coords=coords)
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
    for name, out in zip(PAIR_VARS, outs[3:], strict=True):
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
    return stac_out.beside(store.write(cf.conform(ds), url, overwrite=overwrite, storage_options=storage_options),
                           storage_options)


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
