"""``flow --update VELOCITY``: bring a velocity store up to date with its (updated) cube, equal to a fresh ``flow``.

The store records how it was made (``flow_spec``: matcher, pairs, chips, ``outline``, ``reference``) and from
which cube (``source_cube``). An update

1. opens the cube (the recorded one unless another is given) and selects the pairs a fresh ``flow`` with the
   same spec would select now (:func:`glacierflow.motion.pairs.select_pairs` over every acquisition: new
   scenes add candidates, and a per-scene cap may then trade an old pair for a new one);
2. keeps the stored pairs that are still selected (identified by the item ids of their two scenes, or by the
   two periods' mean acquisition times when NDSI periods are tracked: a recomputed period is a new image),
   matches only the missing ones (one Dask task each, :func:`glacierflow.motion.velocity.velocity` with
   ``only_pairs``) and drops the ones no longer selected;
3. recomputes the composite over the resulting pairs with each pair's stored per-pixel error
   (``pixel_error_x``, ``pixel_error_y``), as :func:`~glacierflow.motion.velocity.velocity` does, and rewrites
   the store (safe write: the previous version stays readable until the new one is complete).

Equal to a rebuild as long as the stable ground is the same: with ``--outline`` it is; without, the cube's
NDSI climatology can move with the new periods, and then every pair is recomputed (said in the summary).
A store written before ``pixel_error_x``/``_y`` were kept per pair is recomputed whole once, with a note. The
update assumes the old scenes' guides are unchanged (a cube update aligns new scenes to the store's reference and
leaves old ones alone); after a rebuilt cube, run ``flow --overwrite``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from glacierflow.errors import GlacierflowError
from glacierflow.motion.composite import composite, window_variance, with_smoothing
from glacierflow.motion.masks import ice_from_climatology, read_ice_mask, stable_ground
from glacierflow.motion.pairs import select_pairs, tracked_images
from glacierflow.motion.velocity import (
    FlowSummary,
    cube_specs,
    open_cube,
    open_reference,
    open_velocity,
    summarise,
    velocity,
    write_velocity,
)
from glacierflow.specs import FlowSpec

#: the pairs group's names back to the working names of :func:`~glacierflow.motion.velocity.velocity`
_WORKING = {"vx": "u", "vy": "v", "v": "speed", "stable_shift_x": "offset_u", "stable_shift_y": "offset_v",
            "pair_error": "pair_error", "valid_fraction": "valid_fraction",
            "pixel_error_x": "pixel_error_x", "pixel_error_y": "pixel_error_y"}
_COORDS = {"acquisition_date_img1": "time_start", "acquisition_date_img2": "time_end", "dt_days": "dt_days",
           "scene_img1": "scene_start", "scene_img2": "scene_end"}


@dataclass(frozen=True)
class FlowUpdate:
    """What ``flow --update`` did; :meth:`lines` is what the CLI prints."""

    store: str
    cube: str
    kept: int
    added: int
    dropped: int
    unchanged: bool
    notes: tuple[str, ...] = ()
    summary: FlowSummary | None = None

    def lines(self) -> list[str]:
        """The update as the CLI prints it."""
        if self.unchanged:
            return [*self.notes, f"{self.store} is up to date with {self.cube}: {self.kept} pairs, nothing new"]
        head = (f"updated {self.store} from {self.cube}: {self.added} new pair(s) matched, {self.kept} kept, "
                f"{self.dropped} dropped")
        return [*self.notes, head, *(self.summary.lines() if self.summary else [])]


def _keys(images: xr.DataArray, kind: str) -> list[str]:
    """An identity per tracked image: the scene's item id, or the period's mean acquisition time (ndsi)."""
    if kind == "guide":
        return [str(s) for s in images["scene"].values]
    return [str(np.datetime64(t, "us")) for t in images["time"].values]


def _stored_keys(pairs: xr.Dataset, kind: str) -> list[tuple[str, str]]:
    if kind == "guide" and "scene_img1" in pairs.coords:
        a, b = pairs["scene_img1"].values, pairs["scene_img2"].values
        return [(str(x), str(y)) for x, y in zip(a, b, strict=True)]
    a, b = (pairs[k].values.astype("datetime64[us]") for k in ("acquisition_date_img1", "acquisition_date_img2"))
    return [(str(x), str(y)) for x, y in zip(a, b, strict=True)]


def _ice(spec: FlowSpec, cube: xr.Dataset) -> xr.DataArray:
    return read_ice_mask(spec.outline, cube) if spec.outline else ice_from_climatology(cube, spec)


def _stored_pairs(pairs: xr.Dataset, index: list[int]) -> xr.Dataset:
    """The stored pairs ``index`` under the working names, on ``time`` (the pair midpoint)."""
    sel = pairs.isel(mid_date=index)
    ds = xr.Dataset({_WORKING[k]: sel[k].reset_coords(drop=True) for k in _WORKING if k in sel.data_vars})
    ds = ds.assign_coords({_COORDS[k]: ("mid_date", _plain(sel[k].values)) for k in _COORDS if k in sel.coords})
    ds = ds.rename(mid_date="time").assign_coords(time=sel["mid_date"].values)
    for var in ds.variables.values():
        var.encoding = {}  # the stored chunks and codecs are the old store's, not the new one's
    return ds


def _plain(values: np.ndarray) -> np.ndarray:
    """Item ids as the velocity stage writes them (variable-width strings); other values unchanged."""
    if values.dtype.kind in "OUT":
        return np.array([str(v) for v in values], dtype=np.dtypes.StringDType())
    return values


def update_flow(velocity_url: str, cube_url: str | None = None, *,
                storage_options: dict[str, Any] | None = None) -> FlowUpdate:
    """Bring a velocity store up to date with its cube (module notes); returns what changed.

    Parameters
    ----------
    velocity_url
        A velocity store written by ``flow`` (rewritten in place, safely).
    cube_url
        The cube to update from; default the store's ``source_cube``.
    storage_options
        fsspec options for both stores.
    """
    root = open_velocity(velocity_url, storage_options)
    stored = open_velocity(velocity_url, storage_options, group="pairs")
    spec = FlowSpec.from_json(root.attrs["flow_spec"])
    cube_url = cube_url or str(root.attrs.get("source_cube") or "")
    if not cube_url:
        raise GlacierflowError(f"{velocity_url} does not record its cube; give it: flow CUBE --update {velocity_url}")
    cube, guides = open_cube(cube_url, storage_options)
    images, kind = tracked_images(cube, guides, spec)
    paths = images["wrs_path"].values if "wrs_path" in images.coords else None
    selected = select_pairs(pd.DatetimeIndex(images["time"].values), spec, paths)
    keys = _keys(images, kind)
    want = [(keys[i], keys[j]) for i, j in selected]
    have = {k: n for n, k in enumerate(_stored_keys(stored, kind))}
    notes: list[str] = []
    ice = _ice(spec, cube)
    same_ground = bool((stable_ground(ice, spec.stable_margin).values == root["stable_ground"].values).all())
    if not same_ground:
        have = {}
        notes.append("note: the cube's NDSI climatology moved the stable ground with the new periods: every pair "
                     "recomputed (flow --outline keeps updates incremental)")
    elif "pixel_error_x" not in stored.data_vars:
        have = {}
        notes.append("note: this store predates per-pair pixel errors: every pair recomputed once")
    kept = [n for n, k in enumerate(want) if k in have]
    new = [n for n, k in enumerate(want) if k not in have]
    dropped = len(stored["mid_date"]) - len(kept) if have else len(stored["mid_date"])
    if not new and not dropped:
        return FlowUpdate(velocity_url, cube_url, len(kept), 0, 0, True, tuple(notes))
    if not want:
        raise GlacierflowError(f"no {spec.pairs} pairs among the cube's acquisitions; nothing to update")
    ref = open_reference(spec.reference, storage_options) if spec.reference else None
    parts = [_stored_pairs(stored, [have[want[n]] for n in kept])] if kept else []
    if new:
        fresh = velocity(cube, spec, guides=guides, ice_mask=ice, reference=ref, only_pairs=[selected[n] for n in new])
        parts.append(fresh[[*(_WORKING[k] for k in _WORKING)]].reset_coords(["spatial_ref"], drop=True)
                     if "spatial_ref" in fresh.coords else fresh[[*(_WORKING[k] for k in _WORKING)]])
    order = np.argsort(np.array(kept + new))  # the pairs in select_pairs' order, as a fresh flow has them
    ds = _recompose(xr.concat(parts, "time", coords="different", compat="equals").isel(time=order), cube, ice,
                    spec, np.asarray(selected))
    ds.attrs.update({k: v for k, v in root.attrs.items() if k in ("flow_spec", "tracked")})
    write_velocity(ds, velocity_url, overwrite=True, source=cube_url, storage_options=storage_options,
                   cube_specs=cube_specs(cube) if "cube_spec" in cube.attrs else None)
    return FlowUpdate(velocity_url, cube_url, len(kept), len(new), dropped, False, tuple(notes),
                      summarise(velocity_url, storage_options))


def _recompose(pairs: xr.Dataset, cube: xr.Dataset, ice: xr.DataArray, spec: FlowSpec,
               scenes: np.ndarray) -> xr.Dataset:
    """The per-pair dataset with the composite recomputed as :func:`~glacierflow.motion.velocity.velocity` does."""
    pairs = pairs.assign_coords(y=cube["y"], x=cube["x"])
    if "spatial_ref" in cube.coords:
        pairs = pairs.assign_coords(spatial_ref=cube["spatial_ref"])
    comp = composite(pairs.assign(error_u=pairs["pixel_error_x"], error_v=pairs["pixel_error_y"]), scenes=scenes)
    stable = stable_ground(ice, spec.stable_margin)
    comp["stable_ground"] = stable.assign_coords(y=cube["y"], x=cube["x"]).reset_coords(drop=True)
    s2 = window_variance(spec)  # as velocity() does
    comp["speed_error"] = with_smoothing(comp["speed_error"], comp["u_composite"], comp["v_composite"], s2)
    comp["u_error"] = with_smoothing(comp["u_error"], comp["u_composite"], None, s2)
    comp["v_error"] = with_smoothing(comp["v_error"], comp["v_composite"], None, s2)
    out = pairs.assign(comp)
    for name in ("time_start", "time_end"):
        out[name].encoding.update(units="microseconds since 1970-01-01", dtype="int64")
    out["time"].encoding.update(units="seconds since 1970-01-01", dtype="int64")
    return out
