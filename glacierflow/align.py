"""ECC co-registration of every scene against a temporal reference image, lazily, one scene per task.

``reference_image`` builds the template (temporal mean, 3x3 median); ``align`` runs OpenCV's
``findTransformECC`` for each scene inside :func:`xarray.map_blocks` and returns the warped scenes and
per-scene diagnostics, both lazy. The reference is one node of the graph, computed once and shared by
every scene's task.

Shift convention (DESIGN.md): the scene's content sits ``shift_x`` columns right and ``shift_y`` rows
down of the reference, so ``scene[r, c] ≈ reference[r - shift_y, c - shift_x]``. ECC's warp ``W`` maps a
reference pixel to where the same content lies in the scene (``scene(W(p)) ≈ reference(p)``), so the
shift is ``W(p) - p``; it is reported at the image centre, which for a translation is just
``(W[0, 2], W[1, 2])``.
"""

from __future__ import annotations

import cv2
import dask.array as dsa
import numpy as np
import xarray as xr

from glacierflow.errors import GlacierflowError

MOTIONS: dict[str, int] = {
    "translation": cv2.MOTION_TRANSLATION,  # the paper's text
    "euclidean": cv2.MOTION_EUCLIDEAN,
    "affine": cv2.MOTION_AFFINE,
    "homography": cv2.MOTION_HOMOGRAPHY,  # the research code's choice
}

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


def alignment_image(bands: xr.DataArray, highpass: float = 0.0) -> xr.DataArray:
    """The research code's grey image for ECC: (green, swir16, swir16) as BGR -> grey.

    ``0.114 * green + 0.886 * swir16`` (OpenCV's BGR2GRAY weights). Short-wave infrared carries the
    static terrain texture (rock, vegetation, debris) that pins a scene's geolocation, while NDSI's
    strongest edges (the snowline) move with the seasons.

    Parameters
    ----------
    bands : xarray.DataArray
        ``(time, band, y, x)`` with ``green`` and ``swir16`` (e.g. gap-filled reflectance).
    highpass : float
        If > 0, subtract a Gaussian blur of this sigma (pixels): keeps fine static texture and damps
        broad seasonal brightness changes.

    Returns
    -------
    xarray.DataArray
        ``(time, y, x)`` float32, lazy if the input is.
    """
    grey = 0.114 * bands.sel(band="green") + 0.886 * bands.sel(band="swir16")
    grey = grey.drop_vars("band", errors="ignore").astype(np.float32).rename("grey")
    if highpass <= 0:
        return grey
    if grey.chunks is not None:
        grey = grey.chunk({"y": -1, "x": -1})
    return xr.apply_ufunc(
        _highpass, grey, input_core_dims=[["y", "x"]], output_core_dims=[["y", "x"]],
        kwargs={"sigma": float(highpass)}, dask="parallelized", output_dtypes=[np.float32],
    ).transpose(*grey.dims)


