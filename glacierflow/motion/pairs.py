"""Pairs of acquisitions to track: guides per scene, acquisition times, pair selection, the tracked images."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from glacierflow.errors import GlacierflowError
from glacierflow.specs import FlowSpec


def grid_step(coord: xr.DataArray, name: str) -> float:
    """The regular spacing of a cube coordinate (m); one line when it is not regular."""
    values = np.asarray(coord.values, dtype=np.float64)  # index coordinate: in memory, no compute
    if values.size < 2:
        raise GlacierflowError(f"cube has {values.size} pixel(s) along {name}; need at least 2")
    steps = np.diff(values)
    if not np.allclose(steps, steps[0], rtol=1e-6, atol=1e-6) or steps[0] == 0:
        raise GlacierflowError(f"cube {name} coordinate is not a regular grid; rebuild the cube store")
    return float(steps[0])


def check_cube(cube_ds: xr.Dataset, what: str = "cube", need_pairs: bool = True) -> None:
    """Raise :class:`GlacierflowError` unless ``cube_ds`` looks like a glacierflow cube store."""
    if "ndsi" not in cube_ds.data_vars:
        raise GlacierflowError(
            f"{what} has no 'ndsi' variable; is it a glacierflow cube? build one with build-cube"
        )
    if tuple(cube_ds["ndsi"].dims) != ("time", "y", "x"):
        raise GlacierflowError(f"{what} ndsi has dims {cube_ds['ndsi'].dims}; expected (time, y, x)")
    if need_pairs and cube_ds.sizes["time"] < 2:
        raise GlacierflowError(
            f"{what} has {cube_ds.sizes['time']} period(s); flow needs at least 2 (widen the date range)"
        )


def select_pairs(times: Any, spec: FlowSpec, paths: Any = None) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)``, ``times[i] < times[j]``, of the acquisitions (or periods) to match.

    Parameters
    ----------
    times
        Acquisition times (anything :class:`pandas.DatetimeIndex` accepts), sorted ascending.
    spec
        ``pairs`` (``annual``, ``consecutive`` or ``MIN:MAX`` days) and ``max_pairs_per_scene``.
    paths
        WRS path per time (optional): same-path pairs (the same viewing geometry) come first.

    Returns
    -------
    list of tuple of int
        Sorted. ``consecutive``: each time with the next one on its path (the next one at all where
        its path has none). Day ranges: candidates inside the range, same path first, then the Δt
        closest to the middle of the range (``auto``: to a year, the same season), each index in at most
        ``max_pairs_per_scene`` pairs.
    """
    t = pd.DatetimeIndex(times)
    if not t.is_monotonic_increasing:
        raise GlacierflowError("acquisition times are not sorted ascending; rebuild the cube store")
    n = len(t)
    path = np.zeros(n, int) if paths is None else np.asarray(paths)
    days = np.asarray((t.values[None, :] - t.values[:, None]) / np.timedelta64(1, "D"), dtype=float)
    limit = spec.max_pairs_per_scene
    count = np.zeros(n, int)
    out = []
    if spec.pairs == "consecutive":
        for i in range(n - 1):
            later = [j for j in range(i + 1, n) if days[i, j] > 0]
            same = [j for j in later if path[j] == path[i]]
            j = (same or later or [None])[0]
            if j is not None and count[i] < limit and count[j] < limit:
                out.append((i, j))
                count[[i, j]] += 1
        return sorted(out)
    low, high = spec.day_range  # type: ignore[misc]
    mid = min(365.25, high) if spec.pairs == "auto" else (low + high) / 2.0  # auto: same season, most texture
    ii, jj = np.nonzero((days >= low) & (days <= high))
    order = sorted(zip(ii, jj, strict=True), key=lambda p: (path[p[0]] != path[p[1]], abs(days[p] - mid), p))
    for i, j in order:
        if count[i] < limit and count[j] < limit:
            out.append((int(i), int(j)))
            count[[i, j]] += 1
    return sorted(out)


def scene_guides(guides: xr.Dataset, scenes: xr.Dataset) -> xr.DataArray:
    """The guide images ``guide(scene, y, x)`` with ``time`` and ``wrs_path`` per scene, sorted by time.

    ``guides`` is the cube store's ``guides`` group (``scene`` = item ids), ``scenes`` its ``scenes``
    table (``item_id``, ``time``, ``wrs_path``). The small table is read here (the pairs depend on it).
    """
    table = scenes[["item_id", "wrs_path"]].compute(scheduler="sync")
    ids = [str(s) for s in table["item_id"].values]
    where = {s: k for k, s in enumerate(ids)}
    missing = [str(s) for s in guides["scene"].values if str(s) not in where]
    if missing:
        raise GlacierflowError(f"guide scene {missing[0]} is not in the scenes table; rebuild the cube store")
    rows = [where[str(s)] for s in guides["scene"].values]
    g = guides["guide"].assign_coords(
        time=("scene", scene_times(table, ids)[rows]),
        wrs_path=("scene", np.asarray(table["wrs_path"].values[rows], dtype=np.int64)),
    )
    return g.sortby("time")


def scene_times(table: xr.Dataset, ids: list[str]) -> np.ndarray:
    """Acquisition time per row of the scenes table.

    Where the table's ``time`` is not per scene (a store written with the root's ``time`` over the
    table's), the acquisition date from the Landsat product ids (``..._YYYYMMDD_...``).
    """
    if "time" in table.variables and table["time"].dims == ("scene",):
        return pd.DatetimeIndex(table["time"].values).values
    try:
        return pd.DatetimeIndex([pd.Timestamp(i.split("_")[3]) for i in ids]).values
    except (IndexError, ValueError):
        raise GlacierflowError("the scenes table has no acquisition time per scene; rebuild the cube store") from None


def tracked_images(cube: xr.Dataset, guides: xr.DataArray | None, spec: FlowSpec) -> tuple[xr.DataArray, str]:
    """The images to pair, ``(scene, y, x)`` with ``time`` (and ``wrs_path``) coords, and their kind."""
    images = spec.images
    if images == "auto":  # guides where there are; a forecast store's NDSI; a --no-guides cube: say so
        images = "guides" if guides is not None else "ndsi"
        if guides is None and "cube_spec" in cube.attrs:
            raise GlacierflowError(
                "the cube store has no guides group (built with --no-guides); rebuild it with build-cube "
                "--guides --overwrite, or track its NDSI periods with --images ndsi"
            )
    if images == "guides":
        if guides is None:
            raise GlacierflowError("the store has no guides group; rebuild it with build-cube --guides --overwrite")
        return guides.astype(np.float32), "guide"
    check_cube(cube)
    nd = cube["ndsi"].rename(time="scene")
    times = pd.DatetimeIndex(cube["time"].values)
    if "time_mean" in cube:  # mean acquisition time of each period: the real Δt
        mean = pd.DatetimeIndex(cube["time_mean"].compute(scheduler="sync").values)
        times = pd.DatetimeIndex(np.where(mean.isna(), times, mean))
    nd = nd.assign_coords(time=("scene", times.values))
    if "interpolated" in cube:  # interpolated periods carry no observation: never paired
        interp = np.asarray(cube["interpolated"].compute(scheduler="sync").values, bool)
        nd = nd.isel(scene=np.flatnonzero(~interp))
    return nd.astype(np.float32), "ndsi"


def search_px(spec: FlowSpec, years: float, pixel: float) -> int:
    """NCC search range (px) of a pair: ``spec.search`` or ``ceil(max_speed * years / pixel) + 2``."""
    return int(spec.search or math.ceil(spec.max_speed * years / pixel) + 2)
