"""``glacierflow demo`` end to end on tiny twins (6 years, a few training steps): every stage runs, prints its
seconds, writes every figure, reports the metrics, the forecast's scores and zero-shot vs fine-tuned; a second
run reuses every output."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from glacierflow.errors import GlacierflowError

#: small enough for the test budget: 6 years (24 quarterly periods: the temporal split's separate validation
#: window still fits), 2 training steps of 4 sequences; the README's demo is `small` over 8 years
TINY = {"size": "tiny", "start": "2016-01-01", "other_start": "2016-01-01", "epochs": 1, "steps_per_epoch": 2,
        "batch_size": 4, "finetune_epochs": 1}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from glacierflow.demo import run_demo

    work = tmp_path_factory.mktemp("demo") / "out"
    lines: list[str] = []
    first = run_demo(work, say=lines.append, **TINY)
    return work, first, lines


def test_demo_runs_every_stage_and_writes_every_figure(demo_run):
    from PIL import Image

    from glacierflow.demo import report_lines

    work, r, lines = demo_run
    assert list(r["stages"]) == ["twin parvati", "cube parvati", "flow", "train", "evaluate", "predict",
                                 "twin aletsch", "cube aletsch", "finetune", "figures"]
    assert not any(t["reused"] for t in r["stages"].values())
    assert all(t["wall_s"] > 0 for t in r["stages"].values())
    assert sum("% of" in line for line in lines) >= 4, "progress lines while twins render and cubes build"
    for name, path in r["figures"].items():
        with Image.open(path) as im:
            assert float(np.asarray(im.convert("L"), np.float64).var()) > 100, f"{name} figure is blank"
    # the other glacier is another twin: its own UTM zone (aletsch 32N), another landscape
    other = json.loads((work / "twin-aletsch-tiny" / "twin.json").read_text())
    assert other["epsg"] == 32632 and other["seed"] == 1
    import xarray as xr

    a = xr.open_zarr(r["cube"])["ndsi"].values
    b = xr.open_zarr(r["other_cube"])["ndsi"].values
    assert float(np.abs(a - b).mean()) > 0.01, "the fine-tuning glacier must not be a copy of the first"
    # the forecast of the held-out last year is scored; zero-shot and fine-tuned share the baselines
    assert set(r["scores"]) == {"model", "persistence", "seasonal", "climatology", "trend", "anomaly"}
    assert all(math.isfinite(s["mse"]) for s in r["scores"].values())
    ft = r["finetune"]
    assert ft["zero_shot"]["persistence"]["mse"] == pytest.approx(ft["fine_tuned"]["persistence"]["mse"])
    text = "\n".join(report_lines(r))
    for needle in ("full-scene forecast of the held-out last year", "blend zero-shot", "blend fine-tuned",
                   "seconds per stage", str(work / "forecast.zarr"), str(work / "cube.gif")):
        assert needle in text


def test_demo_rerun_reuses_everything(demo_run):
    from glacierflow.demo import run_demo

    work, first, _ = demo_run
    again = run_demo(work, say=lambda _: None, **TINY)
    assert all(t["reused"] for t in again["stages"].values())
    # reused outputs are read back from the stores and JSON records (floats round-trip exactly through JSON)
    assert again["scores"] == json.loads(json.dumps(first["scores"]))
    assert again["finetune"]["fine_tuned"] == json.loads(json.dumps(first["finetune"]["fine_tuned"], default=str))


def test_demo_unknown_setting_is_one_line(tmp_path):
    from glacierflow.demo import run_demo

    with pytest.raises(GlacierflowError, match="unknown demo setting 'epoch'"):
        run_demo(tmp_path, epoch=3)
