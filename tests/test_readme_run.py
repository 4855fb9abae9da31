"""The README's commands and its Python API cell, run as written on a tiny offline twin (doctest-style).

The README is read at test time, so the test follows it: a renamed command or flag, a store name one step
writes and the next does not read, an API call that changed, all fail here. What cannot run as written offline
is substituted, and only that (each substitution is one entry of :data:`CLI_SUBSTITUTES` / :func:`_api_cell`):

* the site: ``--glacier parvati`` / ``"parvati"`` becomes the tiny twin's ``--bbox`` (the twin renders a
  129-px window of the glacier, not the registry's whole box) and ``--catalog``/``catalog=`` its STAC API
  (the README's searches go to Planetary Computer, unreachable here);
* the size: ``--start``/``--end`` become the twin's six years (the README asks for ten), ``--max-minutes 30``
  becomes a few seconds of training;
* paths: none; the commands run in a fresh directory, where ``rgi70-parvati.geojson`` is the twin's outlines.

``make demo`` (the quickstart) is checked as a target here (``make -n``) and runs for real on tiny twins in
tests/test_demo.py (the same ``run_demo``), which a 4-12 minute demo cannot in a test.
"""

from __future__ import annotations

import ast
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import xarray as xr

from glacierflow.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
TWIN_START, TWIN_END = "2016-01-01", "2021-12-31"  # six years: 24 quarterly periods, the default split fits
TRAIN_MINUTES = "0.05"  # instead of 30: three seconds of the default recipe (the run still writes every file)


