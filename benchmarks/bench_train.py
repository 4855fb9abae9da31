"""Benchmark training throughput per model: sequences/s on CPU at default sizes, ratios to one model.

Usage::

    python benchmarks/bench_train.py                       # every learned model, batch 16, 2 threads
    python benchmarks/bench_train.py --models lstm simvp --rounds 5 --steps 4
    python benchmarks/bench_train.py --device cuda --amp   # where a GPU is present
    python benchmarks/bench_train.py --threads 1 --fit 150 # + a quick fit: validation MSE vs the baselines
    python benchmarks/bench_train.py --device cuda --amp --compare-cpu --recipe CUBE --minutes 5
        # GPU vs CPU sequences/s per model in one run, then one default-recipe run (train + evaluate) on CUBE

Every learned model is measured as trained: the core with the shared residual head (on ``seasonal``), fed
the sample's baselines and calendar (random here). Before timing, each model is checked to start exactly at
its base (the zero-initialised correction); a mismatch exits with status 1. On CUDA: TF32, fused AdamW,
bf16 autocast with ``--amp``, ``--compile`` for ``torch.compile``, data already on the device, no host sync
inside the timed steps.

One step = forward (teacher forcing 0.5 for the models with a rollout) + MSE + backward + gradient clipping
+ AdamW step on a batch of ``--batch`` sequences of ``(t_in, 1, size, size) -> t_out`` frames (snow-mask-like
random data: 0 below 0.3, else uniform). The models are measured in interleaved rounds (each round runs
``--steps`` steps of every model, in a rotated order) and the per-step time of a model is the median over
its rounds, so a load spike on a shared machine hits every model alike. Ratios are sequences/s of each model
over those of ``--reference`` (default ``lstm``) measured in the same run. ``cpu s/step`` is the process CPU
time per step: with ``--threads 1`` it approximates the wall time on an idle core even when the machine is
busy (with more threads it includes OpenMP spin-waiting). ``epoch`` = ``--epoch-sequences`` / seq/s.

``--fit N`` adds a sanity check of learnability (not of skill on real cubes): every model trains N steps
(batch 16, AdamW lr 1e-3, teacher forcing 0.5 where used) on 512 synthetic sequences of a smooth random
texture advected 1 px per period under a seasonal snowline (4 periods per year, snow mask >= 0.3), and
its validation MSE on 64 other sequences is printed beside persistence and seasonal.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import ndimage

from glacierflow.learn.models import MODELS, build_model, count_parameters

ROLLOUT = {"lstm", "convlstm", "unet", "transformer"}


@dataclass
class Result:
    """Throughput of one model."""

    model: str
    parameters: int
    seconds_per_step: float
    cpu_seconds_per_step: float
    sequences_per_s: float
    ratio: float = 0.0
    starts_at_base: bool = True


def batch(b: int, t: int, size: int, seed: int, device: str) -> torch.Tensor:
    """Snow-mask-like random frames ``(b, t, 1, size, size)``."""
    g = torch.Generator().manual_seed(seed)
    v = torch.rand(b, t, 1, size, size, generator=g)
    return torch.where(v < 0.3, torch.zeros_like(v), v).to(device)


class Trainer:
    """One model, its optimiser and a fixed batch; ``step()`` is one timed training step."""

    def __init__(self, name: str, args: argparse.Namespace) -> None:
        torch.manual_seed(0)
        self.name = name
        self.model = build_model(name, t_in=args.t_in, t_out=args.t_out, size=args.size, head="residual",
                                 base="seasonal").to(args.device)
        self.x = batch(args.batch, args.t_in, args.size, 1, args.device)
        self.y = batch(args.batch, args.t_out, args.size, 2, args.device)
        g = torch.Generator().manual_seed(3)
        self.extras = {"bases": torch.rand(args.batch, 5, args.t_out, 1, args.size, args.size, generator=g
                                           ).to(args.device),
                       "phase": torch.rand(args.batch, args.t_in + args.t_out, generator=g).to(args.device)}
        with torch.no_grad():  # the equivalence check: an untrained residual model is its base, exactly
            self.starts_at_base = bool(torch.equal(self.model.eval()(self.x, extras=self.extras),
                                                   self.extras["bases"][:, 1]))
        self.model.train()
        fused = {"fused": True} if args.device == "cuda" else {}
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=1e-3, **fused)
        self.runner = torch.compile(self.model) if args.compile else self.model
        self.tf = 0.5 if name in ROLLOUT else 0.0
        self.device = args.device
        self.amp = args.amp and args.device == "cuda"

    def step(self) -> None:
        """Forward, loss, backward, clip, AdamW step."""
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            pred = self.runner(self.x, target=self.y, teacher_forcing=self.tf, extras=self.extras)
        loss = torch.nn.functional.mse_loss(pred.float(), self.y)
        loss.backward()
        torch.nn.utils.clip_grad_value_(self.model.parameters(), 3.0)
        self.opt.step()

    def timed(self, steps: int) -> tuple[float, float]:
        """Wall and process-CPU seconds per step over ``steps`` steps."""
        if self.device == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            self.step()
        if self.device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / steps, (time.process_time() - c0) / steps


def run(args: argparse.Namespace) -> list[Result]:
    """Measure every model in interleaved rounds; returns one result per model."""
    trainers = [Trainer(name, args) for name in args.models]
    for tr in trainers:  # warm-up: allocator, oneDNN primitives, cuDNN autotuning
        tr.timed(args.warmup)
    times: dict[str, list[tuple[float, float]]] = {tr.name: [] for tr in trainers}
    for r in range(args.rounds):
        order = trainers[r % len(trainers) :] + trainers[: r % len(trainers)]
        for tr in order:
            times[tr.name].append(tr.timed(args.steps))
    results = []
    for tr in trainers:
        s = statistics.median(t for t, _ in times[tr.name])
        cpu = statistics.median(c for _, c in times[tr.name])
        results.append(Result(tr.name, count_parameters(tr.model), s, cpu, args.batch / s,
                              starts_at_base=tr.starts_at_base))
    ref = next((r for r in results if r.model == args.reference), results[0])
    for r in results:
        r.ratio = r.sequences_per_s / ref.sequences_per_s
    return results


def advected_seasons(n: int, seed: int, size: int = 50, t: int = 8) -> torch.Tensor:
    """``n`` sequences ``(t, 1, size, size)``: texture moving 1 px/period east, seasonal snow amount (s = 4)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, t, 1, size, size), np.float32)
    rows = (np.arange(size)[:, None] - size / 2) / (size / 2)  # snowline: more snow at the top rows
    for i in range(n):
        f = ndimage.gaussian_filter(rng.standard_normal((size + 20, size + 20 + t)), 4)
        f = (f - f.mean()) / f.std()
        phase = rng.integers(0, 4)
        for k in range(t):
            a = 0.5 * f[10 : 10 + size, 10 + k : 10 + size + k] + 0.6 * np.cos(np.pi * (k + phase) / 2) + rows
            v = 1.0 / (1.0 + np.exp(-2.0 * a))
            out[i, k, 0] = np.where(v >= 0.3, v, 0.0)
    return torch.from_numpy(out)


