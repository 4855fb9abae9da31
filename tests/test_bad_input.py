"""Bad input through the command line, in-process: one line naming the value and the way out, exit 2, no traceback.

Every case runs ``glacierflow.cli.main.main(argv)`` as a user types it. The catalog cases use the tiny twin served by
real STAC server software (``served_twin``); the store and learning cases use small synthetic cube stores
(:mod:`glacierflow.testing`) and one run directory trained here in a few seconds. Nothing is faked except
the internet: the "cloud URL without credentials" case is refused before any request leaves the machine.

docs/reliability.md lists these cases ("Bad input and security").
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr

from glacierflow.cli.main import main
from glacierflow.testing import write_synthetic_cube
from glacierflow.twin.stac_servers import free_port

# small samples on small cubes (one test and one validation start date): seconds on a CPU
SMALL = ["--t-in", "2", "--t-out", "2", "--patch-size", "16", "--test-starts", "1", "--val-starts", "1"]
QUICK = [*SMALL, "--epochs", "1", "--steps-per-epoch", "2", "--val-samples", "4", "--cluster", "sync",
         "--device", "cpu"]


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the CLI; assert exit 2 and exactly one ``error: ...`` line on stderr, no traceback; return the line."""
    rc = main(argv)
    cap = capsys.readouterr()
    assert rc == 2, (rc, cap.out[-500:], cap.err[-2000:])
    assert "Traceback" not in cap.err + cap.out
    lines = cap.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), cap.err[-2000:]
    return lines[0]


# --------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Stores and run directories the cases point at (synthetic cubes: written in well under a second each)."""
    d = tmp_path_factory.mktemp("bad-input")
    w: dict[str, Any] = {"dir": d}
    w["cube"] = write_synthetic_cube(str(d / "cube.zarr"), n_periods=12, size=40, period="3MS", noise=0.02)
    w["short"] = write_synthetic_cube(str(d / "short.zarr"), n_periods=10, size=64, period="3MS")
    w["tiny"] = write_synthetic_cube(str(d / "tiny.zarr"), n_periods=5, size=40, period="3MS")
    for name, value in (("nan", np.nan), ("inf", np.inf)):
        path = write_synthetic_cube(str(d / f"{name}.zarr"), n_periods=12, size=40, period="3MS")
        arr = zarr.open_group(path, mode="r+")["ndsi"]
        arr[:] = np.full(arr.shape, value, np.float32)
        w[name] = path
    w["future"] = write_synthetic_cube(str(d / "future.zarr"), n_periods=12, size=40, period="3MS")
    root = zarr.open_group(w["future"], mode="r+")
    root.attrs.update(glacierflow_format=2, glacierflow_version="9.0.0")  # a later glacierflow's layout
    with warnings.catch_warnings():  # zarr 3: consolidated metadata is outside the v3 spec
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(w["future"])
    w["incomplete"] = write_synthetic_cube(str(d / "incomplete.zarr"), n_periods=12, size=40, period="3MS")
    zarr.open_group(w["incomplete"], mode="r+").attrs["glacierflow_complete"] = False  # an interrupted write
    plain = zarr.open_group(str(d / "plain.zarr"), mode="w")  # Zarr, but not written by glacierflow
    plain.create_array("a", shape=(3,), dtype="f4")
    w["plain"] = str(d / "plain.zarr")
    (d / "not-zarr").mkdir()
    (d / "not-zarr" / "notes.txt").write_text("hello")
    w["not_zarr"] = str(d / "not-zarr")
    (d / "a-file").write_text("a regular file")
    w["file"] = d / "a-file"
    (d / "empty-run").mkdir()
    w["empty_run"] = str(d / "empty-run")
    return w


