"""Predicted movement: flow between a forecast store's predicted NDSI periods, next to the true frames' flow.

``glacierflow flow FORECAST --method farneback --out STORE`` on a forecast store (``predict``'s output,
recognised by its ``lead`` variable) tracks the predicted NDSI frames the paper's way (Farnebäck on NDSI
periods, default pairs ``consecutive``: lead 1 -> 2, 2 -> 3, ...), with :func:`glacierflow.motion.velocity.velocity`.
Where the target periods lie in the source cube it also tracks the cube's **true** frames of the same
periods, with the same pairs, Δt, ice mask and stable ground, so the two differ only by the frames.

Δt: the period starts (the forecast store has no ``time_mean``: a forecast is of period means, not of
acquisitions); the true frames get the same Δt, so the comparison is one of displacement. The ice mask (and
from it the stable ground) is the source cube's NDSI climatology over all its periods (or ``--outline``),
the forecast's own few frames otherwise.

The velocity store has the contract's per-pair (group ``pairs``) and composite (root) variables of the
predicted flow; ``lead_start``, ``lead_end`` per pair; and, with the truth, ``vx_true``, ``vy_true``,
``v_true`` per pair and for the composite, ``ice`` (the mask compared on) and the comparison on the ice:
``speed_diff_median`` (median |speed - speed_true|), ``direction_diff_median`` (median angle between the
two velocities where the true speed exceeds twice the true pair's error), ``speed_median``,
``speed_true_median`` per pair and the same four for the composites (``composite_...``).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from glacierflow.errors import GlacierflowError
from glacierflow.motion import velocity as flow
from glacierflow.specs import FlowSpec
from glacierflow.storage import store

STATS = ("speed_diff_median", "direction_diff_median", "speed_median", "speed_true_median")
_STAT_DOC = {
    "speed_diff_median": ("m yr-1", "median |predicted - true-frame speed| on the ice"),
    "direction_diff_median": ("degree", "median angle between predicted and true-frame velocity on moving ice"),
    "speed_median": ("m yr-1", "median predicted-frame speed on the ice"),
    "speed_true_median": ("m yr-1", "median true-frame speed on the ice"),
}


def is_forecast_store(ds: xr.Dataset) -> bool:
    """Whether ``ds`` is a forecast store (``predict``): NDSI per target period with a ``lead`` per period."""
    return "ndsi" in ds and "lead" in ds.variables and ds["lead"].dims == ("time",)


def is_forecast_url(url: str, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether ``url`` is an existing forecast store (the CLI's ``flow`` branches on it)."""
    if not store.exists(url, storage_options):
        return False
    return is_forecast_store(store.open_store(url, storage_options))


def _stats_block(u: np.ndarray, v: np.ndarray, ut: np.ndarray, vt: np.ndarray, ice: np.ndarray,
                 err: np.ndarray) -> tuple[np.ndarray, ...]:
    """The four comparison medians over the last two axes (pixels), per leading index.

    ``err`` (the true flow's 1-sigma error) is per leading index (a pair's ``pair_error``) or per pixel (the
    composite's ``speed_error``); direction is compared where the true speed exceeds twice it (everywhere on
    the ice where it is unknown).
    """
    lead, pix = u.shape[:-2], u.shape[-2:]
    flat = [np.asarray(a, np.float64).reshape(-1, *pix) for a in (u, v, ut, vt)]
    e = np.asarray(err, np.float64)
    e = (np.broadcast_to(e, u.shape) if e.shape[-2:] == pix else
         np.broadcast_to(e.reshape(*e.shape, 1, 1), u.shape)).reshape(-1, *pix)
    out = np.full((4, flat[0].shape[0]), np.nan, np.float32)
    for k in range(flat[0].shape[0]):
        a, b, at, bt = (f[k] for f in flat)
        ok = np.asarray(ice, bool) & np.isfinite(a) & np.isfinite(b) & np.isfinite(at) & np.isfinite(bt)
        if not ok.any():
            continue
        sp, st = np.hypot(a, b), np.hypot(at, bt)
        moving = ok & np.where(np.isfinite(e[k]), st > 2 * e[k], True)
        angle = np.degrees(np.abs(np.angle((a + 1j * b) * np.conj(at + 1j * bt))))
        out[:, k] = (np.median(np.abs(sp - st)[ok]), np.median(angle[moving]) if moving.any() else np.nan,
                     np.median(sp[ok]), np.median(st[ok]))
    return tuple(o.reshape(lead) for o in out)


