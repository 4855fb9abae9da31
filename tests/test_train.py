"""Training: it learns on a real twin cube, resumes exactly, checkpoints load safely, NaN stops cleanly; CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from glacierflow.errors import GlacierflowError
from glacierflow.learn import train
from glacierflow.learn.checkpoint import load_checkpoint
from glacierflow.learn.objectives import masked_mse
from glacierflow.learn.runtime import resolve_device
from glacierflow.specs import ModelSpec, PatchSpec, TrainSpec
from glacierflow.testing import write_synthetic_cube

SMALL = PatchSpec(t_in=2, t_out=2, size=16, stride=8, test_periods=4)
LSTM = ModelSpec("lstm", {"hidden_size": 32})


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "loss.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def syn_cube(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("syn") / "cube.zarr"
    return write_synthetic_cube(str(path), n_periods=14, size=40, period="3MS", drift=(0.5, 0.25), noise=0.02)


def test_a_residual_run_starts_at_its_base_on_the_tiny_twin(tiny_cube_1ms: str, tmp_path: Path) -> None:
    from glacierflow.learn import evaluate

    torch.set_num_threads(2)
    spec = TrainSpec(epochs=1, batch_size=8, lr=3e-3, seed=0, device="cpu", steps_per_epoch=3)
    patch = PatchSpec(t_in=4, t_out=4, size=25, stride=10, test_starts=1, val_starts=1)
    s = train.fit(tiny_cube_1ms, tmp_path / "run", ModelSpec("blend", base="seasonal"), patch, spec, progress=False)
    rows = _rows(tmp_path / "run")
    before = float(rows[0]["val_loss"])  # step 0: validation loss of the untrained model
    assert s.epochs_run == 1 and s.samples["n_train"] > 0 and s.samples["n_val"] == s.samples["n_test"] > 0
    val = evaluate.evaluate_run(tmp_path / "run", "val")
    # the zero-initialised correction: before any step the model is the seasonal forecast (float32 sums: 1e-6)
    assert before == pytest.approx(val["seasonal"]["mse"], rel=1e-5)
    assert np.isfinite(s.best_val) and s.best_val <= before
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["split"] == "temporal" and run["seed"] == 0 and "torch" in run["versions"]
    assert run["result"]["best_val"] == pytest.approx(s.best_val)
    assert any("best validation MSE" in line for line in s.lines())


def test_resume_gives_the_same_next_losses_as_an_uninterrupted_run(syn_cube: str, tmp_path: Path) -> None:
    # constant rate: the shorter first run stands for a killed one (a cosine plan depends on the planned epochs)
    spec = TrainSpec(epochs=2, batch_size=8, seed=3, device="cpu", teacher_forcing=0.5, steps_per_epoch=4,
                     schedule="constant")
    train.fit(syn_cube, tmp_path / "full", LSTM, SMALL, spec, progress=False)
    train.fit(syn_cube, tmp_path / "part", LSTM, SMALL, spec.replace(epochs=1), progress=False)
    with (tmp_path / "part" / "loss.csv").open("a") as f:  # a crash after last.pt leaves stray rows: dropped
        f.write("999,2,0.5,,0.001\n")
    train.fit(syn_cube, tmp_path / "part", train_spec=spec, resume=True, progress=False)
    full, part = _rows(tmp_path / "full"), _rows(tmp_path / "part")
    assert [r["step"] for r in full] == [r["step"] for r in part]
    assert len(full) == 1 + 2 * (4 + 1)  # step 0, then per epoch 4 batches (32 windows / 8) + a val row
    for a, b in zip(full, part, strict=True):
        for k in ("train_loss", "val_loss"):
            if a[k]:  # same float32 arithmetic in the same order: equal to print precision (8 digits)
                assert float(a[k]) == pytest.approx(float(b[k]), rel=1e-6), (a, b)
    wa = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["state_dict"]
    wb = torch.load(tmp_path / "part" / "last.pt", weights_only=True)["state_dict"]
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_checkpoints_load_with_weights_only_and_rebuild_the_model(syn_cube: str, tmp_path: Path) -> None:
    train.fit(syn_cube, tmp_path / "r", LSTM, SMALL, TrainSpec(epochs=1, batch_size=8, device="cpu"), progress=False)
    for name in ("best.pt", "last.pt"):
        ck = torch.load(tmp_path / "r" / name, weights_only=True)
        assert ck["model_name"] == "lstm" and ck["epoch"] == 1 and ck["step"] > 0 and "optimizer" in ck
        assert PatchSpec.from_dict(ck["patch_spec"]) == SMALL
        assert json.loads(json.dumps(ck["cube_spec"]))["name"] == "synthetic"
    model, specs, ck = load_checkpoint(tmp_path / "r" / "best.pt")
    assert specs["model_name"] == "lstm" and specs["model_args"]["hidden_size"] == 32 and not model.training
    x = torch.rand(3, 2, 1, 16, 16)
    from glacierflow.learn.models import build_model

    again = build_model("lstm", **specs["model_args"])
    again.load_state_dict(ck["state_dict"])
    again.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), again(x))
    assert not list((tmp_path / "r").glob(".*tmp*")), "no temporary files left behind"
    with pytest.raises(GlacierflowError, match="already holds a run"):
        train.fit(syn_cube, tmp_path / "r", LSTM, SMALL, TrainSpec(epochs=1), progress=False)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(syn_cube: str, tmp_path: Path) -> None:
    run = tmp_path / "r"
    train.fit(syn_cube, run, LSTM, SMALL, TrainSpec(epochs=1, batch_size=8, device="cpu"), progress=False)
    good = (run / "last.pt").read_bytes()
    bad = tmp_path / "bad.zarr"
    write_synthetic_cube(str(bad), n_periods=14, size=40, period="3MS")
    arr = zarr.open_group(str(bad), mode="r+")["ndsi"]
    arr[:] = np.full(arr.shape, np.nan, np.float32)
    with pytest.raises(GlacierflowError, match=r"loss became nan at step \d+ \(epoch 2\).*last good checkpoints"):
        train.fit(str(bad), run, train_spec=TrainSpec(epochs=2), resume=True, progress=False)
    assert (run / "last.pt").read_bytes() == good


def test_user_mistakes_are_one_line_errors(syn_cube: str, tmp_path: Path) -> None:
    with pytest.raises(GlacierflowError, match="baseline and is never trained"):
        train.fit(syn_cube, tmp_path / "a", ModelSpec("persistence"), SMALL, progress=False)
    with pytest.raises(GlacierflowError, match=r"unknown model 'lsmt' \(did you mean 'lstm'\?\); known: .*lstm"):
        train.fit(syn_cube, tmp_path / "b", ModelSpec("lsmt"), SMALL, progress=False)
    with pytest.raises(GlacierflowError, match="no last.pt"):
        train.fit(syn_cube, tmp_path / "c", resume=True, progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(GlacierflowError, match="no CUDA GPU; use --device cpu or auto"):
            resolve_device("cuda")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_masked_mse_and_teacher_forcing_schedule() -> None:
    pred, target = torch.zeros(2, 3, 1, 4, 4), torch.ones(2, 3, 1, 4, 4)
    target[:, 0] = 3.0
    mask = torch.ones_like(target)
    mask[:, 0] = 0  # unobserved frame: its error of 9 must not count
    assert float(masked_mse(pred, target, mask)) == pytest.approx(1.0)
    assert float(masked_mse(pred, target, torch.ones_like(target))) == pytest.approx((9 + 1 + 1) / 3)
    spec = TrainSpec(epochs=9, teacher_forcing=0.8, teacher_forcing_epochs=4)
    assert [train.teacher_forcing_at(e, spec) for e in range(6)] == pytest.approx([0.8, 0.6, 0.4, 0.2, 0.0, 0.0])
    cos = TrainSpec(warmup=0.1)
    factors = [train.lr_factor(p, cos) for p in (0.0, 0.05, 0.1, 0.55, 1.0)]
    assert factors == pytest.approx([0.01, 0.5, 1.0, 0.525, 0.05])
    assert train.lr_factor(0.7, TrainSpec(schedule="constant")) == 1.0


def test_max_minutes_stops_cleanly_keeps_the_best_checkpoint_and_resumes(syn_cube: str, tmp_path: Path) -> None:
    spec = TrainSpec(epochs=50, batch_size=8, device="cpu", max_minutes=1e-4, steps_per_epoch=4)  # 6 ms budget
    s = train.fit(syn_cube, tmp_path / "r", LSTM, SMALL, spec, progress=False)
    assert s.stopped == "time budget" and s.epochs_run == 1  # the budget ends inside the first (partial) epoch
    ck = torch.load(tmp_path / "r" / "best.pt", weights_only=True)
    k = ck["step"]  # the step the budget ran out after: 1 on a loaded machine, more on a fast one (not a race)
    assert ck["epoch"] == 1 and 1 <= k <= spec.steps_per_epoch and ck["elapsed"] > 0  # validated and saved there
    steps = [int(r["step"]) for r in _rows(tmp_path / "r")]
    assert steps[0] == 0 and steps[-1] == k and steps == sorted(steps)
    again = train.fit(syn_cube, tmp_path / "r", train_spec=spec.replace(max_minutes=0.0, epochs=3), resume=True,
                      progress=False)  # a larger budget (here none) continues from the next epoch
    assert again.stopped == "finished" and again.epochs_run == 3
    assert [int(r["step"]) for r in _rows(tmp_path / "r")][-1] == k + 2 * spec.steps_per_epoch


# ------------------------------------------------------------------------------------------ full-scene objective
CONV = ModelSpec("convlstm", {"hidden": [8], "patch_size": 4})
FULL = TrainSpec(epochs=10, batch_size=8, lr=3e-2, seed=0, device="cpu", teacher_forcing=0.0, objective="full-scene")


@pytest.fixture(scope="module")
def syn16_cube(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("syn16") / "cube.zarr"
    return write_synthetic_cube(str(path), n_periods=16, size=40, period="3MS", drift=(0.5, 0.25), noise=0.02)


def test_stitching_is_predicts_blend_and_passes_gradients() -> None:
    from glacierflow.forecast.predict import stitch, tile_layout

    layout = tile_layout(37, 29, (0, 37), 16, 8)
    rng = np.random.default_rng(0)
    pred = rng.random((len(layout.spots), 2, 3, 16, 16))  # (tiles, windows, t_out, P, P)
    t = torch.tensor(pred, requires_grad=True)
    out = stitch(t, layout)
    assert out.shape == (2, 3, 37, 29)
    # the torch path is predict's numpy path (float64 both: equal to rounding)
    np.testing.assert_allclose(out.detach().numpy(), stitch(pred, layout), rtol=1e-12)
    g = rng.random(out.shape)
    (out * torch.from_numpy(g)).sum().backward()
    # independent: d out[canvas px] / d tile[k][i, j] = weight[i, j] / sum of the weights there, inside the crop
    canvas = np.zeros((2, 3, *layout.wsum.shape))
    canvas[(..., *layout.crop)] = g
    p = layout.patch
    for k, (r, c) in enumerate(layout.spots):
        expected = canvas[..., r : r + p, c : c + p] * layout.weight / layout.wsum[r : r + p, c : c + p]
        np.testing.assert_allclose(t.grad[k].numpy(), expected, rtol=1e-10, atol=1e-15)
    assert float(t.grad.abs().min()) == 0.0 < float(t.grad.abs().max()), "padding outside the crop gets none"


def test_full_scene_loss_is_the_mse_of_predicts_forecast(syn16_cube: str) -> None:
    from glacierflow.forecast.predict import forecast_scene, tile_layout
    from glacierflow.learn.models import build_model
    from glacierflow.learn.objectives import full_scene_loss

    torch.manual_seed(1)
    model = build_model("convlstm", t_in=2, t_out=2, size=16, season_length=4, **CONV.kwargs).eval()
    a = torch.from_numpy(np.asarray(zarr.open_group(syn16_cube, mode="r")["ndsi"][:4, :33, 2:], np.float32))
    batch = {"x": a[None, :2, None], "y": a[None, 2:, None], "mask": torch.ones(1, 2, 1, 33, 38)}
    with torch.no_grad():
        loss, n = full_scene_loss(tile_layout(33, 38, (0, 33), 16, 8))(model, batch, 0.0, torch.device("cpu"), None)
    forecast = forecast_scene(model, a[:2].numpy(), patch=16, overlap=8)  # what predict writes for this scene
    assert n == 6 * 6  # tile starts -8, 0, .., 32 both ways: each reaches 8 px (the overlap) past 33 or 38 px
    # float32 model, float32 vs float64 sums: measured relative difference 1e-7
    assert float(loss) == pytest.approx(float(((forecast - a[2:].numpy()) ** 2).mean()), rel=1e-5)


def test_full_scene_objective_lowers_its_loss_and_is_recorded(syn16_cube: str, tmp_path: Path) -> None:
    from glacierflow.learn import patches
    from glacierflow.learn.models import build_model
    from glacierflow.learn.objectives import OBJECTIVES
    from glacierflow.storage.store import open_store

    torch.set_num_threads(1)
    train.fit(syn16_cube, tmp_path / "r", CONV, SMALL, FULL, progress=False)
    ck = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    assert TrainSpec.from_dict(ck["train_spec"]).objective == "full-scene"
    info = json.loads((tmp_path / "r" / "run.json").read_text())["objective"]
    # 16 periods: training windows start at periods 2..5 (a season of history, rolling-origin split); the 40-px
    # scene is one window (3 patches = 48 px, clipped), 6 x 6 tiles of 16 px with 8 px overlap, one window per step
    assert info == {"name": "full-scene", "scene_window": [40, 40], "windows": 4, "tiles_per_window": 36,
                    "windows_per_step": 1, "overlap": 8, "blend": "hann"}  # 4 training periods (rolling-origin split)
    samples = patches.prepare(open_store(syn16_cube), SMALL)
    loader, loss_fn, _ = OBJECTIVES["full-scene"].build(samples, SMALL, FULL)

    def objective(model: torch.nn.Module) -> float:
        model.eval()
        with torch.no_grad():
            return float(np.mean([float(loss_fn(model, b, 0.0, torch.device("cpu"), None)[0]) for b in loader]))

    torch.manual_seed(FULL.seed)  # the initial weights fit() started from
    before = objective(build_model(ck["model_name"], **ck["model_args"]))
    after = objective(load_checkpoint(tmp_path / "r" / "last.pt")[0])
    # measured: 0.1220 -> 0.1065 on these windows after 50 steps (-12.7 %); demand 5 %
    assert after < 0.95 * before, (before, after)
    assert len(_rows(tmp_path / "r")) == 1 + 10 * (4 + 1), "4 steps (one per window) and a validation row per epoch"


def test_full_scene_windows_stay_inside_the_training_samples(tmp_path: Path) -> None:
    from glacierflow.learn import patches
    from glacierflow.learn.objectives import scene_windows
    from glacierflow.storage.store import open_store

    cube = write_synthetic_cube(str(tmp_path / "wide.zarr"), n_periods=12, size=(40, 200), period="3MS")
    spec = SMALL.replace(split="spatial")
    samples = patches.prepare(open_store(cube), spec)
    train_idx = samples.starts[samples.sets["train"]]
    right = int(train_idx[:, 2].max()) + spec.size  # the training block's right edge
    held_out = samples.starts[np.concatenate([samples.sets["val"], samples.sets["test"]])]
    wins = scene_windows(samples, (32, 32), spec.size)
    assert len(wins) > 0 and int((wins[:, 2] + 32).max()) == right, "windows fill the training block, no further"
    assert int(held_out[:, 2].min()) > right, "the held-out blocks lie beyond it"
    with pytest.raises(GlacierflowError, match="smaller --scene-window"):
        scene_windows(samples, (40, 120), spec.size)
    from glacierflow.learn.objectives import OBJECTIVES

    # the paper's non-overlapping tiles: a 32-px window is 2 x 2 tiles of 16 px, 4 windows per batch of 16
    *_, info = OBJECTIVES["full-scene"].build(samples, spec, FULL.replace(scene_window=32, scene_overlap=0,
                                                                           batch_size=16))
    assert (info["overlap"], info["tiles_per_window"], info["windows_per_step"]) == (0, 4, 4)
    with pytest.raises(GlacierflowError, match="--scene-overlap 16 must be below the patch size 16"):
        OBJECTIVES["full-scene"].build(samples, spec, FULL.replace(scene_overlap=16))


def test_cli_objective_is_a_choice_and_a_bad_scene_window_one_line(syn_cube: str, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from glacierflow.cli.main import main

    run = str(tmp_path / "r")
    assert main(["train", syn_cube, "--out", run, "--objective", "fullscene"]) == 2
    err = capsys.readouterr().err
    assert "fullscene" in err and "patch" in err and "full-scene" in err
    assert main(["train", syn_cube, "--out", run, "--objective", "full-scene", "--scene-window", "-3"]) == 2
    err = capsys.readouterr().err
    assert "--scene-window -3 must be an integer >= 0" in err and err.count("\n") == 1
    assert not Path(run).exists(), "nothing written"


def test_finetune_continues_a_patch_run_with_the_full_scene_objective(syn16_cube: str, tmp_path: Path) -> None:
    from glacierflow.learn.finetune import finetune

    torch.set_num_threads(1)
    train.fit(syn16_cube, tmp_path / "p", CONV, SMALL, FULL.replace(objective="patch", epochs=1), progress=False)
    r = finetune(tmp_path / "p", syn16_cube, tmp_path / "f", epochs=1, device="cpu", progress=False,
                 objective="full-scene")
    ck = torch.load(tmp_path / "f" / "last.pt", weights_only=True)
    assert TrainSpec.from_dict(ck["train_spec"]).objective == "full-scene"
    assert json.loads((tmp_path / "f" / "run.json").read_text())["objective"]["windows"] == 4
    assert r["fit"].epochs_run == 1 and {"convlstm", "persistence", "seasonal"} <= set(r["fine_tuned"])
    before = torch.load(tmp_path / "p" / "best.pt", weights_only=True)["state_dict"]
    assert any(not torch.equal(before[k], ck["state_dict"][k]) for k in before), "the weights moved"


def test_scene_windows_carry_what_patch_samples_carry(syn16_cube: str) -> None:
    from glacierflow.learn import patches
    from glacierflow.learn.objectives import SceneWindows
    from glacierflow.storage.store import open_store

    samples = patches.prepare(open_store(syn16_cube), SMALL)
    starts = samples.starts[samples.sets["train"]][:5]
    scene = SceneWindows(samples.cube, starts, (16, 16), SMALL)[list(range(5))]  # one patch-sized window each
    patch = patches.PatchDataset(samples.cube, starts)[list(range(5))]
    for k in ("x", "y", "mask", "context", "bases", "phase"):
        torch.testing.assert_close(scene[k], patch[k], rtol=0, atol=1e-6, msg=k)