@pytest.fixture(scope="module")
def run_dir(work: dict[str, Any]) -> dict[str, str]:
    """A real run (lstm, 2 -> 2 periods, 16 px) and doctored copies of its checkpoint."""
    run = work["dir"] / "run"
    assert main(["train", work["cube"], "--out", str(run), "--model", "lstm", "--option", "hidden_size=8",
                 *QUICK]) == 0
    ck = torch.load(run / "best.pt", weights_only=True)
    out = {"run": str(run)}
    doctored = {
        "other_model": {**ck, "model_name": "convlstm", "model_args": {k: ck["model_args"][k] for k in
                                                                       ("t_in", "t_out", "size")}},
        "other_patch": {**ck, "model_args": {**ck["model_args"], "size": 32}},  # weights of 16 px patches
    }
    for name, obj in doctored.items():
        (work["dir"] / name).mkdir()
        torch.save(obj, work["dir"] / name / "best.pt")  # plain tensors and values: loads weights-only
        out[name] = str(work["dir"] / name)
    (work["dir"] / "truncated").mkdir()
    (work["dir"] / "truncated" / "best.pt").write_bytes((run / "best.pt").read_bytes()[:400])
    out["truncated"] = str(work["dir"] / "truncated")
    return out


# ---------------------------------------------------------------------------------- site, bbox, dates
# (argv, fragments the one line must hold, in order); none of these reaches a server
SITE_CASES = [
    (["build-cube", "--glacier", "parvatti"],
     ["unknown glacier 'parvatti'", "did you mean 'parvati'?", "known: aletsch, parvati", "--bbox W S E N"]),
    (["build-cube", "--bbox", "78", "32", "77", "33"],
     ["--bbox 78 32 77 33", "west 78 is east of east 77", "swap them"]),
    (["build-cube", "--bbox", "77", "85", "78", "95"],
     ["--bbox 77 85 78 95", "north 95 lies outside -90..90 degrees of latitude"]),
    (["build-cube", "--bbox", "77", "-95", "78", "32"], ["south -95 lies outside -90..90"]),
    (["build-cube", "--bbox", "70", "30", "80", "40"],
     ["--bbox 70 30 80 40 covers about", "pixels at 30 m, more than one Landsat scene",
      "pass a smaller --bbox, or --force"]),
    (["build-cube", "--glacier", "parvati", "--start", "2020-01-01", "--end", "2019-01-01"],
     ["--start 2020-01-01 must be before --end 2019-01-01"]),
    (["build-cube", "--glacier", "parvati", "--start", "2019-02-30"], ["--start '2019-02-30' is not a date"]),
    (["build-cube", "--glacier", "parvati", "--epsg", "1234"],
     ["--epsg 1234 is not a known EPSG code", "leave --epsg out"]),
    (["build-cube", "--glacier", "parvati", "--epsg", "4326"],
     ["--epsg 4326 (WGS 84) is not a projected CRS in metres", "UTM zone"]),
]


@pytest.mark.parametrize(("argv", "fragments"), SITE_CASES, ids=[" ".join(a[1:]) for a, _ in SITE_CASES])
def test_site_bbox_and_dates(argv, fragments, capsys, tmp_path):
    line = _one_line_error(capsys, [*argv, "--out", str(tmp_path / "c.zarr"), "--cluster", "sync"])
    _in_order(line, fragments)
    assert not (tmp_path / "c.zarr").exists()


def _in_order(line: str, fragments: list[str]) -> None:
    pos = 0
    for f in fragments:
        at = line.find(f, pos)
        assert at >= 0, f"{f!r} missing (in order) from: {line}"
        pos = at + len(f)


# ------------------------------------------------------------------------------------- the catalog
def _twin_args(served: dict[str, Any], *extra: str, start: str = "2019-01-01", end: str = "2019-06-30") -> list[str]:
    bbox = [f"{v:.6f}" for v in served["meta"]["bbox"]]
    return ["build-cube", "--bbox", *bbox, "--start", start, "--end", end, "--catalog", served["stac_url"],
            "--cluster", "sync", *extra]


def test_no_scenes_found_says_what_was_searched(served_twin, capsys, tmp_path):
    line = _one_line_error(capsys, [*_twin_args(served_twin, start="2005-01-01", end="2005-12-31"),
                                    "--max-cloud", "15", "--out", str(tmp_path / "c.zarr")])
    bbox = ", ".join(f"{float(f'{v:.6f}')}" for v in served_twin["meta"]["bbox"])
    _in_order(line, ["no items in 'landsat-c2-l2'", f"at {served_twin['stac_url']}", f"for bbox [{bbox}]",
                     "2005-01-01..2005-12-31", "platform landsat-8", "cloud cover <= 15%", "none returned",
                     "widen the dates or bbox"])


