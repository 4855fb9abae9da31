"""The typed cube reader every downstream stage uses: the dataset with its specs, period and chunking.

``open_cube(url)`` opens a complete cube store lazily and returns a :class:`Cube`; the pieces
(:func:`cube_period`, :func:`stored_chunks`) work on any opened cube or forecast dataset, so ``flow``,
``patches``, ``predict`` and the figures read a cube's period and chunks the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from glacierflow.choices import period_months, season_length
from glacierflow.errors import GlacierflowError
from glacierflow.specs import CubeSpec, PreprocessSpec, spec_from_store
from glacierflow.storage import store

#: spatial chunk side of the cube store in pixels: 5 x the 50-px patch of the learning stage
SPATIAL_CHUNK = 250


def cube_period(ds: xr.Dataset) -> str:
    """A cube's period: its ``preprocess_spec`` attribute, else the step of its time axis (``"3MS"``, ...).

    Raises
    ------
    GlacierflowError
        When the dataset records no period and has fewer than two periods to infer it from.
    """
    period = store.config_attr(ds, "preprocess_spec").get("period") or ds.attrs.get("period")
    if not period and ds.sizes.get("time", 0) > 1:
        t = ds["time"].values
        period = f"{int(round((t[1] - t[0]) / np.timedelta64(1, 'D') / 30.4))}MS"
    if not period:
        raise GlacierflowError("cannot tell the cube's period (no preprocess_spec attr); rebuild it with build-cube")
    period_months(period)  # one line for a period glacierflow cannot use
    return str(period)


def stored_chunks(ds: xr.Dataset, variable: str = "ndsi") -> tuple[int, int]:
    """The (y, x) chunk sides a variable is stored (or held) in, else :data:`SPATIAL_CHUNK`."""
    var = ds[variable]
    preferred = var.encoding.get("preferred_chunks", {})
    sides = []
    for dim in ("y", "x"):
        size = preferred.get(dim) or (var.chunks[var.dims.index(dim)][0] if var.chunks else SPATIAL_CHUNK)
        sides.append(min(int(size), var.sizes[dim]))
    return sides[0], sides[1]


@dataclass(frozen=True)
class Cube:
    """An opened cube store: the lazy dataset and what downstream stages read from its attributes."""

    data: xr.Dataset
    url: str
    period: str
    season_length: int
    chunks: tuple[int, int]
    cube_spec: CubeSpec | None
    preprocess_spec: PreprocessSpec | None


def open_cube(url: str, storage_options: dict[str, Any] | None = None,
              require: tuple[str, ...] = ("ndsi",)) -> Cube:
    """Open a complete cube store lazily as a :class:`Cube` (one line when it is missing or incomplete)."""
    if not store.exists(url, storage_options):
        raise GlacierflowError(f"cube store {url!r} not found; build one with 'glacierflow build-cube'")
    ds = store.open_store(url, storage_options, require=require)
    where = f"cube store {url!r}"
    specs = (spec_from_store(ds.attrs, "cube_spec", CubeSpec, where),
             spec_from_store(ds.attrs, "preprocess_spec", PreprocessSpec, where)) if "cube_spec" in ds.attrs \
        else (None, None)
    period = cube_period(ds)
    return Cube(ds, url, period, season_length(period), stored_chunks(ds), *specs)