def compare(pred: xr.Dataset, truth: xr.Dataset, ice: xr.DataArray) -> dict[str, xr.DataArray]:
    """Lazy comparison of two velocity datasets on the same pairs: per pair and for the composites."""
    out = {}
    ice = ice.reset_coords(drop=True).astype(bool)
    for prefix, (u, v, err) in {"": ("u", "v", "pair_error"),
                                 "composite_": ("u_composite", "v_composite", "speed_error")}.items():
        res = xr.apply_ufunc(
            _stats_block, pred[u], pred[v], truth[u], truth[v], ice, truth[err],
            input_core_dims=[["y", "x"]] * 5 + [[] if prefix == "" else ["y", "x"]], output_core_dims=[[]] * 4,
            dask="parallelized", output_dtypes=[np.float32] * 4, dask_gufunc_kwargs={"allow_rechunk": True},
        )
        for name, r in zip(STATS, res, strict=True):
            units, doc = _STAT_DOC[name]
            out[prefix + name] = r.astype(np.float32).assign_attrs(
                units=units, long_name=doc + (" (composites)" if prefix else ""))
    return out


def _true_frames(fc: xr.Dataset, cube: xr.Dataset) -> tuple[xr.Dataset, np.ndarray] | None:
    """The cube's NDSI at the forecast's target periods on the forecast's grid, and which were interpolated."""
    times = pd.DatetimeIndex(fc["time"].values)
    have = pd.DatetimeIndex(cube["time"].values)
    if not times.isin(have).all():
        return None
    if cube.sizes["y"] != fc.sizes["y"] or cube.sizes["x"] != fc.sizes["x"] or not (
            np.allclose(cube["x"].values, fc["x"].values) and np.allclose(cube["y"].values, fc["y"].values)):
        raise GlacierflowError("the forecast store and its source cube have different grids; pass the cube it "
                               "was predicted from")
    nd = cube["ndsi"].sel(time=times).assign_coords(y=fc["y"].values, x=fc["x"].values)
    ds = xr.Dataset({"ndsi": nd.reset_coords(drop=True)}, coords={"spatial_ref": fc["spatial_ref"]})
    interp = (np.asarray(cube["interpolated"].sel(time=times).values, bool) if "interpolated" in cube
              else np.zeros(len(times), bool))
    return ds, interp


def forecast_velocity(fc: xr.Dataset, spec: FlowSpec, cube: xr.Dataset | None = None,
                      ice_mask: xr.DataArray | None = None) -> xr.Dataset:
    """Lazy velocity dataset of a forecast store's frames, with the true frames' flow where ``cube`` has them."""
    spec = spec.replace(images="ndsi")
    frames = xr.Dataset({"ndsi": fc["ndsi"]}, coords={"spatial_ref": fc["spatial_ref"]})
    ice = ice_mask if ice_mask is not None else flow.ice_from_climatology(cube if cube is not None else fc, spec)
    pred = flow.velocity(frames, spec, ice_mask=ice)
    lead = pd.Series(np.asarray(fc["lead"].values), index=pd.DatetimeIndex(fc["time"].values))
    pred = pred.assign_coords({f"lead_{end}": ("time", lead.loc[pd.DatetimeIndex(pred[f"time_{end}"].values)].values)
                               for end in ("start", "end")})
    pred.attrs.update(tracked="forecast ndsi", dt_from="period starts (a forecast store has no time_mean); "
                      "the true frames use the same", model=str(fc.attrs.get("model", "")),
                      last_input=str(fc.attrs.get("last_input", "")))
    got = _true_frames(fc, cube) if cube is not None else None
    if got is None:
        pred.attrs["truth"] = "none: the target periods are not all in the cube"
        return pred
    truth = flow.velocity(got[0], spec, ice_mask=ice)
    where = pd.DatetimeIndex(fc["time"].values)
    interp = got[1]
    bad = [bool(interp[where.get_loc(a)] or interp[where.get_loc(b)])
           for a, b in zip(pd.DatetimeIndex(pred["time_start"].values), pd.DatetimeIndex(pred["time_end"].values),
                           strict=True)]
    extra = {f"{k}_true": truth[k].assign_attrs(long_name=truth[k].attrs["long_name"] + " (true frames)")
             for k in ("u", "v", "speed", "u_composite", "v_composite", "speed_composite")}
    ice_var = ice.reset_coords(drop=True).astype(bool).assign_attrs(long_name="ice the comparison is made on")
    out = pred.assign(extra).assign(compare(pred, truth, ice)).assign(ice=ice_var)
    out = out.assign_coords(truth_interpolated=("time", np.array(bad)))
    out.attrs["truth"] = "the source cube's ndsi at the same periods, same pairs, Δt, ice and stable ground"
    return out


