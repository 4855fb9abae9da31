"""``monitor``: the sites file, a site brought up to date end to end, a failed site reported (exit 1)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from glacierflow.cli.main import main
from glacierflow.errors import GlacierflowError
from glacierflow.monitor.sites import read_monitor_sites
from glacierflow.storage import store


def test_sites_file_toml_and_yaml(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    toml = tmp_path / "conf" / "sites.toml"
    toml.write_text('[defaults]\ncatalog = "http://stac.example/api"\nrun = "runs/best"\n\n'
                    '[[sites]]\nname = "parvati"\nglacier = "parvati"\noutlines = "o/parvati.geojson"\n\n'
                    '[[sites]]\nname = "col"\nbbox = [86.9, 27.95, 87.0, 28.02]\nepsg = 32645\n'
                    'outlines = "/abs/col.geojson"\ncube = "az://bucket/col.zarr"\nrun = "other"\n')
    a, b = read_monitor_sites(toml, tmp_path / "out")
    assert (a.name, a.glacier, a.catalog) == ("parvati", "parvati", "http://stac.example/api")
    assert a.outlines == str(tmp_path / "conf" / "o" / "parvati.geojson")  # relative to the sites file
    assert a.run == str(tmp_path / "conf" / "runs" / "best")
    assert a.cube == str(tmp_path / "out" / "parvati" / "cube.zarr")
    assert a.velocity == str(tmp_path / "out" / "parvati" / "velocity.zarr")
    assert b.bbox == (86.9, 27.95, 87.0, 28.02) and b.epsg == 32645 and b.cube == "az://bucket/col.zarr"
    assert b.outlines == "/abs/col.geojson" and b.run == str(tmp_path / "conf" / "other")
    yaml = tmp_path / "sites.yaml"
    yaml.write_text("defaults:\n  end: 2020-12-31\nsites:\n  - name: parvati\n    glacier: parvati\n"
                    "    outlines: o.geojson\n")
    (only,) = read_monitor_sites(yaml, tmp_path / "out")
    assert only.end == "2020-12-31" and only.outlines == str(tmp_path / "o.geojson")


@pytest.mark.parametrize(("text", "message"), [
    ('[[sites]]\nname = "a"\noutlines = "o.geojson"\ncolour = "red"\n', "unknown key(s) colour"),
    ('[[sites]]\nname = "a"\n', "'outlines' is required"),
    ('[[sites]]\nname = "a/b"\noutlines = "o"\n', "bad or missing site name"),
    ('[[sites]]\nname = "a"\noutlines = "o"\n[[sites]]\nname = "a"\noutlines = "o"\n', "is given twice"),
    ('[defaults]\nrun = "r"\n', "lists no site"),
    ('[[sites]\n', "is not valid TOML"),
])
def test_sites_file_mistakes_are_one_line(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "s.toml").write_text(text)
    with pytest.raises(GlacierflowError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_monitor_sites(tmp_path / "s.toml", tmp_path)


def _sites(path: Path, cube: str, catalog: str, outlines: Path) -> Path:
    path.write_text(f'[[sites]]\nname = "parvati"\ncube = "{cube}"\noutlines = "{outlines}"\ncatalog = "{catalog}"\n'
                    'end = "2019-12-31"\n\n'
                    f'[[sites]]\nname = "nowhere"\noutlines = "{outlines}"\n')  # no cube and nothing to build it
    return path


def test_monitor_brings_a_site_up_to_date_and_reports_a_failed_one(
        tiny_cube_summer: dict[str, Any], served_twin: dict[str, Any], tiny_twin: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    cube = tmp_path / "parvati.zarr"
    shutil.copytree(tiny_cube_summer["out"], cube)  # built to 2019-09-30; the twin has scenes up to 2020-12-31
    sites = _sites(tmp_path / "sites.toml", str(cube), served_twin["stac_url"], tiny_twin / "outlines.geojson")
    out = tmp_path / "out"
    assert main(["monitor", str(sites), "--out-dir", str(out), "--cluster", "threads"]) == 1  # a site failed
    printed = capsys.readouterr().out
    assert "parvati" in printed and "FAILED at cube" in printed
    doc = json.loads((out / "summary.json").read_text())
    ok, failed = doc["sites"]
    assert ok["ok"] and not failed["ok"] and failed["failed_step"] == "cube" and doc["failed"] == 1
    assert "does not exist and the site gives no glacier or bbox" in failed["error"]
    assert "periods added: 2019-10-01" in ok["changes"]["cube"]
    assert ok["changes"]["velocity"].startswith("built") and "skipped" in ok["changes"]["forecast"]
    assert store.open_store(str(cube))["time"].values[-1] == pd.Timestamp("2019-10-01")
    page = Path(ok["report"]).read_text()
    assert "What changed" in page and "periods added: 2019-10-01" in page and "Velocity map" in page
    table = pd.read_csv(out / "parvati" / "stats.csv")
    assert sorted(table["time"].unique()) == ["2019-04-01", "2019-07-01", "2019-10-01"]
    assert list(pd.read_csv(out / "summary.csv")["status"]) == ["ok", "FAILED at cube"]
    # a second run: nothing new, nothing rewritten
    stamp = (cube / "zarr.json").stat().st_mtime_ns
    assert main(["monitor", str(sites), "--out-dir", str(out), "--cluster", "threads"]) == 1
    again = json.loads((out / "summary.json").read_text())["sites"][0]["changes"]
    assert again["cube"].startswith("up to date") and again["velocity"].startswith("up to date")
    assert again["stats"].startswith("0 new period(s)")
    assert (cube / "zarr.json").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_monitor_two_twin_glaciers_one_new_quarter_each(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The issue's check: two twin glaciers (parvati, aletsch), cubes built to T1 by monitor itself from a catalog
    serving the world as of T1, then one new quarter each; forecasts from a trained run; the default cluster."""
    from glacierflow.learn import train
    from glacierflow.specs import ModelSpec, PatchSpec, TrainSpec
    from glacierflow.testing import write_synthetic_cube
    from glacierflow.twin.make import make_twin
    from glacierflow.twin.serve import load_twin_meta, serve_twins

    twins = {g: tmp_path / g for g in ("parvati", "aletsch")}
    for seed, (glacier, d) in enumerate(twins.items()):
        make_twin(d, glacier=glacier, size="tiny", seed=seed, realism="basic")
    cube = write_synthetic_cube(str(tmp_path / "syn.zarr"), n_periods=24, size=(32, 32), drift=(0.5, 0.0))
    train.fit(cube, tmp_path / "run", ModelSpec(name="lstm", kwargs={"hidden_size": 8}), PatchSpec(size=16, stride=16),
              TrainSpec(epochs=1, steps_per_epoch=1, batch_size=4, device="cpu"), progress=False)
    out, runs = tmp_path / "out", []
    for until in ("2020-09-30", "2020-12-31"):
        with serve_twins(list(twins.values()), until=until) as served:
            lines = [f'[defaults]\ncatalog = "{served["stac_url"]}"\nend = "{until}"\nrun = "run"\n']
            for name, d in twins.items():
                m = load_twin_meta(d)
                lines.append(f'[[sites]]\nname = "{name}"\nbbox = {list(m["bbox"])}\nepsg = {m["epsg"]}\n'
                             f'start = "{m["start"]}"\noutlines = "{d.name}/outlines.geojson"\n')
            (tmp_path / "sites.toml").write_text("\n".join(lines))
            assert main(["monitor", str(tmp_path / "sites.toml"), "--out-dir", str(out)]) == 0
        runs.append(json.loads((out / "summary.json").read_text())["sites"])
    for first, second in zip(*runs, strict=True):
        assert first["changes"]["cube"].startswith("built") and "periods added: 2020-10-01" in second["changes"]["cube"]
        assert "pairs matched" in second["changes"]["velocity"]
        assert "2020-07-01 to last input 2020-10-01" in second["changes"]["forecast"]
        assert second["changes"]["stats"].startswith("1 new period(s) (2020-10-01)")
        page = Path(second["report"]).read_text()
        assert "periods added: 2020-10-01" in page and "Forecast panels" in page
    assert "glacierflow monitor" in capsys.readouterr().out
