"""Dense optical-flow velocity fields (Farnebäck) from a cube store.

``cube.zarr --flow--> velocity.zarr``: for each pair of periods (consecutive, or same season one year
apart) the snow-mask NDSI frames are matched with OpenCV's Farnebäck algorithm, one pair per Dask
task, and the pixel displacement is turned into surface velocity in m/yr using the pixel size from
the ``x``/``y`` coordinates and the real time between the two periods.

Conventions
-----------
* ``u`` is east (+x), ``v`` is north (+y), both m/yr. Image rows run south when ``y`` decreases
  downwards, so ``v = dy_rows * (y[1] - y[0]) / years`` is ``-dy_rows * 30 m / years`` on a UTM grid.
* Farnebäck returns (near) zero flow on float32 images in [0, 1] (measured: exactly 0.0 for a 2 px
  shift); frames are mapped to float32 [0, 255] first (:func:`to_flow_image`).
* Pixels without information are NaN, never zero motion: NaN in either frame, or local texture (the
  standard deviation of NDSI in a ``texture_window`` box) below ``min_texture`` in either frame (a flat
  snow field or bare ground cannot be matched).
* Pixels whose forward and backward matches disagree by more than ``max_fb_error`` pixels are NaN
  (forward-backward consistency: the backward flow, sampled where the forward flow points, must
  bring the pixel back). This removes mismatches where static features (seasonal snow patches, cast
  shadows) compete with the moving ice texture, which a texture threshold cannot see.
* Besides the per-pair fields the store holds a robust composite, ``u_median``, ``v_median``,
  ``speed_median`` (``y``, ``x``): the per-pixel median of ``u`` and ``v`` over the valid pairs, and
  ``n_pairs`` (how many pairs contributed). With annual pairs this is the product to quote: one bad
  pair (a snowy winter, a cloudy period) does not move the median.
* Pairs involving an interpolated period are kept in the output (so the graph is built without
  reading any data) but are all NaN; the per-pair ``interpolated`` variable says which. The flags are
  evaluated inside the pair's task, so :func:`velocity` stays lazy.
"""

from __future__ import annotations

import json
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from glacierflow import store
from glacierflow.config import PAIR_KINDS, CubeSpec, FlowSpec, PreprocessSpec, spec_from_store
from glacierflow.errors import GlacierflowError

DAYS_PER_YEAR = 365.25


def pair_indices(times: Any, pairs: str = "consecutive") -> list[tuple[int, int]]:
    """Index pairs ``(i, j)``, ``i < j``, of the periods to match.

    Parameters
    ----------
    times
        Period start times (anything :class:`pandas.DatetimeIndex` accepts), sorted ascending.
    pairs
        ``"consecutive"``: ``(i, i + 1)``. ``"annual"``: each period with the period that starts in the
        same month one calendar year later, where there is one.

    Returns
    -------
    list of tuple of int
    """
    if pairs not in PAIR_KINDS:
        raise GlacierflowError(f"unknown pairs {pairs!r}; choose one of {', '.join(PAIR_KINDS)}")
    t = pd.DatetimeIndex(times)
    if not t.is_monotonic_increasing:
        raise GlacierflowError("cube times are not sorted ascending; rebuild the cube store")
    if pairs == "consecutive":
        return [(i, i + 1) for i in range(len(t) - 1)]
    where = {(ts.year, ts.month): k for k, ts in enumerate(t)}
    out = []
    for i, ts in enumerate(t):
        j = where.get((ts.year + 1, ts.month))
        if j is not None:
            out.append((i, j))
    return out


