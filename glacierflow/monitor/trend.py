"""Trend of a seasonal series: the seasonal Theil–Sen slope (Hirsch, Slack & Smith 1982) with its 95 % interval.

Snow cover has a large annual cycle; a straight line through every period would let the cycle (and which
seasons happen to be observed or missing at the ends of the record) tilt the slope. The seasonal Sen slope
compares each period only with the same season of other years: the slopes ``(x_j - x_i) / (t_j - t_i)``
over all pairs ``i < j`` of the *same* season (month of the period start), pooled over the seasons; the
trend is their median. A constant seasonal cycle cancels in every such difference, whatever the seasons
observed; the median keeps one misclassified period (a cloudy winter) from steering it.

The 95 % interval is the distribution-free one of Sen (1968) with the seasonal Kendall variance
``Var(S) = sum_g n_g (n_g - 1) (2 n_g + 5) / 18`` (``n_g`` periods in season ``g``, less the ties' terms):
the slopes of ranks ``round((N - z Var(S)^0.5) / 2)`` and ``round((N + z Var(S)^0.5) / 2) + 1`` (1-based;
``N`` slopes, ``z`` = 1.96), the same rule as
:func:`scipy.stats.theilslopes`, which it equals for a single season. It assumes the years are independent
(no serial correlation from one year to the next); with fewer slopes than the interval needs it is NaN.

Time is in decimal years (:func:`decimal_years`), so the same season of consecutive years is exactly one
year apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

Z95 = 1.959963984540054  # the two-sided 95 % normal quantile

METHOD = ("seasonal Theil-Sen slope (Hirsch et al. 1982: median of same-season slopes), 95% interval from "
          "the seasonal Kendall variance (Sen 1968); interpolated or half-unobserved periods left out")


@dataclass(frozen=True)
class Trend:
    """A trend and its 95 % interval.

    ``slope`` (units per year), ``low``..``high``, ``intercept`` (value at t=0), the number of same-season
    slopes and of periods it rests on.
    """

    slope: float
    low: float
    high: float
    intercept: float
    n_slopes: int
    n_periods: int


NO_TREND = Trend(math.nan, math.nan, math.nan, math.nan, 0, 0)


def decimal_years(times: pd.DatetimeIndex) -> np.ndarray:
    """Decimal years, ``year + (month - 1 + (day - 1) / days in the month) / 12``.

    A date and the same date a year later are exactly 1 apart (leap years included), and period starts (the
    1st of a month) land on twelfths.
    """
    t = pd.DatetimeIndex(times)
    day = (t.day - 1 + (t - t.normalize()) / pd.Timedelta(days=1)) / t.days_in_month
    return np.asarray(t.year + (t.month - 1 + day) / 12.0, dtype=np.float64)


def _ties(v: np.ndarray) -> float:
    _, k = np.unique(v, return_counts=True)
    k = k[k > 1].astype(np.float64)
    return float((k * (k - 1) * (2 * k + 5)).sum())


def _kendall_variance(t: np.ndarray, x: np.ndarray) -> float:
    """Variance of Kendall's S of one season, corrected for ties in ``t`` and ``x`` (Sen 1968, eq. 2.6)."""
    n = float(t.size)
    return (n * (n - 1) * (2 * n + 5) - _ties(t) - _ties(x)) / 18.0


def seasonal_sen(t: np.ndarray, x: np.ndarray, season: np.ndarray) -> Trend:
    """The seasonal Theil–Sen trend of ``x`` against ``t`` (years) with its 95 % interval (module notes).

    Parameters
    ----------
    t, x
        Times (decimal years) and values; NaN values are left out.
    season
        A label per value (e.g. the month of each period start); only values of one label are compared.
    """
    t, x, season = np.asarray(t, np.float64), np.asarray(x, np.float64), np.asarray(season)
    ok = np.isfinite(t) & np.isfinite(x)
    slopes, var = [], 0.0
    for g in np.unique(season[ok]):
        sel = ok & (season == g)
        tg, xg = t[sel], x[sel]
        i, j = np.triu_indices(tg.size, k=1)
        dt = tg[j] - tg[i]
        use = dt != 0
        slopes.append((xg[j] - xg[i])[use] / dt[use])
        var += _kendall_variance(tg, xg)
    s = np.sort(np.concatenate(slopes)) if slopes else np.empty(0)
    if s.size == 0:
        return NO_TREND
    slope = float(np.median(s))
    intercept = float(np.median(x[ok] - slope * t[ok]))
    c = Z95 * math.sqrt(var)
    lo_rank, hi_rank = int(np.round((s.size - c) / 2.0)) - 1, int(np.round((s.size + c) / 2.0))
    low, high = (float(s[lo_rank]), float(s[hi_rank])) if lo_rank >= 0 and hi_rank < s.size \
        else (math.nan, math.nan)  # too few slopes for a 95 % interval
    return Trend(slope, low, high, intercept, int(s.size), int(ok.sum()))
