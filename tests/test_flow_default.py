"""The default ``flow`` (NCC with a search prior on red-band guides, outlines) against the twin's truth.

One ``small`` himalaya twin (the default realism: terrain light, snowfall, decorrelating texture, two WRS
paths, T2 items; 401 x 401 px) over two years (2019-2020, half the twin's default span) made, served and
built with the default ``build-cube`` once per module, then ``velocity`` with the default
:class:`FlowSpec` and the twin's ``outlines.geojson``, as ``glacierflow flow CUBE --out V --outline
OUTLINES.geojson`` runs it. The figures are those of benchmarks/README.md (flow) on half its span (so
half its pairs): the tolerances carry the figure
measured here (2026-12-08, 78 pairs, ~2 min on an idle 2-core machine for twin, cube and flow) and the
issue's target where it is met.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
import xarray as xr

from glacierflow.motion.masks import read_ice_mask
from glacierflow.motion.velocity import FlowSpec, open_cube, velocity
from glacierflow.preprocess.build import build_cube_store
from glacierflow.specs import CubeSpec, PreprocessSpec
from glacierflow.testing import flow_figures, flow_truth
from glacierflow.twin.make import make_twin
from glacierflow.twin.serve import serve_twin

pytestmark = pytest.mark.slow
START, END = "2019-01-01", "2020-12-31"


@pytest.fixture(scope="module")
def tiny_himalaya(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The two-year small himalaya twin and its default cube store."""
    out = tmp_path_factory.mktemp("twin-flow-default") / "parvati-small"
    make_twin(out, glacier="parvati", size="small", start=START, end=END, seed=0, realism="himalaya")
    cube = str(out.parent / "cube.zarr")
    with serve_twin(out, backend="rustac") as served:
        m = served["meta"]
        spec = CubeSpec(name="parvati-small", bbox=tuple(m["bbox"]), epsg=m["epsg"], start=START, end=END,
                        catalog=served["stac_url"])
        with dask.config.set(scheduler="threads"):
            build_cube_store(spec, PreprocessSpec(), cube)
    yield {"dir": out, "cube": cube}


@pytest.fixture(scope="module")
def default_flow(tiny_himalaya: dict[str, Any]) -> tuple[xr.Dataset, dict[str, np.ndarray]]:
    cube, guides = open_cube(tiny_himalaya["cube"])
    ice = read_ice_mask(str(Path(tiny_himalaya["dir"]) / "outlines.geojson"), cube)
    with dask.config.set(scheduler="threads"):
        ds = velocity(cube, FlowSpec(), guides=guides, ice_mask=ice).compute()
    return ds, flow_truth(cube, str(Path(tiny_himalaya["dir"]) / "truth.zarr"))


def test_default_flow_meets_the_himalaya_targets(default_flow: tuple[xr.Dataset, dict]) -> None:
    ds, truth = default_flow
    f = flow_figures(ds, truth)
    print("default flow, small himalaya 2019-2020:", {k: round(x, 3) for k, x in f.items()}, ds.sizes["time"], "pairs")
    # two years give half the pairs of the benchmark's four (78 against 153): the speed error and the stable
    # ground miss the targets here (0.183 and 3.9 m/yr measured; 0.136 and 2.1 m/yr over four years)
    assert f["rel"] <= 0.21  # measured 0.183 (target 0.15: met over four years, benchmarks/README.md)
    assert f["direction"] <= 10.0  # target 10 deg; measured 5.2
    assert f["ice_coverage"] >= 0.85  # target 0.85; measured 0.99
    assert f["stable"] <= 4.5 and f["stable_valid"] >= 0.8  # measured 3.9 m/yr over 0.95 (four years: 2.1)
    assert 0.5 <= f["error_ratio"] <= 2.0  # target 0.5-2; measured 0.74


def test_vx_and_vy_errors_are_per_component(default_flow: tuple[xr.Dataset, dict]) -> None:
    """``vx_error`` and ``vy_error`` differ where the components' errors differ, and each states its own
    component's actual error within a factor 2 (the issue's 0.5-2)."""
    ds, truth = default_flow
    f = flow_figures(ds, truth)
    ex, ey = ds["u_error"].values, ds["v_error"].values
    ok = np.isfinite(ex) & np.isfinite(ey)
    assert not np.allclose(ex[ok], ey[ok])
    assert 0.5 <= f["error_ratio_x"] <= 2.0  # measured 0.77
    assert 0.5 <= f["error_ratio_y"] <= 2.0  # measured 0.72