def ndsi_store_flow(forecast_url: str, out_url: str, spec: FlowSpec | None = None, *, cube_url: str | None = None,
                    overwrite: bool = False, storage_options: dict[str, Any] | None = None,
                    ice_mask: str | None = None) -> dict[str, Any]:
    """Flow of a forecast store's predicted frames (and of the true frames) -> velocity store; a summary.

    Parameters
    ----------
    forecast_url
        Forecast store (``glacierflow predict``).
    out_url
        Velocity store to write (safe write).
    spec
        Flow parameters (``images`` is always ``ndsi``); default Farnebäck, ``consecutive`` pairs.
    cube_url
        Cube with the true frames (default: the forecast's ``source_cube``); none there: no comparison.
    overwrite, storage_options, ice_mask
        As :func:`glacierflow.motion.velocity.run_flow`.

    Returns
    -------
    dict
        :class:`glacierflow.motion.velocity.FlowSummary`'s fields, and ``comparison``: the ``composite_*`` medians and
        the per-pair ones (lists), empty without the truth.
    """
    spec = spec or FlowSpec(method="farneback", pairs="consecutive")
    if spec.images == "guides":
        raise GlacierflowError(f"{forecast_url} is a forecast store: it has no guides, flow tracks its NDSI "
                               "periods; leave out --images or pass --images ndsi")
    if not overwrite and store.exists(out_url, storage_options):
        raise GlacierflowError(f"store {out_url} already exists; pass --overwrite to replace it")
    fc = store.open_store(forecast_url, storage_options, require=("ndsi", "lead"))
    truth_url = cube_url or str(fc.attrs.get("source_cube", ""))
    cube = store.open_store(truth_url, storage_options, require=("ndsi",)) if truth_url and store.exists(
        truth_url, storage_options) else None
    ice = flow.read_ice_mask(ice_mask, fc) if ice_mask else None
    ds = forecast_velocity(fc, spec, cube, ice)
    ds.attrs["truth_cube"] = truth_url if "speed_true" in ds else ""
    flow.write_velocity(ds, out_url, overwrite=overwrite, source=forecast_url, storage_options=storage_options)
    summary = flow.summarise(out_url, storage_options)
    written = flow.open_velocity(out_url, storage_options)
    pairs = flow.open_velocity(out_url, storage_options, group="pairs")
    comp: dict[str, Any] = {}
    if "composite_speed_diff_median" in written:
        comp = {k: float(written[f"composite_{k}"].values) for k in STATS}
        comp.update({f"per_pair_{k}": [float(x) for x in pairs[k].values] for k in STATS})
    return {**asdict(summary), "comparison": comp, "truth_cube": ds.attrs["truth_cube"]}


def format_comparison(s: dict[str, Any]) -> str:
    """One line: predicted vs true-frame movement on the ice (composites), or why there is none."""
    c = s.get("comparison") or {}
    if not c:
        return "no true frames for these periods in the cube: predicted movement only"
    return (f"predicted vs true frames (composite, on the ice): median |speed diff| "
            f"{c['speed_diff_median']:.1f} m/yr (true median speed {c['speed_true_median']:.1f}, predicted "
            f"{c['speed_median']:.1f}), median direction difference {c['direction_diff_median']:.0f} deg")
