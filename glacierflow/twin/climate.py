"""Time series of the ``himalaya`` world: snowfall events, seasonal speed-up, monsoon cloud climate.

Everything here is a function of the decimal year only (no pixels): daily series drawn once per seed
and interpolated at each acquisition time.
"""

from __future__ import annotations

import numpy as np

DAY = 1.0 / 365.25


def _doy(t: np.ndarray | float) -> np.ndarray:
    return (np.asarray(t) % 1.0) * 365.25


class SnowClimate:
    """Snowline elevation and outcrop snow from episodic snowfall events (not a sinusoid).

    A seasonal equilibrium snowline (low in late winter, high in late summer, rising a few metres a
    year) is pushed down by snowfall events: frequent in winter (westerly disturbances) and during the
    monsoon (at high elevation only), rarer otherwise. After an event the fresh-snow line climbs back
    at a seasonal melt rate. Some winters are severe: their events bring snow to the valley floor.

    Parameters
    ----------
    seed
        Random seed (the same seed gives the same weather).
    first_year, last_year
        Span of the daily series (decimal years outside it are clamped).
    """

    def __init__(self, seed: int, first_year: int = 2010, last_year: int = 2035):
        rng = np.random.default_rng([seed, 202])
        t = np.arange(first_year, last_year + 1, DAY)
        doy = _doy(t)
        winter = (doy < 90) | (doy >= 320)
        monsoon = (doy >= 160) & (doy < 270)
        base = 5050.0 + 420.0 * np.sin(2 * np.pi * (doy - 150.0) / 365.25) + 8.0 * (t - 2013.0)
        # severe winters (snow to the valley floor): the winter that starts in November of year y
        severe_years = {int(y) for y in range(first_year - 1, last_year + 1) if rng.random() < 0.4}
        rate = np.where(winter, 1 / 9, np.where(monsoon, 1 / 12, 1 / 30))
        melt = np.where(winter, 6.0, np.where(doy < 160, 45.0, np.where(monsoon, 60.0, 25.0)))  # m/day
        fresh_line = np.empty_like(t)
        since = np.empty_like(t)  # days since the last event
        line, last = 7000.0, -1e9
        events = rng.random(t.size) < rate
        for i in range(t.size):  # a few thousand days: cheap
            line = min(line + melt[i], 7000.0)
            if events[i]:
                season_year = int(t[i]) if doy[i] >= 320 else int(t[i]) - 1
                if winter[i]:
                    lo, hi = (2900.0, 3900.0) if season_year in severe_years else (3800.0, 4700.0)
                elif monsoon[i]:
                    lo, hi = 4800.0, 5400.0
                else:
                    lo, hi = 4100.0, 5000.0
                line = min(line, float(rng.uniform(lo, hi)))
                last = t[i]
            fresh_line[i] = line
            since[i] = (t[i] - last) * 365.25
        self._t = t
        self._line = np.minimum(base, fresh_line)
        # fresh snow sticks to steep outcrops for a while after an event (longer when it is cold)
        tau = np.where(winter, 14.0, np.where(monsoon, 2.0, 5.0))
        self._outcrop = np.exp(-since / tau) * (fresh_line < 5600)
        self.severe_years = severe_years

    def snowline(self, t: float) -> float:
        """Snowline elevation (m) at decimal year ``t``."""
        return float(np.interp(t, self._t, self._line))

    def outcrop_snow(self, t: float) -> float:
        """Fraction (0..1) of fresh snow held by steep outcrops at decimal year ``t``."""
        return float(np.interp(t, self._t, self._outcrop))


class SpeedSeason:
    """Seasonal speed-up: ``s(t)`` multiplies the annual-mean velocity; its mean over a year is exactly 1.

    Parameters
    ----------
    amplitude
        Height of the summer bump (0.5: ~1.36x in mid-July, ~0.86x in winter).
    peak_doy, width_days
        Centre and 1-sigma width of the summer bump (day of year).
    """

    def __init__(self, amplitude: float = 0.5, peak_doy: float = 195.0, width_days: float = 40.0):
        self.amplitude = amplitude
        self.peak, self.width = peak_doy, width_days
        grid = (np.arange(36525) + 0.5) / 36525  # one year, fine
        self._mean = float(self._bump(grid).mean())
        # cumulative integral of (bump - mean) over one year, in years (periodic: 0 at both ends)
        cum = np.concatenate([[0.0], np.cumsum(self._bump(grid) - self._mean) / grid.size])
        self._cum_x = np.linspace(0.0, 1.0, cum.size)
        self._cum = cum

    def _bump(self, frac: np.ndarray) -> np.ndarray:
        d = (np.asarray(frac) * 365.25 - self.peak + 182.625) % 365.25 - 182.625
        return np.exp(-0.5 * (d / self.width) ** 2)

    def factor(self, t: float) -> float:
        """Speed factor ``s(t)`` at decimal year ``t``."""
        return float(1.0 + self.amplitude * (self._bump(t % 1.0) - self._mean))

    def elapsed(self, t0: float, t1: float) -> float:
        """``integral of s dt`` from ``t0`` to ``t1`` in years: the 'effective time' the ice moved."""

        def big_s(t: float) -> float:
            return t + self.amplitude * float(np.interp(t % 1.0, self._cum_x, self._cum))

        return big_s(t1) - big_s(t0)


def monsoon_cloud(doy: float, r: float, u: float) -> float:
    """Cloud fraction of one scene from the seasonal cloud climate (two uniform draws ``r``, ``u``).

    June-September (monsoon; July-August its core): most scenes cloudy; May and October: in between;
    otherwise mostly clear.
    """
    if 182 <= doy < 244:  # July-August: the monsoon's core
        p_clear, p_some = 0.03, 0.06
    elif 152 <= doy < 274:  # June, September
        p_clear, p_some = 0.08, 0.15
    elif 121 <= doy < 152 or 274 <= doy < 305:
        p_clear, p_some = 0.4, 0.65
    else:
        p_clear, p_some = 0.6, 0.85
    if r < p_clear:
        return 0.03 * u
    if r < p_some:
        return 0.03 + 0.14 * u
    return 0.3 + 0.65 * u