def fit(args: argparse.Namespace) -> dict[str, float]:
    """Validation MSE of every baseline and of each model after ``args.fit`` training steps (see docstring)."""
    train, val = advected_seasons(512, 1), advected_seasons(64, 2)
    xv, yv = val[:, :4], val[:, 4:]
    mse = {}
    for name in ["persistence", "seasonal", *args.models]:  # the fitted baselines need a cube's statistics
        torch.manual_seed(0)
        model = build_model(name)
        if MODELS[name].learned:
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-3)
            g = torch.Generator().manual_seed(0)
            model.train()
            for _ in range(args.fit):
                idx = torch.randint(0, len(train), (16,), generator=g)
                x, y = train[idx, :4], train[idx, 4:]
                loss = torch.mean((model(x, target=y, teacher_forcing=0.5 if name in ROLLOUT else 0.0) - y) ** 2)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_value_(model.parameters(), 3.0)
                opt.step()
        model.eval()
        with torch.no_grad():
            mse[name] = float(torch.mean((model(xv) - yv) ** 2))
        print(f"fit {name:<12} val MSE {mse[name]:.4f}", flush=True)
    return mse


def recipe(args: argparse.Namespace) -> dict[str, object]:
    """``glacierflow train CUBE --out RUN --max-minutes M`` (the default recipe) and ``evaluate RUN``: skill."""
    import tempfile
    from pathlib import Path

    from glacierflow.learn import evaluate, train
    from glacierflow.specs import ModelSpec, PatchSpec, TrainSpec

    run_dir = Path(tempfile.mkdtemp(prefix="gf-recipe-")) / "run"
    t0 = time.perf_counter()
    s = train.fit(args.recipe, run_dir, ModelSpec(), PatchSpec(),
                  TrainSpec(device=args.device, amp=args.amp, max_minutes=args.minutes, epochs=10_000,
                            compile=args.compile), progress=False)
    res = evaluate.evaluate_run(run_dir, "test", device=args.device)
    name = res["model"]
    out = {"run": str(run_dir), "seconds": round(time.perf_counter() - t0, 1), "epochs": s.epochs_run,
           "throughput": s.throughput, "skill": res[name]["skill"], "skill_ci95": res[name]["skill_ci95"]}
    print(f"recipe run ({args.minutes} min, {args.device}): {s.epochs_run} epochs, {s.throughput or 0:.0f} seq/s; "
          f"skill vs seasonal {res[name]['skill']['seasonal']:+.3f} {res[name]['skill_ci95']['seasonal']}")
    return out


