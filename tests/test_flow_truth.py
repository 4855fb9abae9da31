"""The flow stage against the offline twin's true velocity field (``small`` basic twin, 377 x 377 px cube,
2018-2021, 69 used scenes with guides; annual pairs: 81 pairs of acquisitions 300-430 days apart).

The cube is built from the served twin exactly as ``build-cube`` builds it; ``velocity`` tracks the
cube's guide images. Figures (printed with ``pytest -s``), on the twin's glacier pixels:

* ``rel``: median over glacier pixels of ``|speed - true speed|`` relative to the true median speed;
* ``direction``: median angle between measured and true vectors where the truth moves >= 1/4 of the median;
* ``ice_coverage``: glacier pixels with a composite value;
* ``stable``: median composite speed on pixels at least 3 px from the glacier (true value 0), and
  ``stable_valid``: the fraction of those pixels with a value;
* ``error_ratio``: median stated ``speed_error`` over glacier pixels / the actual median ``|speed - truth|``.

Measured (seed 0; 2 cores; issue 11 targets in brackets):

=========================  =====  =========  ========  ======  ============  ===========
composite, annual pairs    rel    direction  ice cov.  stable  stable valid  error ratio
=========================  =====  =========  ========  ======  ============  ===========
farneback, guides          0.198  4.4 deg    0.85      0.84    0.83          0.16
ncc chip 15, guides        0.25   5.7 deg    0.86      1.80    0.82          0.11
ncc chip 11, guides        0.24   6.0 deg    0.90      3.23    0.87          0.16
(target)                   0.10   5 deg      0.90      3       0.80          0.5-2
=========================  =====  =========  ========  ======  ============  ===========

Met: direction and stable ground (Farnebäck). Not met: speed error (systematic: both matchers
average the displacement over a window comparable to the 20-36 px wide glacier, so the centre reads
slow and the margins fast, bias -6 m/yr), ice coverage 0.85, and the stated error (from stable
ground) is ~6x smaller than the actual on-ice error. The tolerances below are the measured values
plus a margin, not the targets, where a target is not met.
"""

from __future__ import annotations

from typing import Any

import dask
import numpy as np
import pytest
import xarray as xr
from scipy import ndimage

