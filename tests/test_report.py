"""``glacierflow report DIR`` in a real browser: headless Chromium (Debian's, driven by Playwright) loads the page
with no console error, no failed request and no request leaving the page; every figure decodes; the tables
hold the run's numbers (read from the DOM, compared with metrics.json); the screenshot is not blank. A folder
with only a cube store works; both metrics.json schemas are read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from glacierflow.cli.main import main
from glacierflow.plots.report import metric_tables, write_report
from glacierflow.testing import write_synthetic_cube

CHROMIUM = "/usr/bin/chromium"
#: no GPU, no background traffic of the browser itself (the test watches every request the page makes)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """A folder as a run leaves it: cube (with scenes and guides), velocity, a trained and evaluated run, forecast."""
    from glacierflow.forecast.predict import load_forecaster, predict_cube
    from glacierflow.learn import evaluate, train
    from glacierflow.motion.velocity import run_flow
    from glacierflow.specs import FlowSpec, ModelSpec, PatchSpec, PredictSpec, TrainSpec

    d = tmp_path_factory.mktemp("report") / "out"
    d.mkdir()
    cube = write_synthetic_cube(str(d / "cube.zarr"), groups=True, n_periods=24, size=(48, 64), drift=(0.5, 0.0))
    run = d / "run-lstm"
    train.fit(cube, run, ModelSpec(name="lstm", kwargs={"hidden_size": 16}), PatchSpec(size=16, stride=16),
              TrainSpec(epochs=2, steps_per_epoch=2, batch_size=8, device="cpu"), progress=False)
    evaluate.evaluate_run(run, "test", device="cpu")
    predict_cube(load_forecaster(run), cube, str(d / "forecast.zarr"), PredictSpec(device="cpu"))
    run_flow(cube, str(d / "velocity.zarr"), FlowSpec(pairs="consecutive"))
    return d


def _browse(html: Path, shot: Path) -> dict[str, Any]:
    """Open ``html`` in headless Chromium; console errors, failed and outside requests, the DOM's figures."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} missing: scripts/setup-services.sh installs Debian's chromium")
    seen: dict[str, list[str]] = {"errors": [], "failed": [], "outside": []}
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: seen["errors"].append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: seen["errors"].append(str(e)))
        page.on("requestfailed", lambda r: seen["failed"].append(r.url))
        page.on("request", lambda r: None if r.url.startswith(("file:", "data:")) else seen["outside"].append(r.url))
        page.goto(html.resolve().as_uri(), wait_until="load")
        seen["widths"] = page.eval_on_selector_all("img", "els => els.map(e => e.complete ? e.naturalWidth : 0)")
        seen["cells"] = page.eval_on_selector_all("td[data-metric]", """els => els.map(e => ({
            run: e.dataset.run, split: e.dataset.split, name: e.dataset.name, metric: e.dataset.metric,
            lead: e.dataset.lead || null, baseline: e.dataset.baseline || null, value: e.dataset.value,
            text: e.textContent}))""")
        seen["scene_rows"] = page.eval_on_selector_all("table.scenes tr", "els => els.length - 1")
        seen["notes"] = page.eval_on_selector_all("p.note", "els => els.map(e => e.textContent)")
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    return seen


def _not_blank(png: Path) -> float:
    """Share of screenshot pixels that are not page-white."""
    from PIL import Image

    rgb = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    return float((np.abs(rgb - 255).sum(axis=2) > 30).mean())


def test_the_report_page_in_a_browser_holds_the_runs_numbers(run_folder, tmp_path):
    assert main(["report", str(run_folder)]) == 0
    page = run_folder / "report.html"
    text = page.read_text()
    assert "http://" not in text and "https://" not in text  # self-contained: nothing to fetch
    seen = _browse(page, tmp_path / "report.png")
    assert seen["errors"] == [] and seen["failed"] == [] and seen["outside"] == []
    # cube NDSI, velocity + error, loss curves, forecast panels: every figure decoded
    assert len(seen["widths"]) >= 4 and min(seen["widths"]) > 0
    from glacierflow.storage.store import open_store

    assert seen["scene_rows"] == open_store(str(run_folder / "cube.zarr"), group="scenes").sizes["scene"]
    metrics = json.loads((run_folder / "run-lstm" / "metrics.json").read_text())["test"]
    scores = [c for c in seen["cells"] if c["metric"] in ("mse", "mae")]
    skills = [c for c in seen["cells"] if c["metric"] == "skill"]
    assert len(scores) == 6 * (2 + 4)  # model + 5 baselines: MSE, MAE overall and MSE per lead
    for c in scores:
        entry = metrics[c["name"]]
        want = entry["per_lead"][c["metric"]][int(c["lead"]) - 1] if c["lead"] else entry[c["metric"]]
        assert float(c["value"]) == want and c["text"] == f"{want:.4g}"
    overall = [c for c in skills if c["lead"] is None]
    baselines = ("persistence", "seasonal", "climatology", "trend", "anomaly")
    assert {(c["name"], c["baseline"]) for c in overall} == {("lstm", b) for b in baselines}
    for c in overall:
        assert float(c["value"]) == metrics["lstm"]["skill"][c["baseline"]]
    for c in (c for c in skills if c["lead"]):  # per lead: 1 - MSE_h / MSE_baseline_h
        h = int(c["lead"]) - 1
        want = 1 - metrics["lstm"]["per_lead"]["mse"][h] / metrics[c["baseline"]]["per_lead"]["mse"][h]
        assert float(c["value"]) == pytest.approx(want, rel=1e-12)
    assert _not_blank(tmp_path / "report.png") > 0.05


def test_a_folder_with_only_a_cube_store_reports_what_it_has(run_folder, tmp_path):
    shutil.copytree(run_folder / "cube.zarr", tmp_path / "only" / "cube.zarr")
    path = write_report(tmp_path / "only")
    seen = _browse(path, tmp_path / "only.png")
    assert seen["errors"] == [] and seen["failed"] == [] and seen["outside"] == []
    assert len(seen["widths"]) == 1 and seen["widths"][0] > 0  # the cube's NDSI maps
    assert "no velocity store in the folder" in seen["notes"] and "no forecast store in the folder" in seen["notes"]
    assert seen["cells"] == []


def test_both_metrics_schemas_are_read_with_intervals(tmp_path, capsys):
    new = {"model": "convlstm", "test": {
        "model": "convlstm", "origins": 12,
        "convlstm": {"mse": 0.02, "mae": 0.1, "iou": 0.8, "per_lead": {"mse": [0.01, 0.03]},
                     "skill": {"persistence": 0.5}, "skill_ci95": {"persistence": [0.4, 0.6]}},
        "persistence": {"mse": 0.04, "mae": 0.2, "iou": 0.7, "per_lead": {"mse": [0.02, 0.06]}},
    }}
    (tables,) = metric_tables(new)
    assert tables[0] == "test" and tables[1] == "convlstm" and set(tables[2]) == {"convlstm", "persistence"}
    run = tmp_path / "out" / "run"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps(new))
    html = write_report(tmp_path / "out").read_text()
    assert "data-metric='iou'" in html and "data-ci='0.4,0.6'" in html and "[0.4, 0.6]" in html
    assert main(["report", str(tmp_path / "empty-does-not-exist")]) == 2
    assert "is not a folder" in capsys.readouterr().err
