"""Tests for glacierflow.learn.finetune: continue a run on another glacier's cube; zero-shot vs fine-tuned."""

from __future__ import annotations

import json

import pytest
import torch

from glacierflow.errors import GlacierflowError
from glacierflow.learn.checkpoint import load_checkpoint
from glacierflow.testing import write_synthetic_cube

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from glacierflow.learn import train
    from glacierflow.specs import ModelSpec, PatchSpec, TrainSpec

    d = tmp_path_factory.mktemp("finetune")
    home = write_synthetic_cube(str(d / "home.zarr"), n_periods=24, size=(48, 64), drift=(0.5, 0.0), seed=0)
    # "another glacier": other texture, other motion, another UTM zone
    other = write_synthetic_cube(str(d / "other.zarr"), n_periods=24, size=(48, 64), drift=(-0.5, 0.3), seed=5,
                                 epsg=32632)
    train.fit(home, d / "run", ModelSpec(name="lstm", kwargs={"hidden_size": 16}), PatchSpec(size=16, stride=16),
              TrainSpec(epochs=1, steps_per_epoch=2, batch_size=8, device="cpu"), progress=False)
    return {"dir": d, "home": home, "other": other, "run": d / "run"}


def test_finetune_continues_the_weights_on_the_other_cube(runs, capsys):
    from glacierflow.cli.main import main

    out = runs["dir"] / "run2"
    code = main(["finetune", str(runs["run"]), "--cube", runs["other"], "--out", str(out), "--epochs", "2",
                 "--device", "cpu"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "lstm zero-shot" in printed and "lstm fine-tuned" in printed and "seasonal" in printed
    src, _, src_ck = load_checkpoint(runs["run"] / "best.pt")
    _, specs, ck = load_checkpoint(out / "last.pt")
    assert specs["cube"] == runs["other"] and ck["epoch"] == 2 and specs["patch_spec"]["size"] == 16
    record = json.loads((out / "finetune.json").read_text())
    assert record["source"].endswith("best.pt") and len(record["source_sha256"]) == 64
    # the fine-tuned weights started from the source's: they moved, but not far in 2 short epochs
    a, b = src_ck["state_dict"], ck["state_dict"]
    moved = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert 0 < moved < 1.0
    metrics = json.loads((out / "metrics.json").read_text())["test"]
    assert {"lstm", "persistence", "seasonal"} <= set(metrics)


def test_finetune_refuses_mismatched_shapes_and_periods(runs, tmp_path):
    from glacierflow.learn.finetune import finetune

    with pytest.raises(GlacierflowError, match="patch size 16, not 50"):
        finetune(runs["run"], runs["other"], tmp_path / "a", patch_size=50)
    monthly = write_synthetic_cube(str(tmp_path / "m.zarr"), n_periods=24, size=(48, 64), period="1MS")
    with pytest.raises(GlacierflowError, match="3MS periods .* has 1MS periods") as err:
        finetune(runs["run"], monthly, tmp_path / "b")
    assert "\n" not in str(err.value)
    with pytest.raises(GlacierflowError, match="already holds a run"):
        finetune(runs["run"], runs["other"], runs["run"])
