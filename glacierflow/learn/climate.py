"""What the past of a cube says about its next periods: causal inputs, calendar, and the statistical baselines.

**Causal inputs.** ``build-cube`` fills a period without any scene by linear interpolation between the nearest
non-empty periods, so such a period carries information from the *next* observed period, which may be a
target. For learning (and every baseline) the stored cube is left as it is and the inputs are re-derived
causally: a period that looks ahead (``interpolated``; without that variable: no pixel with ``n_valid > 0``)
takes the value of the most recent period that does not; before the first such period, the climatology of its
period-of-year (training periods only). A period observed with a spatial gap-fill is kept: that fill uses the
same period's own observations. :func:`causal_sources` is the index map, so changing any later period cannot
change an input.

**Calendar.** ``period_of_year`` (0 .. season-1) of each period start; the phase ``2 pi doy / 365.25`` of each
input period from ``time_mean`` (the mean acquisition time; the period centre where there is none) and of each
target period from its centre (a target's acquisition times are not known when the forecast is made).

**Statistics of the training periods**, per pixel and period-of-year ``s`` over the observed pixels
(``n_valid > 0``) of the training periods only, and only those known when the forecast is made: the periods
up to the last input (:func:`cumulative_sums`, :func:`stats_from_sums`; :func:`fit_climate` computes them at
once for a scene forecast). A training sample's own targets never enter its statistics: an in-sample
climatology or trend looks far better in training than it can be on new years (measured: a head trained on
in-sample statistics learnt to trust the trend and lost 124 % against seasonal on the test years).

* ``climatology``: the mean (a pixel never observed in ``s`` falls back to its mean over all training periods,
  then 0);
* ``trend``: the least-squares line over the years, ``mean + slope * (year - mean year)`` extrapolated to the
  target's year (slope 0 with fewer than two distinct years);
* ``anomaly``: ``climatology(target) + phi_k * (last input - climatology(last input period))``, with the damping
  ``phi_k`` of lead ``k`` the least-squares regression coefficient of the target anomaly on the last input's
  anomaly over the training windows, clipped to [0, 1] (``glacierflow.learn.patches.fit_damping``).

Every function works on lazy (dask-backed) and in-memory ``xarray`` objects alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from glacierflow.choices import period_months

BASELINE_NAMES: tuple[str, ...] = ("persistence", "seasonal", "climatology", "trend", "anomaly")
"""Every baseline, in the order of a sample's ``bases`` axis."""


