"""Per-scene preprocessing and the periodic cube: QA mask, NDSI, snow mask, period means (pure, lazy).

Every function here is pure and lazy: it takes an xarray object (numpy- or dask-backed) and returns
one, builds a Dask graph when the input is Dask-backed, and never computes. Numpy kernels are wrapped
with :func:`xarray.apply_ufunc` (``dask="parallelized"`` with explicit output dtypes), and each function
sets the chunking it needs itself (the time interpolation needs every period of a strip of rows).

The pipeline for one cube (dims ``time, band, y, x`` with bands ``green, swir16, qa_pixel``)::

    masked = mask_invalid(cube)            # NaN where nodata / QA fill / cloud / shadow / unreadable
    frac = valid_fraction(masked)          # the caller drops scenes below its threshold
    snow = snow_mask(ndsi(masked), 0.3)    # NDSI where >= 0.3 else 0; NaN where not observed
    cube = resample(snow, "3MS")           # per period: mean of the real observations (n_valid), the
                                           # paper's gap-fill only where a period observed nothing,
                                           # empty periods interpolated in time

Unreadable assets arrive as ``-inf`` (:mod:`glacierflow.ingest.cube`): :func:`read_errors` finds them in the
graph, and every mask here treats them as missing.
"""

from __future__ import annotations

import re
from typing import Literal

import numpy as np
import pandas as pd
import xarray as xr

from glacierflow.errors import GlacierflowError
from glacierflow.preprocess import gapfill

# --- USGS Landsat Collection 2 QA_PIXEL bits (Landsat 8/9) ---------------------------------------------
QA_FILL = 0
QA_DILATED_CLOUD = 1
QA_CIRRUS = 2
QA_CLOUD = 3
QA_CLOUD_SHADOW = 4
QA_SNOW = 5
QA_CLEAR = 6
QA_WATER = 7

REFLECTANCE_BANDS = ("green", "swir16")
QA_BAND = "qa_pixel"

_NDSI_EPS = 1e-6


def _bits(*bits: int) -> int:
    """Integer mask with the given bit positions set."""
    out = 0
    for bit in bits:
        out |= 1 << bit
    return out


# --- masking -----------------------------------------------------------------------------------------------


def mask_invalid(cube: xr.DataArray, mask_clouds: bool = True, mask_cirrus: bool = False) -> xr.DataArray:
    """Reflectance bands with every unusable pixel set to NaN.

    A pixel is invalid (NaN in both bands) where either reflectance band is NaN, where the QA fill bit
    is set or ``qa_pixel`` itself is NaN (outside the scene footprint), and, with ``mask_clouds``, where
    the dilated-cloud, cloud or cloud-shadow bit is set.

    Cirrus (bit 2) is *not* masked by default: the 1.37 um cirrus band sees the surface through the dry
    atmosphere above high mountains, so the flag fires falsely over bright snow and ice at glacier
    altitudes, and thin cirrus barely changes a band ratio such as NDSI. Pass ``mask_cirrus=True`` to
    mask it too (only together with ``mask_clouds``).

    Parameters
    ----------
    cube : xarray.DataArray
        ``(time, band, y, x)`` with bands ``green`` and ``swir16`` (rescaled reflectance, NaN = nodata)
        and optionally ``qa_pixel`` (raw QA bits stored as float). Without a ``qa_pixel`` band only NaNs
        count as invalid.
    mask_clouds : bool
        Mask QA dilated cloud, cloud and cloud shadow.
    mask_cirrus : bool
        Also mask the QA cirrus bit (ignored unless ``mask_clouds``).

    Returns
    -------
    xarray.DataArray
        ``(time, band=[green, swir16], y, x)``, same dtype, lazy if the input is; all non-dimension
        coordinates along ``time`` (``id``, ``platform``, ...) are kept.
    """
    bands = [str(b) for b in np.asarray(cube["band"].values)] if "band" in cube.coords else []
    missing = [b for b in REFLECTANCE_BANDS if b not in bands]
    if missing:
        raise GlacierflowError(
            f"cube has no band(s) {', '.join(missing)} (bands: {', '.join(bands) or 'none'}); "
            "build the cube with assets green, swir16 and qa_pixel"
        )
    refl = cube.sel(band=list(REFLECTANCE_BANDS))
    invalid = ~np.isfinite(refl).all("band")  # NaN (nodata) and -inf (unreadable asset)
    if QA_BAND in bands:
        invalid = invalid | ~qa_valid(cube.sel(band=QA_BAND, drop=True), mask_clouds, mask_cirrus)
        invalid = invalid.drop_vars([c for c in invalid.coords if c not in refl.coords], errors="ignore")
    out = refl.where(~invalid)
    out.name = refl.name
    return out.transpose(*refl.dims)


