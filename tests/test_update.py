"""``build-cube --update`` and ``--reference-from`` on the tiny twin, watched arriving with ``twin serve --until``.

The store is built over 2019-01-01..2019-08-15 from the world as of 2019-08-15 (its last quarter still open),
then updated to 2020-03-31 from the world as of 2020-03-31; the reference is ``build-cube`` over the whole range
with ``--reference-from`` the store as it was before the update.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
import xarray as xr
import zarr

from glacierflow.cli.main import main
from glacierflow.errors import GlacierflowError
from glacierflow.preprocess.build import build_cube_store, plan_build
from glacierflow.preprocess.update import update_cube
from glacierflow.specs import CubeSpec, PreprocessSpec
from glacierflow.storage import store
from glacierflow.twin.serve import serve_twin

T1, T2 = "2019-08-15", "2020-03-31"
GROUPS = (None, "scenes", "guides", "reference")


def _spec(meta: dict[str, Any], url: str, end: str) -> CubeSpec:
    return CubeSpec(name="t", bbox=tuple(meta["bbox"]), epsg=meta["epsg"], start="2019-01-01", end=end, catalog=url)


def _files(path: str) -> dict[str, tuple[int, int]]:
    """Every file of a store with its size and inode (what an untouched store keeps)."""
    root = Path(path)
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_ino) for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def world(tiny_twin: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The store at T1 (kept as ``before``), served worlds as of T1 and T2, the rebuild over [start, T2]."""
    d = tmp_path_factory.mktemp("update")
    out = {"dir": d, "before": str(d / "before.zarr"), "rebuilt": str(d / "rebuilt.zarr")}
    with dask.config.set(scheduler="threads"):
        with serve_twin(tiny_twin, until=T1) as served:
            meta = served["meta"]
            build_cube_store(_spec(meta, served["stac_url"], T1), PreprocessSpec(), out["before"])
        with serve_twin(tiny_twin, until=T2) as served:
            build_cube_store(_spec(meta, served["stac_url"], T2), PreprocessSpec(), out["rebuilt"],
                             reference_from=out["before"])
    out["meta"] = meta
    return out


@pytest.fixture
def served_t2(tiny_twin: Path) -> Any:
    with serve_twin(tiny_twin, until=T2) as served:
        yield served


def _copy(world: dict[str, Any], tmp_path: Path) -> str:
    target = str(tmp_path / "cube.zarr")
    shutil.copytree(world["before"], target)
    return target


def _assert_same_store(a: str, b: str, tol: float = 1e-6) -> None:
    """Every variable of every group equal (floats within ``tol``, the same NaN pattern)."""
    for group in GROUPS:
        x, y = xr.open_zarr(a, group=group), xr.open_zarr(b, group=group)
        assert sorted(x.variables) == sorted(y.variables), group
        for name in x.variables:
            u, v = x[name].values, y[name].values
            assert u.shape == v.shape, (group, name)
            if u.dtype.kind == "f":
                np.testing.assert_array_equal(np.isnan(u), np.isnan(v), err_msg=f"{group}/{name}")
                assert np.nanmax(np.abs(u - v), initial=0.0) <= tol, (group, name)
            else:
                np.testing.assert_array_equal(u, v, err_msg=f"{group}/{name}")


def test_update_equals_rebuild_with_reference_from(world: dict[str, Any], served_t2: dict[str, Any],
                                                   tmp_path: Path) -> None:
    cube = _copy(world, tmp_path)
    with dask.config.set(scheduler="threads"):
        summary = update_cube(cube, end=T2, catalog=served_t2["stac_url"])
    # measured max |diff| 0 (the same arithmetic on the same scenes and references); 1e-6 is the bound
    _assert_same_store(cube, world["rebuilt"])
    assert summary.periods_changed == ["2019-07-01"]  # the open quarter of T1
    assert summary.periods_added == ["2019-10-01", "2020-01-01"]
    scenes = xr.open_zarr(cube, group="scenes")
    after = {str(i) for i in scenes["item_id"].values}
    before = {str(i) for i in xr.open_zarr(world["before"], group="scenes")["item_id"].values}
    assert summary.new_rows == len(after - before) > 0 and not summary.unchanged
    assert 0 < summary.new_scenes <= summary.new_rows
    assert summary.bytes_reused > 0  # the periods before 2019-07 and the old guides were linked, not rewritten
    assert xr.open_zarr(cube).attrs["glacierflow_complete"] == 1  # a plain reader opens it
    assert json.loads(xr.open_zarr(cube).attrs["cube_spec"])["end"] == T2


