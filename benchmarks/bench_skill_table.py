"""Every learned model at one budget each on one cube: test skill against the five baselines, with intervals.

Usage::

    python benchmarks/bench_skill_table.py CUBE --out DIR --minutes 4 [--models blend simvp ...] [--val-samples 512]

Each model trains with the default head (residual on the default base, calendar, climatology channels) and
the default training recipe (AdamW, warm-up + cosine over the budget, per-lead shrinkage on the validation
start dates) for ``--minutes`` of wall time (``--max-minutes``; on a shared machine that buys each model a
different number of sequences, printed), then ``evaluate`` scores it and the baselines on the test start
dates. The table is ``evaluate --table``'s (Markdown), with the sequences each model saw.

Equivalence check (exit status 1 when it fails): every untrained model forecasts exactly its base baseline on
a batch of validation samples (the zero-initialised residual correction), bit for bit.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from glacierflow.learn import evaluate, train
from glacierflow.learn.models import MODELS
from glacierflow.specs import ModelSpec, PatchSpec, TrainSpec


def starts_at_base(cube: str, name: str) -> bool:
    """Whether the untrained model (default head) forecasts exactly its base on a batch of validation samples."""
    from glacierflow.learn import patches
    from glacierflow.learn.climate import BASELINE_NAMES
    from glacierflow.learn.models import build_model
    from glacierflow.learn.objectives import forecast
    from glacierflow.storage.store import open_store

    spec, m = PatchSpec(), ModelSpec()
    samples = patches.prepare(open_store(cube, require=("ndsi",)), spec)
    model = build_model(name, t_in=spec.t_in, t_out=spec.t_out, size=spec.size,
                        season_length=samples.season_length, head_mode=m.head, base=m.base).eval()
    b = next(iter(patches.make_loader(samples.dataset("val"), 16, shuffle=False)))
    with torch.no_grad():
        return bool(torch.equal(forecast(model, b), b["bases"][:, BASELINE_NAMES.index(m.base)]))


def one(cube: str, out: Path, name: str, args: argparse.Namespace) -> tuple[dict, bool]:
    """Train and evaluate one model; its test metrics and whether it started at its base."""
    run = out / name
    ok = starts_at_base(cube, name)
    spec = TrainSpec(epochs=10_000, max_minutes=args.minutes, val_samples=args.val_samples, device=args.device)
    t0, c0 = time.perf_counter(), time.process_time()
    s = train.fit(cube, run, ModelSpec(name), PatchSpec(), spec, progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    steps = sum(1 for line in (run / "loss.csv").read_text().splitlines()[1:] if line.split(",")[2])
    test = evaluate.evaluate_run(run, "test")
    shrink = s.shrink["lead_scale"] if s.shrink else None
    print(f"{name}: {steps} steps ({steps * spec.batch_size} sequences) in {wall / 60:.1f} min wall, "
          f"{cpu / 60:.1f} min CPU; best validation {s.best_val:.5f}; shrinkage {shrink}; start = base: {ok}",
          flush=True)
    return test, ok


def main(argv: list[str] | None = None) -> int:
    learned = [k for k, v in MODELS.items() if v.learned]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cube")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--models", nargs="+", default=learned, choices=learned)
    p.add_argument("--minutes", type=float, default=4.0)
    p.add_argument("--val-samples", type=int, default=512)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    good = True
    for name in args.models:
        _, ok = one(args.cube, args.out, name, args)
        good &= ok
    rows = evaluate.table_rows({str(args.out / m): evaluate.load_metrics(args.out / m) for m in args.models})
    print(evaluate.markdown_table(rows))
    (args.out / "table.json").write_text(json.dumps(rows, indent=1, default=str))
    if not good:
        print("FAILED: a run did not start at its base forecast", file=sys.stderr)
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