def _block(heading: str, lang: str) -> str:
    section = README.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{lang}\n(.*?)```", section, re.S)[0]


def _commands(block: str) -> list[list[str]]:
    lines = [line.split("  #")[0].strip() for line in block.replace("\\\n", " ").splitlines()]
    return [shlex.split(line) for line in lines if line.startswith("glacierflow ")]


@pytest.fixture(scope="module")
def twin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from glacierflow.twin.make import make_twin
    from glacierflow.twin.serve import serve_twin

    out = tmp_path_factory.mktemp("readme") / "twin"
    meta = make_twin(out, glacier="parvati", size="tiny", start=TWIN_START, end=TWIN_END, seed=0, realism="basic")
    with serve_twin(out, backend="rustac") as served:
        yield {"dir": out, "bbox": [f"{v:.6f}" for v in meta["bbox"]], "epsg": meta["epsg"],
               "catalog": served["stac_url"]}


def _in_fresh_dir(tmp_path: Path, twin: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(twin["dir"] / "outlines.geojson", tmp_path / "rgi70-parvati.geojson")  # RGI-shaped outlines
    monkeypatch.chdir(tmp_path)  # the README's relative paths, as a user types them in their own directory


def cli_substitutes(argv: list[str], twin: dict[str, Any]) -> list[str]:
    """One README command line with the offline substitutions (see the module docstring)."""
    out: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--glacier":
            next(args)
            out += ["--bbox", *twin["bbox"]]
        elif arg in ("--start", "--end"):
            next(args)
            out += [arg, TWIN_START if arg == "--start" else TWIN_END]
        elif arg == "--max-minutes":
            next(args)
            out += [arg, TRAIN_MINUTES]
        else:
            out.append(arg)
    if out[0] in ("search", "build-cube") and "--catalog" not in out:
        out += ["--catalog", twin["catalog"]]
    return out


CLI_SUBSTITUTES = ("--glacier NAME -> --bbox of the twin", "--start/--end -> the twin's six years",
                   "--max-minutes 30 -> 0.05", "search/build-cube: + --catalog of the twin's STAC API")


def test_readme_real_data_commands_run_as_written_on_the_twin(twin, tmp_path, monkeypatch, capsys) -> None:
    commands = _commands(_block("Run it on real data", "bash"))
    assert [c[1] for c in commands] == ["search", "build-cube", "flow", "train", "evaluate", "predict", "stats",
                                          "report"]
    _in_fresh_dir(tmp_path, twin, monkeypatch)
    for argv in commands:
        rc = main(cli_substitutes(argv[1:], twin))
        captured = capsys.readouterr()
        assert rc == 0, f"{' '.join(argv)} -> {rc}: {captured.err.strip()}"
    # what each command wrote is what the next one read, under the README's names
    cube = xr.open_zarr("parvati.zarr", decode_coords="all")
    assert cube.sizes["time"] == 24 and float(cube["ndsi"].max()) > 0.5
    velocity = xr.open_zarr("parvati-velocity.zarr", decode_coords="all")
    assert {"vx", "vy", "v", "v_error"} <= set(velocity.data_vars)
    assert (Path("runs/parvati") / "metrics.json").is_file() and (Path("runs/parvati") / "best.pt").is_file()
    forecast = xr.open_zarr("parvati-forecast.zarr", decode_coords="all")
    assert forecast.sizes["time"] == 4 and forecast["ndsi"].dims == ("time", "y", "x")
    stats = pd.read_csv("parvati-stats.csv")
    trend = pd.read_csv("parvati-stats-trend.csv")  # the per-glacier table beside it
    assert len(stats) and (stats["snow_area_km2"].dropna() <= trend["outline_area_km2"].max() * 1.001).all()
    assert "<img" in Path("parvati-report.html").read_text()


def _api_cell(twin: dict[str, Any]) -> str:
    """The README's API cell with the offline substitutions (site, dates, catalog, training minutes)."""
    block = next(b for b in re.findall(r"```python\n(.*?)```", README, re.S) if "import glacierflow as gf" in b)
    tree = ast.parse(block)
    for call in ast.walk(tree):
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                and getattr(call.func.value, "id", None) == "gf"):
            continue
        if call.func.attr in ("search", "build_cube"):
            call.args = []  # the site name: the twin's box instead
            kw = {k.arg: k for k in call.keywords}
            kw["bbox"] = ast.keyword("bbox", ast.Constant(tuple(float(v) for v in twin["bbox"])))
            kw["catalog"] = ast.keyword("catalog", ast.Constant(twin["catalog"]))
            kw["start"] = ast.keyword("start", ast.Constant(TWIN_START))
            kw["end"] = ast.keyword("end", ast.Constant(TWIN_END))
            call.keywords = list(kw.values())
        for k in call.keywords:
            if k.arg == "max_minutes":
                k.value = ast.Constant(float(TRAIN_MINUTES))
    return ast.unparse(ast.fix_missing_locations(tree))


def test_readme_api_cell_runs_as_written_on_the_twin(twin, tmp_path, monkeypatch) -> None:
    _in_fresh_dir(tmp_path, twin, monkeypatch)
    scope: dict[str, Any] = {}
    exec(compile(_api_cell(twin), "README.md (API cell)", "exec"), scope)  # noqa: S102 -- the README's own code
    cube, velocity, forecast = scope["cube"], scope["velocity"], scope["forecast"]
    assert cube.sizes["time"] == 24 and velocity["vx"].dims == ("y", "x") and "pairs" in velocity.children
    assert forecast.sizes["time"] == 4 and float(forecast["ndsi"].max()) > 0
    assert Path(scope["run"].path, "best.pt").is_file() and Path("parvati-velocity.zarr").is_dir()


def test_quickstart_make_demo_is_the_demo_command() -> None:
    block = _block("Quickstart, offline", "bash")
    assert block.split("#")[0].split() == ["make", "demo"]
    if shutil.which("make") is None:
        pytest.fail("make is needed for the README's quickstart")
    dry = subprocess.run(["make", "-n", "-o", ".venv/.glacierflow-installed", "demo"], cwd=ROOT, text=True,
                         capture_output=True, check=True).stdout
    assert "scripts/demo.sh" in dry
    assert "exec glacierflow demo" in (ROOT / "scripts" / "demo.sh").read_text()
