"""Hostile or damaged inputs, each one line: site names that climb out of the output folder, asset hrefs GDAL
must never open, a checkpoint whose model arguments would allocate without bound, a corrupt store.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from glacierflow.cli.main import main
from glacierflow.errors import GlacierflowError
from glacierflow.geo.sites import read_sites, site_stores
from glacierflow.ingest.catalog import Criteria, filter_items
from glacierflow.learn.checkpoint import MAX_MODEL_ARG, load_checkpoint
from glacierflow.learn.models import build_model
from glacierflow.testing import write_synthetic_cube

from .conftest import varied_items

# -- site names and {name} templates ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["..", "../up", "/etc/cron.d/x", "a/../../b", ".hidden", "x..y", "~root"])
def test_a_site_name_that_leaves_the_output_folder_is_one_line(tmp_path: Path, name: str) -> None:
    sites = tmp_path / "sites.txt"
    sites.write_text(f"parvati\n{name} 77.6 32.0 77.7 32.1\n")
    with pytest.raises(GlacierflowError) as err:
        read_sites(sites)
    msg = str(err.value)
    assert msg.startswith(f"--sites sites.txt line 2: bad site name {name!r}") and "\n" not in msg, msg


def test_site_names_fill_the_template_inside_its_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sites = tmp_path / "sites.txt"
    sites.write_text("a-1 77.6 32.0 77.7 32.1\n../../etc 77.6 32.0 77.7 32.1\n")
    assert main(["build-cube", "--sites", str(sites), "--out", str(tmp_path / "{name}.zarr"), "--cluster",
                 "sync"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --sites sites.txt line 2: bad site name '../../etc'") and "\n" not in err, err
    assert list(tmp_path.iterdir()) == [sites], "nothing written"
    stores = site_stores(["a-1", "b.2"], str(tmp_path / "cubes/{name}.zarr"), None, lambda n: n)
    assert all(Path(s).parent == tmp_path / "cubes" for s in stores.values()), stores


# -- asset hrefs: an allow-list of schemes before GDAL ------------------------------------------------------------

@pytest.mark.parametrize("href", ["/vsicurl/http://169.254.169.254/latest/meta-data", "/vsizip//etc/x.zip/a.tif",
                                  "/VSISUBFILE/0_100,/etc/shadow", "ftp://example.org/a.tif",
                                  "data:image/tiff;base64,SUkqAA==", "gopher://h/a.tif"])
def test_an_asset_href_outside_the_allowed_schemes_rejects_its_item(href: str) -> None:
    items = varied_items()[:3]
    bad = copy.deepcopy(items[1])
    bad["id"] = "bad-href"
    bad["assets"]["green"]["href"] = href
    crit = Criteria.parse([-180, -90, 180, 90], "2000-01-01", "2030-01-01", platforms=None, max_cloud=None)
    kept, rejected = filter_items([*items, bad], crit)
    assert "bad-href" not in [k["id"] for k in kept] and len(kept) == 3
    (r,) = [r for r in rejected if r.item_id == "bad-href"]
    assert r.reason == "href" and r.detail.startswith("asset green href ") and "scheme not allowed" in r.detail, r


# -- checkpoints: bounded model arguments ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> dict:
    args = {"t_in": 2, "t_out": 2, "size": 16, "hidden_size": 8}
    model = build_model("lstm", **args)
    return {"model_name": "lstm", "model_args": dict(model.model_args), "state_dict": model.state_dict()}


@pytest.mark.parametrize("args, words", [({"hidden_size": 10**9}, "hidden_size=1000000000"),
                                         ({"hidden_size": [8] * 10**4}, "hidden_size="),
                                         ({"hidden_size": 4096}, "a model of ")])
def test_a_checkpoint_with_unbounded_model_args_is_refused_before_allocating(tmp_path: Path, checkpoint: dict,
                                                                             args: dict, words: str) -> None:
    path = tmp_path / "best.pt"
    torch.save({**checkpoint, "model_args": {**checkpoint["model_args"], **args}}, path)
    with pytest.raises(GlacierflowError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert msg.startswith(f"checkpoint {path}: model arguments out of bounds ({words}") and "\n" not in msg, msg
    assert str(MAX_MODEL_ARG) in msg
    torch.save(checkpoint, path)
    load_checkpoint(path)  # the honest one loads


# -- a corrupt store: one line naming it ---------------------------------------------------------------------------

@pytest.fixture
def cube(tmp_path: Path) -> str:
    return write_synthetic_cube(str(tmp_path / "cube.zarr"), n_periods=8, size=(20, 30), period="3MS")


def _flow(cube: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    rc = main(["flow", cube, "--out", str(tmp_path / "v.zarr"), "--pairs", "consecutive", "--images", "ndsi",
               "--cluster", "sync"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "Traceback" not in err, (rc, err[-2000:])
    return err.splitlines()[-1]


@pytest.mark.parametrize("where", ["zarr.json", "ndsi/zarr.json"])
def test_corrupt_metadata_in_an_input_store_is_one_line_naming_it(cube: str, tmp_path: Path, where: str,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    meta = Path(cube) / where
    meta.write_bytes(meta.read_bytes()[: len(meta.read_bytes()) // 2])  # cut in half: not JSON any more
    line = _flow(cube, tmp_path, capsys)
    assert line.startswith(f"error: store {cube} ") and "corrupt" in line, line
    assert not (tmp_path / "v.zarr").exists()


def test_a_corrupt_chunk_in_an_input_store_is_one_line_naming_it(cube: str, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    chunks = sorted(p for p in (Path(cube) / "ndsi").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunks[0].write_bytes(np.random.default_rng(0).bytes(chunks[0].stat().st_size))  # same size, noise
    line = _flow(cube, tmp_path, capsys)
    assert line.startswith(f"error: store {cube} ") and "corrupt" in line and "ndsi" in line, line
    assert not (tmp_path / "v.zarr").exists() and not list(tmp_path.glob(".v.zarr.partial-*"))
