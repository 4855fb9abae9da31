"""Period means of the per-scene snow mask, the periodic cube (pure, lazy).

January-anchored periods, means of real observations, the paper's gap-fill where a period observed nothing,
and empty periods interpolated in time.

:func:`resample` is the step ``build-cube`` runs; the pieces (:func:`period_starts`, :func:`period_means`,
:func:`interpolate_periods`) are public for notebooks. Period lengths come from
:func:`glacierflow.choices.period_months`, the one period helper.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
import xarray as xr

from glacierflow.choices import period_months
from glacierflow.errors import GlacierflowError
from glacierflow.preprocess import gapfill


def period_starts(
    times: np.ndarray | pd.DatetimeIndex,
    period: str = "3MS",
    start: str | pd.Timestamp | None = None,
    end: str | pd.Timestamp | None = None,
) -> tuple[pd.DatetimeIndex, np.ndarray]:
    """Full period index (January-anchored) and the period of every timestamp.

    Parameters
    ----------
    times : array-like of datetime64
        Scene acquisition times.
    period : str
        See :func:`period_months`.
    start, end : date-like, optional
        Extend (or cut) the period index to the periods containing these dates; default: the
        periods of the first and last scene.

    Returns
    -------
    tuple of (pandas.DatetimeIndex, numpy.ndarray)
        Period starts, and for every time its position in that index (-1 if outside).
    """
    n = period_months(period)
    t = pd.DatetimeIndex(times)
    if t.tz is not None:
        t = t.tz_convert(None)

    def month_id(ts: pd.DatetimeIndex) -> np.ndarray:
        m = ts.year.to_numpy() * 12 + ts.month.to_numpy() - 1
        return m - m % n

    ids = month_id(t)
    if ids.size == 0 and (start is None or end is None):
        raise GlacierflowError("cannot resample an empty time axis without start and end; pass both")
    lo = month_id(pd.DatetimeIndex([pd.Timestamp(start)]))[0] if start is not None else ids.min()
    hi = month_id(pd.DatetimeIndex([pd.Timestamp(end)]))[0] if end is not None else ids.max()
    if hi < lo:
        raise GlacierflowError(f"resample end {end} lies before start {start}; swap them")
    starts_ids = np.arange(lo, hi + 1, n)
    starts = pd.DatetimeIndex(
        [pd.Timestamp(year=int(i // 12), month=int(i % 12) + 1, day=1) for i in starts_ids]
    )
    pos = (ids - lo) // n
    pos = np.where((ids >= lo) & (ids <= hi), pos, -1)
    return starts, pos.astype(np.int64)




def period_index(
    times: np.ndarray | pd.DatetimeIndex,
    period: str = "3MS",
    start: str | pd.Timestamp | None = None,
    end: str | pd.Timestamp | None = None,
) -> tuple[pd.DatetimeIndex, np.ndarray]:
    """Alias of :func:`period_starts` (the period start of every scene, -1 outside)."""
    return period_starts(times, period, start, end)


def _interp_time(a: np.ndarray) -> np.ndarray:
    """Linear interpolation of NaNs along axis -1 by index; edges take the nearest finite value."""
    t = a.shape[-1]
    idx = np.arange(t)
    valid = ~np.isnan(a)
    prev = np.maximum.accumulate(np.where(valid, idx, -1), axis=-1)
    nxt = np.flip(np.minimum.accumulate(np.flip(np.where(valid, idx, t), axis=-1), axis=-1), axis=-1)
    has_prev, has_next = prev >= 0, nxt < t
    a_prev = np.take_along_axis(a, np.clip(prev, 0, t - 1), axis=-1)
    a_next = np.take_along_axis(a, np.clip(nxt, 0, t - 1), axis=-1)
    span = np.where(has_prev & has_next & ~valid, nxt - prev, 1)
    frac = (idx - prev) / span
    lin = a_prev + (a_next - a_prev) * frac
    out = np.where(valid, a, np.nan)
    inner = ~valid & has_prev & has_next
    out[inner] = lin[inner]
    lead = ~valid & ~has_prev & has_next
    trail = ~valid & has_prev & ~has_next
    out[lead] = a_next[lead]
    out[trail] = a_prev[trail]
    return out


def _interp_block(block: np.ndarray) -> np.ndarray:
    """Time interpolation of a ``(time, ...)`` block of period means, as float32."""
    return np.moveaxis(_interp_time(np.moveaxis(block, 0, -1)), -1, 0).astype(np.float32)


#: Rows per task of the time interpolation (its tasks hold every period of a strip of rows).
INTERP_STRIP = 128


def period_means(
    da: xr.DataArray,
    period: str = "3MS",
    start: str | pd.Timestamp | None = None,
    end: str | pd.Timestamp | None = None,
    use: xr.DataArray | None = None,
) -> xr.Dataset:
    """Per calendar period: the mean of the real observations of every pixel, and their count.

    Parameters
    ----------
    da : xarray.DataArray
        ``(time, y, x)`` scenes, NaN where a pixel was not observed (clouds, footprint, warp borders).
    period, start, end
        See :func:`period_starts`; scenes outside the period index are ignored.
    use : xarray.DataArray, optional
        ``(time,)`` bool (lazy allowed): scenes to average; the others count nowhere (e.g. a scene whose
        alignment failed). Default: every scene.

    Returns
    -------
    xarray.Dataset
        On ``time`` = period start: ``ndsi(time, y, x)`` float32 mean over the observations (NaN where
        none), ``n_valid(time, y, x)`` uint8 number of observations averaged (saturates at 255),
        ``n_scenes(time)`` int64 scenes averaged, ``time_mean(time)`` mean acquisition time of those
        scenes (NaT for an empty period). Grouping by period uses xarray's ``groupby`` (one reduction
        per period, so no task holds more than one period's scenes).
    """
    starts, pos = period_starts(da["time"].values, period, start, end)
    inside = np.flatnonzero(pos >= 0)
    if inside.size == 0:  # nothing to average: every period empty (never computed: sum is a template)
        blank = da.transpose("time", "y", "x").sum("time").expand_dims(time=starts.values)
        n = np.zeros(len(starts), np.int64)
        return xr.Dataset({"ndsi": blank.astype(np.float32) * np.nan, "n_valid": blank.astype(np.uint8) * 0,
                           "n_scenes": ("time", n),
                           "time_mean": ("time", np.full(len(starts), np.datetime64("NaT"), "datetime64[ns]"))},
                          coords={"time": starts.values})
    da = da.transpose("time", "y", "x").isel(time=inside)
    da = da.drop_vars([c for c in da.coords if "time" in da[c].dims and c != "time"])
    label = xr.DataArray(starts.values[pos[inside]], dims="time", name="period")
    weight = xr.ones_like(label, dtype=bool) if use is None else use.isel(time=inside).astype(bool)
    weight = weight.drop_vars([c for c in weight.coords if c != "time"], errors="ignore")
    weight = weight.assign_coords(time=da["time"].values)
    label = label.assign_coords(time=da["time"].values)
    obs = da.where(weight)
    total = obs.astype(np.float64).groupby(label).sum("time", skipna=True, min_count=1)
    count = obs.notnull().groupby(label).sum("time")
    t_ns = (da["time"].values.astype("datetime64[ns]").astype(np.int64) - np.int64(starts.values[0].astype(
        "datetime64[ns]").astype(np.int64))).astype(np.float64)
    t_rel = xr.DataArray(t_ns, dims="time", coords={"time": da["time"].values})
    n_scenes = weight.astype(np.int64).groupby(label).sum("time")
    t_sum = (t_rel * weight).groupby(label).sum("time")
    full = {"period": starts.values}
    total = total.reindex(full).rename(period="time")
    count = count.reindex(full, fill_value=0).rename(period="time")
    n_scenes = n_scenes.reindex(full, fill_value=0).rename(period="time")
    t_sum = t_sum.reindex(full, fill_value=0).rename(period="time")
    mean = (total / count.where(count > 0)).astype(np.float32)
    offset = xr.DataArray(t_sum / n_scenes.where(n_scenes > 0))
    t0 = np.datetime64(starts.values[0], "ns")
    time_mean = offset.copy(data=_as_datetime(offset.data, t0))
    ds = xr.Dataset(
        {
            "ndsi": mean.transpose("time", "y", "x"),
            "n_valid": count.clip(max=255).astype(np.uint8).transpose("time", "y", "x"),
            "n_scenes": n_scenes.astype(np.int64),
            "time_mean": time_mean,
        }
    )
    return ds.drop_vars([c for c in ds.coords if c not in ("time", "y", "x") and "time" in ds[c].dims])


def _as_datetime(offset_ns: object, t0: np.datetime64) -> object:
    """``t0 + offset`` (float ns, NaN -> NaT) as datetime64[ns]; lazy for a dask array."""
    import dask.array as dsa

    def convert(a: np.ndarray) -> np.ndarray:
        out = np.full(a.shape, np.datetime64("NaT"), "datetime64[ns]")
        ok = np.isfinite(a)
        out[ok] = t0 + np.round(a[ok]).astype("timedelta64[ns]")
        return out

    if isinstance(offset_ns, dsa.Array):
        return offset_ns.map_blocks(convert, dtype="datetime64[ns]")
    return convert(np.asarray(offset_ns))


def fill_unobserved(mean: xr.DataArray, max_iter: int = 32) -> xr.DataArray:
    """The paper's gap-fill applied to each period's mean: only pixels no scene observed get a value.

    Observed pixels keep their mean exactly (the kernel fills NaN only); a period with no observation
    at all stays NaN (:func:`interpolate_periods` fills it in time).
    """
    out = gapfill.gap_fill(mean, max_iter=max_iter)
    out.name = mean.name
    return out


def interpolate_periods(mean: xr.DataArray) -> xr.DataArray:
    """Empty periods (NaN) by linear interpolation in time (by period index, as in the paper), per pixel.

    Leading/trailing NaNs take the nearest non-empty period. Time in one chunk, ``INTERP_STRIP`` rows per
    task. Returns float32, lazy if the input is.
    """
    dims = mean.dims
    mean = mean.transpose("time", ...)
    if mean.chunks is not None:
        mean = mean.chunk({"time": -1, **({"y": INTERP_STRIP} if "y" in mean.dims else {})})
        data = mean.data.map_blocks(_interp_block, dtype=np.float32)
    else:
        data = _interp_block(np.asarray(mean.values))
    return mean.copy(data=data).astype(np.float32).transpose(*dims)


def resample(
    da: xr.DataArray,
    period: str = "3MS",
    start: str | pd.Timestamp | None = None,
    end: str | pd.Timestamp | None = None,
    edges: Literal["nearest", "drop"] = "nearest",
    use: xr.DataArray | None = None,
    max_iter: int = 32,
) -> xr.Dataset:
    """The periodic cube: means of real observations, gap-filled where unobserved, empty periods interpolated.

    Periods start on the first of a month and are anchored on January: ``"3MS"`` gives quarters
    starting Jan/Apr/Jul/Oct and ``"6MS"`` half-years starting Jan/Jul, whatever the first scene's
    month (xarray's ``resample("3MS")`` anchors on the first timestamp's month instead). Per pixel and
    period the mean averages only the scenes that observed the pixel (:func:`period_means`); where no
    scene of a non-empty period observed a pixel, the paper's 5x5 gap-fill of that period's mean
    supplies the value (:func:`fill_unobserved`); a period with no scene gets the linear interpolation
    between the nearest non-empty periods (edges: the nearest one, or dropped with ``edges="drop"``).

    Parameters
    ----------
    da : xarray.DataArray
        ``(time, y, x)``, e.g. the snow mask of :func:`snow_mask` (NaN where not observed).
    period : str
        Month-start alias whose length divides 12: ``"1MS"``, ``"3MS"``, ``"6MS"``, ...
    start, end : date-like, optional
        Define the full period index; default: the periods of the first and last scene.
    edges : {"nearest", "drop"}
        What to do with leading/trailing empty periods.
    use : xarray.DataArray, optional
        ``(time,)`` bool (lazy allowed): which scenes to average (default all).
    max_iter : int
        Exact passes of the gap-fill before its multi-scale fallback.

    Returns
    -------
    xarray.Dataset
        ``ndsi(time, y, x)`` float32, ``n_valid(time, y, x)`` uint8, ``n_scenes(time)`` int64,
        ``interpolated(time)`` bool (no scene in the period), ``time_mean(time)``; ``time`` = period
        start. Lazy if the input is.
    """
    if edges not in ("nearest", "drop"):
        raise GlacierflowError(f"unknown edges {edges!r}; use 'nearest' or 'drop'")
    dims = da.dims
    keep = {c: da.coords[c] for c in da.coords if "time" not in da[c].dims and c not in da.dims}
    ds = period_means(da, period, start, end, use=use)
    filled = fill_unobserved(ds["ndsi"], max_iter=max_iter)
    ds["ndsi"] = interpolate_periods(filled)
    ds["interpolated"] = ds["n_scenes"] == 0
    ds["ndsi"].attrs.update(da.attrs)
    ds["ndsi"].attrs["period"] = period
    ds["ndsi"] = ds["ndsi"].transpose(*dims)
    ds = ds.assign_coords(keep)
    if edges == "drop":
        if ds["n_scenes"].chunks is not None:
            raise GlacierflowError("edges='drop' needs known scene counts; pass numpy data or edges='nearest'")
        nonempty = np.flatnonzero(ds["n_scenes"].values > 0)
        if nonempty.size:
            ds = ds.isel(time=slice(nonempty[0], nonempty[-1] + 1))
    return ds
