"""What tests need, ours and users': a scheduler that refuses to compute, and synthetic cube stores.

* :func:`raise_if_computes` — a context manager under which any Dask compute fails, to prove a stage
  is lazy. An explicit ``.compute(scheduler="sync")`` inside the block still runs (an explicit
  scheduler wins over the configured one), so a test can check the lazy result right there.
* :func:`synthetic_cube` — an in-memory Dataset shaped like the cube store contract
  (``docs/architecture.md``): ``ndsi(time, y, x)`` float32 in [0, 1] (the paper's snow mask:
  NDSI where NDSI >= threshold, else 0), ``n_valid`` uint8, ``interpolated``, ``n_scenes``,
  ``time_mean``, a ``spatial_ref`` coordinate with the EPSG code, and ``cube_spec`` /
  ``preprocess_spec`` as JSON attrs; with a seasonal snow signal, a known drift and noise.
* :func:`write_synthetic_cube` — the same written as a complete Zarr store that
  ``xr.open_zarr(path, decode_coords="all")`` and :func:`glacierflow.storage.store.open_store` read.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
import xarray as xr
from scipy import ndimage

from glacierflow.choices import PERIODS, period_months
from glacierflow.errors import GlacierflowError

#: months per period, for the periods the cube builder supports (:data:`glacierflow.choices.PERIODS`)
PERIOD_MONTHS = {p: period_months(p) for p in PERIODS}
#: the source checkout this package runs from (``deploy/`` lives there)
SOURCE_ROOT = Path(__file__).resolve().parents[2]
#: attribute that marks a store as completely written (the cube store contract)
COMPLETE_ATTR = "glacierflow_complete"
PIXEL_M = 30.0
DEFAULT_EPSG = 32643  # UTM 43N (Parvati)


class ComputeRefused(AssertionError):
    """Raised by :func:`refuse_compute`: something computed where nothing should."""


def refuse_compute(*args: Any, **kwargs: Any) -> Any:
    """A Dask scheduler that raises :class:`ComputeRefused` whenever it is asked to run a graph."""
    raise ComputeRefused("a dask graph was computed inside a raise_if_computes() block (a stage is not lazy)")


@contextmanager
def raise_if_computes() -> Iterator[None]:
    """Within the block, any Dask compute that uses the configured scheduler raises :class:`ComputeRefused`.

    Examples
    --------
    >>> import dask.array as da
    >>> with raise_if_computes():
    ...     lazy = da.ones(4) + 1          # building a graph is fine
    >>> int(lazy.sum().compute())
    8
    """
    with dask.config.set(scheduler=refuse_compute):
        yield


def _smooth_field(shape: tuple[int, int], rng: np.random.Generator, sigma: float) -> np.ndarray:
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (f - f.min()) / (f.max() - f.min())


def period_starts(start: str, n_periods: int, period: str) -> pd.DatetimeIndex:
    """``n_periods`` period starts of ``period`` from ``start`` (anchored on January like the cube builder)."""
    if period not in PERIOD_MONTHS:
        raise GlacierflowError(f"unsupported period {period!r}; choose one of: {', '.join(PERIOD_MONTHS)}")
    months = PERIOD_MONTHS[period]
    t0 = pd.Timestamp(start)
    first = pd.Timestamp(year=t0.year, month=1 + ((t0.month - 1) // months) * months, day=1)
    return pd.date_range(first, periods=n_periods, freq=f"{months}MS")


def synthetic_cube(
    n_periods: int = 8,
    size: int | tuple[int, int] = 64,
    period: str = "3MS",
    seed: int = 0,
    *,
    start: str = "2019-01-01",
    drift: tuple[float, float] = (0.0, 0.0),
    seasonal: float = 0.3,
    noise: float = 0.0,
    threshold: float = 0.3,
    interpolated: tuple[int, ...] = (),
    epsg: int = DEFAULT_EPSG,
    origin: tuple[float, float] = (600_000.0, 3_550_000.0),
    chunks: dict[str, int] | None = None,
) -> xr.Dataset:
    """A cube Dataset following the cube store contract, with known content.

    The scene is a smooth random texture ``T`` (values in [0, 1]); period ``k`` shows ``T`` moved by
    ``k * drift`` pixels (columns right, rows down), brightened by a seasonal snow term
    ``seasonal * cos(2 pi (month - 1) / 12)`` (most snow in January), plus Gaussian ``noise``, then
    mapped to NDSI ``1.1 * a - 0.1`` and snow-masked (NDSI where >= ``threshold``, else 0), clipped to [0, 1].

    Parameters
    ----------
    n_periods
        Number of periods (``time`` length).
    size
        Side in pixels, or ``(ny, nx)``.
    period
        ``"1MS"``, ``"3MS"`` or ``"6MS"``; ``time`` holds the period starts.
    seed
        Seed of the texture and the noise.
    start
        A date in the first period.
    drift
        ``(columns, rows)`` per period that the texture moves (content ``k * cols`` right, ``k * rows`` down).
    seasonal
        Amplitude of the seasonal snow term (0: no season).
    noise
        Standard deviation of the Gaussian noise added before the snow mask.
    threshold
        Snow-mask NDSI threshold.
    interpolated
        Indices of periods flagged ``interpolated`` (``n_scenes`` 0, ``n_valid`` 0); their ``ndsi`` is the
        mean of the neighbouring periods, like the builder's linear interpolation.
    epsg
        EPSG code of the grid (UTM); pixel size 30 m.
    origin
        ``(x, y)`` of the upper-left pixel corner in metres.
    chunks
        Dask chunks for the result (e.g. ``{"time": 1}``); default: numpy-backed.

    Returns
    -------
    xarray.Dataset
        ``ndsi``, ``n_valid``, ``interpolated``, ``n_scenes``, ``time_mean`` and the ``spatial_ref`` coordinate.
    """
    return _render(n_periods=n_periods, size=size, period=period, seed=seed,
                   start=start, drift=drift, seasonal=seasonal, noise=noise, threshold=threshold,
                   interpolated=interpolated, epsg=epsg, origin=origin, chunks=chunks)[0]


def _render(
    n_periods: int = 8,
    size: int | tuple[int, int] = 64,
    period: str = "3MS",
    seed: int = 0,
    *,
    start: str = "2019-01-01",
    drift: tuple[float, float] = (0.0, 0.0),
    seasonal: float = 0.3,
    noise: float = 0.0,
    threshold: float = 0.3,
    interpolated: tuple[int, ...] = (),
    epsg: int = DEFAULT_EPSG,
    origin: tuple[float, float] = (600_000.0, 3_550_000.0),
    chunks: dict[str, int] | None = None,
) -> tuple[xr.Dataset, np.ndarray]:
    """:func:`synthetic_cube` and the per-period guide textures (high-passed), ``(time, y, x)`` float32."""
    from glacierflow.storage.store import spatial_ref

    ny, nx = (size, size) if isinstance(size, int) else size
    if n_periods < 1 or ny < 2 or nx < 2:
        raise GlacierflowError(f"synthetic cube needs n_periods >= 1 and size >= 2, got {n_periods}, {size}")
    rng = np.random.default_rng(seed)
    times = period_starts(start, n_periods, period)
    pad = int(np.ceil(max(abs(drift[0]), abs(drift[1])) * n_periods)) + 4
    texture = _smooth_field((ny + 2 * pad, nx + 2 * pad), rng, sigma=3.0)
    rows, cols = np.mgrid[0:ny, 0:nx].astype(np.float64)
    frames = np.empty((n_periods, ny, nx), np.float32)
    guides = np.empty((n_periods, ny, nx), np.float32)
    for k, t in enumerate(times):
        moved = ndimage.map_coordinates(
            texture, [rows + pad - k * drift[1], cols + pad - k * drift[0]], order=3, mode="nearest"
        )
        guides[k] = moved - ndimage.gaussian_filter(moved, 6.0, mode="nearest")  # high-passed, like ECC's guide
        a = moved + seasonal * np.cos(2 * np.pi * (t.month - 1) / 12.0)
        if noise:
            a = a + rng.normal(0.0, noise, a.shape)
        nd = 1.1 * a - 0.1
        frames[k] = np.clip(np.where(nd >= threshold, nd, 0.0), 0.0, 1.0)
    interp = np.zeros(n_periods, bool)
    interp[list(interpolated)] = True
    for k in np.flatnonzero(interp):
        before = [j for j in range(k - 1, -1, -1) if not interp[j]][:1]
        after = [j for j in range(k + 1, n_periods) if not interp[j]][:1]
        neighbours = before + after
        if neighbours:
            frames[k] = frames[neighbours].mean(axis=0)
    n_scenes = np.where(interp, 0, 1 + rng.integers(0, 4, n_periods)).astype(np.int64)
    n_valid = np.broadcast_to(n_scenes[:, None, None], frames.shape).astype(np.uint8)
    step = pd.DateOffset(months=PERIOD_MONTHS[period])
    mid = np.array([t + (t + step - t) / 2 for t in times], dtype="datetime64[ns]")
    time_mean = np.where(interp, np.datetime64("NaT", "ns"), mid)

    x = origin[0] + PIXEL_M / 2 + PIXEL_M * np.arange(nx)
    y = origin[1] - PIXEL_M / 2 - PIXEL_M * np.arange(ny)
    grid = {"grid_mapping": "spatial_ref"}
    ds = xr.Dataset(
        {
            "ndsi": (("time", "y", "x"), frames, {**grid, "long_name": "snow-mask NDSI, period mean",
                                                  "period": period, "threshold": threshold}),
            "n_valid": (("time", "y", "x"), n_valid, {**grid, "long_name": "real observations in the mean"}),
            "interpolated": ("time", interp),
            "n_scenes": ("time", n_scenes),
            "time_mean": ("time", time_mean),
        },
        coords={"time": times, "y": y, "x": x, "spatial_ref": spatial_ref(epsg)},
    )
    ds.attrs.update(
        spec_attrs(times, period, epsg=epsg, ndsi_threshold=threshold),
        synthetic=json.dumps({"seed": seed, "drift": list(drift), "seasonal": seasonal, "noise": noise}),
    )
    return (ds.chunk(chunks) if chunks else ds), guides


def _groups(cube: xr.Dataset, guides: np.ndarray) -> dict[str, xr.Dataset]:
    """The ``scenes`` table and ``guides`` group of a synthetic cube: one scene per observed period.

    Each non-interpolated period has one acquisition at its ``time_mean`` (item id ``SYNTH_<k>_<date>``, WRS
    path 148, T1, used, aligned with zero shift); its guide is the period's texture, high-passed (mean ~0),
    so it moves by the cube's ``drift`` per period.
    """
    keep = np.flatnonzero(~np.asarray(cube["interpolated"].values, bool))
    when = pd.DatetimeIndex(np.asarray(cube["time_mean"].values)[keep])
    ids = np.array([f"SYNTH_{k:03d}_{t:%Y%m%d}" for k, t in zip(keep, when, strict=True)], dtype=object)
    n = len(keep)
    scenes = xr.Dataset(
        {
            "item_id": ("scene", ids),
            "platform": ("scene", np.full(n, "landsat-8", dtype=object)),
            "cloud_cover": ("scene", np.full(n, 5.0)),
            "valid_fraction": ("scene", np.ones(n, np.float32)),
            "used": ("scene", np.ones(n, bool)),
            "reason": ("scene", np.full(n, "", dtype=object)),
            "aligned": ("scene", np.ones(n, bool)),
            "shift_x": ("scene", np.zeros(n)),
            "shift_y": ("scene", np.zeros(n)),
            "ecc": ("scene", np.ones(n)),
            "wrs_path": ("scene", np.full(n, 148, np.int16)),
            "wrs_row": ("scene", np.full(n, 38, np.int16)),
            "collection_category": ("scene", np.full(n, "T1", dtype=object)),
        },
        coords={"time": ("scene", when.values), "spatial_ref": cube["spatial_ref"]},
        attrs=dict(cube.attrs),
    )
    guide = xr.Dataset(
        {"guide": (("scene", "y", "x"), np.asarray(guides)[keep],
                   {"grid_mapping": "spatial_ref", "long_name": "synthetic guide image (high-passed texture)"})},
        coords={"scene": ids, "spatial_ref": cube["spatial_ref"]},
        attrs=dict(cube.attrs),
    )
    return {"scenes": scenes, "guides": guide.chunk({"scene": 1})}


def spec_attrs(times: Any, period: str = "3MS", *, epsg: int = DEFAULT_EPSG, **preprocess: Any) -> dict[str, str]:
    """``cube_spec`` and ``preprocess_spec`` attrs (JSON) for a synthetic cube over the periods ``times``.

    ``preprocess`` overrides :class:`~glacierflow.specs.PreprocessSpec` fields (e.g. ``ndsi_threshold``).
    """
    from glacierflow.specs import CubeSpec, PreprocessSpec

    t = pd.DatetimeIndex(times)
    if period not in PERIOD_MONTHS:
        raise GlacierflowError(f"unsupported period {period!r}; choose one of: {', '.join(PERIOD_MONTHS)}")
    end = t[-1] + pd.DateOffset(months=PERIOD_MONTHS[period]) - pd.Timedelta(days=1)
    cube_spec = CubeSpec(name="synthetic", bbox=(77.0, 32.0, 77.1, 32.1), epsg=int(epsg),
                         start=t[0].strftime("%Y-%m-%d"), end=end.strftime("%Y-%m-%d"), catalog="synthetic")
    return {"cube_spec": cube_spec.to_json(), "preprocess_spec": PreprocessSpec(period=period, **preprocess).to_json()}


def write_synthetic_cube(path: str, *, overwrite: bool = False, groups: bool = False, **kwargs: Any) -> str:
    """Write :func:`synthetic_cube` (``**kwargs``) as a complete cube store at ``path``; return ``path``.

    With ``groups`` the store also holds the ``scenes`` table and the ``guides`` group
    (:func:`_groups`), as build-cube writes them. The store carries the completion marker and
    consolidated metadata, so both ``xr.open_zarr(path, decode_coords="all")`` and
    :func:`glacierflow.storage.store.open_store` read it.
    """
    import zarr

    from glacierflow import __version__

    kwargs.setdefault("chunks", {"time": 1})  # the store layout: one period per chunk
    ds, guides = _render(**kwargs)
    ds.attrs.update(glacierflow_version=__version__, created=pd.Timestamp.now(tz="UTC").isoformat())
    ds.attrs[COMPLETE_ATTR] = False
    ds["time_mean"].encoding.update(units="seconds since 1970-01-01", dtype="int64")
    extra = _groups(ds, guides) if groups else {}
    ds.to_zarr(str(path), mode="w" if overwrite else "w-", consolidated=False)
    for name, group in extra.items():
        group.to_zarr(str(path), group=name, mode="w", consolidated=False)
    root = zarr.open_group(str(path), mode="r+")
    root.attrs[COMPLETE_ATTR] = True
    with warnings.catch_warnings():  # zarr 3 flags consolidated metadata as outside the v3 spec
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(str(path))
    return str(path)


@contextmanager
def local_gateway(workdir: str, password: str = "test-password", max_workers: int = 8,
                  config: str | os.PathLike[str] | None = None) -> Iterator[str]:
    """A real dask-gateway-server on 127.0.0.1 (``deploy/gateway-config.py``, local backend); yields its URL.

    ``config`` is the gateway configuration file; default: ``deploy/gateway-config.py`` of the source
    checkout this package runs from (an installed package passes its own copy).

    Clusters are processes of this machine running this environment's ``dask`` (so this glacierflow);
    clients authenticate with basic auth (user any name, ``password``): the ``gateway.auth`` Dask config is
    set meanwhile. Used by the tests (``tests/gateway_fixtures.py``) and ``benchmarks/bench_scale.py``.
    """
    import subprocess
    import sys
    import time
    import urllib.request

    import dask_gateway  # noqa: F401  (registers the gateway.* config defaults before auth is set)

    from glacierflow.twin.stac_servers import free_port

    bin_dir = Path(sys.executable).parent
    config = Path(config) if config is not None else SOURCE_ROOT / "deploy" / "gateway-config.py"
    if not (bin_dir / "dask-gateway-server").exists() or not config.is_file():
        raise GlacierflowError(f"dask-gateway-server or the gateway config {config} missing; pip install "
                               "'glacierflow[gateway]' dask-gateway-server, and pass config= outside a source checkout")
    port, api_port = free_port(), free_port()
    env = dict(os.environ, GLACIERFLOW_GATEWAY_ADDRESS=f"127.0.0.1:{port}",
               GLACIERFLOW_GATEWAY_API_ADDRESS=f"127.0.0.1:{api_port}", GLACIERFLOW_GATEWAY_PASSWORD=password,
               GLACIERFLOW_GATEWAY_DIR=str(workdir), GLACIERFLOW_GATEWAY_BIN=str(bin_dir),
               GLACIERFLOW_GATEWAY_MAX_WORKERS=str(max_workers))
    log_path = Path(workdir) / "gateway-server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(bin_dir / "dask-gateway-server"), "-f", str(config)], env=env, stdout=log,
                                stderr=subprocess.STDOUT, cwd=workdir)
        address = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with urllib.request.urlopen(f"{address}/api/health", timeout=1) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise GlacierflowError(f"dask-gateway-server did not start; see {log_path}")
                time.sleep(0.2)
            auth = {"gateway.auth.type": "basic",
                    "gateway.auth.kwargs": {"username": "glacierflow", "password": password}}
            with dask.config.set(auth):
                yield address
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def flow_truth(cube: xr.Dataset, truth_store: str, margin_px: int = 3) -> dict[str, np.ndarray]:
    """A twin's true velocity on a cube's grid, for :func:`flow_figures`.

    Parameters
    ----------
    cube
        The cube the velocity was measured on (its ``x``/``y`` labels select the truth: same UTM grid).
    truth_store
        The twin's ``truth.zarr``.
    margin_px
        Stable-ground pixels are those at least this far from the true glacier outline.
    """
    truth = xr.open_zarr(truth_store, decode_coords="all", consolidated=False)
    on = truth[["u", "v", "glacier_mask"]].sel(x=cube["x"], y=cube["y"])  # same UTM grid: exact labels
    u, v = on["u"].values.astype(np.float64), on["v"].values.astype(np.float64)
    glacier = on["glacier_mask"].values.astype(bool)
    return {"u": u, "v": v, "speed": np.hypot(u, v), "glacier": glacier,
            "far": ndimage.distance_transform_edt(~glacier) >= margin_px}


def flow_figures(ds: xr.Dataset, truth: dict[str, np.ndarray]) -> dict[str, float]:
    """A velocity store's composite against the truth (:func:`flow_truth`), the figures of issue 11.

    Returns
    -------
    dict
        ``true_median`` (m/yr over glacier pixels); ``rel``: median ``|speed - true speed|`` over glacier
        pixels with a value / ``true_median``; ``direction``: median angle (deg) between measured and true
        vectors where the truth moves at least a quarter of the median; ``ice_coverage``: glacier pixels
        with a value; ``stable``: median speed (m/yr) on pixels ``margin_px`` or more from the ice and
        ``stable_valid`` the fraction of those with a value; ``error_ratio``: median stated
        ``speed_error`` (``v_error``) over glacier pixels / the actual median ``|speed - true speed|``;
        ``error_ratio_x``, ``error_ratio_y``: the same per component (``vx_error`` / median ``|vx - true|``,
        ``vy_error`` / median ``|vy - true|``).
    """
    its_live = "vx" in ds  # a written store's root, or velocity()'s own dataset
    u, v = (ds["vx"].values, ds["vy"].values) if its_live else (ds["u_composite"].values, ds["v_composite"].values)
    err = ds["v_error"].values if its_live else ds["speed_error"].values
    ex, ey = (ds["vx_error"].values, ds["vy_error"].values) if its_live else (ds["u_error"].values,
                                                                              ds["v_error"].values)
    gl, far = truth["glacier"], truth["far"]
    speed = np.hypot(u, v)
    ok = gl & np.isfinite(speed)
    true_median = float(np.median(truth["speed"][gl]))
    mae = float(np.median(np.abs(speed[ok] - truth["speed"][ok])))
    moving = ok & (truth["speed"] >= 0.25 * true_median)
    true_angle = np.arctan2(truth["v"][moving], truth["u"][moving])
    angle = np.angle(np.exp(1j * (np.arctan2(v[moving], u[moving]) - true_angle)))
    stable = far & np.isfinite(speed)
    return {
        "true_median": true_median, "rel": mae / true_median,
        "direction": float(np.degrees(np.median(np.abs(angle)))),
        "ice_coverage": float(ok.sum() / gl.sum()),
        "stable": float(np.median(speed[stable])), "stable_valid": float(stable.sum() / far.sum()),
        "error_ratio": float(np.median(err[ok]) / mae),
        "error_ratio_x": float(np.median(ex[ok]) / np.median(np.abs(u[ok] - truth["u"][ok]))),
        "error_ratio_y": float(np.median(ey[ok]) / np.median(np.abs(v[ok] - truth["v"][ok]))),
    }


def oracle_guides(guides: xr.DataArray, truth_store: str, variable: str = "ndsi",
                  highpass: float = 0.0) -> xr.DataArray:
    """The cube's guides replaced by a twin's noise-free truth images: the input-side bound of ``flow``.

    Each guide scene takes the truth store's ``variable`` (``ndsi``: the clean illuminated NDSI on the
    truth grid, without clouds, QA errors, sensor noise or misregistration; ``ndsi_surface`` on the
    ``himalaya`` world: the same without the terrain illumination) at its acquisition time, on the
    cube's grid. What ``velocity`` then gets wrong is the matcher's and the world's (texture
    decorrelation, snow), not the preprocessing's: it bounds what any better guide could achieve.

    Parameters
    ----------
    guides
        ``guide(scene, y, x)`` with a ``time`` coordinate (:func:`glacierflow.motion.velocity.scene_guides`).
    truth_store
        The twin's ``truth.zarr`` (same UTM grid as the cube).
    variable
        A ``(time, y, x)`` variable of the truth store (``red_clean``: the clean red band, the truth-image
        bound of a red-band guide).
    highpass
        Sigma (px) of the guides' high-pass (:func:`glacierflow.preprocess.align.highpass_filter`), 0: none.

    Returns
    -------
    xarray.DataArray
        Like ``guides`` (same coordinates), float32, one chunk per scene; read eagerly (a twin is small).
    """
    truth = xr.open_zarr(truth_store, consolidated=False)
    if variable not in truth or truth[variable].dims != ("time", "y", "x"):
        raise GlacierflowError(f"truth store {truth_store!r} has no (time, y, x) variable {variable!r}")
    times = pd.DatetimeIndex(truth["time"].values)
    want = pd.DatetimeIndex(guides["time"].values)
    at = times.get_indexer(want, method="nearest")
    gap = np.abs((times[at] - want) / pd.Timedelta(seconds=1))
    if (gap > 1).any():
        raise GlacierflowError(f"truth store {truth_store!r} has no image at {want[int(np.argmax(gap))]}")
    clean = truth[variable].isel(time=xr.DataArray(at, dims="scene")).sel(x=guides["x"], y=guides["y"])
    data = np.asarray(clean.transpose("scene", "y", "x").values, np.float32)
    if highpass > 0:
        from glacierflow.preprocess.align import highpass_filter

        data = highpass_filter(data, highpass)
    return guides.copy(data=data).chunk({"scene": 1})


def tiny_store_dataset(value: float) -> xr.Dataset:
    """A 2 x 4 x 5 dask-backed ``ndsi`` filled with ``value`` on a UTM 43N grid: the smallest store to write."""
    import dask.array as darr

    from glacierflow.storage.store import add_spatial_ref

    ds = xr.Dataset(
        {"ndsi": (("time", "y", "x"), darr.full((2, 4, 5), value, chunks=(1, 4, 5), dtype=np.float32))},
        coords={"time": np.array(["2020-01-01", "2020-04-01"], "datetime64[ns]"),
                "y": 3.5e6 - 30 * np.arange(4) - 15, "x": 7e5 + 30 * np.arange(5) + 15},
    )
    return add_spatial_ref(ds, DEFAULT_EPSG)


#: Root attributes that differ between two runs of the same work: when it ran (``created``).
RUN_ATTRS = ("created",)


def open_tree(url: str, storage_options: dict[str, Any] | None = None) -> xr.DataTree:
    """A whole store, loaded: every group, variable, coordinate and attribute (``decode_coords="all"``)."""
    return xr.open_datatree(url, engine="zarr", consolidated=False, decode_coords="all",
                            storage_options=storage_options).load()


def assert_stores_identical(a: str | xr.DataTree, b: str | xr.DataTree, ignore_attrs: tuple[str, ...] = RUN_ATTRS
                            ) -> None:
    """Two stores (URLs or loaded trees) are the same, bit for bit: every group, variable, coordinate, attribute.

    ``xarray.testing.assert_identical`` on the whole trees (names, dims, attrs, values; NaN where NaN), then the
    bytes of every array, so that ``-0.0`` against ``0.0`` or two NaN payloads also count. Root attributes named in
    ``ignore_attrs`` (when it ran) are left out.
    """
    trees = [open_tree(t) if isinstance(t, str) else t.copy() for t in (a, b)]
    for tree in trees:
        tree.attrs = {k: v for k, v in tree.attrs.items() if k not in ignore_attrs}
    xr.testing.assert_identical(trees[0], trees[1])
    for path, node in trees[0].subtree_with_keys:
        other = trees[1][path] if path not in ("", ".") else trees[1]
        for name, var in node.to_dataset(inherit=False).variables.items():
            assert np.asarray(var.values).tobytes() == np.asarray(other[name].values).tobytes(), f"{path}/{name}"
