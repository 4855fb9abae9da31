"""``predict --update``: roll a forecast forward to the newest complete period of an (updated) cube.

A period is **complete** when the cube has searched its whole span: its end (start + period) lies on or
before the day after the cube's ``cube_spec.end`` (what ``build-cube`` and ``build-cube --update`` searched
to). The still-open last period of a cube updated to today is not an input: its mean would change with the
scenes still to come. The forecast's last input becomes the newest complete period; its targets are the
periods after it.

The forecast store records ``input_state`` (a digest of every period up to the last input: its start,
``n_scenes``, ``time_mean``, ``interpolated``) and the checkpoint's sha256. An update with the same last
input, the same checkpoint and the same digest is up to date and writes nothing; otherwise the forecast is
predicted again (:func:`glacierflow.forecast.predict.predict_cube`) and the store replaced by a safe write,
so the previous forecast stays readable until the new one is complete. A store written by plain ``predict``
has no digest: its first update predicts again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from glacierflow.errors import GlacierflowError
from glacierflow.forecast.predict import Forecaster, PredictSummary, predict_cube
from glacierflow.specs import CubeSpec, PredictSpec
from glacierflow.storage import store
from glacierflow.storage.cubes import cube_period


@dataclass(frozen=True)
class ForecastUpdate:
    """What ``predict --update`` did; :meth:`lines` is what the CLI prints."""

    store: str
    last_input: str
    previous_last_input: str
    unchanged: bool
    summary: PredictSummary | None = None

    def lines(self) -> list[str]:
        """The update as the CLI prints it."""
        if self.unchanged:
            return [f"{self.store} is up to date: last input {self.last_input} is still the cube's newest complete "
                    "period and its inputs are unchanged; nothing written"]
        was = f"from last input {self.previous_last_input}" if self.previous_last_input else "(new store)"
        return [f"rolled {self.store} forward {was} to {self.last_input}", *(self.summary.lines() if self.summary
                                                                            else [])]


def newest_complete(cube: xr.Dataset) -> int:
    """Index of the cube's newest period whose whole span the cube has searched (module notes)."""
    times = pd.DatetimeIndex(cube["time"].values)
    offset = pd.tseries.frequencies.to_offset(cube_period(cube))
    end = pd.Timestamp(CubeSpec.from_json(cube.attrs["cube_spec"]).end) if "cube_spec" in cube.attrs else None
    if end is None:
        return len(times) - 1
    done = np.flatnonzero([(t + offset) <= end + pd.Timedelta(days=1) for t in times])
    if not done.size:
        raise GlacierflowError(f"the cube has no complete period yet (it is searched to {end:%Y-%m-%d}); update it "
                               "further (build-cube --update) before forecasting")
    return int(done[-1])


def input_state(cube: xr.Dataset, last: int) -> str:
    """A digest of the periods up to ``last``: start, ``n_scenes``, ``time_mean`` and ``interpolated`` of each."""
    part = cube.isel(time=slice(0, last + 1))
    cols = [np.asarray(part["time"].values).astype("datetime64[s]").astype(np.int64)]
    for name in ("n_scenes", "time_mean", "interpolated"):
        if name in part:
            v = np.asarray(part[name].values)
            cols.append(v.astype("datetime64[s]").astype(np.int64) if v.dtype.kind == "M" else v.astype(np.int64))
    return hashlib.sha256(np.stack(cols).tobytes()).hexdigest()[:16]


def update_forecast(fc: Forecaster, cube_url: str, out_url: str, spec: PredictSpec | None = None, *,
                    storage_options: dict[str, Any] | None = None) -> ForecastUpdate:
    """Roll the forecast store ``out_url`` forward to the newest complete period of ``cube_url`` (module notes).

    Parameters
    ----------
    fc
        The model (:func:`glacierflow.forecast.predict.load_forecaster`).
    cube_url
        The cube store (updated by ``build-cube --update``).
    out_url
        The forecast store: rewritten when the forecast moves, written when it does not exist yet.
    spec
        Tiling and device (its ``last_input`` is chosen here: leave it empty).
    storage_options
        fsspec options for both stores.
    """
    spec = spec or PredictSpec()
    if spec.last_input:
        raise GlacierflowError("--update forecasts from the newest complete period; drop --last-input")
    if not store.exists(cube_url, storage_options):
        raise GlacierflowError(f"cube store {cube_url!r} not found; build one with 'glacierflow build-cube'")
    cube = store.open_store(cube_url, storage_options, require=("ndsi",))
    last = newest_complete(cube)
    when = f"{pd.Timestamp(cube['time'].values[last]):%Y-%m-%d}"
    state = input_state(cube, last)
    previous = ""
    if store.exists(out_url, storage_options):
        old = store.open_store(out_url, storage_options).attrs
        previous = str(old.get("last_input", ""))
        if (previous, old.get("input_state"), old.get("checkpoint_sha256")) == (
                when, state, fc.info.get("checkpoint_sha256")):
            return ForecastUpdate(out_url, when, previous, True)
    fc = replace(fc, info={**fc.info, "input_state": state})
    summary = predict_cube(fc, cube_url, out_url, replace(spec, last_input=when), overwrite=True,
                           storage_options=storage_options)
    return ForecastUpdate(out_url, when, previous, False, summary)