from glacierflow.build import build_cube_store
from glacierflow.config import CubeSpec, PreprocessSpec
from glacierflow.flow import FlowSpec, open_cube, velocity

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small_cube(served_small_twin: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> str:
    m = served_small_twin["meta"]
    spec = CubeSpec(name="parvati-small", bbox=tuple(m["bbox"]), epsg=m["epsg"], start="2018-01-01",
                    end="2021-12-31", catalog=served_small_twin["stac_url"])
    out = str(tmp_path_factory.mktemp("cube-small") / "parvati-small.zarr")
    with dask.config.set(scheduler="threads"):
        build_cube_store(spec, PreprocessSpec(), out)
    return out


@pytest.fixture(scope="module")
def truth_on_cube(small_twin, small_cube: str) -> dict[str, np.ndarray]:
    cube, _ = open_cube(small_cube)
    truth = xr.open_zarr(small_twin / "truth.zarr", decode_coords="all", consolidated=False)
    on = truth[["u", "v", "glacier_mask"]].sel(x=cube["x"], y=cube["y"])  # same UTM grid: exact labels
    u, v = on["u"].values.astype(np.float64), on["v"].values.astype(np.float64)
    glacier = on["glacier_mask"].values.astype(bool)
    return {"u": u, "v": v, "speed": np.hypot(u, v), "glacier": glacier,
            "far": ndimage.distance_transform_edt(~glacier) >= 3}


def figures(ds: xr.Dataset, truth: dict[str, np.ndarray]) -> dict[str, float]:
    """The composite's figures against the truth (module docstring)."""
    u, v = ds["u_composite"].values, ds["v_composite"].values
    gl, far = truth["glacier"], truth["far"]
    speed = np.hypot(u, v)
    ok = gl & np.isfinite(speed)
    true_median = float(np.median(truth["speed"][gl]))
    mae = float(np.median(np.abs(speed[ok] - truth["speed"][ok])))
    moving = ok & (truth["speed"] >= 0.25 * true_median)
    true_angle = np.arctan2(truth["v"][moving], truth["u"][moving])
    angle = np.angle(np.exp(1j * (np.arctan2(v[moving], u[moving]) - true_angle)))
    stable = far & np.isfinite(speed)
    return {
        "true_median": true_median, "rel": mae / true_median,
        "direction": float(np.degrees(np.median(np.abs(angle)))),
        "ice_coverage": float(ok.sum() / gl.sum()),
        "stable": float(np.median(speed[stable])), "stable_valid": float(stable.sum() / far.sum()),
        "error_ratio": float(np.median(ds["speed_error"].values[ok]) / mae),
    }


def _run(cube_url: str, spec: FlowSpec) -> xr.Dataset:
    cube, guides = open_cube(cube_url)
    with dask.config.set(scheduler="threads"):
        return velocity(cube, spec, guides=guides).compute()


@pytest.fixture(scope="module")
def farneback(small_cube: str) -> xr.Dataset:
    return _run(small_cube, FlowSpec())


def test_default_farneback_on_guides_against_truth(farneback: xr.Dataset, truth_on_cube: dict) -> None:
    f = figures(farneback, truth_on_cube)
    print("farneback, guides, annual:", {k: round(x, 3) for k, x in f.items()})
    assert farneback.sizes["time"] >= 60  # 69 scenes, <= 3 pairs each: measured 81 pairs
    assert (farneback["dt_days"].values >= 300).all() and (farneback["dt_days"].values <= 430).all()
    assert 45 < f["true_median"] < 60  # the twin's glacier: up to 150 m/yr on the centre line
    assert f["rel"] < 0.23  # measured 0.198 (target 0.10 not met: window smoothing, see the docstring)
    assert f["direction"] < 5.0  # measured 4.4 deg (target 5)
    assert f["ice_coverage"] > 0.8  # measured 0.85 (target 0.90 not met)
    assert f["stable"] < 3.0 and f["stable_valid"] >= 0.8  # measured 0.84 m/yr over 0.83 (target met)
    assert 0.08 < f["error_ratio"] < 0.5  # measured 0.16: stated error too small (target 0.5-2 not met)
    pe = farneback["pair_error"].values
    assert np.isfinite(pe).all() and 0.5 < np.median(pe) < 5.0  # measured median 2.0 m/yr (0.07 px/yr)


def test_ncc_on_guides_against_truth(small_cube: str, truth_on_cube: dict, farneback: xr.Dataset) -> None:
    """NCC (chip 15, search from 150 m/yr), one pair per scene to bound the cost (~4x Farnebäck's per pair)."""
    ds = _run(small_cube, FlowSpec(method="ncc", max_speed=150.0, max_pairs_per_scene=1))
    f = figures(ds, truth_on_cube)
    print("ncc chip 15, guides, annual, 1 pair/scene:", {k: round(x, 3) for k, x in f.items()})
    assert f["rel"] < 0.32  # measured 0.25 with 3 pairs per scene
    assert f["direction"] < 8.0  # measured 5.7
    assert f["stable"] < 3.5 and f["stable_valid"] > 0.6  # measured 1.8 over 0.82 with 3 pairs per scene
    assert figures(farneback, truth_on_cube)["rel"] < f["rel"]  # why farneback is the default


def test_guides_beat_ndsi_periods_off_the_ice(small_cube: str, truth_on_cube: dict, farneback: xr.Dataset) -> None:
    """The first version's input (Farnebäck on quarterly NDSI period means) against the scene guides."""
    ds = _run(small_cube, FlowSpec(images="ndsi"))
    f = figures(ds, truth_on_cube)
    print("farneback, NDSI periods, annual:", {k: round(x, 3) for k, x in f.items()})
    g = figures(farneback, truth_on_cube)
    assert 12 <= ds.sizes["time"] <= 16  # 16 quarterly periods, Δt from mean acquisition times: measured 13
    assert g["stable_valid"] > f["stable_valid"]
