"""The composite velocity of many pairs: robust weighted mean, its error, and the matcher's smoothing bias."""

from __future__ import annotations

import math

import dask.array as da
import numpy as np
import xarray as xr

from glacierflow.motion.masks import MAD_SIGMA
from glacierflow.specs import FlowSpec

COMPOSITE_CHUNK = 256

def composite_block(u: np.ndarray, v: np.ndarray, err: np.ndarray, *, scenes: np.ndarray | None = None
                     ) -> tuple[np.ndarray, ...]:
    """Error-weighted composite over the last axis (pairs); ``err`` per pixel or per pair (module doc)."""
    u, v = np.moveaxis(u, -1, 0).astype(np.float64), np.moveaxis(v, -1, 0).astype(np.float64)
    e = np.moveaxis(np.asarray(err, np.float64), -1, 0)
    sig = np.broadcast_to(e.reshape(e.shape + (1,) * (u.ndim - e.ndim)), u.shape)
    fin = np.isfinite(u) & np.isfinite(v)
    known = np.isfinite(sig) & (sig > 0)
    if known.any():  # a pixel without an error counts as a typical one
        sig = np.where(known, sig, np.median(sig[known]))
    else:  # no errors at all: equal weights, no rejection, the error from the scatter alone
        sig = np.full(u.shape, np.inf)
    n_fin = fin.sum(0)
    with np.errstate(all="ignore"):
        uf, vf = np.where(fin, u, np.nan), np.where(fin, v, np.nan)
        mu, mv = _nanmedian(uf), _nanmedian(vf)
        spread = MAD_SIGMA * np.maximum(_nanmedian(np.abs(uf - mu)), _nanmedian(np.abs(vf - mv)))
        tol = 3.0 * np.maximum(sig, np.where(n_fin >= 3, spread, 0.0))
        keep = fin & (np.abs(u - mu) <= tol) & (np.abs(v - mv) <= tol)
        w = np.where(keep, 1.0 / sig**2 if known.any() else 1.0, 0.0)
        sw = w.sum(0)
        cu = (w * np.where(keep, u, 0)).sum(0) / sw
        cv = (w * np.where(keep, v, 0)).sum(0) / sw
        n = keep.sum(0)
        n_eff = _independent_pairs(keep, n, scenes)
        dev2 = (np.where(keep, u, 0) - cu) ** 2 + (np.where(keep, v, 0) - cv) ** 2
        one_pair = (w * dev2 / 2).sum(0) / sw * n / np.maximum(n - 1, 1)  # a pair's variance (per component)
        scatter = np.sqrt(one_pair / n_eff)
        formal = np.sqrt(n / (sw * n_eff)) if known.any() else np.zeros(sw.shape)
        error = np.maximum(formal, np.where(n >= 2, scatter, np.nan if not known.any() else 0.0))
    empty = n == 0
    out = [np.where(empty, np.nan, x).astype(np.float32) for x in (cu, cv, np.hypot(cu, cv), error)]
    return (*out, n.astype(np.int16))


def _independent_pairs(keep: np.ndarray, n: np.ndarray, scenes: np.ndarray | None) -> np.ndarray:
    """Effective number of independent pairs per pixel: ``clip(distinct scenes - 1, 1, n)``.

    Pairs that share a scene share its noise: ``k`` pairs among ``d`` distinct scenes carry at most
    ``d - 1`` independent differences (the rank of the pairs' incidence matrix on a connected set).
    Without ``scenes`` (pair -> two scene indices) every pair counts.
    """
    if scenes is None:
        return np.maximum(n, 1).astype(np.float64)
    scenes = np.asarray(scenes, np.int64)
    incidence = np.zeros((scenes.shape[0], int(scenes.max()) + 1), np.float32)
    incidence[np.arange(scenes.shape[0])[:, None], scenes] = 1.0
    flat = keep.reshape(keep.shape[0], -1).T.astype(np.float32)
    distinct = ((flat @ incidence) > 0).sum(1).reshape(n.shape)
    return np.clip(distinct - 1, 1, np.maximum(n, 1)).astype(np.float64)


def _nanmedian(a: np.ndarray) -> np.ndarray:
    """Median over axis 0 ignoring NaN; NaN where all are NaN (without numpy's warning)."""
    empty = ~np.isfinite(a).any(axis=0)
    out = np.nanmedian(np.where(empty[None], 0.0, a), axis=0)
    return np.where(empty, np.nan, out)


