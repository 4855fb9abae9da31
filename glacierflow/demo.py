"""The whole system on the offline twin, stage by stage: ``glacierflow demo [--workdir DIR] [--fresh]``.

twin make -> twin serve (real STAC API) -> build-cube -> flow -> train one learned model briefly ->
evaluate it with both baselines -> predict the held-out last year from the year before (scored against
the cube) -> fine-tune on a twin of another glacier (aletsch, its own UTM zone; zero-shot vs fine-tuned on
its test split) -> every figure. Each stage's output is reused when it is already there (complete stores,
finished runs), so re-running is quick; ``--fresh`` starts over. Everything lands in the work directory.
Each stage prints its wall and CPU seconds (:attr:`Stages.times`).

The main twin spans 8 years (32 quarterly periods), so the temporal split keeps the last 8 periods (2 years:
one test window of 4 -> 4) out of training and validation; the forecast's inputs are the 4 periods before
the last year and its targets the last year, all inside the test window. The other glacier's twin spans 4
years (16 periods: its test split is again the last 8 periods, validation a column block of the earlier ones;
8 years for ``size="tiny"``, too narrow for that block) and has another seed, so it is another landscape.
Learning stages run with one torch thread (``torch_threads``), build-cube with dask's threaded scheduler.
"""

from __future__ import annotations

import json
import resource
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
    "model": "blend",  # the default recipe (README, learning): residual head on the statistical baselines
    "epochs": 3,
    "steps_per_epoch": 25,
    "batch_size": 16,
    "patch_stride": 25,
    "other_glacier": "aletsch",
    "other_start": "2018-01-01",
    "other_end": "2021-12-31",
    # the twin's world depends on its seed, not on the glacier: another seed makes the other glacier another
    # landscape (terrain texture, outcrops, snow, clouds, acquisition days; the glacier layout stays alike)
    "other_seed": 1,
    "finetune_epochs": 2,
    # one pair per acquisition (flow's default is 3): on the demo cube (8-year small basic twin, 2026-12-08)
    # 83 pairs instead of 246, speed error on ice 17.7 % vs 18.3 %, direction 4.5 vs 3.7 degrees, stable ground
    # 2.0 vs 1.4 m/yr, for 50 instead of 138 CPU-seconds: the stage that was 2/3 of the demo's time
    "flow_pairs_per_scene": 1,
    # one torch thread for training/inference: 50-px batches of 16 gain little from a second thread, and lose
    # 5-10x when the cores are busy (measured: 17 vs 1.9 sequences/s at load average 11 on 2 cores)
    "torch_threads": 1,
}


def _cpu_seconds() -> float:
    """User + system CPU of this process and its reaped children (worker processes, servers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class _Percent:
    """Prints ``   25 % of N ...`` as work advances (in 25 % steps): progress that also reads well in a log."""

    def __init__(self, say: Callable[[str], None], what: str, step: int = 25) -> None:
        self.say, self.what, self.step, self.next, self.total = say, what, step, step, 0

    def update(self, done: int, total: int) -> None:
        """Report ``done`` of ``total`` when a new step is reached."""
        pct = 100 * done / max(total, 1)
        if pct >= self.next:
            self.say(f"   {int(pct):3d} % of {total} {self.what}")
            self.next = (int(pct) // self.step + 1) * self.step


def _dask_progress(say: Callable[[str], None], min_tasks: int = 200) -> Any:
    """A dask callback (local schedulers) printing the share of tasks done; a context manager.

    Only computations of at least ``min_tasks`` tasks report (the small ones around the main pass stay quiet).
    """
    from dask.callbacks import Callback

    class Ticker(Callback):
        def _start_state(self, dsk: Any, state: dict[str, Any]) -> None:
            self.total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
            self.pct = _Percent(say if self.total >= min_tasks else (lambda _: None), "tasks")

        def _posttask(self, key: Any, result: Any, dsk: Any, state: dict[str, Any], worker_id: Any) -> None:
            self.pct.update(len(state["finished"]), self.total)

    return Ticker()


@contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Stages:
    """Numbered stage headers and a closing line with wall and CPU seconds; ``times`` keeps them by key."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.times: dict[str, dict[str, float]] = {}

    @contextmanager
    def __call__(self, key: str, title: str) -> Iterator[dict[str, str]]:
        """``with stages("cube", "build-cube ...") as note: ...; note["done"] = "what came out"``."""
        self.say(f"== {len(self.times) + 1}. {title}")
        self.times[key] = {}
        w0, c0 = time.perf_counter(), _cpu_seconds()
        note: dict[str, str] = {}
        yield note
        wall, cpu = time.perf_counter() - w0, _cpu_seconds() - c0
        reused = note.get("done", "").startswith("reusing")
        self.times[key] = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "reused": reused}
        self.say(f"   {note.get('done', 'done')} ({wall:.1f} s wall, {cpu:.1f} s CPU)")


