"""Figures people would rather look at than read.

Every function draws on its own :class:`matplotlib.figure.Figure` with the Agg canvas (no pyplot
state, no display needed) and a fixed size and dpi, so the PNG's pixel size is known in advance.
Plot functions compute what they draw (one pair, one frame); they are not lazy stages.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from glacierflow.errors import GlacierflowError

FLOW_FIGSIZE = (12.0, 5.5)
FLOW_DPI = 100


def _open(store: xr.Dataset | str | os.PathLike, what: str) -> xr.Dataset:
    if isinstance(store, xr.Dataset):
        return store
    from glacierflow import store as stores

    url = os.fspath(store)
    if not stores.exists(url):
        raise GlacierflowError(f"{what} store {url!r} not found; check the path")
    return stores.open_store(url)


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


def plot_flow(
    velocity_store: xr.Dataset | str | os.PathLike,
    cube: xr.Dataset | str | os.PathLike | None,
    out_png: str | os.PathLike,
    time_index: int = 0,
    step: int = 40,
) -> Path:
    """Two-panel figure of one velocity pair: NDSI with arrows, and the speed map.

    Parameters
    ----------
    velocity_store
        Velocity store URL/path or dataset (``u``, ``v``, ``speed``, ``time_start``, ``time_end``).
    cube
        Cube store URL/path or dataset for the NDSI background (the pair's start period). ``None``:
        the cube named in the velocity store's ``source_cube`` attribute, if it exists; otherwise
        the arrows are drawn over the speed map.
    out_png
        Output PNG path.
    time_index
        Which pair (position along ``time``).
    step
        Arrow spacing in pixels (the paper: every 40 px = 1 200 m).

    Returns
    -------
    pathlib.Path
        ``out_png``. The image is ``FLOW_FIGSIZE * FLOW_DPI`` pixels.
    """
    vel = _open(velocity_store, "velocity")
    n = vel.sizes.get("time", 0)
    if not -n <= time_index < n:
        raise GlacierflowError(f"time_index {time_index} out of range; the velocity store has {n} pair(s)")
    if step < 1:
        raise GlacierflowError(f"step {step} must be >= 1 pixel")
    pair = vel.isel(time=time_index)
    start = pd.Timestamp(pair["time_start"].values)
    end = pd.Timestamp(pair["time_end"].values)
    u = np.asarray(pair["u"].values, dtype=np.float32)
    v = np.asarray(pair["v"].values, dtype=np.float32)
    speed = np.asarray(pair["speed"].values, dtype=np.float32)

    if cube is None:
        source = vel.attrs.get("source_cube", "")
        if source and ("://" in source or os.path.exists(source)):
            cube = source
    background = None
    if cube is not None:
        cube_ds = _open(cube, "cube")
        if "ndsi" not in cube_ds:
            raise GlacierflowError("cube has no 'ndsi' variable; pass a glacierflow cube store")
        frame = cube_ds["ndsi"].sel(time=start, method="nearest")
        background = np.asarray(frame.values, dtype=np.float32)

    extent = _extent_km(vel)
    fig = Figure(figsize=FLOW_FIGSIZE, dpi=FLOW_DPI)
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
        ax_q.imshow(speed, extent=extent, origin="upper", cmap="Greys", vmin=0, vmax=vmax,
                    interpolation="nearest")
        ax_q.set_title("speed (grey) with velocity arrows")

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

    im_s = ax_s.imshow(speed, extent=extent, origin="upper", cmap="magma", vmin=0, vmax=vmax,
                       interpolation="nearest")
    fig.colorbar(im_s, ax=ax_s, label="speed (m/yr)", shrink=0.85)
    ax_s.set_title("speed")
    for ax in (ax_q, ax_s):
        ax.set_xlabel("easting (km, UTM)")
        ax.set_aspect("equal")
    ax_q.set_ylabel("northing (km, UTM)")
    fig.suptitle(f"Farnebäck velocity {start:%Y-%m-%d} → {end:%Y-%m-%d} "
                 f"({(end - start).days} days)")
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=FLOW_DPI, format="png")
    return out
