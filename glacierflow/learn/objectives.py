"""Training objectives: what one optimiser step predicts and scores (``glacierflow train --objective``).

* ``patch`` (default): a batch of patch samples (``patches.prepare``), the masked MSE per patch.
* ``full-scene`` (the paper's experiment 3): each step takes a *scene window* (a spatial window of the scene,
  ``TrainSpec.scene_window`` px, 0: three patches, clipped to the scene), cuts it into the same overlapping
  tiles ``predict`` uses (reflection padding, :data:`glacierflow.specs.PredictSpec`'s window and floor;
  ``TrainSpec.scene_overlap`` px overlap, default half a patch as ``predict``; 0: the paper's non-overlapping
  tiles, where every tile border carries full weight), forecasts every tile, blends the tiles with
  :func:`glacierflow.geo.tiling.stitch` (the code ``predict`` runs, here on torch tensors, so the loss
  back-propagates through the blend) and takes the masked MSE on the whole window: the model is scored on
  the stitched scene, borders included. What couples neighbouring tiles is the blend: with non-overlapping
  tiles the window's MSE is the mean of its tiles' MSEs (MSE is per pixel), so the objective differs from
  ``patch`` only in which tiles it sees (a grid, reflection-padded at the window edges); with overlap every
  output pixel mixes several tiles, though a Hann-weighted tile's own border pixels carry almost no weight.

Memory: a step holds ``windows_per_step x tiles_per_window`` tile sequences with their gradients
(``windows_per_step = max(1, batch_size // tiles_per_window)``); a 150-px window of 50-px tiles with 25-px
overlap has 7 x 7 = 49 tiles. A whole scene is never held on the device. Scene windows are drawn only where
training patch samples cover every pixel at those periods (``patches.split_windows``), so a window never
reaches into validation or test periods or blocks. Validation stays the patch samples' masked MSE for both
objectives, so early stopping and the loss curves of the two are comparable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from glacierflow import choices
from glacierflow.choices import check_registry
from glacierflow.errors import GlacierflowError
from glacierflow.geo.tiling import TileLayout, cut_tiles, stitch, tile_layout
from glacierflow.learn.patches import BatchOrder, set_loader
from glacierflow.learn.runtime import autocast
from glacierflow.specs import PatchSpec, PredictSpec, TrainSpec

StepLoss = Callable[[torch.nn.Module, dict[str, torch.Tensor], float, torch.device, Any], tuple[torch.Tensor, int]]
"""``(model, batch, teacher_forcing, device, autocast dtype) -> (loss, tile sequences forecast)``."""

SCENE_WINDOW_PATCHES = 3  # default scene window: three patches a side


# ------------------------------------------------------------------------------------------------ patch
def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all predicted frames where ``mask`` is 1 (the paper's eq. 1, observed pixels)."""
    se = (pred.float() - target.float()) ** 2 * mask
    return se.sum() / mask.sum().clamp_min(1.0)