def period_of_year(times: pd.DatetimeIndex | np.ndarray, period: str) -> np.ndarray:
    """Index of each period start within its year: ``(month - 1) // months_per_period``."""
    t = pd.DatetimeIndex(times)
    return np.asarray((t.month - 1) // period_months(period), np.int64)


def phases(times: pd.DatetimeIndex | np.ndarray, time_mean: np.ndarray | None, period: str
           ) -> tuple[np.ndarray, np.ndarray]:
    """``(observed, centre)`` phases in radians per period: from ``time_mean`` (centre where NaT), and centre."""
    t = pd.DatetimeIndex(times)
    centre = t + (t + pd.DateOffset(months=period_months(period)) - t) / 2

    def phase(ts: pd.DatetimeIndex) -> np.ndarray:
        return np.asarray(2 * np.pi * (ts.dayofyear.to_numpy() - 1 + ts.hour.to_numpy() / 24) / 365.25, np.float32)

    obs = centre if time_mean is None else pd.DatetimeIndex(np.where(pd.isna(time_mean), centre, time_mean))
    return phase(obs), phase(centre)


def lookahead(cube: xr.Dataset) -> np.ndarray:
    """``(T,)`` bool: periods whose stored value was interpolated from other periods (the next one included)."""
    if "interpolated" in cube:
        return np.asarray(cube["interpolated"].values, bool)
    if "n_valid" in cube:
        return ~np.asarray((cube["n_valid"] > 0).any(("y", "x")).values, bool)
    return np.zeros(cube.sizes["time"], bool)


def causal_sources(ahead: np.ndarray) -> np.ndarray:
    """Per period, the most recent period ``<=`` it that does not look ahead (-1 where there is none yet)."""
    idx = np.where(~np.asarray(ahead, bool), np.arange(len(ahead)), -1)
    return np.maximum.accumulate(idx) if len(idx) else idx


@dataclass(frozen=True)
class Climate:
    """Per-pixel statistics ``(season, y, x)``: ``mean``, ``slope`` (per year) and ``mean_year``.

    ``mean_year`` is counted from ``year0`` (years are centred before any sum: float32 sums of squared calendar
    years would cancel catastrophically).
    """

    mean: xr.DataArray
    slope: xr.DataArray
    mean_year: xr.DataArray
    year0: float = 0.0

    def at(self, poy: np.ndarray, years: np.ndarray) -> tuple[xr.DataArray, xr.DataArray]:
        """``(climatology, trend)`` forecasts ``(time, y, x)`` for periods of period-of-year ``poy`` in ``years``."""
        sel = xr.DataArray(np.asarray(poy), dims="time")
        yr = xr.DataArray(np.asarray(years, np.float64) - self.year0, dims="time")
        clim = self.mean.isel(season=sel)
        trend = clim + self.slope.isel(season=sel) * (yr - self.mean_year.isel(season=sel))
        return clim.clip(0.0, 1.0).astype(np.float32), trend.clip(0.0, 1.0).astype(np.float32)


def fit_climate(ndsi: xr.DataArray, valid: xr.DataArray, train: np.ndarray, poy: np.ndarray, years: np.ndarray,
                season: int) -> Climate:
    """Climatology and trend per pixel and period-of-year from the periods where ``train`` is True.

    ``valid`` is ``(time, y, x)`` or ``(time,)`` (1 = observed); ``ndsi`` ``(time, y, x)``. Lazy in, lazy out.
    """
    t_mask = xr.DataArray(np.asarray(train, bool), dims="time")
    obs = (valid.astype(bool) & np.isfinite(ndsi) & t_mask).astype(np.float32)
    v = ndsi.where(obs > 0, 0.0).astype(np.float32)
    year0 = float(np.mean(np.asarray(years, np.float64)[np.asarray(train, bool)])) if np.any(train) else 0.0
    yr = xr.DataArray((np.asarray(years, np.float64) - year0).astype(np.float32), dims="time")
    group = xr.DataArray(np.asarray(poy), dims="time", name="season")
    sums = {k: a.groupby(group).sum("time").reindex(season=np.arange(season), fill_value=0.0)
            for k, a in {"n": obs, "v": v, "x": obs * yr, "xx": obs * yr * yr, "xv": v * yr}.items()}
    n = sums["n"]
    fallback = (v.sum("time") / obs.sum("time")).fillna(0.0)
    mean = (sums["v"] / n).where(n > 0).fillna(fallback)
    xbar = (sums["x"] / n).where(n > 0).fillna(0.0)
    var = sums["xx"] / n - xbar**2
    cov = sums["xv"] / n - xbar * mean
    slope = (cov / var).where((n > 1) & (var > 1e-6)).fillna(0.0)
    return Climate(mean.astype(np.float32), slope.astype(np.float32), xbar.astype(np.float32), year0)


CUMULATIVE = ("cn", "cv", "cx", "cxx", "cxv")
"""Running sums per period-of-year (observed count, value, year, year^2, value x year) of the training periods."""


def cumulative_sums(ndsi: xr.DataArray, valid: xr.DataArray, train: np.ndarray, poy: np.ndarray,
                    years: np.ndarray, year0: float) -> dict[str, xr.DataArray]:
    """``(time, y, x)`` running sums over the training periods of the same period-of-year up to each period.

    At period ``u`` they cover the training periods ``u' <= u`` with ``poy(u') == poy(u)``, so the statistics
    known at a forecast made after period ``u`` come from one lookup (:func:`stats_from_sums`), with no
    sample's own target inside its statistics (training samples included: an in-sample climatology or trend
    would look far better in training than it can be on new years).
    """
    t_mask = xr.DataArray(np.asarray(train, bool), dims="time")
    obs = (valid.astype(bool) & np.isfinite(ndsi) & t_mask).astype(np.float32)
    v = ndsi.where(obs > 0, 0.0).astype(np.float32)
    yr = xr.DataArray((np.asarray(years, np.float64) - year0).astype(np.float32), dims="time")
    group = xr.DataArray(np.asarray(poy), dims="time", name="season")
    parts = {"cn": obs, "cv": v, "cx": obs * yr, "cxx": obs * yr * yr, "cxv": v * yr}
    return {k: a.groupby(group).cumsum("time").transpose("time", ...).astype(np.float32) for k, a in parts.items()}


def stats_from_sums(sums: dict[str, np.ndarray], year: np.ndarray, fallback: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``(climatology, trend)`` forecasts from running sums (:data:`CUMULATIVE`) for a target in ``year``.

    ``year`` is centred like the sums and broadcasts against them; ``fallback`` stands where nothing was
    observed (the last input). Slope 0 with fewer than two observations or no spread of years.
    """
    n = sums["cn"]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, sums["cv"] / n, fallback)
        xbar = np.where(n > 0, sums["cx"] / n, 0.0)
        var = np.where(n > 0, sums["cxx"] / n - xbar**2, 0.0)
        cov = np.where(n > 0, sums["cxv"] / n - xbar * mean, 0.0)
        slope = np.where((n > 1) & (var > 1e-6), cov / var, 0.0)
    trend = mean + slope * (year - xbar)
    return np.clip(mean, 0, 1).astype(np.float32), np.clip(trend, 0, 1).astype(np.float32)


def causal_inputs(ndsi: xr.DataArray, sources: np.ndarray, clim: xr.DataArray) -> xr.DataArray:
    """The cube as the models see it: period ``t`` holds ``ndsi[sources[t]]``, the climatology where -1."""
    src = xr.DataArray(np.clip(sources, 0, None), dims="time")
    taken = ndsi.isel(time=src).assign_coords(time=ndsi["time"])
    return taken.where(xr.DataArray(sources >= 0, dims="time"), clim).astype(np.float32)


def seasonal_index(t_ctx: int, t_out: int, season: int) -> list[int]:
    """Index into a context of ``t_ctx`` periods for each target ``k = 1..t_out`` (see ``models.baselines``)."""
    return [t_ctx - 1 + k - season * -(-k // season) for k in range(1, t_out + 1)]


def base_forecasts(x_last: np.ndarray, context: np.ndarray, clim_t: np.ndarray, trend_t: np.ndarray,
                   clim_last: np.ndarray, damping: np.ndarray, season: int) -> np.ndarray:
    """All baselines of a batch ``(B, 5, t_out, 1, H, W)`` in :data:`BASELINE_NAMES` order, clipped to [0, 1].

    ``x_last`` ``(B, 1, 1, H, W)`` last input; ``context`` ``(B, T_ctx, 1, H, W)`` ending with it; ``clim_t`` and
    ``trend_t`` ``(B, t_out, 1, H, W)`` at the targets; ``clim_last`` the climatology of the last input period.
    """
    t_out = clim_t.shape[1]
    persistence = np.broadcast_to(x_last, clim_t.shape)
    seasonal = context[:, seasonal_index(context.shape[1], t_out, season)]
    anomaly = clim_t + np.asarray(damping, np.float32).reshape(1, -1, 1, 1, 1) * (x_last - clim_last)
    out = np.stack([persistence, seasonal, clim_t, trend_t, anomaly], axis=1)
    return np.clip(out, 0.0, 1.0).astype(np.float32)