def composite(vel: xr.Dataset, scenes: np.ndarray | None = None) -> dict[str, xr.DataArray]:
    """Lazy error-weighted composite over the pairs (module docstring).

    Parameters
    ----------
    vel
        ``u``, ``v`` (``time``, ``y``, ``x``), ``pair_error`` (``time``) and, where there is one, the
        per-pixel error ``error`` (``time``, ``y``, ``x``) that then weighs each pixel of each pair.
    scenes
        ``(pairs, 2)`` scene indices of each pair, for the effective number of independent pairs.

    Returns
    -------
    dict
        ``u_composite``, ``v_composite``, ``speed_composite``, ``speed_error`` (float32 m/yr, dims ``y``,
        ``x``; NaN where no pair has a value) and ``n_pairs`` (int16).
    """
    chunks = {"time": -1, "y": COMPOSITE_CHUNK, "x": COMPOSITE_CHUNK}
    err = vel["error"] if "error" in vel else xr.broadcast(vel["pair_error"], vel["u"])[0]
    u, v, err = (x.chunk(chunks) if vel["u"].chunks else x for x in (vel["u"], vel["v"], err))
    outs = xr.apply_ufunc(
        composite_block, u, v, err, input_core_dims=[["time"]] * 3, output_core_dims=[[]] * 5,
        kwargs={"scenes": scenes}, dask="parallelized", output_dtypes=[np.float32] * 4 + [np.int16],
    )
    grid = {k: v for k, v in vel["u"].attrs.items() if k == "grid_mapping"}
    names = {
        "u_composite": "error-weighted composite velocity east",
        "v_composite": "error-weighted composite velocity north",
        "speed_composite": "speed of the composite velocity", "speed_error": "1-sigma error of the composite speed",
    }
    out = {k: o.assign_attrs(units="m yr-1", long_name=names[k], **grid) for k, o in zip(names, outs, strict=False)}
    out["n_pairs"] = outs[4].assign_attrs(long_name="number of pairs in the composite")
    return {k: o.reset_coords(drop=True) for k, o in out.items()}


def window_variance(spec: FlowSpec) -> float:
    """Variance (px^2, per axis) of the window over which the matcher averages the displacement.

    NCC: a uniform ``chip`` x ``chip`` box, ``(chip^2 - 1) / 12``. Farnebäck (``flags=0``, as
    :func:`glacierflow.motion.matching.farneback_pixels` calls it): OpenCV averages the polynomial
    coefficients over a ``winsize`` box (``FarnebackUpdateFlow_Blur``; the Gaussian window is only used
    with ``OPTFLOW_FARNEBACK_GAUSSIAN``), on top of the polynomial expansion's Gaussian
    (``poly_sigma``): ``(winsize^2 - 1) / 12 + poly_sigma^2``.
    """
    if spec.method == "ncc":
        return (spec.chip**2 - 1) / 12.0
    return (spec.winsize**2 - 1) / 12.0 + spec.poly_sigma**2


def _curvature_scale(s2: float) -> float:
    """Sigma (px) of the Gaussian the composite is smoothed with before its Laplacian.

    The window's own standard deviation, ``sqrt(s2)``: the composite carries no information finer than
    the matcher's window; finer, the 5-point Laplacian measures pixel noise, not the field's curvature.
    """
    return math.sqrt(max(s2, 0.0))


def _smooth_valid(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian of ``sigma`` px over the finite pixels only (normalised convolution); NaN stays NaN."""
    import cv2

    if sigma <= 0:
        return x
    ok = np.isfinite(x)
    k = 2 * math.ceil(3 * sigma) + 1
    num = cv2.GaussianBlur(np.where(ok, x, 0.0), (k, k), sigma, borderType=cv2.BORDER_CONSTANT)
    den = cv2.GaussianBlur(ok.astype(np.float64), (k, k), sigma, borderType=cv2.BORDER_CONSTANT)
    return np.where(ok, num / np.maximum(den, 1e-9), np.nan)


def _smoothing_block(err: np.ndarray, u: np.ndarray, v: np.ndarray, s2: float) -> np.ndarray:
    """``sqrt(err^2 + (s2 / 2 * |laplacian(u, v)|)^2)``.

    The Laplacian of ``u``, ``v`` smoothed at the window's scale (:func:`_curvature_scale`); missing
    neighbours count as the pixel itself.
    """
    def lap(x: np.ndarray) -> np.ndarray:
        out = np.zeros(x.shape, np.float64)
        for axis in (0, 1):
            for step in (1, -1):
                n = np.roll(x, step, axis)
                edge = [slice(None)] * 2
                edge[axis] = slice(0, 1) if step == 1 else slice(-1, None)
                n[tuple(edge)] = np.nan  # no wrap-around
                out += np.where(np.isfinite(n), n - x, 0.0)
        return out

    sigma = _curvature_scale(s2)
    with np.errstate(invalid="ignore"):
        lu, lv = (lap(_smooth_valid(x.astype(np.float64), sigma)) for x in (u, v))
        bias = 0.5 * s2 * np.hypot(lu, lv)
        return np.where(np.isfinite(err), np.hypot(err, bias), np.nan).astype(np.float32)


def with_smoothing(err: xr.DataArray, u: xr.DataArray, v: xr.DataArray, s2: float) -> xr.DataArray:
    """The composite error with the matcher's smoothing bias added (lazy, with the overlap it needs).

    A matcher averages the displacement over its window (variance ``s2`` px^2 per axis,
    :func:`window_variance`), which biases the velocity by ``s2 / 2 * laplacian(velocity)`` (second
    order in the Taylor expansion): largest at the ice margins and on the centre line, common to
    every pair, so the pairs' scatter cannot see it. The curvature is taken on the composite smoothed
    at the window's own scale (:func:`_curvature_scale`). Added in quadrature to the random error.
    """
    if not isinstance(err.data, da.Array):
        data = _smoothing_block(np.asarray(err), np.asarray(u), np.asarray(v), s2)
    else:
        depth = math.ceil(3 * _curvature_scale(s2)) + 2
        data = da.map_overlap(_smoothing_block, err.data, u.data, v.data, depth=depth, boundary="none",
                              dtype=np.float32, s2=s2)
    return err.copy(data=data)
