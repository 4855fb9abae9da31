"""The flow stage against the offline twin's true velocity field.

One ``small`` basic twin (401 x 401 px) over two years (2019-2020), made, served and built into a cube
store **once per test session** exactly as ``twin make`` + ``build-cube`` do (a shorter span than the
twin's default 2018-2021 halves the twin and cube cost; annual pairs still cover every season).
``velocity`` tracks the cube's guide images. Figures (printed with ``pytest -s``), on the twin's
glacier pixels:

* ``rel``: median over glacier pixels of ``|speed - true speed|`` relative to the true median speed;
* ``direction``: median angle between measured and true vectors where the truth moves >= 1/4 of the median;
* ``ice_coverage``: glacier pixels with a composite value;
* ``stable``: median composite speed on pixels at least 3 px from the glacier (true value 0), and
  ``stable_valid``: the fraction of those pixels with a value;
* ``error_ratio``: median stated ``speed_error`` over glacier pixels / the actual median ``|speed - truth|``.

Measured (seed 0; issue 11 targets in brackets), farneback on guides, annual pairs, 57 pairs: speed
error 0.183 (0.10: not met: the matcher averages the displacement over a window comparable to the
20-36 px wide glacier, so the centre reads slow and the margins fast), direction 4.4 deg (5: met), ice
coverage 0.82 (0.90: not met), stable ground 1.33 m/yr over 0.83 of the pixels (3 m/yr over 0.80: met),
stated error / actual 0.85 (0.5-2: met, since the per-pixel error model and the smoothing bias). The
tolerances below are the measured values plus a margin where a target is not met, the target where it is.

On the truth's noise-free ``ndsi`` in place of the guides (:func:`glacierflow.testing.oracle_guides`) the
same composite measured speed error 0.195, direction 3.3 deg, stable ground 0.0 m/yr: the speed error is the
matcher's, not the input's.

These figures are the paper's Farnebäck on the grey guides (``--guide-band grey``), pinned here. The default
``flow`` (NCC with a search prior on red-band guides, outlines) is measured on 4-year small twins (basic,
himalaya, the slow narrow glacier) in benchmarks/README.md (flow): minutes each, too long for the test run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
import xarray as xr

from glacierflow.errors import GlacierflowError
from glacierflow.motion.velocity import FlowSpec, open_cube, velocity
from glacierflow.preprocess.build import build_cube_store
from glacierflow.specs import CubeSpec, PreprocessSpec
from glacierflow.testing import flow_figures, flow_truth, oracle_guides
from glacierflow.twin.make import make_twin
from glacierflow.twin.serve import serve_twin

pytestmark = pytest.mark.slow
START, END = "2019-01-01", "2020-12-31"


@pytest.fixture(scope="session")
def flow_twin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The two-year small basic twin, served (STAC API + assets) while the session needs it."""
    out = tmp_path_factory.mktemp("twin-flow") / "parvati-small"
    make_twin(out, glacier="parvati", size="small", start=START, end=END, seed=0, realism="basic")
    with serve_twin(out, backend="rustac") as served:
        yield {**served, "dir": out}


