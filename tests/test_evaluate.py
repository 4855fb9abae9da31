"""Evaluation: metrics against a numpy reference, baselines exact where they must be, metrics.json schema, CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from glacierflow.cli.main import main
from glacierflow.errors import GlacierflowError
from glacierflow.learn import evaluate, patches, train
from glacierflow.learn.checkpoint import load_checkpoint
from glacierflow.learn.models import BASELINES, MODELS
from glacierflow.specs import ModelSpec, PatchSpec, TrainSpec
from glacierflow.storage.store import open_store
from glacierflow.testing import synthetic_cube, write_synthetic_cube

SMALL = PatchSpec(t_in=2, t_out=2, size=16, stride=8, test_periods=4)


def reference_bases(ds: Any, samples: patches.Samples) -> dict[str, np.ndarray]:
    """Climatology, trend and anomaly forecasts of every test sample, computed independently in numpy.

    Statistics from the training periods (those of training windows) only; the trend by ``np.polyfit`` per
    pixel; the damping by least squares over the training windows' (last input, target) anomalies, each
    against the climatology known at that window's last input.
    """
    spec = samples.cube.spec
    nd, valid = ds["ndsi"].values.astype(np.float64), ds["n_valid"].values > 0
    times = ds["time"].values.astype("datetime64[M]").astype(int)
    poy, year = (times % 12) // 3, times // 12 + 1970
    train = np.zeros(len(nd), bool)
    for t in samples.starts[samples.sets["train"], 0]:
        train[t: t + spec.window] = True
    clim, trend_fit = np.zeros((4, *nd.shape[1:])), {}
    for s in range(4):
        sel = train & (poy == s)
        clim[s] = (nd[sel] * valid[sel]).sum(0) / valid[sel].sum(0)
        for i, j in np.ndindex(*nd.shape[1:]):
            ok = valid[sel, i, j]
            trend_fit[s, i, j] = np.polyfit(year[sel][ok], nd[sel, i, j][ok], 1)
    def known(s: int, last: int) -> np.ndarray:  # climatology of period-of-year s from training periods <= last
        sel = train & (poy == s) & (np.arange(len(nd)) <= last)
        return (nd[sel] * valid[sel]).sum(0) / valid[sel].sum(0)

    origins = np.unique(samples.starts[samples.sets["train"], 0] + spec.t_in)
    phi = []
    for k in range(spec.t_out):
        o = origins[origins + k < len(nd)]
        a = np.stack([nd[u - 1] - known(poy[u - 1], u - 1) for u in o])
        b = np.stack([nd[u + k] - known(poy[u + k], u - 1) for u in o])
        m = valid[o + k]
        phi.append(np.clip((a * b)[m].sum() / (a * a)[m].sum(), 0, 1))
    out: dict[str, list[np.ndarray]] = {"climatology": [], "trend": [], "anomaly": []}
    for t, y, x in samples.starts[samples.sets["test"]]:
        o, win = t + spec.t_in, (slice(y, y + spec.size), slice(x, x + spec.size))
        tgt = range(o, o + spec.t_out)
        out["climatology"].append(np.stack([clim[poy[u]][win] for u in tgt]))
        out["trend"].append(np.stack([np.polyval(np.stack([trend_fit[poy[u], i, j] for i, j in np.ndindex(
            *nd.shape[1:])], 1), year[u]).reshape(nd.shape[1:])[win] for u in tgt]))
        anom = nd[o - 1][win] - clim[poy[o - 1]][win]
        out["anomaly"].append(np.stack([clim[poy[u]][win] + phi[k] * anom for k, u in enumerate(tgt)]))
    return {k: np.clip(np.stack(v), 0, 1)[:, :, None] for k, v in out.items()}


def test_fitted_baselines_equal_a_numpy_reference() -> None:
    ds = synthetic_cube(n_periods=24, size=24, noise=0.08, seed=5)
    samples = patches.prepare(ds, PatchSpec(t_in=4, t_out=4, size=12, stride=12, test_starts=2, val_starts=1))
    b = samples.dataset("test")[list(range(len(samples.sets["test"])))]
    ref = reference_bases(ds, samples)
    for i, name in enumerate(BASELINES):
        if name in ref:
            # float32 cube statistics against float64 numpy: measured max difference ~1e-6
            np.testing.assert_allclose(b["bases"][:, i].numpy(), ref[name], atol=2e-5, err_msg=name)


def test_trend_is_exact_on_a_world_that_rises_linearly_and_the_others_are_not() -> None:
    ds = synthetic_cube(n_periods=32, size=24, seasonal=0.0, seed=2)
    years = ds["time"].dt.year.values - 2019
    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.5, size=(4, 24, 24))
    nd = np.stack([base[k % 4] + 0.05 * years[k] for k in range(32)]).astype(np.float32)
    ds["ndsi"] = (ds["ndsi"].dims, nd)
    spec = PatchSpec(t_in=4, t_out=4, size=12, stride=12)
    samples = patches.prepare(ds, spec)
    res = evaluate.evaluate_models(evaluate.baseline_models(4, 4, 12, 4), samples.dataset("test"))
    assert res["trend"]["mse"] == pytest.approx(0.0, abs=1e-11)  # float32 statistics: ~1e-13 measured
    assert res["seasonal"]["mse"] == pytest.approx(0.05**2, rel=1e-4)  # one year behind: off by the yearly rise
    assert res["climatology"]["mse"] > res["seasonal"]["mse"]
    assert res["trend"]["skill"]["seasonal"] == pytest.approx(1.0)


@pytest.mark.parametrize("period", ["3MS", "1MS"])
def test_baselines_are_exact_on_cubes_built_for_them(period: str) -> None:
    spec = PatchSpec(t_in=4, t_out=4, size=16, stride=8)
    n = 32 if period == "3MS" else 48
    # no drift, no noise: every year repeats, so the same season a year earlier is the truth
    seasonal_world = patches.prepare(synthetic_cube(n_periods=n, size=48, period=period, seasonal=0.3), spec)
    bl = evaluate.baseline_models(4, 4, 16, seasonal_world.season_length)
    res = evaluate.evaluate_models(bl, seasonal_world.dataset("test"), batch_size=13)
    assert res["seasonal"]["mse"] == 0.0 and res["persistence"]["mse"] > 1e-3
    # every year the same: climatology and trend (slope 0) and anomaly (no anomaly) are exact as well
    for name in ("climatology", "trend", "anomaly"):
        assert res[name]["mse"] == pytest.approx(0.0, abs=1e-12), name
    # no season either: every period is the same image, so persistence is exact too
    still = patches.prepare(synthetic_cube(n_periods=n, size=48, period=period, seasonal=0.0), spec)
    res = evaluate.evaluate_models(bl, still.dataset("test"))
    assert res["persistence"]["mse"] == 0.0 and res["seasonal"]["mse"] == 0.0


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("eval")
    cube = write_synthetic_cube(str(tmp / "cube.zarr"), n_periods=16, size=40, drift=(0.5, 0.0), noise=0.02)
    train.fit(cube, tmp / "run", ModelSpec("lstm", {"hidden_size": 16}), SMALL,
              TrainSpec(epochs=1, batch_size=8, device="cpu"), progress=False)
    return tmp / "run", cube


def test_evaluate_run_writes_the_schema_and_matches_a_direct_computation(run_dir: tuple[Path, str]) -> None:
    run, cube = run_dir
    res = evaluate.evaluate_run(run, "test")
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"model", "test"} and metrics["model"] == "lstm"
    assert set(metrics["test"]) == {"model", "origins", "lstm", *BASELINES} and len(metrics["test"]["origins"]) == 3
    for name in ("lstm", *BASELINES):
        r = metrics["test"][name]
        assert set(r) == {"mse", "mae", "iou", "f1", "per_lead", "skill", "skill_ci95"}
        assert set(r["skill"]) == set(r["skill_ci95"]) == set(BASELINES)
        assert set(r["per_lead"]) == {"mse", "mae", "iou", "f1", "skill", "skill_ci95"}
        assert len(r["per_lead"]["mse"]) == 2
        lo, hi = r["skill_ci95"]["persistence"]
        assert lo <= r["skill"]["persistence"] + 1e-12 and r["skill"]["persistence"] <= hi + 1e-12
    # independent: gather the test samples by slicing, persistence by numpy; the model on the same inputs
    model, specs, _ = load_checkpoint(run / "best.pt")
    samples = patches.prepare(open_store(cube), PatchSpec.from_dict(specs["patch_spec"]))
    nd = open_store(cube)["ndsi"].values
    starts = samples.starts[samples.sets["test"]]
    x = np.stack([nd[t: t + 2, y: y + 16, x: x + 16] for t, y, x in starts])[:, :, None]
    y = np.stack([nd[t + 2: t + 4, y: y + 16, x: x + 16] for t, y, x in starts])[:, :, None]
    b = samples.dataset("test")[list(range(len(starts)))]
    np.testing.assert_array_equal(b["x"].numpy(), x)
    with torch.no_grad():
        p = model(b["x"], context=b["context"], extras={"bases": b["bases"], "phase": b["phase"]}).numpy()
    assert res["lstm"]["mse"] == pytest.approx(float(np.mean((p - y) ** 2)), rel=1e-5)
    assert res["persistence"]["mse"] == pytest.approx(float(np.mean((x[:, -1:] - y) ** 2)), rel=1e-6)
    assert res["lstm"]["skill"]["persistence"] == pytest.approx(1 - res["lstm"]["mse"] / res["persistence"]["mse"])
    val = evaluate.evaluate_run(run, "val")
    assert set(json.loads((run / "metrics.json").read_text())) == {"model", "test", "val"}
    assert val["lstm"]["mse"] == pytest.approx(torch.load(run / "best.pt", weights_only=True)["val_loss"], rel=1e-5)


def test_table_has_each_model_and_the_baselines_once(run_dir: tuple[Path, str]) -> None:
    run, _ = run_dir
    evaluate.evaluate_run(run, "test")
    metrics = evaluate.load_metrics(run)
    rows = evaluate.table_rows({"a": metrics, "b": metrics})
    assert [r["model"] for r in rows].count("persistence") == 1 and [r["model"] for r in rows].count("lstm") == 2
    md = evaluate.markdown_table(rows)
    assert md.count("\n") == 1 + len(rows) and f"{metrics['test']['lstm']['mse']:.4f}" in md
    assert "[" in md and "skill vs anomaly" in md  # intervals and every baseline
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
    assert all(b in out for b in BASELINES) and (run / "metrics.json").is_file()
    assert main(["evaluate", "--table", str(run), str(run)]) == 0
    assert main(["train", cube, "--model", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "nope" in capsys.readouterr().err
