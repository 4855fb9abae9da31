"""Tiling a scene for full-scene forecasts, and blending the tiles back: shared by predict and training.

A scene is cut into ``patch x patch`` tiles whose starts step by ``patch - overlap``; the first tile starts
``overlap`` pixels before the scene (the scene is padded by reflection, so no partial edge patch is ever
dropped). Each tile's forecast is weighted by a smooth separable window (``sin^2``, a Hann window, floored so
that no pixel gets zero weight); the weighted tiles are summed and divided by the summed weights
(:func:`stitch`), so tile borders leave no seams. :func:`cut_tiles` and :func:`stitch` take numpy arrays
(``predict``) or torch tensors (the ``full-scene`` training objective, which back-propagates through the
blend), with the same arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from glacierflow.choices import BLEND_WINDOWS, check_registry
from glacierflow.errors import GlacierflowError


# ------------------------------------------------------------------------------------------ blending windows
def _hann(patch: int, floor: float) -> np.ndarray:
    i = np.arange(patch, dtype=np.float64)
    return np.maximum(np.sin(np.pi * (i + 0.5) / patch) ** 2, floor)


def _uniform(patch: int, floor: float) -> np.ndarray:
    return np.ones(patch, dtype=np.float64)


WINDOWS: dict[str, Callable[[int, float], np.ndarray]] = {"hann": _hann, "uniform": _uniform}
"""Blending windows (1-D; the 2-D weight is their outer product). ``uniform`` = plain averaging."""
check_registry("geo.tiling.WINDOWS", WINDOWS, BLEND_WINDOWS)


def blend_weights(patch: int, window: str = "hann", floor: float = 0.01) -> np.ndarray:
    """The ``(patch, patch)`` float64 weight of one tile: outer product of a 1-D window with itself."""
    if window not in WINDOWS:
        raise GlacierflowError(f"unknown blending window {window!r}; choose one of: {', '.join(WINDOWS)}")
    w = WINDOWS[window](patch, floor)
    return np.outer(w, w)


# ------------------------------------------------------------------------------------------------- tiling
def tile_starts(n: int, patch: int, overlap: int) -> np.ndarray:
    """Tile starts along one axis of length ``n`` (scene coordinates; the first is ``-overlap``).

    The last tile reaches at least ``overlap`` pixels past the scene (or to its end when ``overlap`` is 0),
    so every scene pixel lies under ``patch // stride`` tiles away from the borders.
    """
    if not 0 <= overlap < patch:
        raise GlacierflowError(f"--overlap {overlap} must be >= 0 and below the patch size {patch}")
    stride = patch - overlap
    k = max(1, math.ceil((n + 2 * overlap - patch) / stride) + 1)
    return -overlap + stride * np.arange(k)


def reflect_index(idx: np.ndarray, n: int) -> np.ndarray:
    """Map positions outside ``[0, n)`` back inside by reflection (numpy's ``reflect``: -1 -> 1)."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    m = np.mod(idx, period)
    return np.where(m < n, m, period - m)


def band_rows(height: int, rows: tuple[int, int], patch: int, overlap: int) -> tuple[int, int]:
    """Scene rows ``[lo, hi)`` that the tiles of output rows ``rows`` read (before reflection padding)."""
    a, b = rows
    rs = tile_starts(height, patch, overlap)
    rs = rs[(rs < b) & (rs + patch > a)]
    ridx = reflect_index(np.arange(int(rs[0]), int(rs[-1]) + patch), height)
    return int(ridx.min()), int(ridx.max()) + 1


@dataclass(frozen=True)
class TileLayout:
    """Where the blended tiles of output rows ``rows`` of an ``h x w`` scene sit (:func:`tile_layout`).

    ``row_index``/``col_index`` map each row/column of the padded tile canvas to a row/column of the input
    frames (reflection padding); ``spots`` are the tiles' top-left corners on the canvas; ``weight`` is one
    tile's blending weight and ``wsum`` the summed weights on the canvas; ``crop`` cuts the output rows and
    the scene width back out of the canvas.
    """

    row_index: np.ndarray
    col_index: np.ndarray
    spots: tuple[tuple[int, int], ...]
    patch: int
    weight: np.ndarray
    wsum: np.ndarray
    crop: tuple[slice, slice]


def tile_layout(height: int, width: int, rows: tuple[int, int], patch: int, overlap: int, *, offset: int = 0,
                window: str = "hann", floor: float = 0.01) -> TileLayout:
    """The tiling of output rows ``rows = (a, b)`` of a ``height x width`` scene (frames start at row ``offset``)."""
    a, b = rows
    rs = tile_starts(height, patch, overlap)
    rs = rs[(rs < b) & (rs + patch > a)]
    cs = tile_starts(width, patch, overlap)
    lo, hi, c0 = int(rs[0]), int(rs[-1]) + patch, int(cs[0])
    ridx = reflect_index(np.arange(lo, hi), height) - offset
    cidx = reflect_index(np.arange(c0, int(cs[-1]) + patch), width)
    spots = tuple((int(r) - lo, int(c) - c0) for r in rs for c in cs)
    weight = blend_weights(patch, window, floor)
    wsum = np.zeros((hi - lo, cidx.size), np.float64)
    for r, c in spots:
        wsum[r : r + patch, c : c + patch] += weight
    return TileLayout(ridx, cidx, spots, patch, weight, wsum, (slice(a - lo, b - lo), slice(-c0, -c0 + width)))


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def cut_tiles(frames: Any, layout: TileLayout) -> Any:
    """Tiles ``(N, ..., P, P)`` of ``frames (..., h, W)`` (numpy or torch) on the padded canvas of ``layout``."""
    p = layout.patch
    if _is_torch(frames):
        import torch

        canvas = frames.index_select(-2, torch.as_tensor(layout.row_index, device=frames.device))
        canvas = canvas.index_select(-1, torch.as_tensor(layout.col_index, device=frames.device))
        return torch.stack([canvas[..., r : r + p, c : c + p] for r, c in layout.spots])
    canvas = np.take(np.take(frames, layout.row_index, axis=-2), layout.col_index, axis=-1)
    return np.stack([canvas[..., r : r + p, c : c + p] for r, c in layout.spots])


def stitch(pred: Any, layout: TileLayout) -> Any:
    """Blend tile forecasts ``(N, ..., P, P)`` into the output rows ``(..., b - a, W)``: weighted sum / weights.

    numpy (summed in float64) or torch (in ``pred``'s dtype, differentiable: the full-scene training
    objective back-propagates through it); the same arithmetic either way.
    """
    p = layout.patch
    shape = (*pred.shape[1:-2], *layout.wsum.shape)
    if _is_torch(pred):
        import torch

        acc = pred.new_zeros(shape)
        weight = torch.as_tensor(layout.weight, dtype=pred.dtype, device=pred.device)
        wsum = torch.as_tensor(layout.wsum, dtype=pred.dtype, device=pred.device)
    else:
        acc, weight, wsum = np.zeros(shape, np.float64), layout.weight, layout.wsum
    for k, (r, c) in enumerate(layout.spots):
        acc[..., r : r + p, c : c + p] += pred[k] * weight
    return (acc / wsum)[(..., *layout.crop)]