def _twin(work: Path, stages: Stages, cfg: dict[str, Any], glacier: str, start: str, end: str, seed: int = 0
          ) -> Path:
    from glacierflow.geo.glaciers import get_site
    from glacierflow.twin.make import make_twin, schedule

    twin = work / f"twin-{glacier}-{cfg['size']}"
    with stages(f"twin {glacier}", f"twin make {glacier}: synthetic Landsat-8 world, {cfg['size']}, "
                                   f"{start} .. {end}") as note:
        if (twin / "twin.json").is_file():
            note["done"] = f"reusing {twin}"
            return twin
        # The demo uses the `basic` world: an 8-year `himalaya` twin takes several minutes more to render, and
        # flow does not yet recover the himalaya world's motion (see benchmarks/README.md, "Twin realism").
        realism = cfg.get("realism", "basic")
        n = len(schedule(get_site(glacier), start, end, seed, realism, cfg["size"]))
        pct, done = _Percent(stages.say, "acquisitions rendered"), [0]

        def tick() -> None:
            done[0] += 1
            pct.update(done[0], n)

        meta = make_twin(twin, glacier, cfg["size"], start, end, seed=seed, overwrite=True, realism=realism,
                         progress=tick)
        h, w = meta["shape"]
        note["done"] = f"{meta['n_items']} items, {h}x{w} px, EPSG:{meta['epsg']}, seed {seed} -> {twin}"
    return twin


def _cube(work: Path, twin: Path, stages: Stages, cfg: dict[str, Any], cluster: str, name: str) -> str:
    from glacierflow.compute.cluster import get_client
    from glacierflow.compute.runner import runner
    from glacierflow.preprocess.build import build_cube_store
    from glacierflow.specs import CubeSpec, PreprocessSpec
    from glacierflow.storage import store
    from glacierflow.twin.serve import serve_twin

    out = str(work / f"cube-{name}.zarr")
    with stages(f"cube {name}", f"twin serve + build-cube {name} (--cluster {cluster}): STAC search, gap-fill, "
                                "NDSI, ECC alignment, quarterly means") as note:
        if store.is_complete(out):
            note["done"] = f"reusing {out}"
            return out
        with serve_twin(twin) as served:
            m = served["meta"]
            stages.say(f"   STAC API at {served['stac_url']}")
            spec = CubeSpec(name=name, bbox=tuple(m["bbox"]), epsg=m["epsg"], start=m["start"], end=m["end"],
                            catalog=served["stac_url"])
            with get_client(cluster) as client, _dask_progress(stages.say):
                s = build_cube_store(spec, PreprocessSpec(period=cfg["period"]), out, overwrite=True,
                                     compute=runner(client, progress_bar=hasattr(client, "gather")))
        note["done"] = f"{s.scenes_used} of {s.scenes_found} scenes used, {s.periods} periods -> {out}"
    return out