def test_every_item_rejected_by_the_search_counts_them(served_twin, tiny_twin, capsys, tmp_path):
    import json

    features = json.loads((tiny_twin / "items.json").read_text())["features"]
    n = sum("2019-01-01" <= f["properties"]["datetime"][:10] <= "2019-06-30" for f in features)
    line = _one_line_error(capsys, [*_twin_args(served_twin, "--platform", "landsat-9"),
                                    "--out", str(tmp_path / "c.zarr")])
    assert n > 0 and f"(rejected: {n} platform)" in line, (n, line)


def test_every_scene_dropped_counts_per_reason_and_writes_nothing(served_twin, capsys, tmp_path):
    out = tmp_path / "c.zarr"
    line = _one_line_error(capsys, [*_twin_args(served_twin, "--min-ecc", "1.0"), "--out", str(out)])
    m = re.search(r"every scene was dropped \((.*?); (\d+) considered\); no store was written; (.*)$", line)
    assert m, line
    counts = {k: int(n) for n, k in (part.split(" ", 1) for part in m.group(1).split(", "))}
    assert counts.get("alignment", 0) > 0 and sum(counts.values()) == int(m.group(2)), counts
    assert "lower --min-ecc" in m.group(3)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".c.zarr")]


def test_no_scene_with_enough_valid_pixels(served_twin, capsys, tmp_path):
    line = _one_line_error(capsys, [*_twin_args(served_twin, "--max-missing", "0"), "--out", str(tmp_path / "c")])
    _in_order(line, ["none of the", "scenes has enough valid pixels", "need 1.000", "raise --max-missing",
                     "no store was written"])


