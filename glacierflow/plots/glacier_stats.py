"""The ``stats`` figure: each glacier's snow/ice-covered area per period with its trend line and interval."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

#: at most this many glaciers get a panel (the table has them all)
MAX_PANELS = 12


def _trend_label(ds: xr.Dataset, k: int) -> str:
    slope = float(ds["snow_area_trend"].values[k])
    lo, hi = float(ds["snow_area_trend_low"].values[k]), float(ds["snow_area_trend_high"].values[k])
    if not math.isfinite(slope):
        return "trend: n/a (too few same-season periods)"
    ci = f" [{lo:+.3g}, {hi:+.3g}]" if math.isfinite(lo) else " (95% interval: too few years)"
    return f"trend {slope:+.3g} km²/yr{ci}"


def plot_glacier_stats(ds: xr.Dataset) -> Figure:
    """One panel per glacier (the first :data:`MAX_PANELS`): snow/ice area per period and its trend.

    Observed periods filled, interpolated hollow, the outline's area for scale, the seasonal Theil–Sen line.

    Parameters
    ----------
    ds
        :func:`glacierflow.monitor.stats.glacier_stats`'s dataset (computed).
    """
    n = min(ds.sizes["glacier"], MAX_PANELS)
    fig = Figure(figsize=(9.0, 2.6 * n + 0.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    times = pd.DatetimeIndex(ds["time"].values)
    interp = np.asarray(ds["interpolated"].values, bool)
    t = np.asarray(ds["decimal_year"].values, np.float64)  # the trend's time axis
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
    for k, ax in enumerate(axes):
        area = np.asarray(ds["snow_area_km2"].values[k], np.float64)
        ax.plot(times, area, color="0.6", lw=0.8, zorder=1)
        ax.scatter(times[~interp], area[~interp], s=18, color="tab:blue", label="observed period", zorder=2)
        if interp.any():
            ax.scatter(times[interp], area[interp], s=18, facecolor="none", edgecolor="tab:blue",
                       label="interpolated period", zorder=2)
        slope, icpt = float(ds["snow_area_trend"].values[k]), float(ds["trend_intercept"].values[k])
        if math.isfinite(slope):
            ax.plot(times, icpt + slope * t, color="tab:red", lw=1.5, label=_trend_label(ds, k), zorder=3)
        else:
            ax.plot([], [], color="tab:red", label=_trend_label(ds, k))
        ax.axhline(float(ds["outline_area_km2"].values[k]), color="k", ls=":", lw=0.8,
                   label=f"outline {float(ds['outline_area_km2'].values[k]):.3g} km²")
        ax.set_ylabel("snow/ice km²")
        ax.set_title(f"{ds['name'].values[k]} ({ds['glacier'].values[k]})", fontsize=10, loc="left")
        ax.legend(fontsize=7, loc="best", ncols=2, framealpha=0.7)
        ax.grid(alpha=0.3)
    more = ds.sizes["glacier"] - n
    fig.suptitle(f"snow/ice-covered area inside the outlines (NDSI ≥ {ds.attrs.get('ndsi_threshold', '?')})"
                 + (f"; {more} more glaciers in the table" if more > 0 else ""), fontsize=11)
    return fig
