"""Full-scene forecasts: pad, tile with overlap, infer in batches, blend, crop, write Zarr by regions.

The scene is cut into ``patch x patch`` tiles whose starts step by ``patch - overlap``; the first tile starts
``overlap`` pixels before the scene (the scene is padded by reflection, so xbatcher's silent dropping of
partial edge patches never happens here). Each tile's forecast is weighted by a smooth separable window
(``sin^2``, a Hann window, floored so that no pixel gets zero weight) and the weighted tiles are summed and
divided by the summed weights, so tile borders leave no seams. With ``overlap=0`` the tiling is the original
code's non-overlapping one (each pixel from exactly one tile). The tiling and the blend live in
:mod:`glacierflow.geo.tiling`, shared with the ``full-scene`` training objective (``glacierflow.learn.objectives``).

Memory stays bounded: the forecast is built per row band (the store's spatial chunk height); a band reads only
the input rows its tiles need, so a scene larger than memory never needs the whole forecast in memory. The
bands are dask tasks behind a lazy ``(t_out, y, x)`` array that :func:`glacierflow.storage.store.write` writes
chunk by chunk (template metadata first, then one region per chunk).
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from glacierflow import __version__
from glacierflow.choices import season_length
from glacierflow.errors import GlacierflowError
from glacierflow.geo.tiling import (  # noqa: F401  (the tiling and blending are part of predict's API)
    WINDOWS,
    TileLayout,
    band_rows,
    blend_weights,
    cut_tiles,
    reflect_index,
    stitch,
    tile_layout,
    tile_starts,
)
from glacierflow.learn.metrics import finish, lead_sums, observed_mask
from glacierflow.specs import PredictSpec
from glacierflow.storage.cubes import cube_period, stored_chunks
from glacierflow.storage.runfiles import file_sha256

Model = Callable[[Any], Any]
"""Anything mapping a ``(B, t_in, 1, P, P)`` torch tensor to ``(B, t_out, 1, P, P)``."""


# ------------------------------------------------------------------------------------------------ inference
def _run_tiles(model: Model, tiles: np.ndarray, batch_size: int, device: str, amp: bool = True) -> np.ndarray:
    """Model output for ``tiles`` (N, t_in, P, P) in batches -> (N, t_out, P, P) float32 (train's AMP policy)."""
    import torch

    from glacierflow.learn.runtime import autocast, autocast_dtype  # deferred: torch

    outs = []
    dev = torch.device(device)
    with torch.inference_mode(), autocast(dev, autocast_dtype(dev, amp)):
        for i in range(0, len(tiles), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(tiles[i : i + batch_size, :, None])).to(dev)
            y = model(x)
            outs.append(y.float().clamp(0.0, 1.0)[:, :, 0].cpu().numpy())
    return np.concatenate(outs).astype(np.float32)


def forecast_rows(
    model: Model,
    frames: Any,
    rows: tuple[int, int],
    *,
    patch: int,
    overlap: int,
    height: int | None = None,
    offset: int = 0,
    batch_size: int = 16,
    device: str = "cpu",
    window: str = "hann",
    floor: float = 0.01,
    amp: bool = True,
) -> np.ndarray:
    """Blended forecast of output rows ``rows = (a, b)`` of the whole scene width.

    Parameters
    ----------
    model
        Maps ``(B, t_in, 1, P, P)`` tensors to ``(B, t_out, 1, P, P)`` in [0, 1].
    frames
        ``(t_in, h, W)`` input frames (numpy): scene rows ``offset .. offset + h``, which must hold
        :func:`band_rows`; the whole scene by default.
    rows
        First and one-past-last output row (scene coordinates).
    patch, overlap
        Tile size and overlap in pixels.
    height, offset
        Scene height (default: ``frames``' height) and the scene row of ``frames[:, 0]``.
    batch_size, device
        Inference batches and torch device.
    window, floor
        Blending window (:data:`WINDOWS`) and its floor.
    amp
        Autocast on CUDA as the run was trained (``TrainSpec.amp``).

    Returns
    -------
    numpy.ndarray
        ``(t_out, b - a, W)`` float32.
    """
    h = frames.shape[1] if height is None else height
    layout = tile_layout(h, frames.shape[2], rows, patch, overlap, offset=offset, window=window, floor=floor)
    inp = np.nan_to_num(np.asarray(frames, dtype=np.float32), nan=0.0)
    pred = _run_tiles(model, cut_tiles(inp, layout), batch_size, device, amp)
    return stitch(pred, layout).astype(np.float32)


def forecast_scene(model: Model, frames: Any, *, band: int | None = None, **kwargs: Any) -> np.ndarray:
    """Whole-scene blended forecast in memory, band by band (:func:`forecast_rows` arguments)."""
    h = frames.shape[1]
    band = band or h
    parts = [forecast_rows(model, frames, (a, min(a + band, h)), **kwargs) for a in range(0, h, band)]
    return np.concatenate(parts, axis=1)


def forecast_lazy(model: Model, frames: da.Array, *, t_out: int, band: int, patch: int, overlap: int,
                  **kwargs: Any) -> da.Array:
    """Lazy ``(t_out, H, W)`` forecast: one dask task per row band of height ``band``.

    Each task receives only the input rows its tiles read (:func:`band_rows`), so a band's memory is
    ``t_in x (band + 2 patch) x W`` input values and ``t_out x (band + 2 patch) x W`` sums.
    """
    h, w = frames.shape[1:]
    tag = uuid.uuid4().hex[:8]
    blocks = []
    for j, a in enumerate(range(0, h, band)):
        b = min(a + band, h)
        lo, hi = band_rows(h, (a, b), patch, overlap)
        task = dask.delayed(forecast_rows, pure=True)(
            model, frames[:, lo:hi], (a, b), patch=patch, overlap=overlap, height=h, offset=lo,
            dask_key_name=f"forecast-band-{tag}-{j}", **kwargs,
        )
        blocks.append(da.from_delayed(task, shape=(t_out, b - a, w), dtype=np.float32, name=f"forecast-{tag}-{j}"))
    return da.concatenate(blocks, axis=1)


# ------------------------------------------------------------------------------------------------ baselines
def seasonal_sources(last: int, t_out: int, season_length: int) -> list[int]:
    """Cube index feeding each lead in the ``seasonal`` baseline (most recent same-season known period).

    Lead ``h`` (target index ``last + h``) gets ``last + h - season_length * ceil(h / season_length)``: an
    input frame or an earlier period, never a target (as ``glacierflow.learn.models.baselines.seasonal_indices``).
    A negative index means the cube's history is too short for that lead.
    """
    return [last + h - season_length * math.ceil(h / season_length) for h in range(1, t_out + 1)]


def baseline_frames(cube_ndsi: xr.DataArray, last: int, t_out: int, season_length: int) -> dict[str, xr.DataArray]:
    """Lazy ``(t_out, y, x)`` forecasts of ``persistence`` and (where the cube reaches back) ``seasonal``."""
    out = {"persistence": cube_ndsi.isel(time=[last] * t_out)}
    src = seasonal_sources(last, t_out, season_length)
    if min(src) >= 0:
        out["seasonal"] = cube_ndsi.isel(time=src)
    return out


class StackedModel:
    """A trained model fed a stacked tile ``(B, t_in + T_ctx + 5 t_out, 1, P, P)``: inputs, history, bases.

    The calendar phase (the same for every tile of a scene) is fixed per forecast.
    """

    def __init__(self, model: Any, t_in: int, context: int, t_out: int, phase: np.ndarray) -> None:
        self.model, self.t_in, self.context, self.t_out, self.phase = model, t_in, context, t_out, phase

    def __call__(self, stack: Any) -> Any:
        """The model's forecast of the tiles."""
        import torch

        x = stack[:, : self.t_in]
        ctx = stack[:, self.t_in: self.t_in + self.context]
        bases = stack[:, self.t_in + self.context:].unflatten(1, (5, self.t_out))
        phase = torch.as_tensor(self.phase, device=stack.device).expand(len(stack), -1)
        return self.model(x, context=ctx, extras={"bases": bases, "phase": phase})


def scene_stack(cube: xr.Dataset, last: int, t_in: int, t_out: int, damping: tuple[float, ...], period: str
                ) -> tuple[da.Array, np.ndarray, int]:
    """Lazy ``(t_in + T_ctx + 5 t_out, H, W)`` frames of a scene forecast, its calendar phase and ``T_ctx``.

    As in training (:mod:`glacierflow.learn.climate`): causal inputs and history, and every baseline's
    forecast, with statistics from the periods up to the last input (all known when the forecast is made)
    and the run's anomaly damping.
    """
    from glacierflow.learn import climate  # deferred: torch via the learn package

    season = season_length(period)
    ctx = max(t_in, season)
    if last + 1 < ctx:
        raise GlacierflowError(f"the model needs {ctx} periods up to the last input; the cube has {last + 1}: "
                               "pick a later --last-input")
    ndsi = cube["ndsi"].transpose("time", "y", "x").isel(time=slice(0, last + 1))
    valid = observed_mask(cube, list(range(last + 1)))
    times = pd.DatetimeIndex(ndsi["time"].values)
    poy, years = climate.period_of_year(times, period), times.year.to_numpy()
    stats = climate.fit_climate(ndsi, valid, np.ones(last + 1, bool), poy, years, season)
    clim, _ = stats.at(poy, years)
    inputs = climate.causal_inputs(ndsi, climate.causal_sources(climate.lookahead(cube)[: last + 1]),
                                   clim.assign_coords(time=ndsi["time"]))
    targets = target_times(pd.DatetimeIndex(cube["time"].values), last, t_out, period)
    clim_t, trend_t = stats.at(climate.period_of_year(targets, period), targets.year.to_numpy())
    hist = _as_dask(inputs.isel(time=slice(last + 1 - ctx, last + 1)))[None, :, None]
    clim_t, trend_t, clim_last = (_as_dask(a)[None, :, None] for a in (clim_t, trend_t, clim.isel(time=[last])))
    bases = climate.base_forecasts(hist[:, -1:], hist, clim_t, trend_t, clim_last, np.asarray(damping), season)
    h, w = ndsi.shape[1:]
    stack = da.concatenate([hist[0, -t_in:, 0], hist[0, :, 0], bases.reshape(5 * t_out, h, w)], axis=0)
    tm = cube["time_mean"].values[: last + 1] if "time_mean" in cube else None
    ph_obs, _ = climate.phases(times, tm, period)
    _, ph_t = climate.phases(targets, None, period)
    return stack.astype(np.float32), np.concatenate([ph_obs[-t_in:], ph_t]).astype(np.float32), ctx


# ------------------------------------------------------------------------------------------------- periods
def resolve_last_input(times: pd.DatetimeIndex, last_input: str | None, t_in: int) -> int:
    """Index of the last input period: the cube's last, or the period containing ``last_input``."""
    n = len(times)
    if last_input is None:
        idx = n - 1
    else:
        try:
            when = pd.Timestamp(last_input)
        except ValueError:
            raise GlacierflowError(f"bad --last-input {last_input!r}; use YYYY-MM-DD") from None
        step = times[-1] - times[-2] if n > 1 else pd.Timedelta(days=92)
        if when < times[0] or when >= times[-1] + step:
            raise GlacierflowError(
                f"--last-input {when:%Y-%m-%d} lies outside the cube ({times[0]:%Y-%m-%d} .. "
                f"{times[-1]:%Y-%m-%d}); pick a date inside it or leave it out for the last period"
            )
        idx = int(np.searchsorted(times.values, when.to_datetime64(), side="right") - 1)
    if idx + 1 < t_in:
        raise GlacierflowError(
            f"--last-input {times[idx]:%Y-%m-%d} leaves {idx + 1} input period(s) in the cube; the model needs "
            f"{t_in}: pick a period from {times[t_in - 1]:%Y-%m-%d} on"
        )
    return idx


def target_times(times: pd.DatetimeIndex, last: int, t_out: int, period: str) -> pd.DatetimeIndex:
    """The ``t_out`` period starts after index ``last`` (from the cube where it has them)."""
    offset = pd.tseries.frequencies.to_offset(period)
    out = [times[last + h] if last + h < len(times) else times[last] + h * offset for h in range(1, t_out + 1)]
    return pd.DatetimeIndex(out)


# ---------------------------------------------------------------------------------------------- the model
@dataclass(frozen=True)
class Forecaster:
    """A model and the sample shape it was trained on; ``info`` goes into the store's attrs.

    ``model`` is any callable on ``(B, t_in, 1, patch, patch)`` tensors (a ``torch.nn.Module`` is put in
    eval mode and moved to the device by :func:`predict_cube`).
    """

    model: Model
    name: str
    t_in: int
    t_out: int
    patch: int
    info: dict[str, Any] = field(default_factory=dict)
    damping: tuple[float, ...] | None = None  # a trained run's model: it takes history, bases and calendar
    amp: bool = True  # the run's TrainSpec.amp: predict autocasts as training did


def load_forecaster(run_dir: str | os.PathLike[str], checkpoint: str = "best.pt") -> Forecaster:
    """The model of a run directory (``train``'s ``best.pt``) with its sample shape and provenance."""
    from glacierflow.learn import checkpoint as checkpoints  # deferred: torch

    path = Path(run_dir) / checkpoint
    if not path.is_file():
        raise GlacierflowError(f"no {checkpoint} in run directory {run_dir}; train one with 'glacierflow train'")
    model, specs, ck = checkpoints.load_checkpoint(path)
    args = dict(specs["model_args"])
    info: dict[str, Any] = {
        "model_args": json.dumps(args, sort_keys=True),
        "checkpoint": path.name,
        "run_dir": str(run_dir),
        "checkpoint_sha256": file_sha256(path),
        "epoch": int(specs.get("epoch") or 0),
        "trained_on": str(specs.get("cube") or ""),
    }
    for key in checkpoints.SPEC_KEYS:
        if specs.get(key) is not None:
            info[key] = json.dumps(specs[key], sort_keys=True, default=str)
    damping = (ck.get("climate") or {}).get("damping")
    return Forecaster(model, str(specs["model_name"]), int(args["t_in"]), int(args["t_out"]), int(args["size"]),
                      info, None if damping is None else tuple(float(v) for v in damping),
                      bool((specs.get("train_spec") or {}).get("amp", True)))


# ------------------------------------------------------------------------------------------------ the store
def device_name(name: str) -> str:
    """The torch device as training chooses it (:func:`glacierflow.learn.runtime.resolve_device`)."""
    from glacierflow.learn.runtime import resolve_device  # deferred: torch

    return str(resolve_device(name))


def patch_chunks(cube: xr.Dataset, patch: int) -> tuple[int, int]:
    """The cube's spatial chunks (y, x), each rounded up to a multiple of ``patch`` (DESIGN's store contract)."""
    cy, cx = stored_chunks(cube)
    return int(math.ceil(cy / patch) * patch), int(math.ceil(cx / patch) * patch)


def _as_dask(var: xr.DataArray) -> da.Array:
    return var.data if isinstance(var.data, da.Array) else da.from_array(np.asarray(var.data))


def _scores_lazy(cube: xr.Dataset, fc: da.Array, last: int, t_out: int, season_length: int,
                 bases: da.Array | None = None) -> dict[str, Any]:
    """Lazy per-lead sums for the model and the baselines over the leads whose targets lie in the cube.

    ``bases`` ``(5 t_out, H, W)``: every baseline's scene forecast (a trained run's model); else persistence
    and seasonal from the cube.
    """
    idx = [last + h for h in range(1, t_out + 1) if last + h < cube.sizes["time"]]
    if not idx:
        return {}
    truth = _as_dask(cube["ndsi"].isel(time=idx))
    mask = _as_dask(observed_mask(cube, idx)).astype(np.float32)
    sums = {"model": lead_sums(fc[: len(idx)], truth, mask, lead_axis=0)}
    if bases is not None:
        from glacierflow.learn.climate import BASELINE_NAMES  # deferred: torch via the learn package

        for i, name in enumerate(BASELINE_NAMES):
            sums[name] = lead_sums(bases[i * t_out: i * t_out + len(idx)], truth, mask, lead_axis=0)
        return sums
    for name, frames in baseline_frames(cube["ndsi"], last, t_out, season_length).items():
        sums[name] = lead_sums(_as_dask(frames)[: len(idx)], truth, mask, lead_axis=0)
    return sums


def _cf_time(ds: xr.Dataset, targets: pd.DatetimeIndex, period: str) -> None:
    """CF time metadata: ``time_bnds``, scalar ``forecast_reference_time``, ``forecast_period`` (days), ``lead``.

    Each target is the mean over its period (``cell_methods: "time: mean"``), ``time`` its start, ``time_bnds``
    its start and end; the reference time is the end of the last input period (the first target's start);
    ``forecast_period`` runs from it to the end of each target period, in days.
    """
    ends = targets + pd.tseries.frequencies.to_offset(period)
    ref = targets[0]
    ds["time_bnds"] = (("time", "bnds"), np.stack([targets.values, ends.values], axis=1))
    ds["time"].attrs.update(standard_name="time", bounds="time_bnds", long_name="start of the target period")
    ds.coords["forecast_reference_time"] = ((), ref.to_datetime64(), {
        "standard_name": "forecast_reference_time", "long_name": "end of the last input period"})
    days = ((ends - ref) / pd.Timedelta(days=1)).to_numpy().astype(np.float64)
    ds.coords["forecast_period"] = ("time", days, {
        "standard_name": "forecast_period", "units": "days",
        "long_name": "from forecast_reference_time to the end of the target period"})
    ds["lead"].attrs.update(long_name=f"lead time in periods ({period}) after the last input", units="1")
    ds["ndsi"].attrs["cell_methods"] = "time: mean"
    for v in ("time", "time_bnds", "forecast_reference_time"):
        ds[v].encoding.update(units="days since 1970-01-01", dtype="int64")


def forecast_dataset(
    fc: Forecaster, cube: xr.Dataset, spec: PredictSpec, cube_url: str
) -> tuple[xr.Dataset, dict[str, Any], dict[str, Any]]:
    """The lazy forecast dataset (store layout), its lazy score sums and facts for the summary."""
    times = pd.DatetimeIndex(cube["time"].values)
    period = cube_period(cube)
    last = resolve_last_input(times, spec.last_input or None, fc.t_in)
    device = device_name(spec.device)
    model = fc.model
    if hasattr(model, "eval") and hasattr(model, "to"):
        model = model.to(device).eval()
    overlap, (chunk_y, chunk_x) = spec.overlap_px(fc.patch), patch_chunks(cube, fc.patch)
    stacked = None
    if fc.damping is not None:
        frames, phase, n_ctx = scene_stack(cube, last, fc.t_in, fc.t_out, fc.damping, period)
        model, stacked = StackedModel(model, fc.t_in, n_ctx, fc.t_out, phase), frames[fc.t_in + n_ctx:]
    else:
        frames = _as_dask(cube["ndsi"].isel(time=slice(last - fc.t_in + 1, last + 1)))
    arr = forecast_lazy(model, frames.astype(np.float32), t_out=fc.t_out, band=chunk_y, patch=fc.patch,
                        overlap=overlap, batch_size=spec.batch_size, device=device, window=spec.window,
                        floor=spec.floor, amp=fc.amp)
    targets = target_times(times, last, fc.t_out, period)
    inputs = [f"{t:%Y-%m-%d}" for t in times[last - fc.t_in + 1 : last + 1]]
    ds = xr.Dataset(
        {"ndsi": (("time", "y", "x"), arr.rechunk((1, chunk_y, chunk_x)), {
            "long_name": f"forecast snow-mask NDSI ({fc.name}), blended full scene",
            "grid_mapping": "spatial_ref", "units": "1"})},
        coords={"time": targets, "lead": ("time", np.arange(1, fc.t_out + 1, dtype=np.int16)),
                "y": cube["y"], "x": cube["x"], "spatial_ref": cube["spatial_ref"]},
    )
    _cf_time(ds, targets, period)
    ds.attrs.update({k: v for k, v in fc.info.items() if isinstance(v, str | int | float)})
    ds.attrs.update(
        Conventions="CF-1.10", glacierflow_version=__version__,
        created=pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds"),
        title=f"glacierflow forecast: {fc.name}, {fc.t_out} x {period} after {inputs[-1]}",
        model=fc.name, source_cube=str(cube_url), input_periods=json.dumps(inputs), last_input=inputs[-1],
        period=period, predict_spec=spec.to_json(), overlap_px=overlap, patch_px=fc.patch,
    )
    sums = _scores_lazy(cube, arr, last, fc.t_out, season_length(period), stacked)
    facts = {"last_index": last, "inputs": inputs, "targets": [f"{t:%Y-%m-%d}" for t in targets],
             "device": device, "overlap": overlap, "chunks": (chunk_y, chunk_x), "period": period}
    return ds, sums, facts


@dataclass(frozen=True)
class PredictSummary:
    """What :func:`predict_cube` did: the CLI prints :meth:`lines`."""

    out: str
    model: str
    inputs: list[str]
    targets: list[str]
    device: str
    overlap: int
    period: str
    seconds: float
    scores: dict[str, Any]

    def lines(self) -> list[str]:
        """The summary as the CLI prints it (inputs, targets, the score table, the store)."""
        return [f"{self.model}: inputs {', '.join(self.inputs)} -> targets {', '.join(self.targets)} "
                f"({self.overlap} px overlap, {self.device}, {self.seconds:.1f} s)", *format_scores(self.scores),
                f"written: {self.out}"]


def predict_cube(
    fc: Forecaster,
    cube_url: str,
    out_url: str,
    spec: PredictSpec | None = None,
    *,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> PredictSummary:
    """Forecast the ``t_out`` periods after the last input for the whole scene; write the forecast store.

    Parameters
    ----------
    fc
        The model (:func:`load_forecaster`, or any callable wrapped in :class:`Forecaster`).
    cube_url
        Cube store (build-cube).
    out_url
        Forecast store to write (local path or fsspec URL); safe write (temporary sibling, completion marker).
    spec
        Tiling, blending, device, ``last_input``.
    overwrite, storage_options
        Replace an existing store; fsspec options for both stores.

    Returns
    -------
    PredictSummary
        ``out``, ``inputs``, ``targets``, ``device``, ``overlap``, ``seconds`` and ``scores``
        (``{name: {"mse", "mae", "iou", "f1", "per_lead": {...}}}`` for the model and the baselines; empty
        when the targets lie beyond the cube). The scores are also in the store's attrs (``scores``, JSON) and its
        ``scores`` group.
    """
    from glacierflow.storage import cf, stac_out, store

    t0 = time.perf_counter()
    spec = spec or PredictSpec()
    if not overwrite and store.exists(out_url, storage_options):
        raise GlacierflowError(f"store {out_url} already exists; pass --overwrite to replace it")
    if not store.exists(cube_url, storage_options):
        raise GlacierflowError(f"cube store {cube_url!r} not found; build one with 'glacierflow build-cube'")
    cube = store.open_store(cube_url, storage_options, require=("ndsi",))
    ds, sums, facts = forecast_dataset(fc, cube, spec, cube_url)
    scores: dict[str, Any] = {}

    def _compute(writes: list[Any]) -> None:
        # one graph: the score sums share the band tasks with the region writes (each band inferred once)
        *_, got = dask.compute(*writes, sums)
        scores.update({name: finish(s, counts=True) for name, s in got.items()})

    tree = xr.DataTree.from_dict({"/": ds, **({"scores": _scores_group(sums)} if sums else {})})
    stac_out.beside(store.write(cf.conform(tree, period_means=True), out_url, overwrite=overwrite,
                                storage_options=storage_options, compute=_compute,
                                **_final_attrs(lambda: {"scores": json.dumps(scores, sort_keys=True)})),
                    storage_options)
    return PredictSummary(out=out_url, model=fc.name, inputs=facts["inputs"], targets=facts["targets"],
                          device=facts["device"], overlap=facts["overlap"], period=facts["period"],
                          seconds=round(time.perf_counter() - t0, 2), scores=scores)


def _final_attrs(attrs: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``attrs=`` for :func:`glacierflow.storage.store.write`: root attrs known only once the data is computed."""
    return {"attrs": attrs}


def _scores_group(sums: dict[str, Any]) -> xr.Dataset:
    """Lazy ``mse``, ``mae``, ``n`` per (name, lead): the ``scores`` group, computed with the write."""
    names = list(sums)
    stack = {k: da.stack([da.asarray(sums[n][k]) for n in names]) for k in ("se", "ae", "n")}
    n = stack["n"].astype(np.float64)
    per = {k: da.where(n > 0, stack[k] / da.maximum(n, 1.0), np.nan) for k in ("se", "ae")}
    return xr.Dataset(
        {"mse": (("name", "lead"), per["se"], {"long_name": "mean squared error over observed pixels"}),
         "mae": (("name", "lead"), per["ae"], {"long_name": "mean absolute error over observed pixels"}),
         "n": (("name", "lead"), stack["n"].astype(np.int64), {"long_name": "pixels scored"})},
        coords={"name": np.array(names, dtype=object), "lead": np.arange(1, stack["n"].shape[1] + 1)},
    )


def format_scores(scores: dict[str, Any]) -> list[str]:
    """Lines of a table: name, MSE, MAE overall and MSE per lead, with skill against each baseline."""
    if not scores:
        return ["no targets in the cube after the last input: nothing to score (pass --last-input inside it)"]
    n_lead = len(next(iter(scores.values()))["per_lead"]["mse"])
    head = f"{'':14s} {'MSE':>8s} {'MAE':>8s}  " + " ".join(f"{'lead ' + str(h):>8s}" for h in range(1, n_lead + 1))
    lines = [head]
    def f(v: float | None) -> str:
        return f"{'n/a':>8s}" if v is None else f"{v:8.4f}"

    for name, s in scores.items():
        per = " ".join(f(v) for v in s["per_lead"]["mse"])
        lines.append(f"{name:14s} {f(s['mse'])} {f(s['mae'])}  {per}")
    for base in ("persistence", "seasonal", "climatology", "trend", "anomaly"):
        model_mse = scores.get("model", {}).get("mse")
        if base in scores and (scores[base]["mse"] or 0) > 0 and model_mse is not None:
            lines.append(f"skill vs {base}: {1 - scores['model']['mse'] / scores[base]['mse']:+.3f} (1 - MSE ratio)")
    return lines
