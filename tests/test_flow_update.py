"""``flow --update``: a velocity store of a cube up to T1, updated with the cube up to T2, equals ``flow`` on T2."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from glacierflow.cli.main import main
from glacierflow.motion.update import update_flow
from glacierflow.motion.velocity import open_velocity, run_flow
from glacierflow.specs import FlowSpec
from glacierflow.storage import store


def cube_before(src: str, dst: str, t1: str) -> str:
    """The cube store ``src`` as it was before ``t1``: its periods, scenes and guides before that date."""
    when = pd.Timestamp(t1)
    root = store.open_store(src)
    root = root.isel(time=np.flatnonzero(pd.DatetimeIndex(root["time"].values) < when))
    scenes = store.open_store(src, group="scenes")
    scenes = scenes.isel(scene=np.flatnonzero(pd.DatetimeIndex(scenes["time"].values) < when))
    ids = {str(i) for i in scenes["item_id"].values}
    guides = store.open_store(src, group="guides")
    guides = guides.isel(scene=[k for k, i in enumerate(guides["scene"].values) if str(i) in ids])
    for ds in (root, scenes, guides):
        for var in ds.variables.values():
            var.encoding = {}
    store.write(xr.DataTree.from_dict({"/": root, "scenes": scenes, "guides": guides}), dst)
    return dst


def assert_same_velocity(a: str, b: str, atol: float = 1e-6) -> None:
    """Every variable of the root and the pairs group within ``atol`` with the same NaN pattern."""
    for group in (None, "pairs"):
        x, y = open_velocity(a, group=group).load(), open_velocity(b, group=group).load()
        assert set(x.data_vars) == set(y.data_vars)
        for name in x.data_vars:
            p, q = x[name].values, y[name].values
            assert p.shape == q.shape, name
            if p.dtype.kind == "f":
                np.testing.assert_array_equal(np.isnan(p), np.isnan(q), err_msg=name)
                np.testing.assert_allclose(p, q, atol=atol, rtol=0, equal_nan=True, err_msg=name)
            else:
                np.testing.assert_array_equal(p, q, err_msg=name)
        if group == "pairs":
            for c in ("mid_date", "acquisition_date_img1", "acquisition_date_img2", "scene_img1", "scene_img2"):
                np.testing.assert_array_equal(x[c].values, y[c].values, err_msg=c)


@pytest.fixture(scope="module")
def flows(tiny_cube_summer: dict[str, Any], tiny_twin: Path, tmp_path_factory: pytest.TempPathFactory
          ) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("flow-update")
    full = tiny_cube_summer["out"]
    t1 = cube_before(full, str(base / "t1.zarr"), "2019-07-01")
    spec = FlowSpec(method="farneback", pairs="consecutive")  # old pairs kept, the last scene paired anew
    outline = str(tiny_twin / "outlines.geojson")
    run_flow(t1, str(base / "v.zarr"), spec, outline=outline)
    before = open_velocity(str(base / "v.zarr"), group="pairs").sizes["mid_date"]
    s = update_flow(str(base / "v.zarr"), full)
    run_flow(full, str(base / "fresh.zarr"), spec, outline=outline)
    return {"base": base, "full": full, "update": s, "before": before}


def test_update_equals_a_fresh_flow(flows: dict[str, Any]) -> None:
    s, base = flows["update"], flows["base"]
    assert not s.unchanged and s.added > 0 and s.kept > 0
    assert s.kept + s.dropped == flows["before"]
    assert s.kept + s.added == open_velocity(str(base / "fresh.zarr"), group="pairs").sizes["mid_date"]
    assert any("new pair(s) matched" in line for line in s.lines())
    # measured: bit-identical (max |diff| 0.0); the kept pairs are read back, the new ones matched the same way
    assert_same_velocity(str(base / "v.zarr"), str(base / "fresh.zarr"), atol=1e-6)


def test_second_update_changes_nothing(flows: dict[str, Any], capsys: pytest.CaptureFixture) -> None:
    v = flows["base"] / "v.zarr"
    stamp = (v / "zarr.json").stat().st_mtime_ns
    assert main(["flow", "--update", str(v), flows["full"], "--cluster", "threads"]) == 0
    assert "is up to date" in capsys.readouterr().out
    assert (v / "zarr.json").stat().st_mtime_ns == stamp


def test_update_refuses_flags_and_a_missing_store(flows: dict[str, Any], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    v = str(flows["base"] / "v.zarr")
    assert main(["flow", "--update", v, "--method", "ncc"]) == 2
    assert "--update reuses the store's own flow settings; drop --method" in capsys.readouterr().err
    assert main(["flow", "--update", str(tmp_path / "none.zarr")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["flow", flows["full"]]) == 2
    assert "Missing option '--out': flow CUBE --out STORE, or flow --update VELOCITY" in capsys.readouterr().err
    assert main(["flow"]) == 2
    assert "Missing argument 'CUBE'" in capsys.readouterr().err
