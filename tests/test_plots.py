"""Tests for the figures: each one is produced, has the expected size/frames, and is not blank."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from glacierflow.errors import GlacierflowError
from glacierflow.forecast.predict import Forecaster, predict_cube
from glacierflow.plots.figures import plot_cube, plot_forecast, plot_run, save_cube_gif, save_figure
from glacierflow.specs import PredictSpec
from glacierflow.testing import write_synthetic_cube

torch.set_num_threads(1)


class Blur(torch.nn.Module):
    """A fixed 3x3 mean of the last frame, repeated: a forecast that differs from every baseline."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = torch.nn.functional.avg_pool2d(x[:, -1], 3, stride=1, padding=1, count_include_pad=False)
        return last[:, None].repeat(1, 4, 1, 1, 1)


def _variance(img: Image.Image) -> float:
    return float(np.asarray(img.convert("L"), np.float64).var())


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("plots")
    cube = write_synthetic_cube(str(d / "cube.zarr"), n_periods=10, size=(90, 120), drift=(0.5, 0.0),
                                interpolated=(7,))
    fc = str(d / "forecast.zarr")
    predict_cube(Forecaster(Blur(), "blur", 4, 4, 30), cube, fc, PredictSpec(last_input="2020-01-01", device="cpu"))
    return {"cube": cube, "forecast": fc, "dir": d}


def test_cube_gif_has_one_dated_frame_per_period(stores, tmp_path):
    gif = save_cube_gif(stores["cube"], tmp_path / "cube.gif")
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == 10
        variances = []
        for k in range(im.n_frames):
            im.seek(k)
            variances.append(_variance(im))
    # a blank frame has variance 0; measured 1.7e3-1.0e4 (grey levels^2) on these frames
    assert min(variances) > 300


def test_cube_period_figure_is_the_gif_frame(stores, tmp_path):
    fig = plot_cube(stores["cube"], 7)  # the interpolated period: its title says so
    assert isinstance(fig, Figure) and "interpolated" in fig.axes[0].get_title()
    with Image.open(save_figure(fig, tmp_path / "p.png")) as png, Image.open(
            save_cube_gif(stores["cube"], tmp_path / "c.gif")) as gif:
        gif.seek(7)
        assert png.size == gif.size  # same figure size and dpi as the animation's frames
        assert _variance(png) > 300
    with pytest.raises(GlacierflowError, match="time_index 10 out of range"):
        plot_cube(stores["cube"], 10)


def test_cube_gif_thins_long_cubes(stores, tmp_path):
    with Image.open(save_cube_gif(stores["cube"], tmp_path / "few.gif", max_frames=4)) as im:
        assert im.n_frames == 4


def test_forecast_figure_is_drawn(stores, tmp_path):
    png = save_figure(plot_forecast(stores["forecast"]), tmp_path / "forecast.png")
    with Image.open(png) as im:
        # one row per lead (4) and five columns: truth, forecast, its error, two baseline errors
        assert im.size[0] > im.size[1] * 1.1
        assert _variance(im) > 300  # measured 3.9e3
        rgb = np.asarray(im.convert("RGB"), np.int16)
    # the error maps use a red/blue diverging map: strong reds and blues (measured 4.8e4 and 1.6e4 px)
    red = (rgb[..., 0] > 180) & (rgb[..., 2] < 90)
    blue = (rgb[..., 2] > 150) & (rgb[..., 0] < 60)
    assert red.sum() > 500 and blue.sum() > 500


def test_forecast_beyond_the_cube_is_drawn_without_truth(stores, tmp_path):
    out = str(tmp_path / "future.zarr")
    predict_cube(Forecaster(Blur(), "blur", 4, 4, 30), stores["cube"], out, PredictSpec(device="cpu"))
    with Image.open(save_figure(plot_forecast(out, stores["cube"]), tmp_path / "future.png")) as im:
        assert _variance(im) > 300


def test_loss_curves(tmp_path):
    from glacierflow.learn.train import LossLog

    log = LossLog(tmp_path / "loss.csv", keep_until_step=None)
    rng = np.random.default_rng(0)
    log.write(0, 0, None, 0.2, 1e-3)
    for step in range(1, 61):
        log.write(step, (step - 1) // 10, 0.2 / (1 + step / 10) * (1 + 0.1 * rng.standard_normal()), None, 1e-3)
        if step % 10 == 0:
            log.write(step, step // 10, None, 0.1 + 0.002 * (step / 10 - 3) ** 2, 1e-3)
    fig = plot_run(tmp_path)
    assert isinstance(fig, Figure) and fig.axes[0].get_legend() is not None
    assert fig._repr_png_().startswith(b"\x89PNG")  # what a notebook shows inline, without pyplot
    png = save_figure(fig, tmp_path / "loss.png")
    with Image.open(png) as im:
        assert im.size == (800, 450)
        assert _variance(im) > 100  # mostly white page with curves: measured 9.6e2 on a similar run
        rgb = np.asarray(im.convert("RGB"), np.int16)
    crimson = (abs(rgb[..., 0] - 220) < 25) & (rgb[..., 1] < 40) & (abs(rgb[..., 2] - 60) < 30)
    assert crimson.sum() > 30, "the best-epoch star is drawn"
    with pytest.raises(GlacierflowError, match="loss.csv"):
        plot_run(tmp_path / "nothing")


def test_plot_cube_command_saves_the_animation_and_parses_storage_options(stores, tmp_path, capsys):
    from glacierflow.cli.main import main

    gif = tmp_path / "cli.gif"
    # a local store through fsspec with an option of its filesystem (cloud stores: tests/test_store_azure.py)
    assert main(["plot", "cube", stores["cube"], "--out", str(gif), "--storage-option", "auto_mkdir=false"]) == 0
    assert capsys.readouterr().out.strip() == f"written: {gif}"
    with Image.open(gif) as im:
        assert im.n_frames == 10
    assert main(["plot", "cube", stores["cube"], "--out", str(gif), "--storage-option", "novalue"]) == 2
    assert capsys.readouterr().err.strip() == "error: bad --storage-option 'novalue'; use KEY=VALUE"
