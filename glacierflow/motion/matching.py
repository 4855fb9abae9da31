"""Per-pair image matchers of the flow stage (numpy/OpenCV kernels, no Dask, no xarray).

Each matcher takes two images ``a`` (earlier) and ``b`` (later) on the same grid and returns the
displacement in **pixels**, ``(2, H, W)`` float32: columns right and rows down, so that the content at
``a[r, c]`` is found at ``b[r + rows, c + cols]``; NaN where the match is not trusted. :data:`METHODS`
is the registry :mod:`glacierflow.motion.velocity` and the CLI choose from.

* ``ncc``: normalised cross-correlation (OpenCV's ``TM_CCOEFF_NORMED``: zero-mean, normalised) of a
  ``chip`` x ``chip`` window around every pixel of ``a`` against the windows of ``b`` shifted by every
  integer offset up to ``search`` pixels, computed densely with box filters (one filter per offset),
  then a Gaussian (log-parabola) fit through the peak and its neighbours along each axis for the
  sub-pixel offset. A pixel is NaN when its peak correlation is below ``min_corr``, the peak sits on the
  edge of the search range, the left-right (forward-backward) check fails (the best backward match of
  the matched window must lead back to the same integer offset), or either window has too little
  texture (standard deviation below ``min_texture``) or too many missing pixels.
* ``ncc`` as a whole (:func:`autorift_pixels`, the autoRIFT way): the search is centred on a prior
  displacement per pixel (a reference velocity x Δt, or a coarse first pass with the large chip over the
  full search range, smoothed), image ``b`` is resampled by that prior and the chips are matched within
  :data:`FINE_SEARCH` pixels of it: the ``chip`` chip first, the larger ``chip_max`` chip where the small
  one fails; the sub-pixel peak refined by least squares on the chip (:func:`lk_refine`); matched both
  ways (the half difference cancels a chip's own bias; a forward-backward check); then the
  normalised displacement coherence (NDC) filter drops matches that differ from their
  5x5 neighbourhood's median by more than ``ndc`` pixels.
* ``farneback``: OpenCV's dense Farnebäck flow (the paper's parameters) with the texture and the
  forward-backward masks of the first version.

Images are prepared by :func:`prepare`: NDSI (``kind="ndsi"``) is clipped to [0, 1]; a guide image
(``kind="guide"``: high-passed reflectance) is stretched to [0, 1] between its 1st and 99th
percentiles, so that ``min_texture`` means the same for both.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from glacierflow.choices import FLOW_METHODS, check_registry
from glacierflow.specs import FlowSpec

IMAGE_KINDS = ("guide", "ndsi")
MIN_CHIP_VALID = 0.9  # fraction of observed pixels a chip needs in both images


def prepare(image: np.ndarray, kind: str) -> np.ndarray:
    """An image in [0, 1] (NaN kept) for the matchers; see the module docstring."""
    a = np.asarray(image, dtype=np.float32)
    a = np.where(np.isinf(a), np.nan, a)
    if kind == "ndsi":
        return np.clip(a, 0.0, 1.0)
    finite = a[np.isfinite(a)]
    if finite.size < 2:
        return np.full_like(a, np.nan)
    lo, hi = np.percentile(finite, [1.0, 99.0])
    scale = np.float32(1.0 / (hi - lo)) if hi > lo else np.float32(0.0)
    return np.clip((a - np.float32(lo)) * scale, 0.0, 1.0)


def _box(image: np.ndarray, size: int, replicate: bool = False) -> np.ndarray:
    import cv2

    border = cv2.BORDER_REPLICATE if replicate else cv2.BORDER_CONSTANT
    return cv2.boxFilter(image, cv2.CV_32F, (size, size), normalize=True, borderType=border)


def local_texture(image: np.ndarray, size: int) -> np.ndarray:
    """Standard deviation in a ``size`` x ``size`` box around each pixel (NaN counts as 0)."""
    a = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0)
    mean = _box(a, size, replicate=True)
    return np.sqrt(np.clip(_box(a * a, size, replicate=True) - mean * mean, 0.0, None))


def peak_offset(minus: np.ndarray, peak: np.ndarray, plus: np.ndarray) -> np.ndarray:
    """Sub-pixel position of a peak from three samples: a Gaussian fit (parabola through the logs).

    Returns the offset from the middle sample in (-0.5, 0.5); 0 where the samples are not a peak.
    """
    lm, l0, lp = (np.log(np.clip(x, 1e-3, None)) for x in (minus, peak, plus))
    den = lm - 2.0 * l0 + lp
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(den < 0, 0.5 * (lm - lp) / den, 0.0)
    return np.clip(np.nan_to_num(d), -0.5, 0.5).astype(np.float32)


# One piece on purpose (one of three): the numpy kernel of one chip search (candidates, sub-pixel peak,
# validity tests) runs per pixel window; helpers would pass the same half-dozen arrays around in a hot loop.
def ncc_pixels(a: np.ndarray, b: np.ndarray, spec: FlowSpec, search: int) -> np.ndarray:
    """Dense chip NCC displacement in pixels, ``(2, H, W)`` float32 (columns, rows), NaN where invalid.

    ``a`` and ``b`` are prepared images (:func:`prepare`); ``search`` is the largest offset tried along
    each axis. Cost: ``(2 search + 1)^2`` box filters of the image; memory: two rows of offsets.
    """
    import cv2

    cv2.setNumThreads(0)
    h, w = a.shape
    r, chip, n = int(search), int(spec.chip), 2 * int(search) + 1
    fa, fb = np.isfinite(a), np.isfinite(b)
    # missing pixels take the image's median (neutral in the correlation), not 0 (an artificial edge)
    a0 = np.where(fa, a, np.median(a[fa]) if fa.any() else 0).astype(np.float32)
    b0 = np.where(fb, b, np.median(b[fb]) if fb.any() else 0).astype(np.float32)
    mean_a = _box(a0, chip)
    std_a = np.sqrt(np.clip(_box(a0 * a0, chip) - mean_a * mean_a, 0.0, None))
    mean_b = _box(b0, chip)
    std_b = np.sqrt(np.clip(_box(b0 * b0, chip) - mean_b * mean_b, 0.0, None))
    b_pad, mean_b, std_b = (np.pad(x, r) for x in (b0, mean_b, std_b))
    inv_a, inv_b = (np.divide(1.0, x, out=np.zeros_like(x), where=x > 1e-6) for x in (std_a, std_b))
    best = np.full((h, w), -2.0, np.float32)
    best_k = np.zeros((h, w), np.int32)
    left, right, up, down = (np.full((h, w), -1.0, np.float32) for _ in range(4))
    back = np.full((h + 2 * r, w + 2 * r), -2.0, np.float32)  # best backward correlation, target coords
    back_k = np.zeros(back.shape, np.int32)
    pending = np.zeros((h, w), bool)  # best found in the previous row of offsets: "down" still to fill
    prev: np.ndarray | None = None
    rows_img, cols_img = np.mgrid[0:h, 0:w]
    for iy in range(n):
        row = np.empty((n, h, w), np.float32)
        for ix in range(n):
            sl = (slice(iy, iy + h), slice(ix, ix + w))
            c = row[ix]
            np.multiply(a0, b_pad[sl], out=c)
            c = _box(c, chip)
            c -= mean_a * mean_b[sl]
            c *= inv_a
            c *= inv_b[sl]  # 0 where either window is flat: never a peak
            row[ix] = c
            # backward match of b's window at p + d against a: the same correlation, kept at p + d
            target, target_k = back[sl], back_k[sl]
            better = c > target
            np.copyto(target, c, where=better)
            np.copyto(target_k, iy * n + ix, where=better)
        k = np.argmax(row, axis=0)
        val = np.take_along_axis(row, k[None], 0)[0]
        if pending.any():
            col_k = best_k % n
            np.copyto(down, np.take_along_axis(row, col_k[None], 0)[0], where=pending)
        better = val > best
        np.copyto(best, val, where=better)
        np.copyto(best_k, iy * n + k, where=better)
        np.copyto(left, np.take_along_axis(row, np.maximum(k - 1, 0)[None], 0)[0], where=better)
        np.copyto(right, np.take_along_axis(row, np.minimum(k + 1, n - 1)[None], 0)[0], where=better)
        if prev is not None:
            np.copyto(up, np.take_along_axis(prev, k[None], 0)[0], where=better)
        else:
            up[better] = -1.0
        pending = better
        prev = row
    ky, kx = np.divmod(best_k, n)
    cols = (kx - r) + peak_offset(left, best, right)
    rows = (ky - r) + peak_offset(up, best, down)
    valid = (kx > 0) & (kx < n - 1) & (ky > 0) & (ky < n - 1) & (best >= spec.min_corr)
    t_rows, t_cols = rows_img + ky, cols_img + kx  # the matched window's centre in padded coordinates
    if spec.max_fb_error > 0:  # within one pixel: a true offset near k + 0.5 may round either way
        by, bx = np.divmod(back_k[t_rows, t_cols], n)
        valid &= (np.abs(by - ky) <= 1) & (np.abs(bx - kx) <= 1)
    std_b_hit = std_b[t_rows, t_cols]
    valid &= (std_a >= spec.min_texture) & (std_b_hit >= spec.min_texture)
    seen_a = _box(fa.astype(np.float32), chip)
    seen_b = np.pad(_box(fb.astype(np.float32), chip), r)[t_rows, t_cols]
    valid &= (seen_a >= MIN_CHIP_VALID) & (seen_b >= MIN_CHIP_VALID) & fa
    half = chip // 2  # chips must lie inside both images (the box filter pads with zeros)
    valid &= (rows_img >= half) & (rows_img < h - half) & (cols_img >= half) & (cols_img < w - half)
    valid &= (t_rows - r >= half) & (t_rows - r < h - half) & (t_cols - r >= half) & (t_cols - r < w - half)
    out = np.stack([cols, rows]).astype(np.float32)
    out[:, ~valid] = np.nan
    return out


def _farneback(a: np.ndarray, b: np.ndarray, spec: FlowSpec) -> np.ndarray:
    """OpenCV Farnebäck on two [0, 255] images: ``(H, W, 2)`` float32 (columns, rows)."""
    import cv2

    return cv2.calcOpticalFlowFarneback(
        a, b, None, spec.pyr_scale, spec.levels, spec.winsize, spec.iterations, spec.poly_n,
        spec.poly_sigma, 0,
    )


def fb_error(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """Forward-backward inconsistency in pixels, ``(H, W)``.

    ``forward`` maps frame A to B and ``backward`` B to A, both ``(H, W, 2)`` (columns, rows). A pixel
    consistent in both directions satisfies ``forward(p) + backward(p + forward(p)) = 0``.
    """
    import cv2

    h, w = forward.shape[:2]
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    back = cv2.remap(
        np.ascontiguousarray(backward, dtype=np.float32),
        cols + forward[..., 0], rows + forward[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE,
    )
    return np.hypot(forward[..., 0] + back[..., 0], forward[..., 1] + back[..., 1])


def farneback_pixels(a: np.ndarray, b: np.ndarray, spec: FlowSpec, search: int = 0,
                     prior: np.ndarray | None = None) -> np.ndarray:
    """Farnebäck flow in pixels, ``(2, H, W)`` float32 (columns, rows), NaN where invalid.

    ``a`` and ``b`` are prepared images in [0, 1] (:func:`prepare`); they are scaled to [0, 255]
    first, because Farnebäck returns (near) zero flow on float32 images in [0, 1]. ``search`` is unused
    (the pyramid sets the reach), so is ``prior``. Pixels with NaN input, too little texture (``min_texture`` in a
    ``texture_window`` box) or a forward-backward error above ``max_fb_error`` are NaN.
    """
    import cv2

    cv2.setNumThreads(0)
    ia, ib = (np.nan_to_num(x, nan=0.0).astype(np.float32) * np.float32(255.0) for x in (a, b))
    flow = _farneback(ia, ib, spec)
    out = np.moveaxis(flow, -1, 0).astype(np.float32)
    valid = np.isfinite(a) & np.isfinite(b)
    if spec.min_texture > 0:
        box = spec.texture_box
        valid &= local_texture(a, box) >= spec.min_texture
        valid &= local_texture(b, box) >= spec.min_texture
    if spec.max_fb_error > 0:
        valid &= fb_error(flow, _farneback(ib, ia, spec)) <= spec.max_fb_error
    out[:, ~valid] = np.nan
    return out


CORRELATION_LAG = 8  # the central lags of the residual's autocorrelation: beyond them the estimate is noise


def correlation_area(residual: np.ndarray) -> float:
    """Correlation area (px) of a residual image: the number of pixels one independent sample spans.

    ``sum over lags of the autocorrelation`` (FFT over the finite pixels, zero-padded by the largest
    lag, :data:`CORRELATION_LAG`, so that no lag wraps around), at least 1. A window of ``N`` pixels then
    holds ``N / area`` independent residuals.
    """
    from scipy import fft

    ok = np.isfinite(residual)
    if ok.sum() < 16:
        return 1.0
    r = np.where(ok, residual - residual[ok].mean(), 0.0).astype(np.float64)
    lag = CORRELATION_LAG
    shape = tuple(fft.next_fast_len(n + lag + 1, real=True) for n in r.shape)
    auto = fft.irfft2(np.abs(fft.rfft2(r, s=shape)) ** 2, s=shape)
    norm = fft.irfft2(np.abs(fft.rfft2(ok.astype(np.float64), s=shape)) ** 2, s=shape)
    rho = np.where(norm > 0.25 * ok.sum(), auto / np.maximum(norm, 1.0), 0.0) / max(auto[0, 0] / ok.sum(), 1e-12)
    core = np.roll(np.roll(rho, lag, 0), lag, 1)[: 2 * lag + 1, : 2 * lag + 1]
    return float(max(core.sum(), 1.0))


def match_error(a: np.ndarray, b: np.ndarray, disp: np.ndarray, window: int) -> np.ndarray:
    """Per-pixel 1-sigma error (px) of a displacement field, ``(2, H, W)`` (columns, rows).

    The least-squares (Lucas-Kanade) covariance of a displacement estimated on a ``window`` x
    ``window`` window: ``Cov = s2 * area * inv(sum over the window of g g^T)``, with ``g`` the image
    gradient of ``a``, ``s2`` the local variance of the match residual ``a(p) - b(p + d)`` (it grows
    where the texture changed between the acquisitions or the match is wrong) and ``area``
    (:func:`correlation_area`) the pixels one independent residual spans. Along a direction without
    texture (streaks, edges: the aperture problem) the error is large. NaN where ``disp`` is NaN.
    """
    import cv2

    h, w = a.shape
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    ok = np.isfinite(disp[0]) & np.isfinite(disp[1])
    dc, dr = (np.where(ok, d, 0).astype(np.float32) for d in disp)
    b0 = np.asarray(b, np.float32)
    bw = cv2.remap(np.nan_to_num(b0, nan=0.0), cols + dc, rows + dr, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    seen = cv2.remap(np.isfinite(b0).astype(np.float32), cols + dc, rows + dr, cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT) > 0.99
    a0 = np.asarray(a, np.float32)
    use = ok & seen & np.isfinite(a0)
    res = np.where(use, a0 - bw, np.nan)
    area = correlation_area(res)
    gr, gc = np.gradient(np.nan_to_num(a0, nan=0.0))
    m = use.astype(np.float32)
    n = window * window
    wsum = _box(m, window) * n  # residual pixels in the window
    s2 = _box(np.nan_to_num(res * res), window) * n / np.maximum(wsum, 1.0)
    jcc, jcr, jrr = (_box((x * m).astype(np.float32), window) * n for x in (gc * gc, gc * gr, gr * gr))
    det = jcc * jrr - jcr * jcr
    with np.errstate(divide="ignore", invalid="ignore"):
        var_c = s2 * area * jrr / det
        var_r = s2 * area * jcc / det
        out = np.sqrt(np.stack([var_c, var_r])).astype(np.float32)  # NaN where det <= 0: masked below
    bad = ~ok | ~np.isfinite(out).all(0) | (det <= 0) | (wsum < 0.5 * n)
    out[:, bad] = np.nan
    return out


FINE_SEARCH = 3  # px around the prior searched by the fine pass (a prior good to ~2 px leaves room)


def fill_smooth(disp: np.ndarray, sigma: float) -> np.ndarray:
    """A smooth, gap-free version of a displacement field ``(2, H, W)`` (normalised Gaussian of the valid).

    Pixels with no valid value within ~3 sigma take 0 (no motion).
    """
    import cv2

    ok = np.isfinite(disp[0]) & np.isfinite(disp[1])
    w = cv2.GaussianBlur(ok.astype(np.float32), (0, 0), sigma)
    out = np.empty(disp.shape, np.float32)
    for k in range(2):
        num = cv2.GaussianBlur(np.where(ok, disp[k], 0).astype(np.float32), (0, 0), sigma)
        out[k] = np.where(w > 1e-3, num / np.maximum(w, 1e-3), 0.0)
    return out


def warp_by(image: np.ndarray, disp: np.ndarray) -> np.ndarray:
    """``image`` sampled at ``p + disp(p)`` (bicubic; NaN where a NaN or the outside contributes)."""
    import cv2

    h, w = image.shape
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    mc, mr = cols + disp[0].astype(np.float32), rows + disp[1].astype(np.float32)
    img = np.asarray(image, np.float32)
    seen = cv2.remap(np.isfinite(img).astype(np.float32), mc, mr, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    out = cv2.remap(np.nan_to_num(img, nan=0.0), mc, mr, cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT)
    return np.where(seen > 0.999, out, np.nan).astype(np.float32)


def ndc_filter(disp: np.ndarray, tolerance: float) -> np.ndarray:
    """Normalised displacement coherence: NaN where a match differs from its 5x5 median by > ``tolerance`` px."""
    import cv2

    if tolerance <= 0:
        return disp
    ok = np.isfinite(disp[0]) & np.isfinite(disp[1])
    smooth = fill_smooth(disp, 2.0)
    keep = ok.copy()
    for k in range(2):
        med = cv2.medianBlur(np.where(ok, disp[k], smooth[k]).astype(np.float32), 5)
        keep &= np.abs(disp[k] - med) <= tolerance
    out = disp.copy()
    out[:, ~keep] = np.nan
    return out


def _halved(image: np.ndarray) -> np.ndarray:
    """2 x 2 block means (NaN where a block has no value; an odd last row/column dropped)."""
    h, w = (image.shape[0] // 2) * 2, (image.shape[1] // 2) * 2
    blocks = np.asarray(image[:h, :w], np.float32).reshape(h // 2, 2, w // 2, 2)
    ok = np.isfinite(blocks)
    n = ok.sum(axis=(1, 3))
    total = np.where(ok, blocks, 0).sum(axis=(1, 3))
    return np.where(n > 0, total / np.maximum(n, 1), np.nan).astype(np.float32)


def coarse_prior(a: np.ndarray, b: np.ndarray, spec: FlowSpec, search: int) -> np.ndarray:
    """The search prior without a reference: the ``chip_max`` match over the full ``search`` range, smoothed.

    Beyond 4 px of search it runs on the images halved (2 x 2 means: the chip and the range halve, the
    cost drops ~16 times) and is brought back to the full grid; NDC-filtered, gaps filled, smoothed.
    """
    if search <= 4:
        coarse = ncc_pixels(a, b, spec.replace(chip=spec.chip_max), search)
    else:
        chip = max(5, (spec.chip_max // 2) | 1)
        half = ncc_pixels(_halved(a), _halved(b), spec.replace(chip=chip, chip_max=max(chip, spec.chip_max)),
                          -(-search // 2))
        full = np.full((2, *a.shape), np.nan, np.float32)
        up = 2.0 * np.repeat(np.repeat(half, 2, axis=1), 2, axis=2)
        full[:, : up.shape[1], : up.shape[2]] = up
        coarse = full
    return fill_smooth(ndc_filter(coarse, 2.0), spec.chip_max / 2.0)


def _one_way(a: np.ndarray, b: np.ndarray, spec: FlowSpec, prior: np.ndarray) -> np.ndarray:
    """``a`` -> ``b`` around ``prior``: small chip, grown chip where it fails, least-squares sub-pixel."""
    bw = warp_by(b, prior)
    fine = ncc_pixels(a, bw, spec, FINE_SEARCH)
    miss = ~np.isfinite(fine[0])
    if miss.any() and spec.chip_max > spec.chip:
        grown = ncc_pixels(a, bw, spec.replace(chip=spec.chip_max), FINE_SEARCH)
        fine[:, miss] = grown[:, miss]
    return lk_refine(a, b, fine + prior, spec.chip)


def autorift_pixels(a: np.ndarray, b: np.ndarray, spec: FlowSpec, search: int,
                    prior: np.ndarray | None = None) -> np.ndarray:
    """NCC around a prior, chips grown where the small one fails, symmetric, NDC-filtered (module docstring).

    ``prior`` is the expected displacement ``(2, H, W)`` in pixels (columns, rows); without one, a coarse
    first pass with the ``chip_max`` chip over ``search`` pixels gives it. The match is made both ways
    (``a`` -> ``b`` and ``b`` -> ``a``, the latter read at the matched position): their half difference is
    the displacement (a chip's texture-dependent bias, the same both ways, cancels: it would not average
    out over pairs), and where they disagree by more than ``2 max_fb_error`` px the pixel is NaN (the
    forward-backward check; off when ``max_fb_error`` is 0).
    """
    if prior is None:
        prior = coarse_prior(a, b, spec, search)
    prior = np.nan_to_num(np.asarray(prior, np.float32))
    forward = _one_way(a, b, spec, prior)
    backward = _one_way(b, a, spec, -prior)  # the prior is smooth: -prior(q) ~ -prior(q - d)
    at = np.stack([warp_by(backward[k], np.nan_to_num(forward)) for k in range(2)])
    disp = (forward - at) / 2.0
    if spec.max_fb_error > 0:
        disagree = np.hypot(forward[0] + at[0], forward[1] + at[1]) > 2 * spec.max_fb_error
        disp[:, disagree] = np.nan
    return ndc_filter(disp, spec.ndc)


def _normalised(image: np.ndarray, window: int) -> np.ndarray:
    """``(image - local mean) / local std`` over a ``window`` box (NaN counts as 0): gain-free chips."""
    x = np.nan_to_num(np.asarray(image, np.float32), nan=0.0)
    mean = _box(x, window, replicate=True)
    sd = np.sqrt(np.clip(_box(x * x, window, replicate=True) - mean * mean, 1e-12, None))
    return (x - mean) / sd


def lk_refine(a: np.ndarray, b: np.ndarray, disp: np.ndarray, window: int, iterations: int = 2) -> np.ndarray:
    """Sub-pixel refinement of a displacement by least squares on each ``window`` chip (Lucas-Kanade).

    ``b`` is resampled at ``p + disp`` and the step ``delta`` solving ``grad(b_w) . delta = a - b_w`` over
    the chip (both chips normalised to zero mean, unit variance, as NCC is) is added, ``iterations`` times;
    steps are capped at 0.5 px (the integer search already found the peak). Removes the bias of a
    three-point peak fit (pixel locking), which grows as chips shrink. NaN stays NaN.
    """
    ok = np.isfinite(disp[0]) & np.isfinite(disp[1])
    d = np.where(ok, disp, 0.0).astype(np.float32)
    an = _normalised(a, window)
    for _ in range(iterations):
        bn = _normalised(warp_by(b, d), window)
        gr, gc = np.gradient(bn)
        diff = an - bn
        jcc, jcr, jrr = (_box(x.astype(np.float32), window) for x in (gc * gc, gc * gr, gr * gr))
        bc, br = _box((gc * diff).astype(np.float32), window), _box((gr * diff).astype(np.float32), window)
        det = jcc * jrr - jcr * jcr
        with np.errstate(divide="ignore", invalid="ignore"):
            dc = np.where(det > 1e-9, (jrr * bc - jcr * br) / det, 0.0)
            dr = np.where(det > 1e-9, (jcc * br - jcr * bc) / det, 0.0)
        d = d + np.clip(np.stack([dc, dr]), -0.5, 0.5).astype(np.float32)
    return np.where(ok, d, np.nan).astype(np.float32)


#: name -> matcher ``(a, b, spec, search_px, prior=None) -> (2, H, W)`` pixels (columns right, rows down).
METHODS: dict[str, Callable[..., np.ndarray]] = {
    "ncc": autorift_pixels,
    "farneback": farneback_pixels,
}
check_registry("motion.matching.METHODS", METHODS, FLOW_METHODS)