def _flow(work: Path, cube: str, stages: Stages, twin: Path | None = None, pairs_per_scene: int = 1) -> str:
    from glacierflow.motion.velocity import run_flow
    from glacierflow.specs import FlowSpec
    from glacierflow.storage import store

    out = str(work / "velocity.zarr")
    k = pairs_per_scene
    with stages("flow", f"flow: NCC velocity with a search prior, pairs 16 days to 18 months apart, "
                        f"{k} per acquisition") as note:
        if store.is_complete(out):
            note["done"] = f"reusing {out}"
            return out
        with _dask_progress(stages.say):
            s = run_flow(cube, out, FlowSpec(max_pairs_per_scene=k), overwrite=True, outline=_outline(twin))
        note["done"] = (f"{s.pairs} pairs, composite speed median {s.median_speed:.1f} m/yr (mostly still ground), "
                        f"95th percentile {s.p95_speed:.0f} m/yr (the moving ice) -> {out}")
    return out


def _outline(twin: Path | None) -> str | None:
    """The twin's ``outlines.geojson`` (the glacier outlines flow takes stable ground outside of), if there."""
    path = None if twin is None else twin / "outlines.geojson"
    return str(path) if path is not None and path.exists() else None


def _finished(run: Path) -> bool:
    return (run / "run.json").is_file() and "finished" in json.loads((run / "run.json").read_text())


def _train(work: Path, cube: str, stages: Stages, cfg: dict[str, Any]) -> Path:
    from glacierflow.learn import train
    from glacierflow.specs import ModelSpec, PatchSpec, TrainSpec

    run = work / f"run-{cfg['model']}"
    with stages("train", f"train {cfg['model']} briefly ({cfg['epochs']} epochs x {cfg['steps_per_epoch']} "
                         "steps, temporal split: the last 8 periods never seen)") as note:
        if _finished(run):
            note["done"] = f"reusing {run}"
            return run
        if run.exists():
            shutil.rmtree(run)
        s = train.fit(cube, run, ModelSpec(name=cfg["model"]),  # the default head and base
                      PatchSpec(split="temporal", stride=cfg["patch_stride"]),
                      TrainSpec(epochs=cfg["epochs"], steps_per_epoch=cfg["steps_per_epoch"],
                                batch_size=cfg["batch_size"]), progress=True)
        note["done"] = f"best validation loss {s.best_val:.5f} at epoch {s.best_epoch} ({s.stopped}) -> {run}"
    return run


def _evaluate(run: Path, stages: Stages) -> dict[str, Any]:
    from glacierflow.learn import evaluate

    with stages("evaluate", "evaluate on the test split, next to persistence and seasonal") as note:
        metrics = evaluate.load_metrics(run) if (run / "metrics.json").is_file() else {}
        if "test" in metrics:
            note["done"] = f"reusing {run / 'metrics.json'}"
            return metrics["test"]
        metrics["test"] = evaluate.evaluate_run(run, "test")
        note["done"] = f"metrics -> {run / 'metrics.json'}"
    return metrics["test"]


def _predict(work: Path, run: Path, cube: str, stages: Stages) -> tuple[str, dict[str, Any]]:
    import pandas as pd

    from glacierflow.forecast.predict import load_forecaster, predict_cube
    from glacierflow.specs import PredictSpec
    from glacierflow.storage import store

    out = str(work / "forecast.zarr")
    fc = load_forecaster(run)
    times = pd.DatetimeIndex(store.open_store(cube)["time"].values)
    last_input = f"{times[-1 - fc.t_out]:%Y-%m-%d}"
    with stages("predict", f"predict the last {fc.t_out} periods of the whole scene from the {fc.t_in} up to "
                           f"{last_input} (held out), scored against the cube") as note:
        if store.is_complete(out):
            ds = store.open_store(out)
            same = ds.attrs.get("checkpoint_sha256") == fc.info["checkpoint_sha256"]
            if same and ds.attrs.get("last_input") == last_input:
                note["done"] = f"reusing {out}"
                return out, json.loads(ds.attrs.get("scores", "{}"))
        s = predict_cube(fc, cube, out, PredictSpec(last_input=last_input), overwrite=True)
        note["done"] = f"{len(s.targets)} periods {s.targets[0]} .. {s.targets[-1]} on {s.device} -> {out}"
    return out, s.scores


