"""The notebook API (glacierflow.api, exposed lazily at the top level) and the role extras.

Real twin, real STAC server, real Zarr: the API's lazy cube, written by ``gf.write``, must hold the same values
as the store ``build_cube_store`` writes (the CLI's call) for the same scenes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
import xarray as xr
from matplotlib.figure import Figure

import glacierflow as gf
from glacierflow.errors import GlacierflowError, MissingExtraError

# Runs a snippet in a fresh interpreter where importing the named top-level modules fails, as in a core install
# (pip install glacierflow, without the [learn] and [twin] extras).
BLOCKED = textwrap.dedent("""
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {blocked!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
    sys.meta_path.insert(0, Block())
""")


def _without(blocked: set[str], code: str) -> subprocess.CompletedProcess[str]:
    src = BLOCKED.format(blocked=blocked) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", src], capture_output=True, text=True, timeout=120)


def test_core_install_imports_and_names_the_missing_extra() -> None:
    run = _without({"torch", "xbatcher", "rustac", "starlette", "uvicorn"}, """
        import glacierflow as gf
        assert hasattr(gf, "train") and hasattr(gf, "build_cube") and "torch" not in sys.modules
        assert "matplotlib" not in sys.modules and callable(gf.plot_flow) and "matplotlib" in sys.modules  # lazy
        try:
            gf.train("cube.zarr", "run")
        except gf.MissingExtraError as e:
            print("API:", e)
        from glacierflow.cli.main import main
        print("rc", main(["models"]))
    """)
    assert run.returncode == 0, run.stderr
    line = 'this needs torch, from glacierflow\'s "learn" extra: pip install "glacierflow[learn]"'
    assert f"API: {line}" in run.stdout
    assert "rc 2" in run.stdout and run.stderr.strip() == f"error: {line}"  # one line, no traceback


def test_a_genuine_import_bug_is_not_called_a_missing_extra() -> None:
    assert gf.errors.missing_extra(ModuleNotFoundError("No module named 'nosuch'", name="nosuch")) is None
    assert isinstance(gf.errors.missing_extra(ModuleNotFoundError("x", name="torch.nn")), MissingExtraError)


def test_unknown_names_and_options_are_one_clear_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nosuch'"):
        gf.nosuch  # noqa: B018
    with pytest.raises(GlacierflowError, match=r"unknown option\(s\) max_clouds; known: .*max_cloud"):
        gf.search("parvati", max_clouds=10)
    with pytest.raises(GlacierflowError, match="unknown glacier"):
        gf.build_cube("nosuch-glacier")


def test_build_cube_is_lazy_and_writes_what_the_cli_writes(served_twin: dict[str, Any],
                                                           tiny_cube_summer: dict[str, Any], tmp_path: Path) -> None:
    m = served_twin["meta"]
    found = gf.search(bbox=m["bbox"], start="2019-04-01", end="2019-09-30", catalog=served_twin["stac_url"])
    assert len(found.items) > 0
    cube = gf.build_cube(bbox=m["bbox"], epsg=m["epsg"], start="2019-04-01", end="2019-09-30",
                         catalog=served_twin["stac_url"], period="3MS")
    assert dask.is_dask_collection(cube["ndsi"].data)  # nothing computed yet
    assert cube.attrs["cube_spec"] and cube.attrs["preprocess_spec"]
    with dask.config.set(scheduler="threads"):
        url = gf.write(cube, tmp_path / "api.zarr")
    back = gf.open_cube(url)
    ref = tiny_cube_summer["ndsi"]
    assert back["ndsi"].shape == ref.shape
    got = back["ndsi"].values
    assert np.array_equal(np.isnan(got), np.isnan(ref))
    # The CLI's build computes the quality figures first and stacks only the scenes that enter; the API's lazy
    # graph applies the same threshold inside one graph. Same scenes, same float32 arithmetic: measured 0.0.
    assert np.nanmax(np.abs(got - ref)) <= 1e-6


def test_velocity_is_lazy_from_an_opened_cube(tiny_cube_summer: dict[str, Any], tiny_twin: Path) -> None:
    cube = gf.open_cube(tiny_cube_summer["out"])
    v = gf.velocity(cube, pairs="consecutive")  # six months of scenes: no annual pairs
    assert {"vx", "vy", "v", "v_error", "count"} <= set(v.ds.data_vars) and "pairs" in v.children
    assert all(dask.is_dask_collection(v[k].data) for k in ("vx", "vy", "v"))  # nothing computed yet
    # outline= as `flow --outline`: stable ground is taken outside the glacier outlines, not the NDSI climatology
    ringed = gf.velocity(cube, pairs="consecutive", outline=str(tiny_twin / "outlines.geojson"))
    assert json.loads(ringed.attrs["flow_spec"])["outline"].endswith("outlines.geojson")
    assert not np.array_equal(ringed["stable_ground"].values, v["stable_ground"].values)
    with pytest.raises(GlacierflowError, match="needs a cube store"):
        gf.velocity(xr.Dataset({"ndsi": cube["ndsi"]}))  # a Dataset that does not come from a store
    # the lazy DataTree plots as a store does (composite and pairs group): a Figure titled with its pair count
    fig = gf.plot_flow(ringed, step=16)
    n_pairs = ringed["pairs"].sizes["mid_date"]
    assert isinstance(fig, Figure) and f"composite of {n_pairs} pairs" in fig.texts[0].get_text()
