"""Figures people would rather look at than read: every ``plot_*`` function returns a matplotlib Figure.

Every function draws on its own :class:`matplotlib.figure.Figure` with the Agg canvas (no pyplot
state, no display needed) and a fixed size and dpi, so the PNG's pixel size is known in advance; a notebook
shows the returned Figure inline, :func:`save_figure` writes it (what the CLI's ``plot`` commands do). The
notebook API exposes them at the top level (``gf.plot_flow(velocity)``). Plot functions compute what they
draw (one pair, one frame); they are not lazy stages. Stores are given as a path or fsspec URL (with
``storage_options``) or as the Dataset (DataTree for velocity) the API returns.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from glacierflow.choices import season_length
from glacierflow.errors import GlacierflowError

FLOW_FIGSIZE = (12.0, 5.5)
FLOW_DPI = 100


class ShownFigure(Figure):
    """A matplotlib Figure that a notebook shows inline as a PNG, without pyplot (IPython calls ``_repr_png_``).

    Drawn on the Agg canvas like any Figure here; where pyplot's inline backend is active its formatter draws it
    instead (the same PNG).
    """

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png", dpi="figure")
        return buf.getvalue()


Store = xr.Dataset | str | os.PathLike
"""A store given to a plot function: its path or fsspec URL, or the opened Dataset."""


def _open(store: Store, what: str, storage_options: dict[str, Any] | None = None) -> xr.Dataset:
    if isinstance(store, xr.Dataset):
        return store
    from glacierflow.storage import store as stores

    url = os.fspath(store)
    if not stores.exists(url, storage_options):
        raise GlacierflowError(f"{what} store {url!r} not found; check the path")
    return stores.open_store(url, storage_options)


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG at its own size and dpi (parent directories created).

    Parameters
    ----------
    fig
        A Figure from one of the ``plot_*`` functions.
    path
        The PNG file.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi="figure", format="png")
    return out


def _extent_km(ds: xr.Dataset) -> tuple[float, float, float, float]:
    """Image extent (left, right, bottom, top) in km from pixel-centre coordinates."""
    x = np.asarray(ds["x"].values, dtype=np.float64)
    y = np.asarray(ds["y"].values, dtype=np.float64)
    hx = abs(x[1] - x[0]) / 2 if x.size > 1 else 15.0
    hy = abs(y[1] - y[0]) / 2 if y.size > 1 else 15.0
    return (
        (x.min() - hx) / 1000, (x.max() + hx) / 1000,
        (y.min() - hy) / 1000, (y.max() + hy) / 1000,
    )


def _nice(value: float) -> float:
    """The largest round number (1, 2, 5 x 10^k) not above ``value``, for the arrow key."""
    if not np.isfinite(value) or value <= 0:
        return 1.0
    exp = np.floor(np.log10(value))
    for m in (5.0, 2.0, 1.0):
        if m * 10**exp <= value:
            return float(m * 10**exp)
    return float(10**exp)


def _velocity(velocity_store: xr.DataTree | str | os.PathLike,
              storage_options: dict[str, Any] | None = None) -> tuple[xr.Dataset, xr.Dataset]:
    """The velocity store's root (composite) and ``pairs`` group (ITS_LIVE layout); one line for an old store."""
    if isinstance(velocity_store, xr.DataTree):  # gf.velocity()'s result: the composite and its pairs group
        if "pairs" not in velocity_store.children:
            raise GlacierflowError("the velocity DataTree has no 'pairs' group; pass gf.velocity()'s result")
        return velocity_store.to_dataset(), velocity_store["pairs"].to_dataset()
    if isinstance(velocity_store, xr.Dataset):
        raise GlacierflowError("pass the velocity store's path or URL, or gf.velocity()'s DataTree (the root and "
                               "the pairs group are read)")
    from glacierflow.motion.velocity import open_velocity

    url = os.fspath(velocity_store)
    return open_velocity(url, storage_options), open_velocity(url, storage_options, group="pairs")


def _ice_outline(root: xr.Dataset) -> np.ndarray | None:
    """The ice mask the flow used (its ``--outline`` file), when that file is still there."""
    path = json.loads(root.attrs.get("flow_spec", "{}")).get("outline", "")
    if not path or not os.path.exists(path):
        return None
    from glacierflow.motion.masks import read_ice_mask

    return np.asarray(read_ice_mask(path, root).values, bool)


