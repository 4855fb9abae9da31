"""The whole system on the offline twin, stage by stage: ``glacierflow demo [--workdir DIR] [--fresh]``.

twin make -> twin serve (real STAC API) -> build-cube -> flow -> train one learned model briefly ->
evaluate it with both baselines -> predict the held-out last year from the year before (scored against
the cube) -> every figure. Each stage's output is reused when it is already there (complete stores, a
finished run), so re-running is quick; ``--fresh`` starts over. Everything lands in the work directory.

The twin spans 8 years (32 quarterly periods), so the temporal split keeps the last 8 periods (2 years:
one test window of 4 -> 4) out of training and validation; the forecast's inputs are the 4 periods before
the last year and its targets the last year, all inside the test window.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from glacierflow.errors import GlacierflowError

#: what the demo runs; sizes chosen to finish in minutes on a 2-core CPU
DEMO = {
    "glacier": "parvati",
    "size": "small",
    "start": "2014-01-01",
    "end": "2021-12-31",
    "period": "3MS",
    "model": "convlstm",
    "epochs": 3,
    "steps_per_epoch": 25,
    "batch_size": 16,
    "patch_stride": 25,
}


def _stage(say: Callable[[str], None], n: int, title: str) -> float:
    say(f"== {n}. {title}")
    return time.perf_counter()


def _done(say: Callable[[str], None], t0: float, what: str) -> None:
    say(f"   {what} ({time.perf_counter() - t0:.1f} s)")


def _twin(work: Path, say: Callable[[str], None], cfg: dict[str, Any]) -> Path:
    from glacierflow.twin.make import make_twin

    twin = work / f"twin-{cfg['glacier']}-{cfg['size']}"
    t0 = _stage(say, 1, f"twin make: synthetic Landsat-8 world, {cfg['size']}, {cfg['start']} .. {cfg['end']}")
    if (twin / "twin.json").is_file():
        _done(say, t0, f"reusing {twin}")
        return twin
    # The demo uses the `basic` world: an 8-year `himalaya` twin takes several minutes more to render, and flow
    # does not yet recover the himalaya world's motion (see benchmarks/README.md, "Twin realism").
    meta = make_twin(
        twin, cfg["glacier"], cfg["size"], cfg["start"], cfg["end"], overwrite=True, realism=cfg.get("realism", "basic")
    )
    _done(say, t0, f"{meta['n_items']} items, {meta['shape'][0]}x{meta['shape'][1]} px -> {twin}")
    return twin


def _cube(work: Path, twin: Path, say: Callable[[str], None], cfg: dict[str, Any], cluster: str) -> str:
    from glacierflow import store
    from glacierflow.build import build_cube_store
    from glacierflow.cli import runner
    from glacierflow.cluster import get_client
    from glacierflow.config import CubeSpec, PreprocessSpec
    from glacierflow.twin.serve import serve_twin

    out = str(work / "cube.zarr")
    t0 = _stage(say, 2, "twin serve + build-cube: STAC search, gap-fill, NDSI, ECC alignment, quarterly means")
    if store.is_complete(out):
        _done(say, t0, f"reusing {out}")
        return out
    with serve_twin(twin) as served:
        m = served["meta"]
        say(f"   STAC API at {served['stac_url']}")
        spec = CubeSpec(name=cfg["glacier"], bbox=tuple(m["bbox"]), epsg=m["epsg"], start=m["start"], end=m["end"],
                        catalog=served["stac_url"])
        with get_client(cluster) as client:
            s = build_cube_store(spec, PreprocessSpec(period=cfg["period"]), out, overwrite=True,
                                 compute=runner(client))
    _done(say, t0, f"{s.scenes_used} of {s.scenes_found} scenes used, {s.periods} periods -> {out}")
    return out


def _flow(work: Path, cube: str, say: Callable[[str], None]) -> str:
    from glacierflow import store
    from glacierflow.config import FlowSpec
    from glacierflow.flow import run_flow

    out = str(work / "velocity.zarr")
    t0 = _stage(say, 3, "flow: Farneback velocity between same-season periods one year apart")
    if store.is_complete(out):
        _done(say, t0, f"reusing {out}")
        return out
    s = run_flow(cube, out, FlowSpec(pairs="annual"), overwrite=True)
    speed = s.get("composite_median_speed_m_per_yr", float("nan"))
    _done(say, t0, f"{s['pairs']} pairs, median speed over pairs {speed:.1f} m/yr -> {out}")
    return out


def _train(work: Path, cube: str, say: Callable[[str], None], cfg: dict[str, Any]) -> Path:
    from glacierflow import train
    from glacierflow.config import ModelSpec, PatchSpec, TrainSpec

    run = work / f"run-{cfg['model']}"
    t0 = _stage(say, 4, f"train {cfg['model']} briefly ({cfg['epochs']} epochs x {cfg['steps_per_epoch']} steps, "
                        "temporal split: the last 8 periods never seen)")
    if (run / "run.json").is_file() and "finished" in json.loads((run / "run.json").read_text()):
        _done(say, t0, f"reusing {run}")
        return run
    if run.exists():
        shutil.rmtree(run)
    s = train.fit(cube, run, ModelSpec(name=cfg["model"]), PatchSpec(split="temporal", stride=cfg["patch_stride"]),
                  TrainSpec(epochs=cfg["epochs"], steps_per_epoch=cfg["steps_per_epoch"],
                            batch_size=cfg["batch_size"]), progress=True)
    _done(say, t0, f"best validation loss {s['best_val']:.5f} at epoch {s['best_epoch']} ({s['stopped']}) -> {run}")
    return run


def _evaluate(run: Path, say: Callable[[str], None]) -> dict[str, Any]:
    from glacierflow import evaluate

    t0 = _stage(say, 5, "evaluate on the test split, next to persistence and seasonal")
    metrics = evaluate.load_metrics(run) if (run / "metrics.json").is_file() else {}
    if "test" not in metrics:
        metrics["test"] = evaluate.evaluate_run(run, "test")
    _done(say, t0, f"metrics -> {run / 'metrics.json'}")
    return metrics["test"]


def _predict(work: Path, run: Path, cube: str, say: Callable[[str], None]) -> tuple[str, dict[str, Any]]:
    import pandas as pd

    from glacierflow import store
    from glacierflow.config import PredictSpec
    from glacierflow.predict import load_forecaster, predict_cube

    out = str(work / "forecast.zarr")
    fc = load_forecaster(run)
    times = pd.DatetimeIndex(store.open_store(cube)["time"].values)
    last_input = f"{times[-1 - fc.t_out]:%Y-%m-%d}"
    t0 = _stage(say, 6, f"predict the last {fc.t_out} periods of the scene from the {fc.t_in} up to {last_input}")
    if store.is_complete(out):
        ds = store.open_store(out)
        if ds.attrs.get("checkpoint_sha256") == fc.info["checkpoint_sha256"] and ds.attrs["last_input"] == last_input:
            _done(say, t0, f"reusing {out}")
            return out, json.loads(ds.attrs.get("scores", "{}"))
    s = predict_cube(fc, cube, out, PredictSpec(last_input=last_input), overwrite=True)
    _done(say, t0, f"{len(s['targets'])} periods {s['targets'][0]} .. {s['targets'][-1]} on {s['device']} -> {out}")
    return out, s["scores"]


def _figures(work: Path, cube: str, velocity: str, run: Path, forecast: str, say: Callable[[str], None]) -> dict:
    from glacierflow import plots

    t0 = _stage(say, 7, "figures")
    figs = {
        "cube animation": plots.plot_cube_gif(cube, work / "cube.gif"),
        "flow": plots.plot_flow(velocity, cube, work / "flow.png", time_index=-1),
        "loss curves": plots.plot_run(run, work / "loss.png"),
        "forecast vs truth": plots.plot_forecast(forecast, cube, work / "forecast.png"),
    }
    _done(say, t0, f"{len(figs)} figures")
    return figs


def run_demo(workdir: str | Path = "demo-out", *, fresh: bool = False, cluster: str = "local",
             say: Callable[[str], None] = print, **overrides: Any) -> dict[str, Any]:
    """Run every stage on the twin (reusing finished outputs); return paths, metrics and scores.

    Parameters
    ----------
    workdir
        Where everything is written.
    fresh
        Remove ``workdir`` first.
    cluster
        Dask cluster for build-cube (``--cluster`` forms).
    say
        Progress printer.
    **overrides
        Keys of :data:`DEMO` (e.g. ``size="tiny"``, ``model="unet"``).
    """
    unknown = sorted(set(overrides) - set(DEMO))
    if unknown:
        raise GlacierflowError(f"unknown demo setting {unknown[0]!r}; known: {', '.join(DEMO)}")
    cfg = {**DEMO, **overrides}
    work = Path(workdir)
    if fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    twin = _twin(work, say, cfg)
    cube = _cube(work, twin, say, cfg, cluster)
    velocity = _flow(work, cube, say)
    run = _train(work, cube, say, cfg)
    metrics = _evaluate(run, say)
    forecast, scores = _predict(work, run, cube, say)
    figures = _figures(work, cube, velocity, run, forecast, say)
    return {"workdir": str(work), "twin": str(twin), "cube": cube, "velocity": velocity, "run": str(run),
            "forecast": forecast, "metrics": metrics, "scores": scores,
            "figures": {k: str(v) for k, v in figures.items()}, "seconds": round(time.perf_counter() - t0, 1)}
