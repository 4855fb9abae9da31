"""Safe Zarr writes to local paths and fsspec URLs (memory://), completion marker, lazy reads."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from glacierflow.errors import GlacierflowError
from glacierflow.storage.store import (
    epsg_of,
    is_complete,
    open_store,
    remove,
    spill,
    write,
    write_store,
)
from glacierflow.testing import tiny_store_dataset


@pytest.mark.parametrize("where", ["local", "memory"])
def test_write_reopen_overwrite(where: str, tmp_path: Path) -> None:
    url = str(tmp_path / "s.zarr") if where == "local" else f"memory://gf-test-{tmp_path.name}/s.zarr"
    write_store(tiny_store_dataset(1.0), url)
    assert is_complete(url)
    ds = open_store(url, require=("ndsi",))
    assert isinstance(ds["ndsi"].data, da.Array) and epsg_of(ds) == 32643
    assert float(ds["ndsi"].mean()) == 1.0
    with pytest.raises(GlacierflowError, match="--overwrite"):
        write_store(tiny_store_dataset(2.0), url)
    scenes = xr.Dataset({"used": ("scene", da.from_array(np.array([True, False]), chunks=1))})
    image = tiny_store_dataset(5.0)["ndsi"].isel(time=0, drop=True).rename("image").to_dataset()
    write(xr.DataTree.from_dict({"/": tiny_store_dataset(2.0), "scenes": scenes, "images": image}), url, overwrite=True)
    images = open_store(url, group="images")
    np.testing.assert_array_equal(images["x"].values, tiny_store_dataset(2.0)["x"].values)  # inherited coords kept
    assert "time" not in images.coords and epsg_of(images) == 32643 and float(images["image"].max()) == 5.0
    assert "x" not in open_store(url, group="scenes").coords
    assert float(open_store(url)["ndsi"].mean()) == 2.0
    assert open_store(url, group="scenes")["used"].values.tolist() == [True, False]

    def boom(delayed: object) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write(tiny_store_dataset(3.0), url, overwrite=True, compute=boom)
    assert float(open_store(url)["ndsi"].mean()) == 2.0, "the previous store survives a failed write"
    with pytest.raises(GlacierflowError, match="lacks nope"):
        open_store(url, require=("nope",))


def test_incomplete_store_is_refused(tmp_path: Path) -> None:
    url = str(tmp_path / "half.zarr")
    tiny_store_dataset(1.0).to_zarr(url, consolidated=False)  # written without the completion marker
    assert not is_complete(url)
    with pytest.raises(GlacierflowError, match="incomplete"):
        open_store(url)
    with pytest.raises(GlacierflowError, match="does not exist"):
        open_store(str(tmp_path / "nothing.zarr"))


def test_consolidated_metadata_opens_without_warning(tmp_path: Path) -> None:
    import warnings

    url = str(tmp_path / "c.zarr")
    write(tiny_store_dataset(4.0), url)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Failed to open Zarr store with consolidated metadata" would raise
        ds = xr.open_zarr(url, decode_coords="all")
    assert ds.attrs["glacierflow_complete"] == 1 and float(ds["ndsi"].max()) == 4.0


def test_concurrent_writes_print_no_zarr_warning(tmp_path: Path) -> None:
    """Two stores written at once from threads (as a multi-site build-cube does), in a plain interpreter with
    every warning shown: zarr v3's consolidated-metadata warning must not reach the user (it leaked when the
    writer silenced it with the thread-unsafe ``warnings.catch_warnings``: this test failed 2 of 3 runs then)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from concurrent.futures import ThreadPoolExecutor\n"
        "import numpy as np, xarray as xr\n"
        "from glacierflow.storage.store import write\n"
        "ds = xr.Dataset({'ndsi': (('time', 'y', 'x'), np.ones((2, 8, 8), np.float32))}).chunk({'time': 1})\n"
        "with ThreadPoolExecutor(4) as pool:\n"
        "    list(pool.map(lambda k: write(ds, f'{sys.argv[1]}/s{k}.zarr'), range(8)))\n"
    )
    r = subprocess.run([sys.executable, "-W", "default", "-c", code, str(tmp_path)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(list(tmp_path.glob("s*.zarr"))) == 8
    assert "Consolidated metadata" not in r.stderr, r.stderr


def test_spill_reads_back_each_chunk_after_its_write(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=(3, 6, 7)).astype(np.float32)
    ds = xr.Dataset({"a": (("t", "y", "x"), da.from_array(values, chunks=(1, 6, 7)) * 2)})
    url = str(tmp_path / "scratch.zarr")
    spilled = spill(ds, url)
    first, second = spilled.read(), spilled.read()
    assert set(first["a"].data.dask) != set(second["a"].data.dask) - set(ds["a"].data.dask), "fresh keys"
    got = (first["a"] + second["a"]).compute(scheduler="threads")
    np.testing.assert_array_equal(got.values, 4 * values)
    remove(url)
    assert not (tmp_path / "scratch.zarr").exists()
