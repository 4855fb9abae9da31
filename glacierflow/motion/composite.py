"""The composite velocity of many pairs: robust weighted mean, its error, and the matcher's smoothing bias."""

from __future__ import annotations

import math

import dask.array as da
import numpy as np
import xarray as xr

from glacierflow.motion.masks import MAD_SIGMA
from glacierflow.specs import FlowSpec

COMPOSITE_CHUNK = 256

def composite_block(u: np.ndarray, v: np.ndarray, err_u: np.ndarray, err_v: np.ndarray | None = None, *,
                    scenes: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """Error-weighted composite over the last axis (pairs), each component with its own errors.

    ``err_u``, ``err_v`` are 1-sigma errors of ``u`` and ``v`` per pixel or per pair (``err_v`` defaults to
    ``err_u``). Per pixel, pairs further than 3 sigma (the larger of the pair's error and the pairs' robust
    spread) from the median are dropped; each component is averaged with weights ``1 / err**2`` of its
    own; its error is the larger of the formal error of that mean and the weighted scatter of one pair,
    over ``sqrt(n_eff)`` (:func:`_independent_pairs`). Returns ``u``, ``v``, speed, ``u`` error, ``v``
    error, speed error (the components' errors projected on the composite's direction) and the count.
    """
    u, v = np.moveaxis(u, -1, 0).astype(np.float64), np.moveaxis(v, -1, 0).astype(np.float64)
    fin = np.isfinite(u) & np.isfinite(v)
    sig_u, sig_v, known = _sigmas(err_u, err_u if err_v is None else err_v, u.shape)
    n_fin = fin.sum(0)
    with np.errstate(all="ignore"):
        uf, vf = np.where(fin, u, np.nan), np.where(fin, v, np.nan)
        mu, mv = _nanmedian(uf), _nanmedian(vf)
        spread = MAD_SIGMA * np.maximum(_nanmedian(np.abs(uf - mu)), _nanmedian(np.abs(vf - mv)))
        floor = np.where(n_fin >= 3, spread, 0.0)
        keep = fin & (np.abs(u - mu) <= 3.0 * np.maximum(sig_u, floor))
        keep &= np.abs(v - mv) <= 3.0 * np.maximum(sig_v, floor)
        n = keep.sum(0)
        n_eff = _independent_pairs(keep, n, scenes)
        cu, eu = _weighted(u, sig_u, keep, n, n_eff, known)
        cv, ev = _weighted(v, sig_v, keep, n, n_eff, known)
        speed = np.hypot(cu, cv)
        es = np.where(speed > 0, np.sqrt(cu**2 * eu**2 + cv**2 * ev**2) / speed, np.sqrt((eu**2 + ev**2) / 2))
    empty = n == 0
    out = [np.where(empty, np.nan, x).astype(np.float32) for x in (cu, cv, speed, eu, ev, es)]
    return (*out, n.astype(np.int16))


def _sigmas(err_u: np.ndarray, err_v: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, bool]:
    """Per-pair, per-pixel sigmas of both components broadcast to ``shape`` (pairs first).

    A pixel without an error counts as a typical one (the median); no errors at all: ``inf`` (equal
    weights, no rejection, the error from the scatter alone), and ``known`` is False.
    """
    out = []
    for err in (err_u, err_v):
        e = np.moveaxis(np.asarray(err, np.float64), -1, 0)
        out.append(np.broadcast_to(e.reshape(e.shape + (1,) * (len(shape) - e.ndim)), shape))
    ok = [np.isfinite(s) & (s > 0) for s in out]
    known = bool(ok[0].any() and ok[1].any())
    if not known:
        return np.full(shape, np.inf), np.full(shape, np.inf), False
    return (*(np.where(k, s, np.median(s[k])) for s, k in zip(out, ok, strict=True)), True)  # type: ignore[return-value]


def _weighted(x: np.ndarray, sig: np.ndarray, keep: np.ndarray, n: np.ndarray, n_eff: np.ndarray,
              known: bool) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean of one component over the kept pairs and its 1-sigma error (:func:`composite_block`)."""
    w = np.where(keep, 1.0 / sig**2 if known else 1.0, 0.0)
    sw = w.sum(0)
    mean = (w * np.where(keep, x, 0)).sum(0) / sw
    one_pair = (w * (np.where(keep, x, 0) - mean) ** 2).sum(0) / sw * n / np.maximum(n - 1, 1)
    scatter = np.sqrt(one_pair / n_eff)
    formal = np.sqrt(n / (sw * n_eff)) if known else np.zeros(sw.shape)
    return mean, np.maximum(formal, np.where(n >= 2, scatter, 0.0 if known else np.nan))


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
    """Lazy error-weighted composite over the pairs (:func:`composite_block`).

    Parameters
    ----------
    vel
        ``u``, ``v`` (``time``, ``y``, ``x``), ``pair_error`` (``time``) and, where there are, the
        per-pixel errors ``error_u``, ``error_v`` (``time``, ``y``, ``x``) that then weigh each pixel of
        each pair, component by component.
    scenes
        ``(pairs, 2)`` scene indices of each pair, for the effective number of independent pairs.

    Returns
    -------
    dict
        ``u_composite``, ``v_composite``, ``speed_composite``, ``u_error``, ``v_error``, ``speed_error``
        (float32 m/yr, dims ``y``, ``x``; NaN where no pair has a value) and ``n_pairs`` (int16).
    """
    chunks = {"time": -1, "y": COMPOSITE_CHUNK, "x": COMPOSITE_CHUNK}
    errs = [vel[k] if k in vel else xr.broadcast(vel["pair_error"], vel["u"])[0] for k in ("error_u", "error_v")]
    u, v, eu, ev = (x.chunk(chunks) if vel["u"].chunks else x for x in (vel["u"], vel["v"], *errs))
    outs = xr.apply_ufunc(
        composite_block, u, v, eu, ev, input_core_dims=[["time"]] * 4, output_core_dims=[[]] * 7,
        kwargs={"scenes": scenes}, dask="parallelized", output_dtypes=[np.float32] * 6 + [np.int16],
    )
    grid = {k: v for k, v in vel["u"].attrs.items() if k == "grid_mapping"}
    names = {
        "u_composite": "error-weighted composite velocity east",
        "v_composite": "error-weighted composite velocity north",
        "speed_composite": "speed of the composite velocity",
        "u_error": "1-sigma error of the composite velocity east",
        "v_error": "1-sigma error of the composite velocity north",
        "speed_error": "1-sigma error of the composite speed",
    }
    out = {k: o.assign_attrs(units="m yr-1", long_name=names[k], **grid) for k, o in zip(names, outs, strict=False)}
    out["n_pairs"] = outs[6].assign_attrs(long_name="number of pairs in the composite")
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


def _smoothing_block(err: np.ndarray, u: np.ndarray, v: np.ndarray, s2: float, both: bool = True) -> np.ndarray:
    """``sqrt(err^2 + (s2 / 2 * |laplacian(u, v)|)^2)`` (``both=False``: of ``u`` alone).

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
        lu = lap(_smooth_valid(u.astype(np.float64), sigma))
        lv = lap(_smooth_valid(v.astype(np.float64), sigma)) if both else 0.0
        bias = 0.5 * s2 * np.hypot(lu, lv)
        return np.where(np.isfinite(err), np.hypot(err, bias), np.nan).astype(np.float32)


def with_smoothing(err: xr.DataArray, u: xr.DataArray, v: xr.DataArray | None, s2: float) -> xr.DataArray:
    """The composite error with the matcher's smoothing bias added (lazy, with the overlap it needs).

    A matcher averages the displacement over its window (variance ``s2`` px^2 per axis,
    :func:`window_variance`), which biases the velocity by ``s2 / 2 * laplacian(velocity)`` (second
    order in the Taylor expansion): largest at the ice margins and on the centre line, common to
    every pair, so the pairs' scatter cannot see it. The curvature is taken on the composite smoothed
    at the window's own scale (:func:`_curvature_scale`). Added in quadrature to the random error.
    ``v`` None: the error of the one component ``u`` (its own Laplacian).
    """
    both = v is not None
    other = v if v is not None else u
    if not isinstance(err.data, da.Array):
        data = _smoothing_block(np.asarray(err), np.asarray(u), np.asarray(other), s2, both)
    else:
        depth = math.ceil(3 * _curvature_scale(s2)) + 2
        data = da.map_overlap(_smoothing_block, err.data, u.data, other.data, depth=depth, boundary="none",
                              dtype=np.float32, s2=s2, both=both)
    return err.copy(data=data)
