"""ECC co-registration of every scene against a temporal reference image, lazily, one scene per task.

``alignment_image`` builds each scene's guide from its *masked* bands (the research code's grey image,
high-passed by normalised convolution: no mean-filled halos at cloud or footprint edges);
``reference_image`` builds the template (temporal mean, 3x3 median); ``align`` runs OpenCV's
``findTransformECC`` (with the scene's valid mask) for each scene inside :func:`xarray.map_blocks` and
returns the warped scenes and per-scene diagnostics, both lazy; :func:`co_register` does it twice, the
second time against a reference re-estimated from the aligned guides and starting from the first warp.
The reference is one node of the graph, computed once and shared by every scene's task. Warps bring no
value in from outside a scene: those pixels are NaN (missing), never replicated edges.

Shift convention (DESIGN.md): the scene's content sits ``shift_x`` columns right and ``shift_y`` rows
down of the reference, so ``scene[r, c] ≈ reference[r - shift_y, c - shift_x]``. ECC's warp ``W`` maps a
reference pixel to where the same content lies in the scene (``scene(W(p)) ≈ reference(p)``), so the
shift is ``W(p) - p``; it is reported at the image centre, which for a translation is just
``(W[0, 2], W[1, 2])``.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import dask.array as dsa
import numpy as np
import xarray as xr

from glacierflow import choices
from glacierflow.choices import check_registry
from glacierflow.errors import GlacierflowError

MOTIONS: dict[str, int] = {
    "translation": cv2.MOTION_TRANSLATION,  # the paper's text
    "euclidean": cv2.MOTION_EUCLIDEAN,
    "affine": cv2.MOTION_AFFINE,
    "homography": cv2.MOTION_HOMOGRAPHY,  # the research code's choice
}
check_registry("preprocess.align.MOTIONS", MOTIONS, choices.MOTIONS)

DIAGNOSTICS = ("shift_x", "shift_y", "ecc", "aligned")


# --- reference --------------------------------------------------------------------------------------------


def _median3(image: np.ndarray) -> np.ndarray:
    """3x3 median filter (cv2.medianBlur) of one float image; NaNs are kept where they were."""
    cv2.setNumThreads(0)
    img = np.asarray(image, dtype=np.float32)
    nan = np.isnan(img)
    if nan.all():
        return img.copy()
    filled = np.where(nan, np.nanmedian(img), img).astype(np.float32) if nan.any() else img
    out = cv2.medianBlur(np.ascontiguousarray(filled), 3)
    out[nan] = np.nan
    return out


#: guide band -> the assets it is made of (the cube stacks them)
GUIDE_ASSETS: dict[str, tuple[str, ...]] = {
    "red": ("red",), "nir08": ("nir08",), "green": ("green",), "ndsi": ("green", "swir16"),
    "grey": ("green", "swir16"),
}
check_registry("preprocess.align.GUIDE_ASSETS", GUIDE_ASSETS, choices.GUIDE_BANDS)


def guide_band_image(bands: xr.DataArray, band: str, raw: xr.DataArray | None = None) -> xr.DataArray:
    """The unfiltered guide ``(time, y, x)`` of ``band`` (a key of :data:`GUIDE_ASSETS`).

    ``bands`` are the masked ``green``/``swir16`` bands; a band they lack (``red``, ``nir08``) comes from
    ``raw`` (the stacked cube) and takes their mask (NaN where they are NaN).
    """
    if band not in GUIDE_ASSETS:
        raise GlacierflowError(f"unknown guide band {band!r}; choose one of: {', '.join(GUIDE_ASSETS)}")
    if band == "grey":
        return 0.114 * bands.sel(band="green") + 0.886 * bands.sel(band="swir16")
    if band == "ndsi":
        g, s = bands.sel(band="green"), bands.sel(band="swir16")
        return (g - s) / (g + s)
    present = [str(b) for b in bands["band"].values]
    if band in present:
        return bands.sel(band=band)
    if raw is None or band not in [str(b) for b in raw["band"].values]:
        raise GlacierflowError(f"the cube has no {band!r} band for the guides; stack it (assets "
                               f"{', '.join(GUIDE_ASSETS[band])}) or choose another --guide-band")
    seen = np.isfinite(bands).all("band")
    return raw.sel(band=band).where(seen.drop_vars([c for c in seen.coords if c not in raw.coords], errors="ignore"))


def alignment_image(bands: xr.DataArray, highpass: float = 0.0, *, band: str = "grey",
                    raw: xr.DataArray | None = None, wallis: bool = False) -> xr.DataArray:
    """The guide image for ECC and flow: one band (or the research code's grey mix), high-passed.

    ``grey`` is ``0.114 * green + 0.886 * swir16`` (OpenCV's BGR2GRAY weights), the research code's image:
    short-wave infrared carries the static terrain texture, but snow and ice are dark and flat in it, so it
    shows little of the ice's own texture. ``red`` and ``nir08`` (where ice is bright: crevasses, dust and
    debris show) are what a tracker of the ice needs, as autoRIFT tracks the panchromatic band.

    Parameters
    ----------
    bands : xarray.DataArray
        ``(time, band, y, x)`` with ``green`` and ``swir16``, NaN where not observed (the masked bands
        of :func:`glacierflow.preprocess.qa.mask_invalid`).
    highpass : float
        If > 0, subtract the local Gaussian mean of this sigma (pixels) over the valid pixels only
        (normalised convolution): keeps fine texture, damps broad seasonal brightness changes.
    band : str
        Key of :data:`GUIDE_ASSETS`.
    raw : xarray.DataArray, optional
        The stacked cube, for a band ``bands`` lacks (:func:`guide_band_image`).
    wallis : bool
        Also divide by the local standard deviation (same sigma): a Wallis filter, as autoRIFT uses.

    Returns
    -------
    xarray.DataArray
        ``(time, y, x)`` float32, lazy if the input is.
    """
    grey = guide_band_image(bands, band, raw)
    grey = grey.drop_vars("band", errors="ignore").astype(np.float32).rename("grey")
    if highpass <= 0:
        return grey
    if grey.chunks is not None:
        grey = grey.chunk({"y": -1, "x": -1})
    return xr.apply_ufunc(
        highpass_filter, grey, input_core_dims=[["y", "x"]], output_core_dims=[["y", "x"]],
        kwargs={"sigma": float(highpass), "wallis": wallis}, dask="parallelized", output_dtypes=[np.float32],
    ).transpose(*grey.dims)


def highpass_filter(image: np.ndarray, sigma: float, wallis: bool = False) -> np.ndarray:
    """``image - local mean`` over the last two axes, the local mean by normalised convolution.

    The Gaussian local mean uses only valid pixels (``blur(image * valid) / blur(valid)``, zero outside
    the image), so no invalid value (a mean fill, a replicated edge) leaks into it: the guide has no halo
    at cloud or footprint edges. NaN stays NaN. ``wallis``: divided by the local standard deviation
    (same weights; floored at 1 % of the image's median one, so flat areas stay flat).
    """
    cv2.setNumThreads(0)
    out = np.empty(image.shape, np.float32)
    flat_in = image.reshape(-1, *image.shape[-2:]).astype(np.float32)
    flat_out = out.reshape(flat_in.shape)
    for i, img in enumerate(flat_in):
        valid = np.isfinite(img)
        weight = valid.astype(np.float32)
        num = cv2.GaussianBlur(np.where(valid, img, np.float32(0)), (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
        den = cv2.GaussianBlur(weight, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
        ok = valid & (den > 1e-3)
        safe = np.where(ok, den, np.float32(1))
        hp = np.where(ok, img - num / safe, np.nan)
        if wallis:
            var = cv2.GaussianBlur(np.where(ok, hp * hp, np.float32(0)), (0, 0), sigma,
                                   borderType=cv2.BORDER_CONSTANT) / safe
            sd = np.sqrt(np.clip(var, 0, None))
            floor = 0.01 * float(np.nanmedian(sd[ok])) if ok.any() else 1.0
            hp = hp / np.maximum(sd, max(floor, 1e-12))
        flat_out[i] = hp
    return out


def reference_image(ndsi: xr.DataArray) -> xr.DataArray:
    """Alignment template: per-pixel temporal mean (NaN-skipping), then a 3x3 median filter.

    Parameters
    ----------
    ndsi : xarray.DataArray
        ``(time, y, x)`` scenes (e.g. continuous NDSI of the gap-filled scenes).

    Returns
    -------
    xarray.DataArray
        ``(y, x)`` float32 named ``reference``, lazy if the input is (one chunk, full y/x extent).
        A pixel NaN in every scene stays NaN.
    """
    mean = ndsi.mean("time", skipna=True).astype(np.float32)
    if mean.chunks is not None:
        mean = mean.chunk({"y": -1, "x": -1})
    out = xr.apply_ufunc(
        _median3,
        mean,
        input_core_dims=[["y", "x"]],
        output_core_dims=[["y", "x"]],
        dask="parallelized",
        output_dtypes=[np.float32],
    )
    out.name = "reference"
    return out.transpose(*[d for d in ndsi.dims if d != "time"])


# --- one scene --------------------------------------------------------------------------------------------


def _standardise(image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Zero mean, unit std over the valid pixels; invalid pixels set to 0 (the mean)."""
    vals = image[valid]
    std = float(vals.std()) if vals.size else 0.0
    mean = float(vals.mean()) if vals.size else 0.0
    out = np.zeros(image.shape, np.float32)
    out[valid] = (vals - mean) / (std if std > 0 else 1.0)
    return out


def warp_image(image: np.ndarray, warp: np.ndarray, motion: str | int = "translation") -> np.ndarray:
    """Resample ``image`` onto the reference grid (``scene(W(p))``), bilinear; missing stays missing.

    Normalised interpolation: values and the valid mask are warped alike (zero outside the image) and
    divided, so a NaN never spreads beyond its bilinear footprint and pixels the warp brings in from
    outside the scene (valid weight < 0.5) are NaN, not replicated edges.
    """
    cv2.setNumThreads(0)
    mode = MOTIONS[motion] if isinstance(motion, str) else motion
    img = np.asarray(image, np.float32)
    h, w = img.shape
    valid = np.isfinite(img)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    fn = cv2.warpPerspective if mode == cv2.MOTION_HOMOGRAPHY else cv2.warpAffine
    m = warp.astype(np.float32) if mode == cv2.MOTION_HOMOGRAPHY else warp[:2].astype(np.float32)
    kw = {"flags": flags, "borderMode": cv2.BORDER_CONSTANT, "borderValue": 0.0}
    num = fn(np.where(valid, img, np.float32(0)), m, (w, h), **kw)
    den = fn(valid.astype(np.float32), m, (w, h), **kw)
    ok = den > 0.5
    return np.where(ok, num / np.where(ok, den, np.float32(1)), np.float32(np.nan)).astype(np.float32)


def _centre_shift(warp: np.ndarray, shape: tuple[int, int]) -> tuple[float, float]:
    """Displacement ``W(p) - p`` at the image centre, in pixels (x, y)."""
    cy, cx = (shape[0] - 1) / 2.0, (shape[1] - 1) / 2.0
    m = np.vstack([warp[:2], [0.0, 0.0, 1.0]]) if warp.shape[0] == 2 else warp.astype(np.float64)
    px, py, pw = m @ np.array([cx, cy, 1.0])
    return float(px / pw - cx), float(py / pw - cy)


def centre_shift(warp: np.ndarray, shape: tuple[int, int]) -> tuple[float, float]:
    """A warp's ``(shift_x, shift_y)`` in pixels as the cube store reports it (see the module notes)."""
    return _centre_shift(warp, shape)


def find_warp(
    scene: np.ndarray,
    reference: np.ndarray,
    motion: str = "translation",
    *,
    init: np.ndarray | None = None,
    max_iter: int = 100,
    eps: float = 1e-5,
    gauss_filt_size: int = 1,
    min_ecc: float = 0.3,
) -> tuple[np.ndarray, float, bool]:
    """ECC warp of one scene against the reference: ``(3x3 warp, correlation, accepted)``.

    The scene's NaNs and the pixels where the reference is NaN (never observed, or masked out as moving
    ground by :func:`co_register`) are excluded through ECC's input mask; both images are standardised.
    ``init`` (3x3) starts the search (e.g. the warp of a first pass). Not accepted (identity
    warp returned) when ECC raises, gives a non-finite warp or a correlation below ``min_ecc``.
    """
    cv2.setNumThreads(0)
    mode = MOTIONS[motion]
    img = np.asarray(scene, dtype=np.float32)
    ref = np.asarray(reference, dtype=np.float32)
    ref_valid = np.isfinite(ref)
    valid = np.isfinite(img) & ref_valid  # no information where the reference has none (or is masked out)
    eye = np.eye(3)
    if valid.sum() < 16 or ref_valid.sum() < 16:
        return eye, np.nan, False
    start = eye if init is None or not np.isfinite(init).all() else np.asarray(init, np.float64)
    warp = start.astype(np.float32) if mode == cv2.MOTION_HOMOGRAPHY else start[:2].astype(np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, int(max_iter), float(eps))
    mask = valid.astype(np.uint8) if not valid.all() else None
    try:
        template, moving = _standardise(ref, ref_valid), _standardise(img, valid)
        ecc, warp = cv2.findTransformECC(template, moving, warp, mode, criteria, mask, gauss_filt_size)
    except cv2.error:
        return eye, np.nan, False
    if not (np.isfinite(ecc) and np.isfinite(warp).all()) or ecc < min_ecc:
        return eye, float(ecc) if np.isfinite(ecc) else np.nan, False
    full = warp.astype(np.float64) if warp.shape[0] == 3 else np.vstack([warp.astype(np.float64), [0, 0, 1]])
    return full, float(ecc), True


def align_scene(
    scene: np.ndarray,
    reference: np.ndarray,
    motion: str = "translation",
    max_iter: int = 100,
    eps: float = 1e-5,
    gauss_filt_size: int = 1,
    min_ecc: float = 0.3,
    apply_to: np.ndarray | None = None,
    init: np.ndarray | None = None,
) -> tuple[np.ndarray, float, float, float, bool]:
    """Align one 2-D scene to the reference with ECC (:func:`find_warp` + :func:`warp_image`).

    Parameters
    ----------
    scene, reference : numpy.ndarray
        2-D float images of the same shape (NaN = not observed).
    motion : str
        Key of :data:`MOTIONS`.
    max_iter, eps : int, float
        ECC termination criteria (``COUNT | EPS``).
    gauss_filt_size : int
        ECC's Gaussian pre-filter size (1 = none; larger costs time for no accuracy gain here).
    min_ecc : float
        Minimum final correlation coefficient to accept the alignment.
    apply_to : numpy.ndarray, optional
        Another image of the same scene (e.g. its NDSI) to warp with the transform found on ``scene``;
        it is what the first returned array then holds.
    init : numpy.ndarray, optional
        3x3 starting warp.

    Returns
    -------
    tuple
        ``(aligned_scene, shift_x, shift_y, ecc, aligned)``; ``aligned_scene`` is float32, NaN where the
        scene's own NaNs land and where the warp reaches outside the scene. A scene that is not aligned
        is returned unchanged with NaN shifts.
    """
    warp, ecc, ok = find_warp(scene, reference, motion, init=init, max_iter=max_iter, eps=eps,
                              gauss_filt_size=gauss_filt_size, min_ecc=min_ecc)
    target = np.asarray(scene if apply_to is None else apply_to)
    dtype = target.dtype if np.issubdtype(target.dtype, np.floating) else np.float32
    if not ok:
        return target.astype(dtype, copy=True), np.nan, np.nan, ecc, False
    shift_x, shift_y = _centre_shift(warp, target.shape)
    return warp_image(target, warp, motion).astype(dtype, copy=False), shift_x, shift_y, ecc, True


# --- lazy over a cube ---------------------------------------------------------------------------------------

_WARP_DIMS = ("warp_row", "warp_col")


def _align_block(
    block: xr.Dataset, reference: xr.DataArray, guide: str, apply: tuple[str, ...], **kwargs
) -> xr.Dataset:
    """Align every scene of a ``(time, y, x)`` block on ``block[guide]``; warp the ``apply`` variables.

    An ``init`` variable ``(time, 3, 3)`` in the block starts each scene's search; a ``static`` ``(y, x)``
    mask keeps ECC to those pixels (the scene's others are left out of its input mask; the reference stays
    whole, so no filled template value is ever compared).
    """
    ref = np.asarray(reference.transpose("y", "x").values)
    g = np.asarray(block[guide].values)
    init = np.asarray(block["init"].values) if "init" in block else None
    static = np.asarray(block["static"].values, bool) if "static" in block else None
    n = g.shape[0]
    out = {v: np.asarray(block[v].values, np.float32).copy() for v in apply}
    diag = {k: np.full(n, np.nan) for k in ("shift_x", "shift_y", "ecc")}
    warps = np.tile(np.eye(3), (n, 1, 1))
    ok = np.zeros(n, bool)
    for i in range(n):
        seen = g[i] if static is None else np.where(static, g[i], np.nan)
        warps[i], diag["ecc"][i], ok[i] = find_warp(seen, ref, init=None if init is None else init[i], **kwargs)
        if ok[i]:
            diag["shift_x"][i], diag["shift_y"][i] = _centre_shift(warps[i], g[i].shape)
            for v in apply:
                out[v][i] = warp_image(out[v][i], warps[i], kwargs["motion"])
    dims = block[guide].dims
    return xr.Dataset(
        {
            **{v: (dims, out[v]) for v in apply},
            **{k: ("time", v) for k, v in diag.items()},
            "aligned": ("time", ok),
            "warp": (("time", *_WARP_DIMS), warps),
        },
        coords={c: block.coords[c] for c in block.coords if set(block[c].dims) <= set(dims)},
    )


def _template(scenes: xr.Dataset, guide: str, apply: tuple[str, ...]) -> xr.Dataset:
    """Dask-backed template of :func:`_align_block`'s output (no function call on fake data)."""
    tchunks = scenes[guide].chunks[0]
    n = scenes.sizes["time"]

    def per_scene(dtype: type, *extra: int) -> dsa.Array:
        return dsa.zeros((n, *extra), chunks=(tchunks, *extra), dtype=dtype)

    like = scenes[guide]
    return xr.Dataset(
        {
            **{v: like.astype(np.float32) for v in apply},
            "shift_x": ("time", per_scene(np.float64)),
            "shift_y": ("time", per_scene(np.float64)),
            "ecc": ("time", per_scene(np.float64)),
            "aligned": ("time", per_scene(bool)),
            "warp": (("time", *_WARP_DIMS), per_scene(np.float64, 3, 3)),
        },
        coords={c: like.coords[c] for c in like.coords},
    )


def _check(scenes: xr.Dataset, guide: str, reference: xr.DataArray, motion: str) -> None:
    if motion not in MOTIONS:
        raise GlacierflowError(f"unknown motion {motion!r}; known: {', '.join(MOTIONS)}")
    g = scenes[guide]
    if set(g.dims) != {"time", "y", "x"}:
        raise GlacierflowError(
            f"align needs a (time, y, x) array, got dims {g.dims}; select one band (e.g. ndsi) first"
        )
    if set(reference.dims) != {"y", "x"} or (reference.sizes["y"], reference.sizes["x"]) != (
        g.sizes["y"], g.sizes["x"]
    ):
        raise GlacierflowError(
            f"reference dims {dict(reference.sizes)} do not match the scenes' y/x "
            f"({g.sizes['y']}, {g.sizes['x']}); build it with reference_image(ndsi)"
        )


def _ecc_pass(
    scenes: xr.Dataset, reference: xr.DataArray, guide: str, apply: tuple[str, ...], **kwargs
) -> xr.Dataset:
    """One lazy ECC pass over ``scenes`` (``guide`` + ``apply`` variables, optional ``init`` warps)."""
    _check(scenes, guide, reference, kwargs["motion"])
    keep = [guide, *apply, *[k for k in ("init", "static") if k in scenes]]
    scenes = scenes[list(dict.fromkeys(keep))]
    scenes = scenes.transpose("time", "y", "x", *[d for d in _WARP_DIMS if d in scenes.dims])
    reference = reference.transpose("y", "x")
    kwargs = {"guide": guide, "apply": apply, **kwargs}
    if all(v.chunks is None for v in scenes.data_vars.values()) and reference.chunks is None:
        return _align_block(scenes, reference, **kwargs)
    scenes = scenes.chunk({"time": 1, "y": -1, "x": -1})
    # Same grid by contract: map_blocks aligns its arguments, so give the reference the scenes' y/x labels
    # and nothing else that could conflict (spatial_ref, ...).
    grid = {d: scenes[d] for d in ("y", "x") if d in scenes.coords}
    reference = xr.DataArray(reference.chunk({"y": -1, "x": -1}).data, dims=("y", "x"), coords=grid)
    template = _template(scenes, guide, apply)
    return xr.map_blocks(_align_block, scenes, args=[reference], kwargs=kwargs, template=template)


def align(
    ndsi: xr.DataArray,
    reference: xr.DataArray,
    motion: str = "translation",
    *,
    max_iter: int = 100,
    eps: float = 1e-5,
    gauss_filt_size: int = 1,
    min_ecc: float = 0.3,
    guide: xr.DataArray | None = None,
) -> tuple[xr.DataArray, xr.Dataset]:
    """Co-register every scene to ``reference`` with ECC, one scene per Dask task (one pass).

    Parameters
    ----------
    ndsi : xarray.DataArray
        ``(time, y, x)`` scenes; rechunked here to one scene per chunk with the full y/x extent.
    reference : xarray.DataArray
        ``(y, x)`` template on the same grid, e.g. :func:`reference_image` (a lazy reference is one
        graph node, computed once for all scenes).
    motion : str
        ``"translation"`` (default, the paper's text), ``"euclidean"``, ``"affine"`` or
        ``"homography"`` (the research code's choice).
    max_iter, eps : int, float
        ECC termination criteria; the defaults (100, 1e-5) with ``gauss_filt_size=1`` take ~20 ms per
        512x512 scene for a translation.
    gauss_filt_size : int
        ECC's Gaussian pre-filter size.
    min_ecc : float
        Scenes whose final correlation with the reference stays below this are left unaligned.
    guide : xarray.DataArray, optional
        ``(time, y, x)`` images ECC runs on instead of ``ndsi`` (``reference`` must then be built from
        them), e.g. :func:`alignment_image`; the transform found on the guide is applied to ``ndsi``.

    Returns
    -------
    tuple of (xarray.DataArray, xarray.Dataset)
        The aligned scenes (same dims, coords and name as ``ndsi``, float32; NaN where the warp reaches
        outside the scene; a scene that failed is returned unchanged) and per-scene diagnostics
        ``shift_x``, ``shift_y`` (pixels, DESIGN.md convention, displacement at the image centre; NaN
        when not aligned), ``ecc`` (final correlation coefficient; NaN when ECC raised) and ``aligned``
        (bool). Both are lazy if ``ndsi`` is.
    """
    if guide is not None and dict(guide.sizes) != dict(ndsi.sizes):
        raise GlacierflowError(f"guide sizes {dict(guide.sizes)} differ from the scenes' {dict(ndsi.sizes)}")
    dims = ndsi.dims
    if set(ndsi.dims) != {"time", "y", "x"}:
        raise GlacierflowError(
            f"align needs a (time, y, x) array, got dims {ndsi.dims}; select one band (e.g. ndsi) first"
        )
    scenes = xr.Dataset({"_scene": ndsi.transpose("time", "y", "x")})
    if guide is not None:
        scenes["_guide"] = guide.transpose("time", "y", "x").astype(np.float32)
    ds = _ecc_pass(scenes, reference, "_guide" if guide is not None else "_scene", ("_scene",),
                   motion=motion, max_iter=max_iter, eps=eps, gauss_filt_size=gauss_filt_size, min_ecc=min_ecc)
    aligned = ds["_scene"].transpose(*dims).rename(ndsi.name)
    aligned.attrs = dict(ndsi.attrs)
    diag = ds[list(DIAGNOSTICS)]
    diag = diag.drop_vars([c for c in diag.coords if {"y", "x"} & set(diag[c].dims)])
    return aligned, diag


STATIC_QUANTILE = 0.9  # motion-robust ECC: all but the tenth of the pixels whose guide follows the reference worst


def steady_pixels(residual: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Pixels whose local residual RMS relative to the local reference RMS is in the lower STATIC_QUANTILE.

    ``residual`` is the per-pixel mean square of the aligned guides minus ``reference`` (NaN where none
    was observed); both are averaged locally (Gaussian 3 px, NaN-skipping). The numpy core of
    :func:`static_ground`, also used by build-cube's fused per-scene graph.
    """
    def local(x: np.ndarray) -> np.ndarray:
        ok = np.isfinite(x)
        num = cv2.GaussianBlur(np.where(ok, x, 0).astype(np.float32), (0, 0), 3.0)
        den = cv2.GaussianBlur(ok.astype(np.float32), (0, 0), 3.0)
        return np.where(den > 0.2, num / np.maximum(den, 1e-6), np.nan)

    ratio = np.sqrt(local(residual) / np.maximum(local(reference * reference), 1e-12))
    ok = np.isfinite(ratio) & np.isfinite(reference)
    return ok & (ratio <= np.nanquantile(ratio, STATIC_QUANTILE)) if ok.any() else ok


def static_ground(aligned: xr.DataArray, reference: xr.DataArray, ice: xr.DataArray | None = None) -> xr.DataArray:
    """Where ECC's second pass looks: ground whose guide follows the reference, off the ``ice`` (lazy, bool).

    Moving texture (glaciers, also where no outline says so) and changing snow leave a large residual
    between a pixel's aligned guides and the reference relative to the reference's own texture there;
    static textured ground a small one. The :data:`STATIC_QUANTILE` share with the smallest ratio
    (both locally averaged, Gaussian 3 px) is kept: flat areas are not favoured, unlike a plain temporal
    spread. Where ``ice`` (an outline rasterised on the grid, True = ice) is given, it is left out as well.
    """
    residual = ((aligned - reference) ** 2).mean("time", skipna=True).astype(np.float32)
    if residual.chunks is not None:
        residual = residual.chunk({"y": -1, "x": -1})
    ref = reference.transpose(*residual.dims)
    out = xr.apply_ufunc(steady_pixels, residual, ref, dask="parallelized", output_dtypes=[bool],
                         dask_gufunc_kwargs={"allow_rechunk": True})
    if ice is not None:
        out = out & ~xr.DataArray(np.asarray(ice, bool), dims=("y", "x"), coords={d: out[d] for d in out.dims})
    return out.rename("static")


def co_register(
    scenes: xr.Dataset | Callable[[], xr.Dataset],
    motion: str = "translation",
    *,
    guide: str = "guide",
    apply: tuple[str, ...] = ("ndsi", "guide"),
    max_iter: int = 100,
    eps: float = 1e-5,
    gauss_filt_size: int = 1,
    min_ecc: float = 0.3,
    ice: xr.DataArray | None = None,
) -> xr.Dataset:
    """Two ECC passes: against the mean of the unaligned guides, then against the mean of the aligned ones.

    Pass 1 aligns every guide to :func:`reference_image` of the (unaligned) guides; the reference is then
    re-estimated once from the guides pass 1 aligned (scenes it could not align left out), and pass 2
    aligns every scene again, starting from its pass-1 warp, on ground that does not move only
    (:func:`static_ground`: moving ice biases the correlation). Only pass 2's warp is applied.

    Parameters
    ----------
    scenes : xarray.Dataset or callable
        ``(time, y, x)`` variables ``guide`` and ``apply`` (NaN = not observed), or a function returning
        them afresh at each call: each pass then reads its own copy (e.g. from a scratch store, see
        :func:`glacierflow.storage.store.spill`) instead of holding every scene in memory between the passes.
    motion, max_iter, eps, gauss_filt_size, min_ecc
        See :func:`align`; a scene below ``min_ecc`` in pass 2 is not aligned (``aligned`` False).
    ice
        Optional ``(y, x)`` boolean ice mask on the grid (e.g. rasterised outlines): kept out of pass 2.
    guide, apply
        Names of the ECC image and of the variables to warp.

    Returns
    -------
    xarray.Dataset
        The ``apply`` variables aligned (NaN outside the warped scene), ``shift_x``, ``shift_y``, ``ecc``,
        ``aligned`` per scene; lazy if the inputs are.
    """
    get = scenes if callable(scenes) else (lambda: scenes)
    kw = {"motion": motion, "max_iter": max_iter, "eps": eps, "gauss_filt_size": gauss_filt_size,
          "min_ecc": min_ecc}
    # a separate read for each consumer: the reference (a reduction over all scenes) never holds a scene
    # that a later pass still needs
    first = _ecc_pass(get(), reference_image(get()[guide]), guide, (guide,), **kw)
    aligned_guides = first[guide].where(first["aligned"])
    second_in = get().assign(init=first["warp"])
    reference = reference_image(aligned_guides)
    second_in = second_in.assign(static=static_ground(aligned_guides, reference, ice).reset_coords(drop=True))
    out = _ecc_pass(second_in, reference, guide, tuple(apply), **kw)
    return out.drop_vars(["warp"])