@pytest.fixture(scope="session")
def flow_cube(flow_twin: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> str:
    m = flow_twin["meta"]
    spec = CubeSpec(name="parvati-small", bbox=tuple(m["bbox"]), epsg=m["epsg"], start=START, end=END,
                    catalog=flow_twin["stac_url"])
    out = str(tmp_path_factory.mktemp("cube-flow") / "parvati-small.zarr")
    with dask.config.set(scheduler="threads"):
        build_cube_store(spec, PreprocessSpec(guide_band="grey"), out)  # the guides these figures were measured on
    return out


@pytest.fixture(scope="session")
def truth_on_cube(flow_twin: dict[str, Any], flow_cube: str) -> dict[str, np.ndarray]:
    cube, _ = open_cube(flow_cube)
    return flow_truth(cube, str(Path(flow_twin["dir"]) / "truth.zarr"))


def _run(cube_url: str, spec: FlowSpec) -> xr.Dataset:
    cube, guides = open_cube(cube_url)
    with dask.config.set(scheduler="threads"):
        return velocity(cube, spec, guides=guides).compute()


PAPER = FlowSpec(method="farneback", pairs="annual")  # the paper's matcher, kept for its figure


@pytest.fixture(scope="session")
def farneback(flow_cube: str) -> xr.Dataset:
    return _run(flow_cube, PAPER)


def test_default_farneback_on_guides_against_truth(farneback: xr.Dataset, truth_on_cube: dict) -> None:
    f = flow_figures(farneback, truth_on_cube)
    print("farneback, guides, annual:", {k: round(x, 3) for k, x in f.items()}, farneback.sizes["time"], "pairs")
    dt = farneback["dt_days"].values
    assert farneback.sizes["time"] >= 40 and (dt >= 300).all() and (dt <= 430).all()  # measured 57 pairs
    assert 45 < f["true_median"] < 60  # the twin's glacier: up to 150 m/yr on the centre line
    assert f["rel"] < 0.21  # measured 0.183 (target 0.10 not met: window smoothing, see the docstring)
    assert f["direction"] < 5.0  # measured 4.4 deg (target 5)
    assert f["ice_coverage"] > 0.78  # measured 0.817 (target 0.90 not met)
    assert f["stable"] < 3.0 and f["stable_valid"] >= 0.8  # measured 1.33 m/yr over 0.827 (target met)
    assert 0.5 < f["error_ratio"] < 2.0  # measured 0.85 (target: within a factor 2; was 0.16)
    pe = farneback["pair_error"].values
    # pair errors of a few m/yr (0.07 px/yr); a pair whose stable ground matched nowhere has none (NaN, left out
    # of the composite): measured 6 of 60 pairs since the v2 stable-ground rule (farneback on grey guides)
    assert np.isfinite(pe).mean() >= 0.85 and 0.5 < np.nanmedian(pe) < 5.0


def test_guides_beat_ndsi_periods_off_the_ice(flow_cube: str, truth_on_cube: dict, farneback: xr.Dataset) -> None:
    """The first version's input (Farnebäck on quarterly NDSI period means) against the scene guides."""
    ds = _run(flow_cube, PAPER.replace(images="ndsi"))
    f = flow_figures(ds, truth_on_cube)
    print("farneback, NDSI periods, annual:", {k: round(x, 3) for k, x in f.items()}, ds.sizes["time"], "pairs")
    g = flow_figures(farneback, truth_on_cube)
    assert 4 <= ds.sizes["time"] <= 8  # 8 quarterly periods, Δt from mean acquisition times
    assert g["stable_valid"] > f["stable_valid"]


def test_oracle_guides_bound_the_observed_figures(flow_twin: dict, flow_cube: str, truth_on_cube: dict,
                                                  farneback: xr.Dataset) -> None:
    """The truth's clean NDSI in place of the guides: same scenes and grid, and a cleaner result off the ice."""
    truth_store = str(Path(flow_twin["dir"]) / "truth.zarr")
    cube, guides = open_cube(flow_cube)
    clean = oracle_guides(guides, truth_store, "ndsi")
    truth = xr.open_zarr(truth_store, consolidated=False)
    k = clean.sizes["scene"] // 2
    want = truth["ndsi"].sel(time=clean["time"].values[k]).sel(x=guides["x"], y=guides["y"]).values
    np.testing.assert_array_equal(clean.isel(scene=k).values, want.astype(np.float32))
    assert clean.dims == guides.dims and clean.sizes == guides.sizes
    with pytest.raises(GlacierflowError, match="no \\(time, y, x\\) variable 'nope'"):
        oracle_guides(guides, truth_store, "nope")
    with dask.config.set(scheduler="threads"):
        ds = velocity(cube, PAPER, guides=clean).compute()
    f, g = flow_figures(ds, truth_on_cube), flow_figures(farneback, truth_on_cube)
    print("farneback, truth ndsi, annual:", {key: round(x, 3) for key, x in f.items()})
    assert f["stable"] < g["stable"]  # no clouds, noise or misregistration on the stable ground
