"""Session fixtures for the offline twin: tiny and small parvati twins on disk, served over HTTP, and a cube."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from glacierflow.twin.make import make_twin
from glacierflow.twin.serve import serve_twin


def _make(factory: pytest.TempPathFactory, size: str) -> Path:
    out = factory.mktemp(f"twin-{size}") / f"parvati-{size}"
    make_twin(out, glacier="parvati", size=size, seed=0, realism="basic")
    return out


@pytest.fixture(scope="session")
def tiny_twin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``tiny`` parvati twin (seed 0), written once per test session."""
    return _make(tmp_path_factory, "tiny")


@pytest.fixture(scope="session")
def small_twin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``small`` parvati twin (401 x 401 px, 2018-2021, seed 0): ~20 s on 2 cores, once per session."""
    return _make(tmp_path_factory, "small")


@pytest.fixture(scope="session")
def served_twin(tiny_twin: Path) -> Iterator[dict[str, Any]]:
    """The tiny twin behind ``rustac serve`` (memory backend) and the range-request asset server."""
    with serve_twin(tiny_twin, backend="rustac") as served:
        yield served


@pytest.fixture(scope="session")
def served_small_twin(small_twin: Path) -> Iterator[dict[str, Any]]:
    """The small twin, served the same way."""
    with serve_twin(small_twin, backend="rustac") as served:
        yield served


@pytest.fixture(scope="session")
def tiny_cube_1ms(served_twin: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> str:
    """A monthly cube store (24 periods, 129 x 129 px) built by build-cube from the served tiny twin (learning)."""
    import dask

    from glacierflow.preprocess.build import build_cube_store
    from glacierflow.specs import CubeSpec, PreprocessSpec

    m = served_twin["meta"]
    spec = CubeSpec(name="parvati-tiny", bbox=tuple(m["bbox"]), epsg=m["epsg"], start=m["start"], end=m["end"],
                    catalog=served_twin["stac_url"])
    out = str(tmp_path_factory.mktemp("cube-1ms") / "parvati-1ms.zarr")
    with dask.config.set(scheduler="threads"):
        build_cube_store(spec, PreprocessSpec(period="1MS"), out)
    return out


@pytest.fixture(scope="session")
def tiny_cube_summer(served_twin: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The 3-monthly cube of the served tiny twin over 2019-04-01..2019-09-30 (10 scenes used), built once with
    threads: the undisturbed build the fault tests compare against. ``out``, ``ndsi`` and the ``scenes`` table."""
    import dask

    from glacierflow.preprocess.build import build_cube_store
    from glacierflow.specs import CubeSpec, PreprocessSpec
    from glacierflow.storage.store import open_store

    m = served_twin["meta"]
    spec = CubeSpec(name="t", bbox=tuple(m["bbox"]), epsg=m["epsg"], start="2019-04-01", end="2019-09-30",
                    catalog=served_twin["stac_url"])
    out = str(tmp_path_factory.mktemp("cube-summer") / "summer.zarr")
    with dask.config.set(scheduler="threads"):
        build_cube_store(spec, PreprocessSpec(), out)
    return {"out": out, "ndsi": open_store(out)["ndsi"].values, "scenes": open_store(out, group="scenes").load()}