def _finetune(work: Path, run: Path, cube: str, stages: Stages, cfg: dict[str, Any]) -> dict[str, Any]:
    from glacierflow.learn.finetune import finetune

    glacier = cfg["other_glacier"]
    out = work / f"run-{cfg['model']}-{glacier}"
    with stages("finetune", f"finetune {run.name} on {glacier} ({cfg['finetune_epochs']} epochs), zero-shot vs "
                            f"fine-tuned on {glacier}'s test split") as note:
        record = out / "finetune.json"
        if record.is_file() and _finished(out):
            note["done"] = f"reusing {out}"
            return json.loads(record.read_text())
        if out.exists():
            shutil.rmtree(out)
        r = finetune(run, cube, out, epochs=cfg["finetune_epochs"], device="auto", progress=True)
        note["done"] = f"-> {out}"
    return r


def _figures(work: Path, out: dict[str, Any], stages: Stages) -> dict[str, Path]:
    from glacierflow.plots import figures as plots

    def png(draw: Callable[[], Any]) -> Callable[[Path], Path]:
        return lambda p: plots.save_figure(draw(), p)

    draw = {
        "cube animation": (work / "cube.gif", lambda p: plots.save_cube_gif(out["cube"], p)),
        "flow": (work / "flow.png", png(lambda: plots.plot_flow(out["velocity"], out["cube"]))),
        "loss curves": (work / "loss.png", png(lambda: plots.plot_run(out["run"]))),
        "forecast vs truth": (work / "forecast.png", png(lambda: plots.plot_forecast(out["forecast"], out["cube"]))),
        "fine-tune loss curves": (work / "loss-finetune.png", png(lambda: plots.plot_run(out["finetuned_run"]))),
    }
    unchanged = all(t.get("reused") for t in stages.times.values())
    with stages("figures", "figures") as note:
        if unchanged and all(path.is_file() for path, _ in draw.values()):
            note["done"] = f"reusing {len(draw)} figures (every stage's output was reused)"
            return {name: path for name, (path, _) in draw.items()}
        figs = {name: fn(path) for name, (path, fn) in draw.items()}
        note["done"] = f"{len(figs)} figures"
    return figs


def _all_stages(work: Path, r: dict[str, Any], stages: Stages, cfg: dict[str, Any], cluster: str) -> None:
    """Every stage in order, filling ``r`` with paths, metrics and scores."""
    twin = _twin(work, stages, cfg, cfg["glacier"], cfg["start"], cfg["end"])
    r["twin"] = str(twin)
    r["cube"] = _cube(work, twin, stages, cfg, cluster, cfg["glacier"])
    r["velocity"] = _flow(work, r["cube"], stages, twin, cfg["flow_pairs_per_scene"])
    with _torch_threads(cfg["torch_threads"]):
        run = _train(work, r["cube"], stages, cfg)
        r["run"] = str(run)
        r["metrics"] = _evaluate(run, stages)
        r["forecast"], r["scores"] = _predict(work, run, r["cube"], stages)
    other = _twin(work, stages, cfg, cfg["other_glacier"], cfg["other_start"], cfg["other_end"], cfg["other_seed"])
    r["other_twin"] = str(other)
    r["other_cube"] = _cube(work, other, stages, cfg, cluster, cfg["other_glacier"])
    with _torch_threads(cfg["torch_threads"]):
        r["finetune"] = _finetune(work, run, r["other_cube"], stages, cfg)
    r["finetuned_run"] = r["finetune"]["out"]
    r["figures"] = {k: str(v) for k, v in _figures(work, r, stages).items()}


