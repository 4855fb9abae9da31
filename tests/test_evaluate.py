"""Evaluation: metrics against a numpy reference, baselines exact where they must be, metrics.json schema, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from glacierflow.cli.main import main
from glacierflow.errors import GlacierflowError
from glacierflow.learn import evaluate, metrics, patches, train
from glacierflow.learn.checkpoint import load_checkpoint
from glacierflow.learn.models import BASELINES, MODELS
from glacierflow.specs import ModelSpec, PatchSpec, TrainSpec
from glacierflow.storage.store import open_store
from glacierflow.testing import synthetic_cube, write_synthetic_cube

SMALL = PatchSpec(t_in=2, t_out=2, size=16, stride=8, test_periods=4)


def test_metrics_equal_a_numpy_reference_on_fixed_samples() -> None:
    rng = np.random.default_rng(7)
    target = rng.random((5, 3, 1, 6, 6))
    pred = {"m": rng.random(target.shape), "persistence": rng.random(target.shape), "seasonal": target + 0.1}
    mask = (rng.random(target.shape) > 0.3).astype(np.float32)
    res = metrics.score(pred, target, mask)
    for name, p in pred.items():
        sel = mask.astype(bool)
        assert res[name]["mse"] == pytest.approx(np.mean((p[sel] - target[sel]) ** 2), rel=1e-12)
        assert res[name]["mae"] == pytest.approx(np.mean(np.abs(p[sel] - target[sel])), rel=1e-12)
        for k in range(3):
            s = sel[:, k]
            assert res[name]["per_lead"]["mse"][k] == pytest.approx(np.mean((p[:, k][s] - target[:, k][s]) ** 2))
            assert res[name]["per_lead"]["mae"][k] == pytest.approx(np.mean(np.abs(p[:, k][s] - target[:, k][s])))
    assert res["seasonal"]["mse"] == pytest.approx(0.01)
    assert res["m"]["skill"]["seasonal"] == pytest.approx(1 - res["m"]["mse"] / 0.01)
    assert res["persistence"]["skill"]["persistence"] == 0.0
    # batches accumulate to the same figures as one pass (torch tensors work too)
    sums = None
    for i in range(0, 5, 2):
        sums = metrics.add_sums(sums, metrics.metric_sums(torch.tensor(pred["m"][i:i + 2]),
                                                             torch.tensor(target[i:i + 2]), mask[i:i + 2]))
    assert metrics.finish(sums)["mse"] == pytest.approx(res["m"]["mse"], rel=1e-6)


@pytest.mark.parametrize("period", ["3MS", "1MS"])
def test_baselines_are_exact_on_cubes_built_for_them(period: str) -> None:
    spec = PatchSpec(t_in=4, t_out=4, size=16, stride=8, test_periods=8)
    n = 32 if period == "3MS" else 40
    # no drift, no noise: every year repeats, so the same season a year earlier is the truth
    seasonal_world = patches.prepare(synthetic_cube(n_periods=n, size=48, period=period, seasonal=0.3), spec)
    bl = evaluate.baseline_models(4, 4, 16, seasonal_world.season_length)
    res = evaluate.evaluate_models(bl, seasonal_world.dataset("test"), batch_size=13)
    assert res["seasonal"]["mse"] == 0.0 and res["persistence"]["mse"] > 1e-3
    # no season either: every period is the same image, so persistence is exact too
    still = patches.prepare(synthetic_cube(n_periods=n, size=48, period=period, seasonal=0.0), spec)
    res = evaluate.evaluate_models(bl, still.dataset("test"))
    assert res["persistence"]["mse"] == 0.0 and res["seasonal"]["mse"] == 0.0


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("eval")
    cube = write_synthetic_cube(str(tmp / "cube.zarr"), n_periods=12, size=40, drift=(0.5, 0.0), noise=0.02)
    train.fit(cube, tmp / "run", ModelSpec("lstm", {"hidden_size": 16}), SMALL,
              TrainSpec(epochs=1, batch_size=8, device="cpu"), progress=False)
    return tmp / "run", cube


def test_evaluate_run_writes_the_schema_and_matches_a_direct_computation(run_dir: tuple[Path, str]) -> None:
    run, cube = run_dir
    res = evaluate.evaluate_run(run, "test")
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"test"} and set(metrics["test"]) == {"lstm", *BASELINES}
    for r in metrics["test"].values():
        assert set(r) == {"mse", "mae", "per_lead", "skill"} and set(r["skill"]) == set(BASELINES)
        assert set(r["per_lead"]) == {"mse", "mae"} and len(r["per_lead"]["mse"]) == 2
    # independent: gather the test samples by slicing, predict with the reloaded model, numpy means
    model, specs, _ = load_checkpoint(run / "best.pt")
    samples = patches.prepare(open_store(cube), PatchSpec.from_dict(specs["patch_spec"]))
    nd = open_store(cube)["ndsi"].values
    starts = samples.starts[samples.sets["test"]]
    x = np.stack([nd[t: t + 2, y: y + 16, x: x + 16] for t, y, x in starts])[:, :, None]
    y = np.stack([nd[t + 2: t + 4, y: y + 16, x: x + 16] for t, y, x in starts])[:, :, None]
    with torch.no_grad():
        p = model(torch.from_numpy(x)).numpy()
    assert res["lstm"]["mse"] == pytest.approx(float(np.mean((p - y) ** 2)), rel=1e-5)
    assert res["persistence"]["mse"] == pytest.approx(float(np.mean((x[:, -1:] - y) ** 2)), rel=1e-6)
    assert res["lstm"]["skill"]["persistence"] == pytest.approx(1 - res["lstm"]["mse"] / res["persistence"]["mse"])
    val = evaluate.evaluate_run(run, "val")
    assert set(json.loads((run / "metrics.json").read_text())) == {"test", "val"}
    assert val["lstm"]["mse"] == pytest.approx(torch.load(run / "best.pt", weights_only=True)["val_loss"], rel=1e-5)


def test_table_has_each_model_and_the_baselines_once(run_dir: tuple[Path, str]) -> None:
    run, _ = run_dir
    evaluate.evaluate_run(run, "test")
    metrics = evaluate.load_metrics(run)
    rows = evaluate.table_rows({"a": metrics, "b": metrics})
    assert [r["model"] for r in rows].count("persistence") == 1 and [r["model"] for r in rows].count("lstm") == 2
    md = evaluate.markdown_table(rows)
    assert md.count("\n") == 1 + len(rows) and f"{metrics['test']['lstm']['mse']:.4f}" in md
    with pytest.raises(GlacierflowError, match="no 'train' metrics"):
        evaluate.table_rows({"a": metrics}, split="train")


def test_cli_models_train_evaluate_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cube = write_synthetic_cube(str(tmp_path / "c.zarr"), n_periods=24, size=60, noise=0.02)
    assert main(["models"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in MODELS)
    run = tmp_path / "run"
    code = main(["train", cube, "--model", "lstm", "--option", "hidden_size=16", "--out", str(run), "--epochs", "1",
                 "--batch-size", "64", "--lr", "0.002", "--seed", "1", "--device", "cpu", "--patience", "2"])
    assert code == 0 and (run / "best.pt").is_file() and (run / "loss.csv").is_file()
    assert json.loads((run / "run.json").read_text())["train_spec"]["lr"] == 0.002
    assert main(["evaluate", str(run)]) == 0
    out = capsys.readouterr().out
    assert "persistence" in out and "seasonal" in out and (run / "metrics.json").is_file()
    assert main(["evaluate", "--table", str(run), str(run)]) == 0
    assert main(["train", cube, "--model", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "nope" in capsys.readouterr().err
