"""Benchmark training throughput per model: sequences/s on CPU at default sizes, ratios to one model.

Usage::

    python benchmarks/bench_train.py                       # every learned model, batch 16, 2 threads
    python benchmarks/bench_train.py --models lstm simvp --rounds 5 --steps 4
    python benchmarks/bench_train.py --device cuda --amp   # where a GPU is present

One step = forward (teacher forcing 0.5 for the models with a rollout) + MSE + backward + gradient clipping
+ AdamW step on a batch of ``--batch`` sequences of ``(t_in, 1, size, size) -> t_out`` frames (snow-mask-like
random data: 0 below 0.3, else uniform). The models are measured in interleaved rounds (each round runs
``--steps`` steps of every model, in a rotated order) and the per-step time of a model is the median over
its rounds, so a load spike on a shared machine hits every model alike. Ratios are sequences/s of each model
over those of ``--reference`` (default ``lstm``) measured in the same run. ``cpu s/step`` is the process CPU
time per step: with ``--threads 1`` it approximates the wall time on an idle core even when the machine is
busy (with more threads it includes OpenMP spin-waiting). ``epoch`` = ``--epoch-sequences`` / seq/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass

import torch

from glacierflow.models import MODELS, build_model, count_parameters

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
        self.model = build_model(name, t_in=args.t_in, t_out=args.t_out, size=args.size).to(args.device)
        self.model.train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=1e-3)
        self.x = batch(args.batch, args.t_in, args.size, 1, args.device)
        self.y = batch(args.batch, args.t_out, args.size, 2, args.device)
        self.tf = 0.5 if name in ROLLOUT else 0.0
        self.device = args.device
        self.amp = args.amp and args.device == "cuda"

    def step(self) -> None:
        """Forward, loss, backward, clip, AdamW step."""
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            pred = self.model(self.x, target=self.y, teacher_forcing=self.tf)
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
        results.append(Result(tr.name, count_parameters(tr.model), s, cpu, args.batch / s))
    ref = next((r for r in results if r.model == args.reference), results[0])
    for r in results:
        r.ratio = r.sequences_per_s / ref.sequences_per_s
    return results


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
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = run(args)
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
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": [asdict(r) for r in results]}, f, indent=2)


if __name__ == "__main__":
    main()
