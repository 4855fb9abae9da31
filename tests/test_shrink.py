"""Per-lead shrinkage of a residual correction (``--shrink``): the base where the correction is useless."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from glacierflow.errors import GlacierflowError, SpecError
from glacierflow.learn import train
from glacierflow.learn.checkpoint import load_checkpoint
from glacierflow.learn.climate import BASELINE_NAMES
from glacierflow.learn.models import build_model
from glacierflow.learn.shrink import choose_scale, fit_lead_scale
from glacierflow.specs import ModelSpec, PatchSpec, TrainSpec
from glacierflow.testing import write_synthetic_cube

CPU = torch.device("cpu")
SIZE, T_OUT = 20, 3


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = build_model("blend", t_in=4, t_out=T_OUT, size=SIZE, season_length=4, head="residual", base="anomaly")
    torch.nn.init.normal_(m.net[-1].weight, std=0.5)  # a trained-looking, non-zero correction
    return m.eval()


def _batches(model: torch.nn.Module, truth: str, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    """Two start dates x 9 spatial blocks (cells of 2 * SIZE px) x 2 samples; targets built from the model."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in (10, 11):
        n = 18
        idx = torch.tensor([[t, (k // 3) * 2 * SIZE, (k % 3) * 2 * SIZE] for k in range(9) for _ in range(2)])
        x = torch.rand(n, 4, 1, SIZE, SIZE, generator=g)
        bases = 0.3 + 0.4 * torch.rand(n, 5, T_OUT, 1, SIZE, SIZE, generator=g)  # away from the clamp
        phase = torch.rand(n, 4 + T_OUT, generator=g) * 6
        with torch.no_grad():
            start, corr = model.correction(x, extras={"bases": bases, "phase": phase})
        noise = 0.01 * torch.randn(start.shape, generator=g)
        y = start + noise if truth == "base" else start + 0.7 * corr + noise
        out.append({"x": x, "y": y, "mask": torch.ones_like(y), "bases": bases, "phase": phase, "index": idx})
    return out


def test_fallback_equals_the_base_when_the_correction_is_useless() -> None:
    model = _model()
    batches = _batches(model, "base")
    info = fit_lead_scale(model, batches, CPU, "fallback")
    assert info["lead_scale"] == [0.0] * T_OUT  # the correction is only noise: every lead falls back
    assert all(ci[1] < 0 for ci in info["val_skill_vs_base_ci95"])
    b = batches[0]
    with torch.no_grad():
        out = model(b["x"], extras={"bases": b["bases"], "phase": b["phase"]})
    base = b["bases"][:, BASELINE_NAMES.index("anomaly")]
    torch.testing.assert_close(out, base, rtol=0, atol=0)  # bit for bit the base forecast


def test_a_useful_correction_is_kept_and_scale_finds_its_size() -> None:
    model = _model()
    batches = _batches(model, "corrected")  # truth = base + 0.7 * correction (+ 1 % noise)
    assert fit_lead_scale(model, batches, CPU, "fallback")["lead_scale"] == [1.0] * T_OUT
    info = fit_lead_scale(model, batches, CPU, "scale")
    assert info["lead_scale"] == [0.7] * T_OUT  # the grid point of the true factor (steps of 0.1)
    assert all(s < m < b for s, m, b in zip(info["val_mse_shrunk"], info["val_mse_model"], info["val_mse_base"],
                                            strict=True))
    assert float(model.lead_scale[0]) == pytest.approx(0.7)
    assert fit_lead_scale(model, batches, CPU, "none") is None and float(model.lead_scale[0]) == pytest.approx(0.7)


def test_choose_scale_on_sums() -> None:
    grid = np.array([0.0, 0.5, 1.0])
    # 4 units (2 dates x 2 blocks), 2 leads: lead 0 the correction halves the error everywhere, lead 1 it doubles it
    base = np.ones((4, 2))
    se = np.stack([base, base * np.array([0.3, 1.2]), base * np.array([0.5, 2.0])])
    n = np.ones((4, 2))
    origin, block = np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])
    assert choose_scale(se, n, origin, block, "fallback", grid)[0] == [1.0, 0.0]
    assert choose_scale(se, n, origin, block, "scale", grid)[0] == [0.5, 0.0]
    with pytest.raises(GlacierflowError, match="grid"):
        choose_scale(se, n, origin, block, "scale", np.array([0.2, 1.0]))


def test_a_checkpoint_without_lead_scale_loads_with_every_correction() -> None:
    model = _model()
    state = {k: v for k, v in model.state_dict().items() if k != "lead_scale"}
    fresh = build_model("blend", **model.model_args)
    fresh.lead_scale.fill_(0.0)
    fresh.load_state_dict(state)
    assert fresh.lead_scale.tolist() == [1.0] * T_OUT


def test_train_fits_the_shrinkage_into_best_pt(tmp_path: Path) -> None:
    cube = write_synthetic_cube(str(tmp_path / "c.zarr"), n_periods=14, size=40, period="3MS", drift=(0.5, 0.25),
                                noise=0.02)
    patch = PatchSpec(t_in=4, t_out=2, size=16, stride=8, test_starts=2, val_starts=2)
    spec = TrainSpec(epochs=1, batch_size=8, device="cpu", steps_per_epoch=2, shrink="scale")
    s = train.fit(cube, tmp_path / "run", ModelSpec("blend", base="seasonal"), patch, spec, progress=False)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    model, _, ck = load_checkpoint(tmp_path / "run" / "best.pt")
    assert run["shrink"]["mode"] == "scale" and ck["shrink"]["lead_scale"] == run["shrink"]["lead_scale"]
    assert model.lead_scale.tolist() == pytest.approx(run["shrink"]["lead_scale"])
    assert ck["val_loss"] == pytest.approx(run["shrink"]["val_mse"])  # the loss of the weights best.pt now holds
    assert run["shrink"]["origins"] == 2 and any("per-lead shrinkage" in line for line in s.lines())
    # the shrunk model is never worse than both its ends on validation (it is chosen among them there)
    k = run["shrink"]
    assert all(v <= min(m, b) + 1e-12 for v, m, b in zip(k["val_mse_shrunk"], k["val_mse_model"], k["val_mse_base"],
                                                            strict=True))
    with pytest.raises(SpecError, match="shrink"):
        TrainSpec(shrink="half")


def test_cli_shrink_is_a_choice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from glacierflow.cli.main import main

    run = str(tmp_path / "r")
    assert main(["train", str(tmp_path / "no-cube.zarr"), "--out", run, "--shrink", "half"]) == 2
    err = capsys.readouterr().err
    assert "half" in err and "fallback" in err and "scale" in err
    assert not Path(run).exists(), "nothing written"