def test_second_update_changes_nothing_and_says_so(world: dict[str, Any], served_t2: dict[str, Any],
                                                   tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cube = _copy(world, tmp_path)
    with dask.config.set(scheduler="threads"):
        update_cube(cube, end=T2, catalog=served_t2["stac_url"])
    files = _files(cube)
    rc = main(["build-cube", "--update", cube, "--end", T2, "--catalog", served_t2["stac_url"]])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and len(lines) == 1 and "nothing written" in lines[0], lines
    assert _files(cube) == files  # not one file rewritten


def test_interrupted_update_keeps_the_previous_store(world: dict[str, Any], served_t2: dict[str, Any],
                                                     tmp_path: Path) -> None:
    """Killed in the window of the replace (the store moved aside): readers get the previous version, the next
    update restores it first and completes; killed before the replace: the store is untouched."""
    cube = _copy(world, tmp_path)
    files = _files(cube)

    def kill_at(name: str) -> Any:
        def step(s: str) -> None:
            if s == name:
                raise KeyboardInterrupt(s)
        return step

    with dask.config.set(scheduler="threads"):
        with pytest.raises(KeyboardInterrupt):
            update_cube(cube, end=T2, catalog=served_t2["stac_url"], step=kill_at("start"))
        assert _files(cube) == files and not list(tmp_path.glob(".cube.zarr.*"))
        with pytest.raises(KeyboardInterrupt):
            update_cube(cube, end=T2, catalog=served_t2["stac_url"], step=kill_at("old-moved"))
        assert not Path(cube).exists()  # stopped between the two renames
        with pytest.warns(UserWarning, match="previous store"):
            kept = store.open_store(cube)
        assert kept.sizes["time"] == xr.open_zarr(world["before"]).sizes["time"]
        np.testing.assert_array_equal(kept["ndsi"].values, xr.open_zarr(world["before"])["ndsi"].values)
        with pytest.warns(UserWarning, match="restored the previous store"):
            update_cube(cube, end=T2, catalog=served_t2["stac_url"])
    _assert_same_store(cube, world["rebuilt"])


def test_store_without_search_parameters_is_one_line(world: dict[str, Any], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    cube = _copy(world, tmp_path)
    root = zarr.open_group(cube, mode="r+")  # a store of the versions before: no search attr, no reference
    del root.attrs["search"]
    del root["reference"]
    zarr.consolidate_metadata(cube)
    rc = main(["build-cube", "--update", cube, "--end", T2])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1, err
    assert "search" in err[0] and "ECC reference" in err[0] and "--overwrite" in err[0], err


def test_reference_from_another_grid_is_one_line(world: dict[str, Any], served_t2: dict[str, Any],
                                                 tmp_path: Path) -> None:
    w, s, e, n = world["meta"]["bbox"]
    spec = _spec(world["meta"], served_t2["stac_url"], T2).replace(bbox=(w, s, w + (e - w) / 2, n))
    plan = plan_build(spec, PreprocessSpec(), str(tmp_path / "half.zarr"))
    with pytest.raises(GlacierflowError, match="--reference-from .* is not this cube's") as err:
        build_cube_store(spec, PreprocessSpec(), str(tmp_path / "half.zarr"), plan=plan,
                         reference_from=world["before"])
    assert "\n" not in str(err.value)
    assert not (tmp_path / "half.zarr").exists()


def test_update_flags_conflicting_with_the_store_are_one_line(world: dict[str, Any], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["build-cube", "--update", world["before"], "--glacier", "parvati"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "--glacier" in err[0], err