def main(argv: list[str] | None = None) -> None:
    """Parse flags, run, print the table (and JSON with ``--json``)."""
    learned = [n for n, e in MODELS.items() if e.learned]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=learned, choices=learned)
    p.add_argument("--reference", default="lstm")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--t-in", type=int, default=4)
    p.add_argument("--t-out", type=int, default=4)
    p.add_argument("--size", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="timed steps per model per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    p.add_argument("--epoch-sequences", type=int, default=3000, help="for the 'epoch' column")
    p.add_argument("--fit", type=int, default=0, help="also train each model this many steps on synthetic data")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--compile", action="store_true", help="torch.compile each model")
    p.add_argument("--compare-cpu", action="store_true", help="with --device cuda: the same models on the CPU too")
    p.add_argument("--recipe", metavar="CUBE", help="then one default-recipe run on CUBE (train + evaluate)")
    p.add_argument("--minutes", type=float, default=5.0, help="--max-minutes of the recipe run")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    results = run(args)
    if args.compare_cpu and args.device == "cuda":
        cpu = {r.model: r for r in run(argparse.Namespace(**{**vars(args), "device": "cpu", "compile": False}))}
        for r in results:
            print(f"{r.model:<12} GPU {r.sequences_per_s:9.1f} seq/s  CPU {cpu[r.model].sequences_per_s:7.1f} seq/s  "
                  f"GPU/CPU {r.sequences_per_s / cpu[r.model].sequences_per_s:6.1f}x")
    print(
        f"device {args.device}{' +bf16' if args.amp else ''}, {args.threads} threads, batch {args.batch} of "
        f"({args.t_in}, 1, {args.size}, {args.size}) -> {args.t_out}, median of {args.rounds} rounds x "
        f"{args.steps} steps"
    )
    print(
        f"{'model':<12} {'params':>10} {'s/step':>8} {'cpu s/step':>10} {'seq/s':>8} {'vs ' + args.reference:>9} "
        f"{'epoch':>8}"
    )
    for r in results:
        epoch = args.epoch_sequences / r.sequences_per_s
        print(
            f"{r.model:<12} {r.parameters:>10,} {r.seconds_per_step:>8.3f} {r.cpu_seconds_per_step:>10.3f} "
            f"{r.sequences_per_s:>8.1f} {r.ratio:>9.2f} {epoch:>7.0f}s"
        )
    report = {"args": vars(args), "results": [asdict(r) for r in results]}
    if args.fit:
        mse = fit(args)
        print(f"quick fit, {args.fit} steps: validation MSE and skill 1 - MSE/MSE_baseline")
        print(f"{'model':<12} {'MSE':>8} {'vs persistence':>15} {'vs seasonal':>12}")
        for name, v in mse.items():
            print(f"{name:<12} {v:>8.4f} {1 - v / mse['persistence']:>15.2f} {1 - v / mse['seasonal']:>12.2f}")
        report["fit_mse"] = mse
    if args.recipe:
        report["recipe"] = recipe(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    if not all(r.starts_at_base for r in results):
        print("FAILED: a residual model did not start at its base forecast")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