def _highpass(image: np.ndarray, sigma: float) -> np.ndarray:
    """``image - gaussian_blur(image, sigma)`` over the last two axes (NaN stays NaN)."""
    cv2.setNumThreads(0)
    out = np.empty(image.shape, np.float32)
    flat_in = image.reshape(-1, *image.shape[-2:]).astype(np.float32)
    flat_out = out.reshape(flat_in.shape)
    for i, img in enumerate(flat_in):
        valid = np.isfinite(img)
        filled = np.where(valid, img, np.float32(img[valid].mean()) if valid.any() else np.float32(0))
        blur = cv2.GaussianBlur(filled, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
        flat_out[i] = np.where(valid, filled - blur, np.nan)
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


def _warp(image: np.ndarray, warp: np.ndarray, motion: int) -> np.ndarray:
    """Resample ``image`` so that it lines up with the reference (WARP_INVERSE_MAP, edge replicate)."""
    h, w = image.shape
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    if motion == cv2.MOTION_HOMOGRAPHY:
        return cv2.warpPerspective(image, warp, (w, h), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    return cv2.warpAffine(image, warp, (w, h), flags=flags, borderMode=cv2.BORDER_REPLICATE)


def _centre_shift(warp: np.ndarray, shape: tuple[int, int]) -> tuple[float, float]:
    """Displacement ``W(p) - p`` at the image centre, in pixels (x, y)."""
    cy, cx = (shape[0] - 1) / 2.0, (shape[1] - 1) / 2.0
    m = np.vstack([warp[:2], [0.0, 0.0, 1.0]]) if warp.shape[0] == 2 else warp.astype(np.float64)
    px, py, pw = m @ np.array([cx, cy, 1.0])
    return float(px / pw - cx), float(py / pw - cy)


def align_scene(
    scene: np.ndarray,
    reference: np.ndarray,
    motion: str = "translation",
    max_iter: int = 100,
    eps: float = 1e-5,
    gauss_filt_size: int = 1,
    min_ecc: float = 0.3,
    apply_to: np.ndarray | None = None,
) -> tuple[np.ndarray, float, float, float, bool]:
    """Align one 2-D scene to the reference with ECC.

    NaNs are excluded from the correlation through ECC's input mask (the reference's NaNs are set to
    its mean); both images are standardised (ECC is correlation based, this only helps conditioning).
    A scene is left unaligned (``aligned=False``, shifts NaN) when ECC raises (no convergence, constant
    image, NaN), returns a non-finite warp, or its final correlation is below ``min_ecc`` (unrelated
    content, e.g. a cloud-covered or noise scene).

    Parameters
    ----------
    scene, reference : numpy.ndarray
        2-D float images of the same shape.
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

    Returns
    -------
    tuple
        ``(aligned_scene, shift_x, shift_y, ecc, aligned)``; ``aligned_scene`` has the input dtype and
        NaN only where the warped scene's own NaNs land (no NaN from the border, which is replicated).
    """
    cv2.setNumThreads(0)
    mode = MOTIONS[motion]
    dtype = scene.dtype if np.issubdtype(scene.dtype, np.floating) else np.float32
    img = np.asarray(scene, dtype=np.float32)
    ref = np.asarray(reference, dtype=np.float32)
    valid = np.isfinite(img)
    ref_valid = np.isfinite(ref)
    target = scene if apply_to is None else apply_to
    dtype = target.dtype if np.issubdtype(target.dtype, np.floating) else np.float32
    unaligned = (target.astype(dtype, copy=True), np.nan, np.nan, np.nan, False)
    if valid.sum() < 16 or ref_valid.sum() < 16:
        return unaligned
    warp = np.eye(3, dtype=np.float32) if mode == cv2.MOTION_HOMOGRAPHY else np.eye(2, 3, dtype=np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, int(max_iter), float(eps))
    mask = valid.astype(np.uint8) if not valid.all() else None
    try:
        template, moving = _standardise(ref, ref_valid), _standardise(img, valid)
        ecc, warp = cv2.findTransformECC(template, moving, warp, mode, criteria, mask, gauss_filt_size)
    except cv2.error:
        return unaligned
    if not (np.isfinite(ecc) and np.isfinite(warp).all()) or ecc < min_ecc:
        return unaligned[:3] + (float(ecc) if np.isfinite(ecc) else np.nan, False)
    shift_x, shift_y = _centre_shift(warp.astype(np.float64), img.shape)
    if apply_to is not None:
        img = np.asarray(apply_to, dtype=np.float32)
        valid = np.isfinite(img)
    if valid.all():
        out = _warp(img, warp, mode)
    else:
        filled = np.where(valid, img, np.float32(img[valid].mean()))
        out = _warp(filled, warp, mode)
        holes = _warp((~valid).astype(np.float32), warp, mode)
        out[holes > 0.5] = np.nan
    return out.astype(dtype, copy=False), shift_x, shift_y, float(ecc), True


# --- lazy over a cube ---------------------------------------------------------------------------------------


def _align_block(block: xr.Dataset, reference: xr.DataArray, name: str, **kwargs) -> xr.Dataset:
    """Align every scene of a ``(time, y, x)`` block; returns the template's Dataset layout.

    ``block`` holds the scenes (``name``) and the images ECC runs on (``_guide``, the scenes themselves
    when no guide was given).
    """
    ref = np.asarray(reference.transpose("y", "x").values)
    data = np.asarray(block[name].values)
    guide = np.asarray(block["_guide"].values) if "_guide" in block else data
    block = block[name]
    out = np.empty_like(data)
    diag = {k: np.empty(data.shape[0], np.float64) for k in DIAGNOSTICS[:3]}
    ok = np.zeros(data.shape[0], bool)
    for i in range(data.shape[0]):
        out[i], diag["shift_x"][i], diag["shift_y"][i], diag["ecc"][i], ok[i] = align_scene(
            guide[i], ref, apply_to=data[i] if guide is not data else None, **kwargs
        )
    return xr.Dataset(
        {
            name: (block.dims, out),
            **{k: ("time", v) for k, v in diag.items()},
            "aligned": ("time", ok),
        },
        coords=block.coords,
    )


def _template(ndsi: xr.DataArray, name: str) -> xr.Dataset:
    """Dask-backed template of :func:`_align_block`'s output (no function call on fake data)."""
    tchunks = ndsi.chunks[0]
    n = ndsi.sizes["time"]

    def per_scene(dtype) -> xr.DataArray:
        return xr.DataArray(dsa.zeros(n, chunks=(tchunks,), dtype=dtype), dims="time")

    return xr.Dataset(
        {
            name: ndsi,
            "shift_x": per_scene(np.float64),
            "shift_y": per_scene(np.float64),
            "ecc": per_scene(np.float64),
            "aligned": per_scene(bool),
        },
        coords=ndsi.coords,
    )


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
    """Co-register every scene to ``reference`` with ECC, one scene per Dask task.

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
        them), e.g. :func:`alignment_image` of the reflectance bands, whose static terrain texture pins
        the geolocation better than NDSI, whose snow edges move with the seasons. The transform found
        on the guide is applied to ``ndsi``.

    Returns
    -------
    tuple of (xarray.DataArray, xarray.Dataset)
        The aligned scenes (same dims, coords, dtype and name as ``ndsi``; a scene that failed is
        returned unchanged) and per-scene diagnostics ``shift_x``, ``shift_y`` (pixels, DESIGN.md
        convention, displacement at the image centre; NaN when not aligned), ``ecc`` (final
        correlation coefficient; NaN when ECC raised) and ``aligned`` (bool), with the input's
        coordinates along ``time``. Both are lazy if ``ndsi`` is.
    """
    if motion not in MOTIONS:
        raise GlacierflowError(f"unknown motion {motion!r}; known: {', '.join(MOTIONS)}")
    missing = {"time", "y", "x"} - set(ndsi.dims)
    if missing or ndsi.ndim != 3:
        raise GlacierflowError(
            f"align needs a (time, y, x) array, got dims {ndsi.dims}; select one band (e.g. ndsi) first"
        )
    if set(reference.dims) != {"y", "x"} or (reference.sizes["y"], reference.sizes["x"]) != (
        ndsi.sizes["y"],
        ndsi.sizes["x"],
    ):
        raise GlacierflowError(
            f"reference dims {dict(reference.sizes)} do not match the scenes' y/x "
            f"({ndsi.sizes['y']}, {ndsi.sizes['x']}); build it with reference_image(ndsi)"
        )
    if guide is not None and dict(guide.sizes) != dict(ndsi.sizes):
        raise GlacierflowError(f"guide sizes {dict(guide.sizes)} differ from the scenes' {dict(ndsi.sizes)}")
    dims = ndsi.dims
    name = "_scene"  # internal variable name, cannot collide with the diagnostics
    scenes = ndsi.transpose("time", "y", "x").rename(name)
    reference = reference.transpose("y", "x")
    kwargs = {
        "name": name,
        "motion": motion,
        "max_iter": max_iter,
        "eps": eps,
        "gauss_filt_size": gauss_filt_size,
        "min_ecc": min_ecc,
    }
    scenes = scenes.to_dataset()
    if guide is not None:
        scenes["_guide"] = guide.transpose("time", "y", "x").astype(np.float32)
    if all(v.chunks is None for v in scenes.data_vars.values()) and reference.chunks is None:
        ds = _align_block(scenes, reference, **kwargs)
    else:
        scenes = scenes.chunk({"time": 1, "y": -1, "x": -1})
        reference = reference.chunk({"y": -1, "x": -1})
        # Same grid by contract: map_blocks aligns its arguments, so give the reference the scenes'
        # y/x labels and nothing else that could conflict (spatial_ref, ...).
        grid = {d: scenes[d] for d in ("y", "x") if d in scenes.coords}
        reference = xr.DataArray(reference.data, dims=("y", "x"), coords=grid, name="reference")
        template = _template(scenes[name], name)
        ds = xr.map_blocks(_align_block, scenes, args=[reference], kwargs=kwargs, template=template)
    aligned = ds[name].transpose(*dims).rename(ndsi.name)
    aligned.attrs = dict(ndsi.attrs)
    diag = ds[list(DIAGNOSTICS)]
    diag = diag.drop_vars([c for c in diag.coords if {"y", "x"} & set(diag[c].dims)])
    return aligned, diag