def run_demo(workdir: str | Path = "demo-out", *, fresh: bool = False, cluster: str = "threads",
             say: Callable[[str], None] = print, **overrides: Any) -> dict[str, Any]:
    """Run every stage on the twins (reusing finished outputs); return paths, metrics, scores and timings.

    Parameters
    ----------
    workdir
        Where everything is written.
    fresh
        Remove ``workdir`` first.
    cluster
        Dask cluster for build-cube (``--cluster`` forms). Default ``threads``: for a cube of a few hundred
        401 x 401 scenes dask's threaded scheduler has the least overhead (see the README's demo timing).
    say
        Progress printer.
    **overrides
        Keys of :data:`DEMO` (e.g. ``size="tiny"``, ``model="unet"``).

    Returns
    -------
    dict
        Paths (``twin``, ``cube``, ``velocity``, ``run``, ``forecast``, ``other_twin``, ``other_cube``,
        ``finetuned_run``, ``figures``), ``metrics`` (test split), ``scores`` (the forecast's),
        ``finetune`` (zero-shot and fine-tuned metrics), ``stages`` (wall/CPU seconds) and ``seconds``.
    """
    unknown = sorted(set(overrides) - set(DEMO))
    if unknown:
        raise GlacierflowError(f"unknown demo setting {unknown[0]!r}; known: {', '.join(DEMO)}")
    cfg = {**DEMO, **overrides}
    if cfg["size"] == "tiny" and "other_start" not in overrides:
        # a 16-period cube validates on a column block, which needs more than the tiny twin's 105 px width
        cfg["other_start"] = cfg["start"]
    work = Path(workdir)
    if fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    stages = Stages(say)
    r: dict[str, Any] = {"workdir": str(work)}
    with warnings.catch_warnings():
        # xarray's note that scene times are stored in finer units than seconds: harmless, and noisy here
        warnings.filterwarnings("ignore", message="Times can't be serialized faithfully")
        _all_stages(work, r, stages, cfg, cluster)
    r["stages"] = stages.times
    r["seconds"] = round(time.perf_counter() - t0, 1)
    (work / "demo.json").write_text(json.dumps({k: v for k, v in r.items() if k != "finetune"}, indent=1,
                                               default=str))
    return r


def report_lines(r: dict[str, Any]) -> list[str]:
    """What the demo prints at the end: metrics, the forecast's scores, zero-shot vs fine-tuned, outputs, times."""
    from glacierflow.forecast.predict import format_scores
    from glacierflow.learn.finetune import format_comparison

    lines = ["", f"test split of {Path(r['cube']).name} (patches), the model next to both baselines:"]
    for name, m in r["metrics"].items():
        if not isinstance(m, dict) or "mse" not in m:  # "model", "origins"
            continue
        skill = "  ".join(f"vs {b} {v:+.3f}" for b, v in m.get("skill", {}).items() if v is not None)
        lines.append(f"  {name:12s} MSE {m['mse']:.4f}  MAE {m['mae']:.4f}  skill {skill}")
    lines += ["", "full-scene forecast of the held-out last year (scored against the cube):"]
    lines += ["  " + line for line in format_scores(r["scores"])]
    lines += ["", f"test split of {Path(r['other_cube']).name}, zero-shot vs fine-tuned, next to both baselines:"]
    lines += ["  " + line for line in format_comparison(r["finetune"])]
    lines += ["", "outputs:"]
    for key in ("twin", "cube", "velocity", "run", "forecast", "other_twin", "other_cube", "finetuned_run"):
        lines.append(f"  {key:22s} {r[key]}")
    lines += [f"  {key:22s} {path}" for key, path in r["figures"].items()]
    lines += ["", "seconds per stage (wall / CPU):"]
    lines += [f"  {key:22s} {t['wall_s']:7.1f} / {t['cpu_s']:7.1f}{'  (reused)' if t['reused'] else ''}"
              for key, t in r["stages"].items()]
    lines.append(f"demo done in {r['seconds']:.0f} s (summary: {Path(r['workdir']) / 'demo.json'})")
    return lines