def to_device(b: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A batch on ``device`` (non-blocking copies: the loader pins memory for a CUDA device)."""
    return {k: v.to(device, non_blocking=True) for k, v in b.items() if torch.is_tensor(v)}


def forecast(model: torch.nn.Module, b: dict[str, torch.Tensor], tf: float = 0.0, train: bool = False
             ) -> torch.Tensor:
    """``model``'s forecast of a batch on its device: inputs, history (``context``), ``bases`` and ``phase``."""
    extras = {k: b[k] for k in ("bases", "phase") if k in b}
    return model(b["x"], target=b["y"] if train else None, teacher_forcing=tf, context=b.get("context"),
                 extras=extras or None)


def patch_loss(model: torch.nn.Module, b: dict[str, torch.Tensor], tf: float, device: torch.device,
               dtype: Any) -> tuple[torch.Tensor, int]:
    """Masked MSE of a batch of patch samples."""
    b = to_device(b, device)
    with autocast(device, dtype):
        pred = forecast(model, b, tf, train=True)
    return masked_mse(pred, b["y"], b["mask"]), len(b["x"])


def _patch(samples: Any, patch_spec: PatchSpec, spec: TrainSpec) -> tuple[Any, StepLoss, dict[str, Any]]:
    return set_loader(samples, "train", spec, shuffle=True), patch_loss, {"name": "patch"}


# ------------------------------------------------------------------------------------------- full scene
def window_shape(shape: tuple[int, int], patch_spec: PatchSpec, spec: TrainSpec) -> tuple[int, int]:
    """Scene window ``(rows, cols)``: ``scene_window`` (0: three patches), clipped to the scene."""
    side = spec.scene_window or SCENE_WINDOW_PATCHES * patch_spec.size
    if side < patch_spec.size:
        raise GlacierflowError(f"--scene-window {side} px is smaller than one patch ({patch_spec.size} px); "
                               f"use at least {patch_spec.size} or 0 (three patches)")
    return min(side, shape[0]), min(side, shape[1])


def scene_overlap(patch_spec: PatchSpec, spec: TrainSpec) -> int:
    """Tile overlap of the scene windows: ``scene_overlap`` px, or predict's default (half a patch) for -1."""
    overlap = PredictSpec(overlap=spec.scene_overlap).overlap_px(patch_spec.size)
    if overlap >= patch_spec.size:
        raise GlacierflowError(f"--scene-overlap {overlap} must be below the patch size {patch_spec.size}; use "
                               f"-1 (half a patch, as predict) or 0 (non-overlapping tiles)")
    return overlap


def _positions(n: int, w: int) -> np.ndarray:
    """Window starts along one axis: every half window, and one flush with the far edge."""
    return np.unique(np.append(np.arange(0, n - w + 1, max(1, w // 2)), n - w))


def scene_windows(samples: Any, size: tuple[int, int], patch: int) -> np.ndarray:
    """Scene-window starts ``(N, 3)`` ``(t, y, x)``: windows covered entirely by training patches of period ``t``."""
    train = samples.starts[samples.sets["train"]]
    _, h, w = samples.cube.ndsi.shape
    wy, wx = size
    ys, xs = _positions(h, wy), _positions(w, wx)
    out = []
    for t in np.unique(train[:, 0]):
        cover = np.zeros((h, w), bool)
        for y, x in train[train[:, 0] == t, 1:]:
            cover[y : y + patch, x : x + patch] = True
        integral = np.pad(cover.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        for y in ys:
            for x in xs:
                if integral[y + wy, x + wx] - integral[y, x + wx] - integral[y + wy, x] + integral[y, x] == wy * wx:
                    out.append((int(t), int(y), int(x)))
    if not out:
        raise GlacierflowError(f"no {wy}x{wx} px scene window lies inside the training samples "
                               f"({samples.validation}); use a smaller --scene-window or --objective patch")
    return np.array(out, np.int64)


class SceneWindows(torch.utils.data.Dataset):
    """Items are whole batches of scene windows ``(h, w)`` px.

    The keys are those of patch samples: ``x``, ``y``, ``mask``, ``context``, ``bases``, ``phase``.
    """

    def __init__(self, cube: Any, starts: np.ndarray, size: tuple[int, int], spec: PatchSpec) -> None:
        self.cube, self.starts, self.size, self.spec = cube, starts, size, spec

    def _crop(self, key: str, t: int, n: int, y: int, x: int) -> np.ndarray:
        arr, (wy, wx) = self.cube.arrays[key], self.size
        per_pixel = arr.shape[1] != 1
        sl = (slice(t, t + n), slice(y, y + wy) if per_pixel else slice(None), slice(x, x + wx) if per_pixel
              else slice(None))
        part = arr[sl] if isinstance(arr, np.ndarray) else arr.isel(time=sl[0], y=sl[1], x=sl[2]).values
        return np.broadcast_to(np.asarray(part, np.float32), (n, wy, wx))

    def __getitem__(self, idx: list[int] | np.ndarray) -> dict[str, torch.Tensor]:
        from glacierflow.learn.climate import CUMULATIVE, base_forecasts, stats_from_sums
        from glacierflow.learn.patches import stat_periods

        t_in, t_out, ctx, pc = self.spec.t_in, self.spec.t_out, self.cube.context, self.cube
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("context", "y", "mask", "clim_t", "trend_t", "clim_l")}
        starts = self.starts[np.asarray(idx, np.int64).reshape(-1)]
        for t, y, x in starts:
            o = t + t_in
            context = self._crop("inputs", o - ctx, ctx, y, x)
            parts["context"].append(context)
            parts["y"].append(self._crop("ndsi", o, t_out, y, x))
            parts["mask"].append(self._crop("valid", o, t_out, y, x))
            src = stat_periods(pc, np.array([o - 1]))[0]
            sums_t = {k: np.stack([self._crop(k, int(u), 1, y, x)[0] for u in src]) for k in CUMULATIVE}
            sums_l = {k: self._crop(k, o - 1, 1, y, x) for k in CUMULATIVE}
            clim_t, trend_t = stats_from_sums(sums_t, pc.year[o + np.arange(t_out)][:, None, None], context[-1])
            parts["clim_t"].append(clim_t)
            parts["trend_t"].append(trend_t)
            parts["clim_l"].append(stats_from_sums(sums_l, pc.year[o - 1], context[-1])[0])
        a = {k: np.stack(v)[:, :, None] for k, v in parts.items()}
        bases = base_forecasts(a["context"][:, -1:], a["context"], a["clim_t"], a["trend_t"], a["clim_l"],
                               pc.damping, pc.season)
        o = starts[:, 0] + t_in
        phase = np.concatenate([pc.phase_obs[(o - t_in)[:, None] + np.arange(t_in)],
                                pc.phase_centre[o[:, None] + np.arange(t_out)]], axis=1).astype(np.float32)
        out = {"x": a["context"][:, ctx - t_in:], "y": a["y"], "mask": a["mask"], "context": a["context"],
               "bases": bases, "phase": phase}
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}


def full_scene_loss(layout: TileLayout) -> StepLoss:
    """The step loss of ``full-scene``: tile, forecast, blend (:func:`~glacierflow.geo.tiling.stitch`), masked MSE.

    Every 5-d input (frames, history, bases) is cut into the same tiles; the calendar phase is a window's.
    """
    def tiles(a: torch.Tensor) -> torch.Tensor:  # (windows, T, 1, h, w) -> (tiles * windows, T, 1, P, P)
        return cut_tiles(torch.nan_to_num(a[:, :, 0]), layout).flatten(0, 1)[:, :, None]

    def loss(model: torch.nn.Module, b: dict[str, torch.Tensor], tf: float, device: torch.device,
             dtype: Any) -> tuple[torch.Tensor, int]:
        b = to_device(b, device)
        y, m, nb = b["y"], b["mask"], b["x"].shape[0]
        n = len(layout.spots)
        more: dict[str, Any] = {}
        if "bases" in b:  # patch-sample keys (SceneWindows): history, bases and calendar reach the model
            more = {"context": tiles(b["context"]),
                    "extras": {"bases": tiles(b["bases"].flatten(1, 2)).unflatten(1, (5, -1)),
                               "phase": b["phase"].repeat(n, 1)}}
        with autocast(device, dtype):
            pred = model(tiles(b["x"]), target=tiles(y), teacher_forcing=tf, **more)
        scene = stitch(pred.float()[:, :, 0].unflatten(0, (n, nb)), layout)  # (windows, t_out, h, w)
        return masked_mse(scene[:, :, None], y, m), n * nb

    return loss


def _full_scene(samples: Any, patch_spec: PatchSpec, spec: TrainSpec) -> tuple[Any, StepLoss, dict[str, Any]]:
    size = window_shape(samples.cube.ndsi.shape[1:], patch_spec, spec)
    overlap = scene_overlap(patch_spec, spec)
    blend = PredictSpec()
    layout = tile_layout(*size, (0, size[0]), patch_spec.size, overlap, window=blend.window, floor=blend.floor)
    starts = scene_windows(samples, size, patch_spec.size)
    per_step = max(1, spec.batch_size // len(layout.spots))
    order = BatchOrder(len(starts), per_step, shuffle=True, seed=spec.seed)
    loader = torch.utils.data.DataLoader(SceneWindows(samples.cube, starts, size, patch_spec), batch_size=None,
                                         sampler=order, num_workers=spec.num_workers)
    info = {"name": "full-scene", "scene_window": list(size), "windows": len(starts),
            "tiles_per_window": len(layout.spots), "windows_per_step": per_step,
            "overlap": overlap, "blend": blend.window}
    return loader, full_scene_loss(layout), info


@dataclass(frozen=True)
class Objective:
    """A training objective: ``build(samples, patch_spec, train_spec) -> (train loader, step loss, info)``."""

    summary: str
    build: Callable[[Any, PatchSpec, TrainSpec], tuple[Any, StepLoss, dict[str, Any]]]


OBJECTIVES: dict[str, Objective] = {
    "patch": Objective("masked MSE per patch sample", _patch),
    "full-scene": Objective("masked MSE on blended scene windows (predict's tiling)", _full_scene),
}
"""The registry; its keys are :data:`glacierflow.choices.OBJECTIVES` (the specs' and the CLI's choices)."""
check_registry("learn.objectives.OBJECTIVES", OBJECTIVES, choices.OBJECTIVES)