def qa_valid(qa: xr.DataArray, mask_clouds: bool = True, mask_cirrus: bool = False) -> xr.DataArray:
    """Where the ``qa_pixel`` bits mark a usable pixel (bool, lazy if the input is).

    Invalid: the fill bit, a NaN or non-finite value (outside the footprint, unreadable asset) and, with
    ``mask_clouds``, the dilated-cloud, cloud and cloud-shadow bits (cirrus too with ``mask_cirrus``).
    """
    bad_bits = _bits(QA_FILL)
    if mask_clouds:
        bad_bits |= _bits(QA_DILATED_CLOUD, QA_CLOUD, QA_CLOUD_SHADOW)
        if mask_cirrus:
            bad_bits |= _bits(QA_CIRRUS)
    finite = np.isfinite(qa)
    qa_int = qa.where(finite, _bits(QA_FILL)).astype(np.uint16)
    return finite & ((qa_int & bad_bits) == 0)


def read_errors(cube: xr.DataArray) -> xr.DataArray:
    """Per scene and band: whether the asset was unreadable (the cube holds ``-inf`` there), lazy.

    :mod:`glacierflow.ingest.cube` turns a missing or corrupt file into a ``-inf`` window, so read errors are
    computed in the graph from the data itself.

    Returns
    -------
    xarray.DataArray
        ``(time, band)`` bool.
    """
    out = np.isneginf(cube).any(("y", "x"))
    out.name = "read_error"
    return out


def valid_fraction(masked: xr.DataArray) -> xr.DataArray:
    """Fraction of pixels per scene where every band is valid.

    Parameters
    ----------
    masked : xarray.DataArray
        Output of :func:`mask_invalid`, ``(time, band, y, x)``.

    Returns
    -------
    xarray.DataArray
        ``(time,)`` float64 in [0, 1], lazy if the input is.
    """
    frac = masked.notnull().all("band").mean(("y", "x"))
    frac.name = "valid_fraction"
    return frac


# --- NDSI -------------------------------------------------------------------------------------------------


def ndsi(filled: xr.DataArray) -> xr.DataArray:
    """Normalised difference snow index ``(green - swir16) / (green + swir16)``.

    Continuous (no threshold), float32. Where ``|green + swir16| <= 1e-6`` (dark pixels) the index is
    0 instead of a division blow-up; values are clipped to [-1, 1] (L2 surface reflectance can be
    slightly negative over dark targets, which would push the ratio outside its range). NaN in either
    band stays NaN.

    Parameters
    ----------
    filled : xarray.DataArray
        ``(time, band, y, x)`` with bands ``green`` and ``swir16``.

    Returns
    -------
    xarray.DataArray
        ``(time, y, x)`` float32 named ``ndsi``.
    """
    green = filled.sel(band="green", drop=True).astype(np.float32)
    swir = filled.sel(band="swir16", drop=True).astype(np.float32)
    den = green + swir
    den = den.where(~(abs(den) <= _NDSI_EPS), np.float32(np.inf))  # NaN stays NaN; ~0 -> ratio 0
    out = ((green - swir) / den).clip(-1.0, 1.0).astype(np.float32)
    out = out.drop_vars([c for c in out.coords if "band" in out[c].dims or c == "band"], errors="ignore")
    out.name = "ndsi"
    return out


def snow_mask(ndsi: xr.DataArray, threshold: float = 0.3) -> xr.DataArray:
    """The paper's snow map: NDSI where NDSI >= ``threshold``, else 0; NaN stays NaN.

    Parameters
    ----------
    ndsi : xarray.DataArray
        Continuous NDSI from :func:`ndsi`.
    threshold : float
        Snow threshold (0.3 after Vonica et al. 2021).

    Returns
    -------
    xarray.DataArray
        Same dims, coords and dtype as the input.
    """
    keep = (ndsi >= threshold) | ndsi.isnull()
    out = ndsi.where(keep, 0).astype(ndsi.dtype)
    out.name = ndsi.name
    return out


# --- temporal resampling ----------------------------------------------------------------------------------

_PERIOD_RE = re.compile(r"^(\d*)(MS|QS|QS-JAN|YS|YS-JAN|AS|AS-JAN)$")
_PERIOD_MONTHS = {"MS": 1, "QS": 3, "QS-JAN": 3, "YS": 12, "YS-JAN": 12, "AS": 12, "AS-JAN": 12}


def period_months(period: str) -> int:
    """Number of calendar months in a period alias such as ``"1MS"``, ``"3MS"``, ``"6MS"``, ``"QS"``.

    Periods are anchored on January, so the period length must divide 12.

    Parameters
    ----------
    period : str
        Pandas month-start offset alias: ``"<n>MS"``, ``"QS"``, ``"YS"``.

    Returns
    -------
    int
        Months per period (a divisor of 12).
    """
    match = _PERIOD_RE.match(period.strip().upper())
    months = int(match.group(1) or 1) * _PERIOD_MONTHS[match.group(2)] if match else 0
    if months <= 0 or 12 % months:
        raise GlacierflowError(
            f"unsupported period {period!r}; use a month-start alias whose length divides 12: "
            "1MS, 2MS, 3MS (QS), 4MS, 6MS, 12MS (YS)"
        )
    return months


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