def to_flow_image(ndsi: np.ndarray) -> np.ndarray:
    """Map a snow-mask NDSI frame to the float32 [0, 255] image Farnebäck needs.

    NDSI is clipped to [0, 1] (the snow mask is 0 or >= the threshold) and NaN becomes 0. Without the
    scaling OpenCV returns zero flow for images in [0, 1].
    """
    a = np.nan_to_num(np.asarray(ndsi, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return (np.clip(a, 0.0, 1.0) * 255.0).astype(np.float32)


def local_texture(ndsi: np.ndarray, size: int) -> np.ndarray:
    """Standard deviation of NDSI in a ``size`` x ``size`` box around each pixel (NaN counts as 0)."""
    from scipy import ndimage

    a = np.nan_to_num(np.asarray(ndsi, dtype=np.float64), nan=0.0)
    mean = ndimage.uniform_filter(a, size, mode="nearest")
    sq = ndimage.uniform_filter(a * a, size, mode="nearest")
    return np.sqrt(np.clip(sq - mean * mean, 0.0, None)).astype(np.float32)


def _farneback(a: np.ndarray, b: np.ndarray, spec: FlowSpec) -> np.ndarray:
    """OpenCV Farnebäck on two prepared [0, 255] images: ``(H, W, 2)`` float32 (columns, rows)."""
    import cv2

    return cv2.calcOpticalFlowFarneback(
        a, b, None, spec.pyr_scale, spec.levels, spec.winsize, spec.iterations, spec.poly_n,
        spec.poly_sigma, 0,
    )


def fb_error(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """Forward-backward inconsistency in pixels, ``(H, W)``.

    ``forward`` maps frame A to B and ``backward`` B to A, both ``(H, W, 2)`` (columns, rows). A pixel
    consistent in both directions satisfies ``forward(p) + backward(p + forward(p)) = 0``.
    """
    import cv2

    h, w = forward.shape[:2]
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    back = cv2.remap(
        np.ascontiguousarray(backward, dtype=np.float32),
        cols + forward[..., 0], rows + forward[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE,
    )
    return np.hypot(forward[..., 0] + back[..., 0], forward[..., 1] + back[..., 1])


def farneback_pixels(prev: np.ndarray, nxt: np.ndarray, spec: FlowSpec) -> np.ndarray:
    """Farnebäck flow in pixels, ``(2, H, W)`` float32: columns right, rows down, masked.

    ``prev`` and ``nxt`` are NDSI frames; content at ``prev[r, c]`` is found at
    ``nxt[r + flow[1], c + flow[0]]``. Pixels without information (NaN input, too little texture,
    forward-backward inconsistency above ``spec.max_fb_error``) are NaN.
    """
    import cv2

    cv2.setNumThreads(0)
    a, b = to_flow_image(prev), to_flow_image(nxt)
    flow = _farneback(a, b, spec)
    out = np.moveaxis(flow, -1, 0).astype(np.float32)
    valid = np.isfinite(prev) & np.isfinite(nxt)
    if spec.min_texture > 0:
        box = spec.texture_box
        valid &= local_texture(prev, box) >= spec.min_texture
        valid &= local_texture(nxt, box) >= spec.min_texture
    if spec.max_fb_error > 0:
        valid &= fb_error(flow, _farneback(b, a, spec)) <= spec.max_fb_error
    out[:, ~valid] = np.nan
    return out


def _pair_velocity(
    prev: np.ndarray, nxt: np.ndarray, interp: np.ndarray, i: int, j: int,
    spec: FlowSpec, dx: float, dy: float, years: float,
) -> np.ndarray:
    """One pair's task: ``(3, H, W)`` float32 u, v, speed in m/yr (all NaN for an interpolated pair)."""
    prev = np.asarray(prev).reshape(prev.shape[-2:])
    nxt = np.asarray(nxt).reshape(nxt.shape[-2:])
    flags = np.asarray(interp).reshape(-1)
    if bool(flags[i]) or bool(flags[j]):
        return np.full((3, *prev.shape), np.nan, dtype=np.float32)
    flow = farneback_pixels(prev, nxt, spec)
    u = flow[0] * np.float32(dx / years)
    v = flow[1] * np.float32(dy / years)
    return np.stack([u, v, np.hypot(u, v)]).astype(np.float32)


def _grid_step(coord: xr.DataArray, name: str) -> float:
    values = np.asarray(coord.values, dtype=np.float64)  # index coordinate: in memory, no compute
    if values.size < 2:
        raise GlacierflowError(f"cube has {values.size} pixel(s) along {name}; need at least 2")
    steps = np.diff(values)
    if not np.allclose(steps, steps[0], rtol=1e-6, atol=1e-6) or steps[0] == 0:
        raise GlacierflowError(f"cube {name} coordinate is not a regular grid; rebuild the cube store")
    return float(steps[0])


def check_cube(cube_ds: xr.Dataset, what: str = "cube") -> None:
    """Raise :class:`GlacierflowError` unless ``cube_ds`` looks like a glacierflow cube store."""
    if "ndsi" not in cube_ds.data_vars:
        raise GlacierflowError(
            f"{what} has no 'ndsi' variable; is it a glacierflow cube? build one with build-cube"
        )
    if tuple(cube_ds["ndsi"].dims) != ("time", "y", "x"):
        raise GlacierflowError(f"{what} ndsi has dims {cube_ds['ndsi'].dims}; expected (time, y, x)")
    if cube_ds.sizes["time"] < 2:
        raise GlacierflowError(
            f"{what} has {cube_ds.sizes['time']} period(s); flow needs at least 2 (widen the date range)"
        )


def velocity(cube_ds: xr.Dataset, spec: FlowSpec | None = None) -> xr.Dataset:
    """Lazy velocity fields for the pairs of periods chosen by ``spec.pairs``.

    Parameters
    ----------
    cube_ds
        A cube store dataset (``ndsi(time, y, x)``, optional ``interpolated(time)``, ``spatial_ref``).
    spec
        Flow parameters; default :class:`FlowSpec`.

    Returns
    -------
    xarray.Dataset
        ``u``, ``v``, ``speed`` (float32, m/yr; +u east, +v north) on the cube grid with dims
        ``(time, y, x)``, ``time`` = pair midpoint; per pair ``time_start``, ``time_end``, ``dt_days``
        (coordinates) and ``interpolated`` (bool: the pair touches an interpolated period and is all
        NaN). One Dask task per pair; nothing is computed here. Also the median composite over
        the pairs (:func:`composite`): ``u_median``, ``v_median``, ``speed_median``, ``n_pairs``
        with dims ``(y, x)``.
    """
    spec = spec or FlowSpec()
    check_cube(cube_ds)
    times = pd.DatetimeIndex(cube_ds["time"].values)
    pairs = pair_indices(times, spec.pairs)
    if not pairs:
        raise GlacierflowError(
            f"no {spec.pairs} pairs in {len(times)} periods ({times[0]:%Y-%m-%d}..{times[-1]:%Y-%m-%d}); "
            "annual pairs need the same month one year later: widen the date range or use --pairs consecutive"
        )
    dx = _grid_step(cube_ds["x"], "x")
    dy = _grid_step(cube_ds["y"], "y")
    ndsi = cube_ds["ndsi"].data
    if not isinstance(ndsi, da.Array):
        ndsi = da.from_array(np.asarray(ndsi))
    ndsi = ndsi.astype(np.float32).rechunk((1, -1, -1))  # one period per chunk, full scene
    if "interpolated" in cube_ds:
        interp = cube_ds["interpolated"].data
        interp = interp if isinstance(interp, da.Array) else da.from_array(np.asarray(interp))
        interp = interp.astype(bool).rechunk(-1)
    else:
        interp = da.zeros(len(times), dtype=bool, chunks=-1)
    ny, nx = ndsi.shape[1:]

    start = times[[i for i, _ in pairs]]
    end = times[[j for _, j in pairs]]
    dt_days = np.asarray((end - start) / pd.Timedelta(days=1), dtype=np.float64)
    blocks = []
    for (i, j), days in zip(pairs, dt_days, strict=True):
        task = dask.delayed(_pair_velocity, pure=True)(
            ndsi[i], ndsi[j], interp, i, j, spec, dx, dy, days / DAYS_PER_YEAR
        )
        blocks.append(da.from_delayed(task, shape=(3, ny, nx), dtype=np.float32))
    stack = da.stack(blocks, axis=1)  # (3, pair, y, x)
    pair_interp = da.stack([interp[i] | interp[j] for i, j in pairs])

    coords: dict[str, Any] = {
        "time": ("time", np.asarray(start + (end - start) / 2, dtype="datetime64[ns]")),
        "time_start": ("time", np.asarray(start, dtype="datetime64[ns]")),
        "time_end": ("time", np.asarray(end, dtype="datetime64[ns]")),
        "dt_days": ("time", dt_days),
        "y": cube_ds["y"].variable,
        "x": cube_ds["x"].variable,
    }
    has_crs = "spatial_ref" in cube_ds.coords or "spatial_ref" in cube_ds.variables
    if has_crs:
        coords["spatial_ref"] = cube_ds["spatial_ref"].variable
    dims = ("time", "y", "x")
    units = {"u": "m/yr, +east", "v": "m/yr, +north", "speed": "m/yr"}
    data_vars = {}
    for k, name in enumerate(("u", "v", "speed")):
        attrs = {"units": "m yr-1", "long_name": f"surface velocity {name} ({units[name]})"}
        if has_crs:
            attrs["grid_mapping"] = "spatial_ref"
        data_vars[name] = xr.Variable(dims, stack[k], attrs)
    data_vars["interpolated"] = xr.Variable(
        ("time",), pair_interp, {"long_name": "pair uses an interpolated period (all NaN)"}
    )
    out = xr.Dataset(data_vars, coords=coords)
    out = out.assign(composite(out))
    out["time_start"].encoding.update(units="days since 1970-01-01", dtype="int64")
    out["time_end"].encoding.update(units="days since 1970-01-01", dtype="int64")
    out["time"].encoding.update(units="seconds since 1970-01-01", dtype="int64")
    out.attrs["flow_spec"] = json.dumps(spec.to_dict())
    return out


def _nanmedian_time(block: np.ndarray) -> np.ndarray:
    """Median over axis 0 ignoring NaN; NaN where all are NaN (without numpy's warning)."""
    empty = ~np.isfinite(block).any(axis=0)
    filled = np.where(empty[None], np.float32(0), block)
    out = np.nanmedian(filled, axis=0).astype(np.float32)
    out[empty] = np.nan
    return out


def composite(vel: xr.Dataset) -> dict[str, xr.DataArray]:
    """Robust composite of the pairs: per-pixel median of ``u`` and ``v`` over the valid pairs (lazy).

    Returns
    -------
    dict
        ``u_median``, ``v_median``, ``speed_median`` (float32 m/yr, dims ``y``, ``x``; speed is the
        length of the median vector) and ``n_pairs`` (int16: pairs with a finite value there).
        NaN where no pair has a value.
    """
    out: dict[str, xr.DataArray] = {}
    for name in ("u", "v"):
        data = vel[name].data
        data = data if isinstance(data, da.Array) else da.from_array(np.asarray(data))
        data = data.rechunk({0: -1})
        med = da.map_blocks(_nanmedian_time, data, drop_axis=0, dtype=np.float32)
        out[f"{name}_median"] = xr.DataArray(med, dims=("y", "x"), attrs=dict(vel[name].attrs))
    out["speed_median"] = xr.DataArray(
        da.hypot(out["u_median"].data, out["v_median"].data), dims=("y", "x"), attrs=dict(vel["speed"].attrs)
    )
    for name in ("u", "v", "speed"):
        out[f"{name}_median"].attrs["long_name"] = f"median over pairs of {vel[name].attrs.get('long_name', name)}"
    out["n_pairs"] = xr.DataArray(
        da.isfinite(vel["u"].data).sum(axis=0).astype(np.int16), dims=("y", "x"),
        attrs={"long_name": "number of pairs with a valid velocity"},
    )
    return out


def write_velocity(
    ds: xr.Dataset, url: str, overwrite: bool = False, source: str | None = None,
    storage_options: dict[str, Any] | None = None, cube_specs: tuple[CubeSpec, PreprocessSpec] | None = None,
) -> str:
    """Compute and write a velocity dataset with :func:`glacierflow.store.write_store` (safe write).

    Parameters
    ----------
    ds
        Output of :func:`velocity`.
    url
        Target path (local) or fsspec URL.
    overwrite
        Replace an existing store. Without it an existing target is refused.
    source
        The cube store URL, recorded in the attrs.
    storage_options
        fsspec options for remote targets.
    cube_specs
        The specs the cube was built with (:func:`cube_specs`), recorded as ``cube_spec`` and
        ``preprocess_spec`` so that the velocity store carries its whole provenance.

    Returns
    -------
    str
        ``url``.
    """
    from glacierflow import __version__

    ds = ds.copy()
    if cube_specs is not None:
        ds.attrs.update(cube_spec=cube_specs[0].to_json(), preprocess_spec=cube_specs[1].to_json())
    ds.attrs.update(
        glacierflow_version=__version__,
        source_cube=source or "",
        created=pd.Timestamp.now(tz="UTC").isoformat(),
    )
    return store.write_store(ds, url, overwrite=overwrite, storage_options=storage_options)


def open_cube(cube_url: str, storage_options: dict[str, Any] | None = None) -> xr.Dataset:
    """Open a complete cube store lazily, with a one-line error if it is missing or not a cube."""
    if not store.exists(cube_url, storage_options):
        raise GlacierflowError(f"cube store {cube_url!r} not found; build one with 'glacierflow build-cube'")
    ds = store.open_store(cube_url, storage_options, require=("ndsi",))
    check_cube(ds, what=f"cube store {cube_url!r}")
    return ds


def cube_specs(cube: xr.Dataset, where: str = "the cube store") -> tuple[CubeSpec, PreprocessSpec]:
    """The :class:`CubeSpec` and :class:`PreprocessSpec` a cube store was built with, read from its attrs."""
    return (
        spec_from_store(cube.attrs, "cube_spec", CubeSpec, where),
        spec_from_store(cube.attrs, "preprocess_spec", PreprocessSpec, where),
    )


def run_flow(
    cube_url: str, out_url: str, spec: FlowSpec | None = None, overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Open a cube store, compute velocities for ``spec.pairs`` and write the velocity store.

    Returns
    -------
    dict
        Summary: ``out``, ``period`` (the cube's, from its stored :class:`PreprocessSpec`), ``pairs``,
        ``pairs_interpolated`` (all-NaN pairs), ``median_speed_m_per_yr``
        and ``valid_fraction`` (over the pixels of the non-interpolated pairs), and for the median
        composite ``composite_median_speed_m_per_yr`` and ``composite_valid_fraction``.
    """
    spec = spec or FlowSpec()
    cube = open_cube(cube_url, storage_options)
    specs = cube_specs(cube, f"cube store {cube_url!r}")
    ds = velocity(cube, spec)
    write_velocity(ds, out_url, overwrite=overwrite, source=cube_url, storage_options=storage_options,
                   cube_specs=specs)
    written = store.open_store(out_url, storage_options, require=("u", "v", "speed"))
    interp = written["interpolated"].values.astype(bool)
    speed = written["speed"].isel(time=np.flatnonzero(~interp)).values
    finite = np.isfinite(speed)
    comp = written["speed_median"].values
    comp_ok = np.isfinite(comp)
    return {
        "out": out_url,
        "period": specs[1].period,
        "pairs": int(written.sizes["time"]),
        "pairs_interpolated": int(interp.sum()),
        "median_speed_m_per_yr": float(np.median(speed[finite])) if finite.any() else float("nan"),
        "valid_fraction": float(finite.mean()) if speed.size else 0.0,
        "composite_median_speed_m_per_yr": float(np.median(comp[comp_ok])) if comp_ok.any() else float("nan"),
        "composite_valid_fraction": float(comp_ok.mean()),
    }
