"""``predict --update``: the forecast rolls forward to the cube's newest complete period, and only then."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import zarr

from glacierflow.cli.main import main
from glacierflow.forecast.predict import Forecaster, predict_cube
from glacierflow.forecast.update import newest_complete, update_forecast
from glacierflow.specs import CubeSpec, PredictSpec
from glacierflow.storage import store
from glacierflow.testing import write_synthetic_cube

torch.set_num_threads(1)


class Repeat(torch.nn.Module):
    """Repeat the last input frame: the forecast of every lead is the last input period itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, -1:].repeat(1, 4, 1, 1, 1)


def _cube(path: Path, n: int, end: str | None = None) -> str:
    """A synthetic 3MS cube of ``n`` periods from 2019-01; searched up to ``end`` (default: its last period's end)."""
    url = write_synthetic_cube(str(path), n_periods=n, size=(40, 56), drift=(0.5, 0.0), seed=1)
    if end:
        group = zarr.open_group(url, mode="r+")
        group.attrs["cube_spec"] = CubeSpec.from_json(group.attrs["cube_spec"]).replace(end=end).to_json()
        zarr.consolidate_metadata(url)
    return url


FC = Forecaster(Repeat(), "repeat", 4, 4, 32, {"checkpoint_sha256": "a" * 64})
SPEC = PredictSpec(batch_size=8, device="cpu")


def test_rolls_forward_to_the_newest_complete_period(tmp_path: Path) -> None:
    t1 = _cube(tmp_path / "t1.zarr", 8)  # 2019-01 .. 2020-10, all complete
    out = str(tmp_path / "fc.zarr")
    first = update_forecast(FC, t1, out, SPEC)
    assert not first.unchanged and first.last_input == "2020-10-01" and first.previous_last_input == ""
    again = update_forecast(FC, t1, out, SPEC)
    assert again.unchanged and "up to date" in again.lines()[0]
    # the cube updated to mid-May 2021: 2021-01 is complete, 2021-04 still open (its scenes still to come)
    t2 = _cube(tmp_path / "t2.zarr", 10, end="2021-05-15")
    cube = store.open_store(t2)
    assert newest_complete(cube) == 8
    rolled = update_forecast(FC, t2, out, SPEC)
    assert not rolled.unchanged and (rolled.previous_last_input, rolled.last_input) == ("2020-10-01", "2021-01-01")
    fc = store.open_store(out)
    assert fc.attrs["last_input"] == "2021-01-01"
    np.testing.assert_array_equal(pd.DatetimeIndex(fc["time"].values).strftime("%Y-%m-%d"),
                                  ["2021-04-01", "2021-07-01", "2021-10-01", "2022-01-01"])
    # Repeat forecasts the last input itself (a pixel-wise model: the tile blend is exact): the truth here
    want = cube["ndsi"].isel(time=8).values
    for lead in range(4):
        np.testing.assert_allclose(fc["ndsi"].isel(time=lead).values, np.clip(want, 0, 1), atol=1e-6)
    # and the same as a plain predict from that period
    ref = str(tmp_path / "ref.zarr")
    predict_cube(FC, t2, ref, PredictSpec(batch_size=8, device="cpu", last_input="2021-01-01"))
    np.testing.assert_array_equal(store.open_store(ref)["ndsi"].values, fc["ndsi"].values)


def test_a_changed_input_period_is_predicted_again(tmp_path: Path) -> None:
    out = str(tmp_path / "fc.zarr")
    update_forecast(FC, _cube(tmp_path / "a.zarr", 8), out, SPEC)
    other = write_synthetic_cube(str(tmp_path / "b.zarr"), n_periods=8, size=(40, 56), drift=(0.5, 0.0), seed=1,
                                 interpolated=(3,))  # same periods, one of them now interpolated
    assert not update_forecast(FC, other, out, SPEC).unchanged


def test_cli_update_and_mistakes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from glacierflow.learn import train
    from glacierflow.specs import ModelSpec, PatchSpec, TrainSpec

    cube = write_synthetic_cube(str(tmp_path / "cube.zarr"), n_periods=24, size=(32, 32), drift=(0.5, 0.0))
    run = tmp_path / "run"
    train.fit(cube, run, ModelSpec(name="lstm", kwargs={"hidden_size": 8}), PatchSpec(size=16, stride=16),
              TrainSpec(epochs=1, steps_per_epoch=1, batch_size=4, device="cpu"), progress=False)
    args = ["predict", str(run), "--cube", cube, "--out", str(tmp_path / "fc.zarr"), "--update", "--device", "cpu",
            "--cluster", "threads"]
    assert main(args) == 0
    assert "rolled" in capsys.readouterr().out
    assert main(args) == 0
    assert "is up to date" in capsys.readouterr().out
    assert main([*args, "--last-input", "2019-04-01"]) == 2
    assert "drop --last-input" in capsys.readouterr().err
    early = _cube(tmp_path / "early.zarr", 4, end="2019-02-01")
    assert main(["predict", str(run), "--cube", early, "--out", str(tmp_path / "fc2.zarr"), "--update",
                 "--device", "cpu", "--cluster", "threads"]) == 2
    assert "no complete period yet" in capsys.readouterr().err
