"""The examples in examples/ run (so they never rot): the scripts against the served tiny twin, the notebook
executed whole by nbclient in a real IPython kernel, and the notebook is committed without outputs."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOTEBOOK = EXAMPLES / "walkthrough.ipynb"


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_build_cube_and_open_lazily_examples_run(served_twin, tmp_path):
    m = served_twin["meta"]
    out = tmp_path / "example.zarr"
    # a real local cluster (one worker process), as the example's default: worker processes re-import it
    done = _run("build_cube.py", served_twin["stac_url"], *map(str, m["bbox"]), m["start"], m["end"], str(out),
                "local:1")
    assert "written:" in done.stdout
    cube = xr.open_zarr(out, decode_coords="all")
    # the example derives the UTM zone from the bbox centre: it must land on the twin's own zone
    from pyproj import CRS

    assert CRS.from_wkt(cube["spatial_ref"].attrs["crs_wkt"]).to_epsg() == m["epsg"]
    assert cube.sizes["time"] == 8  # 2019-2020 in quarterly periods
    ndsi = cube["ndsi"].values
    assert np.isfinite(ndsi).all() and 0 < float(ndsi.mean()) < 1
    shown = _run("open_lazily.py", str(out)).stdout
    used = int(xr.open_zarr(out, group="scenes")["used"].values.sum())
    assert f"{used} of " in shown and "scenes per period" in shown


def test_walkthrough_notebook_is_committed_without_outputs():
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the walkthrough has code cells"
    for i, cell in enumerate(code):
        assert cell.outputs == [] and cell.execution_count is None, f"code cell {i} carries outputs: strip them"


@pytest.mark.slow
def test_walkthrough_notebook_runs(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    t0 = time.perf_counter()
    # a real IPython kernel of this interpreter; the notebook writes walkthrough-out/ under tmp_path
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    print(f"walkthrough executed in {time.perf_counter() - t0:.1f} s")
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "model" in text and "persistence" in text and "seasonal" in text  # the forecast's score table
    work = tmp_path / "walkthrough-out"
    cube = xr.open_zarr(work / "cube.zarr", decode_coords="all")
    forecast = xr.open_zarr(work / "forecast.zarr", decode_coords="all")
    # the forecast covers the cube's grid and its last 4 periods (held out), and is a real NDSI map
    assert forecast.sizes["y"] == cube.sizes["y"] and forecast.sizes["x"] == cube.sizes["x"]
    np.testing.assert_array_equal(forecast["time"].values, cube["time"].values[-4:])
    values = forecast["ndsi"].values
    assert np.isfinite(values).all() and float(values.std()) > 0.01
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, "the last cell shows the forecast figure"