def plot_flow(
    velocity_store: xr.DataTree | str | os.PathLike,
    cube: Store | None = None,
    *,
    time_index: int | None = None,
    step: int = 40,
    storage_options: dict[str, Any] | None = None,
) -> Figure:
    """Two-panel figure: the composite (speed with arrows over the outline, error map) or one pair.

    With ``time_index=None`` the composite is drawn: ``v`` with the composite's arrows and the ice
    outline (the flow's ``--outline``), and ``v_error`` beside it. A pair: NDSI (or speed) with its arrows,
    and its speed.

    Parameters
    ----------
    velocity_store
        Velocity store path or URL (``flow``'s output: composite at the root, ``pairs`` group), or the
        DataTree of :func:`glacierflow.api.velocity`.
    cube
        Cube store URL/path or dataset for a pair's NDSI background. ``None``: the cube named in the
        velocity store's ``source_cube`` attribute, if it exists; otherwise the arrows go over the speed.
    time_index
        Which pair (position along ``mid_date``); ``None``: the composite.
    step
        Arrow spacing in pixels (the paper: every 40 px = 1 200 m).
    storage_options
        fsspec options for cloud stores.

    Returns
    -------
    matplotlib.figure.Figure
        Saved by :func:`save_figure` it is ``FLOW_FIGSIZE * FLOW_DPI`` pixels.
    """
    root, pairs = _velocity(velocity_store, storage_options)
    n = pairs.sizes.get("mid_date", 0)
    if time_index is not None and not -n <= time_index < n:
        raise GlacierflowError(f"time_index {time_index} out of range; the velocity store has {n} pair(s)")
    if step < 1:
        raise GlacierflowError(f"step {step} must be >= 1 pixel")
    if time_index is None:
        return _plot_composite(root, pairs, step)
    pair = pairs.isel(mid_date=time_index)
    start = pd.Timestamp(pair["acquisition_date_img1"].values)
    end = pd.Timestamp(pair["acquisition_date_img2"].values)
    u, v, speed = (np.asarray(pair[k].values, dtype=np.float32) for k in ("vx", "vy", "v"))
    if cube is None:
        source = root.attrs.get("source_cube", "")
        if source and ("://" in source or os.path.exists(source)):
            cube = source
    background = None
    if cube is not None:
        cube_ds = _open(cube, "cube", storage_options)
        if "ndsi" not in cube_ds:
            raise GlacierflowError("cube has no 'ndsi' variable; pass a glacierflow cube store")
        background = np.asarray(cube_ds["ndsi"].sel(time=start, method="nearest").values, dtype=np.float32)
    extent = _extent_km(root)
    fig = ShownFigure(figsize=FLOW_FIGSIZE, dpi=FLOW_DPI)
    FigureCanvasAgg(fig)
    ax_q, ax_s = fig.subplots(1, 2, sharex=True, sharey=True)
    finite = speed[np.isfinite(speed)]
    vmax = float(np.percentile(finite, 99)) if finite.size else 1.0
    vmax = vmax if vmax > 0 else 1.0
    if background is not None:
        im = ax_q.imshow(background, extent=extent, origin="upper", cmap="Blues_r", vmin=0, vmax=1,
                         interpolation="nearest")
        fig.colorbar(im, ax=ax_q, label="NDSI (snow mask)", shrink=0.85)
        ax_q.set_title(f"NDSI {start:%Y-%m-%d} with velocity arrows")
    else:
        ax_q.imshow(speed, extent=extent, origin="upper", cmap="Greys", vmin=0, vmax=vmax, interpolation="nearest")
        ax_q.set_title("speed (grey) with velocity arrows")
    _quivers(ax_q, root, u, v, step)
    im_s = ax_s.imshow(speed, extent=extent, origin="upper", cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
    fig.colorbar(im_s, ax=ax_s, label="speed (m/yr)", shrink=0.85)
    ax_s.set_title("speed")
    _axes(ax_q, ax_s)
    method = json.loads(root.attrs.get("flow_spec", "{}")).get("method", "ncc")
    fig.suptitle(f"{method} velocity {start:%Y-%m-%d} → {end:%Y-%m-%d} ({(end - start).days} days)")
    return fig


def _plot_composite(root: xr.Dataset, pairs: xr.Dataset, step: int) -> Figure:
    """The composite: speed with arrows over the ice outline, and the per-pixel 1-sigma speed error."""
    u, v, speed, err = (np.asarray(root[k].values, dtype=np.float32) for k in ("vx", "vy", "v", "v_error"))
    extent = _extent_km(root)
    fig = ShownFigure(figsize=FLOW_FIGSIZE, dpi=FLOW_DPI)
    FigureCanvasAgg(fig)
    ax_q, ax_s = fig.subplots(1, 2, sharex=True, sharey=True)
    panels = [(ax_q, speed, "magma", "speed v (m/yr)", "composite speed with velocity arrows"),
              (ax_s, err, "viridis", "1-sigma speed error v_error (m/yr)", "speed error")]
    for ax, data, cmap, label, title in panels:
        finite = data[np.isfinite(data)]
        top = float(np.percentile(finite, 99)) if finite.size else 1.0
        im = ax.imshow(data, extent=extent, origin="upper", cmap=cmap, vmin=0, vmax=top if top > 0 else 1.0,
                       interpolation="nearest")
        fig.colorbar(im, ax=ax, label=label, shrink=0.85)
        ax.set_title(title)
    ice = _ice_outline(root)
    if ice is not None:
        x_km, y_km = np.asarray(root["x"].values) / 1000, np.asarray(root["y"].values) / 1000
        for ax in (ax_q, ax_s):
            ax.contour(x_km, y_km, ice.astype(np.float32), levels=[0.5], colors="cyan", linewidths=0.8)
    _quivers(ax_q, root, u, v, step)
    _axes(ax_q, ax_s)
    start = pd.Timestamp(pairs["acquisition_date_img1"].values.min())
    end = pd.Timestamp(pairs["acquisition_date_img2"].values.max())
    fig.suptitle(f"composite of {pairs.sizes.get('mid_date', 0)} pairs, {start:%Y-%m-%d} → {end:%Y-%m-%d}"
                 + (" (cyan: ice outline)" if ice is not None else ""))
    return fig


def plot_flow_at(velocity_store: xr.DataTree | str | os.PathLike, x: float, y: float, *,
                 storage_options: dict[str, Any] | None = None) -> Figure:
    """A point's velocity time series, as ITS_LIVE users plot it: each pair's ``v`` at its ``mid_date``.

    Horizontal bars span each pair's two acquisitions, vertical ones its ``pair_error``; the composite
    ``v`` +- ``v_error`` is the shaded band. ``x``, ``y`` are in the store's CRS (metres); the nearest pixel.
    ``velocity_store`` and ``storage_options`` as :func:`plot_flow`; returns the Figure.
    """
    root, pairs = _velocity(velocity_store, storage_options)
    xs, ys = root["x"].values, root["y"].values
    if not (min(xs) - 30 <= x <= max(xs) + 30 and min(ys) - 30 <= y <= max(ys) + 30):
        raise GlacierflowError(f"point ({x:.0f}, {y:.0f}) is outside the store (x {min(xs):.0f}..{max(xs):.0f}, "
                               f"y {min(ys):.0f}..{max(ys):.0f}); give X Y in its CRS (metres)")
    at = pairs.sel(x=x, y=y, method="nearest")
    mid = pd.DatetimeIndex(at["mid_date"].values)
    t1 = pd.DatetimeIndex(at["acquisition_date_img1"].values)
    t2 = pd.DatetimeIndex(at["acquisition_date_img2"].values)
    v, e = np.asarray(at["v"].values, np.float64), np.asarray(at["pair_error"].values, np.float64)
    comp = root.sel(x=x, y=y, method="nearest")
    fig = ShownFigure(figsize=(9.0, 4.0), dpi=FLOW_DPI)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ok = np.isfinite(v)
    ax.errorbar(mid[ok], v[ok], yerr=np.nan_to_num(e[ok]), xerr=[(mid - t1)[ok], (t2 - mid)[ok]], fmt="o",
                ms=3, color="crimson", ecolor="0.6", elinewidth=0.7, label="pairs")
    cv, ce = float(comp["v"].values), float(comp["v_error"].values)
    if np.isfinite(cv):
        ax.axhspan(cv - ce, cv + ce, color="steelblue", alpha=0.25, label=f"composite {cv:.1f} ± {ce:.1f} m/yr")
    ax.set_ylabel("speed v (m/yr)")
    ax.set_title(f"velocity at x={float(comp['x']):.0f}, y={float(comp['y']):.0f} ({int(ok.sum())} valid pairs)")
    ax.legend(loc="upper right", fontsize=8)
    return fig


def _axes(ax_q: Any, ax_s: Any) -> None:
    for ax in (ax_q, ax_s):
        ax.set_xlabel("easting (km, UTM)")
        ax.set_aspect("equal")
    ax_q.set_ylabel("northing (km, UTM)")


def _quivers(ax_q: Any, vel: xr.Dataset, u: np.ndarray, v: np.ndarray, step: int) -> None:
    """Velocity arrows every ``step`` pixels; the 99th-percentile arrow spans 0.9 spacings."""
    x_km = np.asarray(vel["x"].values, dtype=np.float64) / 1000
    y_km = np.asarray(vel["y"].values, dtype=np.float64) / 1000
    off = step // 2
    rows = np.arange(off, len(y_km), step)
    cols = np.arange(off, len(x_km), step)
    qu = u[np.ix_(rows, cols)]
    qv = v[np.ix_(rows, cols)]
    ok = np.isfinite(qu) & np.isfinite(qv)
    gx, gy = np.meshgrid(x_km[cols], y_km[rows])
    if ok.any():
        top = float(np.percentile(np.hypot(qu[ok], qv[ok]), 99))
        top = top if top > 0 else 1.0
        # the 99th-percentile arrow spans 0.9 arrow spacings; the key shows a round speed
        spacing_km = step * abs(x_km[1] - x_km[0]) if len(x_km) > 1 else 1.0
        q = ax_q.quiver(gx[ok], gy[ok], qu[ok], qv[ok], color="crimson", angles="xy",
                        scale_units="xy", scale=top / (0.9 * spacing_km), width=0.005)
        ref = _nice(top)
        ax_q.quiverkey(q, 0.72, 0.04, ref, f"{ref:g} m/yr", labelpos="E", coordinates="axes",
                       color="crimson", labelcolor="black",
                       fontproperties={"size": 9})


# ------------------------------------------------------------------------------------------------ the cube
CUBE_DPI = 80
FORECAST_DPI = 80
RUN_FIGSIZE = (8.0, 4.5)
RUN_DPI = 100


def _render(fig: Figure) -> np.ndarray:
    """The figure drawn by Agg as an RGB uint8 array."""
    canvas = fig.canvas
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _km_axes(ax: object, left: bool = True) -> None:
    ax.set_xlabel("easting (km, UTM)")  # type: ignore[attr-defined]
    if left:
        ax.set_ylabel("northing (km, UTM)")  # type: ignore[attr-defined]
    ax.set_aspect("equal")  # type: ignore[attr-defined]


def plot_cube(cube: Store, time_index: int = -1, *, storage_options: dict[str, Any] | None = None) -> Figure:
    """One period of the cube's snow-mask NDSI, its date, scene count and gap-filling in the title.

    Parameters
    ----------
    cube
        Cube store URL/path or dataset (``ndsi``; ``n_scenes`` and ``interpolated`` when present).
    time_index
        Which period (position along ``time``; negative: from the end).
    storage_options
        fsspec options for a cloud store.

    Returns
    -------
    matplotlib.figure.Figure
        ``CUBE_DPI`` dpi; reads that one period.
    """
    ds = _open(cube, "cube", storage_options)
    if "ndsi" not in ds:
        raise GlacierflowError("cube has no 'ndsi' variable; pass a glacierflow cube store")
    n = ds.sizes["time"]
    if n == 0:
        raise GlacierflowError("cube has no periods to draw")
    if not -n <= time_index < n:
        raise GlacierflowError(f"time_index {time_index} out of range; the cube has {n} period(s)")
    i = time_index % n
    extent = _extent_km(ds)
    aspect = (extent[3] - extent[2]) / max(extent[1] - extent[0], 1e-9)
    period = ds.isel(time=i)
    fig = ShownFigure(figsize=(6.4, 0.9 + 5.0 * min(max(aspect, 0.4), 2.0)), dpi=CUBE_DPI)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    im = ax.imshow(np.asarray(period["ndsi"].values, np.float32), extent=extent, origin="upper",
                   cmap="Blues_r", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=ax, label="snow-mask NDSI (1)", shrink=0.85)
    note = []
    if "n_scenes" in period:
        note.append(f"{int(period['n_scenes'])} scene(s)")
    if "interpolated" in period and bool(period["interpolated"]):
        note.append("interpolated")
    when = pd.Timestamp(period["time"].values)
    ax.set_title(f"period {when:%Y-%m-%d}  ({i + 1}/{n})" + (f"  {', '.join(note)}" if note else ""))
    _km_axes(ax)
    fig.tight_layout()
    return fig


def save_cube_gif(
    cube: Store,
    out_gif: str | os.PathLike,
    *,
    seconds_per_frame: float = 0.6,
    max_frames: int = 120,
    storage_options: dict[str, Any] | None = None,
) -> Path:
    """Animated GIF of the cube's snow-mask NDSI: :func:`plot_cube` of each period, one frame each.

    An animation is a file, not a Figure: this one writes it (``glacierflow plot cube``).

    Parameters
    ----------
    cube
        Cube store URL/path or dataset.
    out_gif
        Output GIF path.
    seconds_per_frame
        Display time of each frame.
    max_frames
        At most this many periods (evenly spaced) are drawn.
    storage_options
        fsspec options for a cloud store.

    Returns
    -------
    pathlib.Path
        ``out_gif``. Frames are read one period at a time.
    """
    from PIL import Image

    ds = _open(cube, "cube", storage_options)
    n = ds.sizes.get("time", 0)
    if n == 0:
        raise GlacierflowError("cube has no periods to animate")
    index = np.unique(np.linspace(0, n - 1, min(n, max_frames)).round().astype(int))
    frames = [Image.fromarray(_render(plot_cube(ds, int(i)))) for i in index]
    out = Path(out_gif)
    out.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(out, save_all=True, append_images=frames[1:], duration=int(seconds_per_frame * 1000), loop=0,
                   format="GIF")
    return out


# --------------------------------------------------------------------------------------------- the forecast
def _error_limit(errors: list[np.ndarray]) -> float:
    finite = np.concatenate([np.abs(e[np.isfinite(e)]).ravel() for e in errors]) if errors else np.array([])
    top = float(np.percentile(finite, 99)) if finite.size else 1.0
    return top if top > 0 else 1.0


def plot_forecast(
    forecast: Store,
    cube: Store | None = None,
    *,
    storage_options: dict[str, Any] | None = None,
) -> Figure:
    """Forecast vs truth per lead: truth, forecast, its error, and the errors of persistence and seasonal.

    Parameters
    ----------
    forecast
        Forecast store (``glacierflow predict``) URL/path or dataset.
    cube
        Cube store for truth and baselines; ``None``: the forecast's ``source_cube``.
    storage_options
        fsspec options for cloud stores.

    Returns
    -------
    matplotlib.figure.Figure
        One row per lead; where a target lies beyond the cube its row shows the forecast only.
    """
    from glacierflow.forecast.predict import baseline_frames

    fc = _open(forecast, "forecast", storage_options)
    cube_ds = _open(cube if cube is not None else fc.attrs.get("source_cube", ""), "cube", storage_options)
    times = pd.DatetimeIndex(cube_ds["time"].values)
    last = int(times.get_loc(pd.Timestamp(fc.attrs["last_input"])))
    t_out = fc.sizes["time"]
    season = season_length(str(fc.attrs.get("period", "3MS")))
    base = baseline_frames(cube_ds["ndsi"], last, t_out, season)
    cols = ["truth", "forecast", "forecast - truth", *[f"{name} - truth" for name in base]]
    fig = ShownFigure(figsize=(3.3 * len(cols), 3.0 * t_out + 0.8), dpi=FORECAST_DPI)
    FigureCanvasAgg(fig)
    axes = np.atleast_2d(fig.subplots(t_out, len(cols), sharex=True, sharey=True))
    for h in range(t_out):
        target = pd.Timestamp(fc["time"].values[h])
        pred = np.asarray(fc["ndsi"].isel(time=h).values, np.float32)
        truth = np.asarray(cube_ds["ndsi"].sel(time=target).values, np.float32) if target in times else None
        errs = [] if truth is None else [pred - truth, *[np.asarray(b.isel(time=h).values) - truth
                                                         for b in base.values()]]
        panels = [truth, pred, *errs] + [None] * (len(cols) - 2 - len(errs))
        _forecast_row(fig, axes[h], panels, cols, _extent_km(fc), _error_limit(errs), last_row=h == t_out - 1)
        axes[h, 0].set_ylabel(f"lead {h + 1}: {target:%Y-%m-%d}\nnorthing (km, UTM)")
    fig.suptitle(f"{fc.attrs.get('model', 'model')} forecast after {fc.attrs['last_input']} "
                 f"(inputs {', '.join(json_list(fc.attrs.get('input_periods', '[]')))})")
    fig.tight_layout()
    return fig


def _forecast_row(fig: Figure, axes: np.ndarray, panels: list[np.ndarray | None], titles: list[str],
                  extent: tuple[float, float, float, float], lim: float, last_row: bool) -> None:
    """One lead: NDSI panels (truth, forecast) then error panels on one symmetric scale."""
    for j, (ax, img) in enumerate(zip(axes, panels, strict=True)):
        if img is None:
            ax.text(0.5, 0.5, "target beyond the cube", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        is_error = j >= 2
        cmap, lo, hi = ("RdBu_r", -lim, lim) if is_error else ("Blues_r", 0.0, 1.0)
        im = ax.imshow(img, extent=extent, origin="upper", cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        fig.colorbar(im, ax=ax, label="error (NDSI, 1)" if is_error else "snow-mask NDSI (1)", shrink=0.8)
        ax.set_title(titles[j] + (f"\nMSE {np.nanmean(img ** 2):.4f} (all px)" if is_error else ""), fontsize=9)
        if last_row:
            ax.set_xlabel("easting (km, UTM)")


def plot_forecast_flow(velocity_store: xr.DataTree | str | os.PathLike, *, step: int = 40,
                       storage_options: dict[str, Any] | None = None) -> Figure:
    """Predicted movement next to the true frames' (``flow FORECAST``): composite speeds with arrows, difference.

    Panels: the composite of the flow between the predicted frames, the composite of the flow between the
    cube's true frames of the same periods (same pairs, same colour scale), and predicted - true speed.
    Arguments as :func:`plot_flow`; returns the Figure.
    """
    vel, pairs = _velocity(velocity_store, storage_options)
    if "v_true" not in vel:
        raise GlacierflowError("the velocity store has no true-frame flow; write it with `glacierflow flow "
                               "FORECAST` from a forecast whose target periods lie in its cube")
    get = {k: np.asarray(vel[k].values, np.float32) for k in ("vx", "vy", "v", "vx_true", "vy_true", "v_true")}
    both = np.concatenate([get["v"].ravel(), get["v_true"].ravel()])
    top = float(np.nanpercentile(both, 99)) if np.isfinite(both).any() else 1.0
    diff = get["v"] - get["v_true"]
    extent = _extent_km(vel)
    fig = ShownFigure(figsize=(17.0, 5.5), dpi=FLOW_DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3, sharex=True, sharey=True)
    c = {k: float(vel[f"composite_{k}"].values) for k in ("speed_diff_median", "direction_diff_median")}
    for ax, key, title in ((axes[0], "", "predicted frames"), (axes[1], "_true", "true frames, same periods")):
        im = ax.imshow(get[f"v{key}"], extent=extent, origin="upper", cmap="magma", vmin=0,
                       vmax=top if top > 0 else 1.0, interpolation="nearest")
        fig.colorbar(im, ax=ax, label="speed (m/yr)", shrink=0.85)
        _same_scale_quivers(ax, vel, get[f"vx{key}"], get[f"vy{key}"], step, top)
        ax.set_title(f"{title}: composite speed")
    lim = _error_limit([diff])
    im = axes[2].imshow(diff, extent=extent, origin="upper", cmap="RdBu_r", vmin=-lim, vmax=lim,
                        interpolation="nearest")
    fig.colorbar(im, ax=axes[2], label="predicted - true speed (m/yr)", shrink=0.85)
    axes[2].set_title(f"difference: median |speed diff| on ice {c['speed_diff_median']:.1f} m/yr,\n"
                      f"median direction difference {c['direction_diff_median']:.0f}°", fontsize=10)
    for k, ax in enumerate(axes):
        _km_axes(ax, left=k == 0)
    start = pd.Timestamp(pairs["acquisition_date_img1"].values.min())
    end = pd.Timestamp(pairs["acquisition_date_img2"].values.max())
    model, last = vel.attrs.get("model", "the model"), vel.attrs.get("last_input", "?")
    fig.suptitle(f"movement predicted by {model} (after {last}) vs the true frames: {pairs.sizes['mid_date']} pairs "
                 f"{start:%Y-%m-%d} → {end:%Y-%m-%d}, Δt from the "
                 "period starts")
    fig.tight_layout()
    return fig


def _same_scale_quivers(ax: Any, vel: xr.Dataset, u: np.ndarray, v: np.ndarray, step: int, top: float) -> None:
    """Arrows every ``step`` px on one scale for several panels: a ``top`` m/yr arrow spans 0.9 spacings."""
    x_km, y_km = (np.asarray(vel[k].values, np.float64) / 1000 for k in ("x", "y"))
    rows, cols = np.arange(step // 2, len(y_km), step), np.arange(step // 2, len(x_km), step)
    qu, qv = u[np.ix_(rows, cols)], v[np.ix_(rows, cols)]
    ok = np.isfinite(qu) & np.isfinite(qv)
    gx, gy = np.meshgrid(x_km[cols], y_km[rows])
    spacing_km = step * abs(x_km[1] - x_km[0]) if len(x_km) > 1 else 1.0
    top = top if top > 0 else 1.0
    q = ax.quiver(gx[ok], gy[ok], qu[ok], qv[ok], color="crimson", angles="xy", scale_units="xy",
                  scale=top / (0.9 * spacing_km), width=0.005)
    ref = _nice(top)
    ax.quiverkey(q, 0.72, 0.04, ref, f"{ref:g} m/yr", labelpos="E", coordinates="axes", color="crimson",
                 labelcolor="black", fontproperties={"size": 9})


def json_list(text: str) -> list[str]:
    """A JSON list attribute as a list of strings."""
    import json

    value = json.loads(text) if isinstance(text, str) else list(text)
    return [str(v) for v in value]


# ---------------------------------------------------------------------------------------------- the run
def plot_run(run_dir: str | os.PathLike) -> Figure:
    """Loss curves of a training run (``loss.csv``): train per step, validation per epoch, the best epoch.

    The best validation epoch is the early-stopping point (``best.pt``): marked with a star, and a dashed
    line where training stopped. ``run_dir`` is a run directory or the ``Run`` of ``gf.train``.
    """
    path = Path(run_dir) / "loss.csv"
    if not path.is_file():
        raise GlacierflowError(f"no loss.csv in {run_dir}; is it a run directory of 'glacierflow train'?")
    log = pd.read_csv(path)
    train = log.dropna(subset=["train_loss"])
    val = log.dropna(subset=["val_loss"])
    if train.empty and val.empty:
        raise GlacierflowError(f"{path} has no losses yet")
    fig = ShownFigure(figsize=RUN_FIGSIZE, dpi=RUN_DPI)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    if not train.empty:
        ax.plot(train["step"], train["train_loss"], color="tab:blue", alpha=0.35, lw=0.8, label="train (per step)")
        smooth = train["train_loss"].rolling(max(1, len(train) // 20), min_periods=1).mean()
        ax.plot(train["step"], smooth, color="tab:blue", lw=1.8, label="train (running mean)")
    if not val.empty:
        ax.plot(val["step"], val["val_loss"], "o-", color="tab:orange", lw=1.8, label="validation (per epoch)")
        best = val.loc[val["val_loss"].idxmin()]
        ax.plot([best["step"]], [best["val_loss"]], marker="*", ms=16, color="crimson", ls="none",
                label=f"best: epoch {int(best['epoch'])} (best.pt)")
        ax.axvline(float(val["step"].max()), color="grey", ls="--", lw=1, label="training stopped")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("masked MSE (NDSI²)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"training run {Path(run_dir).name}")
    fig.tight_layout()
    return fig