def test_catalog_unreachable_or_not_a_stac_api(served_twin, capsys, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    args = _twin_args(served_twin, "--http-retries", "0", "--out", str(tmp_path / "c.zarr"))
    at = args.index("--catalog") + 1
    for url, fragments in [
        (dead, [f"cannot reach STAC API at {dead}: connection refused", "is the server running?"]),
        (served_twin["asset_url"], [f"{served_twin['asset_url']} is not a STAC API root (it answered HTTP 404)",
                                    "check --catalog"]),
    ]:
        args[at] = url
        _in_order(_one_line_error(capsys, args), fragments)


def test_unknown_collection_lists_the_available_ones(served_twin, capsys, tmp_path):
    line = _one_line_error(capsys, [*_twin_args(served_twin, "--collection", "landsat-c2-l1"),
                                    "--out", str(tmp_path / "c.zarr")])
    assert line.endswith("collection 'landsat-c2-l1' not found at " + served_twin["stac_url"] +
                         "; available: landsat-c2-l2")


# ------------------------------------------------------------------------------------------ outputs
def test_outputs_that_exist_or_cannot_be_written(work, capsys, tmp_path):
    cube, below_file = work["cube"], str(work["file"] / "out.zarr")
    cases = [
        (["flow", cube, "--out", cube, "--cluster", "sync"], [f"output {cube} is the input {cube}",
                                                               "choose another output path"]),
        (["flow", cube, "--out", work["short"], "--cluster", "sync"],
         [f"store {work['short']} already exists", "--overwrite"]),
        (["build-cube", "--glacier", "parvati", "--out", cube, "--cluster", "sync"],
         [f"store {cube} already exists", "pass --overwrite"]),
        (["flow", cube, "--out", below_file, "--cluster", "sync"],
         [f"cannot write {below_file}", "is a file, not a directory", "choose another output path"]),
        (["build-cube", "--glacier", "parvati", "--out", below_file, "--cluster", "sync"],
         [f"cannot write {below_file}", "is a file, not a directory"]),
        (["train", cube, "--out", str(work["file"] / "run"), *QUICK], ["is a file, not a directory"]),
        # several sites: every output is checked before any cluster starts or any site is built
        (["build-cube", "--glacier", "parvati", "--glacier", "aletsch", "--out-dir", str(work["file"]),
          "--cluster", "sync"], [f"cannot write {work['file']}/", "is a file, not a directory"]),
    ]
    for argv, fragments in cases:
        _in_order(_one_line_error(capsys, argv), fragments)


# root writes into read-only directories: as root, the run drops the capabilities that bypass file permissions
# (setpriv; the same process, files and venv, only unprivileged on permissions), so the case runs everywhere
UNPRIVILEGED = ["setpriv", "--inh-caps=-dac_override,-dac_read_search,-fowner",
                "--bounding-set=-dac_override,-dac_read_search,-fowner"]


def test_output_in_a_read_only_directory(work, capsys, tmp_path):
    import subprocess
    import sys

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    argv = ["flow", work["cube"], "--out", str(ro / "v.zarr"), "--cluster", "sync"]
    try:
        if os.geteuid() != 0:
            line = _one_line_error(capsys, argv)
        else:
            r = subprocess.run([*UNPRIVILEGED, sys.executable, "-m", "glacierflow", *argv], capture_output=True,
                               text=True, timeout=300)
            assert r.returncode == 2 and "Traceback" not in r.stderr, (r.returncode, r.stderr[-2000:])
            line = r.stderr.strip().splitlines()[-1]
            assert line.startswith("error: "), r.stderr
    finally:
        ro.chmod(0o755)
    _in_order(line, [f"cannot write {ro / 'v.zarr'}", "is not writable", "choose another output path"])
    assert list(ro.iterdir()) == []


def test_cloud_url_without_credentials(work, capsys, monkeypatch):
    pytest.importorskip("adlfs")
    for name in [k for k in os.environ if k.startswith("AZURE_")]:
        monkeypatch.delenv(name)  # no credentials anywhere: refused before any request is made
    line = _one_line_error(capsys, ["flow", work["cube"], "--out", "az://glacierflow/v.zarr", "--cluster", "sync"])
    _in_order(line, ["az://glacierflow/v.zarr", "no credentials", "AZURE_STORAGE_CONNECTION_STRING",
                     "--storage-option account_name="])


# ------------------------------------------------------------------------------------------- stores
STORE_CASES = [
    ("plain", "is a Zarr store but not a glacierflow store (no glacierflow_version attr)"),
    ("not_zarr", "is not a Zarr store; pass a store written by glacierflow"),
    ("future", "has layout glacierflow_format=2, written by glacierflow 9.0.0; this glacierflow"),
    ("incomplete", "is incomplete (its write was interrupted or failed); rebuild it with --overwrite"),
]


@pytest.mark.parametrize(("store", "fragment"), STORE_CASES, ids=[s for s, _ in STORE_CASES])
@pytest.mark.parametrize("command", ["flow", "train", "predict"])
def test_stores_that_are_not_glacierflow_cubes(store, fragment, command, work, run_dir, capsys, tmp_path):
    url = work[store]
    argv = {"flow": ["flow", url, "--out", str(tmp_path / "v.zarr"), "--cluster", "sync"],
            "train": ["train", url, "--out", str(tmp_path / "run"), "--model", "lstm", *QUICK],
            "predict": ["predict", run_dir["run"], "--cube", url, "--out", str(tmp_path / "f.zarr"),
                        "--cluster", "sync"]}[command]
    line = _one_line_error(capsys, argv)
    assert url in line and fragment in line, line


# ---------------------------------------------------------------------------------------- learning
def test_cubes_too_short_say_how_many_periods_they_have_and_need(work, capsys, tmp_path):
    line = _one_line_error(capsys, ["train", work["short"], "--out", str(tmp_path / "a"), "--model", "lstm",
                                    "--cluster", "sync", "--device", "cpu"])
    _in_order(line, ["cube has 10 periods", "a 4->4 temporal split with 4 test start dates needs at least 15",
                     "(20 for separate validation start dates)", "fewer --test-starts", "--split spatial"])
    line = _one_line_error(capsys, ["train", work["tiny"], "--out", str(tmp_path / "b"), "--model", "lstm",
                                    "--cluster", "sync", "--device", "cpu"])
    _in_order(line, ["cube (5 periods, 40x40 px) is smaller than one sample (8 periods, 50x50 px)",
                     "smaller patches"])


def test_models_unknown_or_not_trainable(work, capsys, tmp_path):
    cases = [
        (["--model", "lsmt"], ["unknown model 'lsmt' (did you mean 'lstm'?)", "known: ", "lstm"]),
        (["--model", "persistence"], ["'persistence' is a baseline and is never trained"]),
        (["--model", "lstm", "--option", "hiden_size=8"], ["unknown option 'hiden_size' for model 'lstm'"]),
    ]
    for extra, fragments in cases:
        line = _one_line_error(capsys, ["train", work["cube"], "--out", str(tmp_path / "r"), *extra, *QUICK])
        _in_order(line, fragments)
    assert not (tmp_path / "r" / "last.pt").exists()


def test_run_directories_empty_or_from_another_model_or_patch(work, run_dir, capsys, tmp_path):
    out = str(tmp_path / "f.zarr")
    cases = [
        (work["empty_run"], [f"no best.pt in run directory {work['empty_run']}", "glacierflow train"]),
        (run_dir["other_model"], ["its weights do not fit model 'convlstm'", "another model or patch shape"]),
        (run_dir["other_patch"], ["its weights do not fit model 'lstm'", "size 32", "size mismatch",
                                  "another model or patch shape"]),
        (run_dir["truncated"], ["is not a readable PyTorch checkpoint", "truncated"]),
    ]
    for run, fragments in cases:
        line = _one_line_error(capsys, ["predict", run, "--cube", work["cube"], "--out", out, "--cluster", "sync"])
        _in_order(line, fragments)
    assert not Path(out).exists()


def test_resume_mistakes(work, run_dir, capsys, tmp_path):
    run = run_dir["run"]
    before = (Path(run) / "last.pt").read_bytes()
    cases = [
        (["train", work["cube"], "--out", run, "--model", "unet", "--resume", *QUICK],
         ["--resume: run directory", "holds a different model spec: name 'unet' (the run's: 'lstm')"]),
        (["train", work["cube"], "--out", run, "--resume", "--split", "spatial", *QUICK],
         ["holds a different patch spec: split 'spatial' (the run's: 'temporal')"]),
        (["train", work["cube"], "--out", run, "--model", "lstm", *QUICK],
         [f"run directory {run} already holds a run", "--resume or another --out"]),
        (["train", work["cube"], "--out", str(tmp_path / "new"), "--resume", *QUICK],
         ["--resume: no last.pt in", "start without --resume"]),
    ]
    for argv, fragments in cases:
        _in_order(_one_line_error(capsys, argv), fragments)
    assert (Path(run) / "last.pt").read_bytes() == before, "a refused resume leaves the run as it was"


@pytest.mark.skipif(torch.cuda.is_available(), reason="not applicable here: this machine has CUDA")
def test_device_cuda_without_cuda(work, run_dir, capsys, tmp_path):
    expected = "--device cuda requested but PyTorch sees no CUDA GPU; use --device cpu or auto"
    line = _one_line_error(capsys, ["train", work["cube"], "--out", str(tmp_path / "r"), "--model", "lstm",
                                    *SMALL, "--cluster", "sync", "--device", "cuda"])
    assert line == f"error: {expected}"
    line = _one_line_error(capsys, ["predict", run_dir["run"], "--cube", work["cube"], "--out",
                                    str(tmp_path / "f.zarr"), "--cluster", "sync", "--device", "cuda"])
    assert line == f"error: {expected}"


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_values_reaching_the_loss(value, work, capsys, tmp_path):
    run = tmp_path / "r"
    line = _one_line_error(capsys, ["train", work[value], "--out", str(run), "--model", "lstm", *QUICK])
    _in_order(line, ["training loss became nan at step 1 (epoch 1)", "the samples hold NaN/inf",
                     "rebuild the cube store"])
    assert not (run / "best.pt").exists() and not (run / "last.pt").exists()


def test_last_input_outside_the_cube_or_too_early(work, run_dir, capsys, tmp_path):
    base = ["predict", run_dir["run"], "--cube", work["cube"], "--out", str(tmp_path / "f.zarr"), "--cluster",
            "sync"]
    cases = [
        ("2030-01-01", ["--last-input 2030-01-01 lies outside the cube (2019-01-01 .. 2021-10-01)",
                        "pick a date inside it"]),
        ("2010-05-01", ["--last-input 2010-05-01 lies outside the cube"]),
        ("2019-13-01", ["--last-input '2019-13-01' is not a date; use YYYY-MM-DD"]),
        ("2019-02-01", ["--last-input 2019-01-01 leaves 1 input period(s) in the cube; the model needs 2",
                        "pick a period from 2019-04-01 on"]),
    ]
    for date, fragments in cases:
        _in_order(_one_line_error(capsys, [*base, "--last-input", date]), fragments)
    assert not (tmp_path / "f.zarr").exists()
