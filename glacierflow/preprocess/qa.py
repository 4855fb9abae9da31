"""Per-scene preprocessing: QA mask, valid fraction, NDSI, snow mask (pure, lazy); periods in ``periods``.

Every function here is pure and lazy: it takes an xarray object (numpy- or dask-backed) and returns
one, builds a Dask graph when the input is Dask-backed, and never computes. Numpy kernels are wrapped
with :func:`xarray.apply_ufunc` (``dask="parallelized"`` with explicit output dtypes), and each function
sets the chunking it needs itself (the time interpolation needs every period of a strip of rows).

The pipeline for one cube (dims ``time, band, y, x`` with bands ``green, swir16, qa_pixel``)::

    masked = mask_invalid(cube)            # NaN where nodata / QA fill / cloud / shadow / unreadable
    frac = valid_fraction(masked)          # the caller drops scenes below its threshold
    snow = snow_mask(ndsi(masked), 0.3)    # NDSI where >= 0.3 else 0; NaN where not observed
    cube = periods.resample(snow, "3MS")   # per period: mean of the real observations (n_valid), the
                                           # paper's gap-fill only where a period observed nothing,
                                           # empty periods interpolated in time

Unreadable assets arrive as ``-inf`` (:mod:`glacierflow.ingest.cube`): :func:`read_errors` finds them in the
graph, and every mask here treats them as missing.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from glacierflow.errors import GlacierflowError

# --- USGS Landsat Collection 2 QA_PIXEL bits (Landsat 8/9) ---------------------------------------------
QA_FILL = 0
QA_DILATED_CLOUD = 1
QA_CIRRUS = 2
QA_CLOUD = 3
QA_CLOUD_SHADOW = 4
QA_SNOW = 5
QA_CLEAR = 6
QA_WATER = 7

REFLECTANCE_BANDS = ("green", "swir16")
QA_BAND = "qa_pixel"

_NDSI_EPS = 1e-6


def _bits(*bits: int) -> int:
    """Integer mask with the given bit positions set."""
    out = 0
    for bit in bits:
        out |= 1 << bit
    return out


# --- masking -----------------------------------------------------------------------------------------------


def mask_invalid(cube: xr.DataArray, mask_clouds: bool = True, mask_cirrus: bool = False) -> xr.DataArray:
    """Reflectance bands with every unusable pixel set to NaN.

    A pixel is invalid (NaN in both bands) where either reflectance band is NaN, where the QA fill bit
    is set or ``qa_pixel`` itself is NaN (outside the scene footprint), and, with ``mask_clouds``, where
    the dilated-cloud, cloud or cloud-shadow bit is set.

    Cirrus (bit 2) is *not* masked by default: the 1.37 um cirrus band sees the surface through the dry
    atmosphere above high mountains, so the flag fires falsely over bright snow and ice at glacier
    altitudes, and thin cirrus barely changes a band ratio such as NDSI. Pass ``mask_cirrus=True`` to
    mask it too (only together with ``mask_clouds``).

    Parameters
    ----------
    cube : xarray.DataArray
        ``(time, band, y, x)`` with bands ``green`` and ``swir16`` (rescaled reflectance, NaN = nodata)
        and optionally ``qa_pixel`` (raw QA bits stored as float). Without a ``qa_pixel`` band only NaNs
        count as invalid.
    mask_clouds : bool
        Mask QA dilated cloud, cloud and cloud shadow.
    mask_cirrus : bool
        Also mask the QA cirrus bit (ignored unless ``mask_clouds``).

    Returns
    -------
    xarray.DataArray
        ``(time, band=[green, swir16], y, x)``, same dtype, lazy if the input is; all non-dimension
        coordinates along ``time`` (``id``, ``platform``, ...) are kept.
    """
    bands = [str(b) for b in np.asarray(cube["band"].values)] if "band" in cube.coords else []
    missing = [b for b in REFLECTANCE_BANDS if b not in bands]
    if missing:
        raise GlacierflowError(
            f"cube has no band(s) {', '.join(missing)} (bands: {', '.join(bands) or 'none'}); "
            "build the cube with assets green, swir16 and qa_pixel"
        )
    refl = cube.sel(band=list(REFLECTANCE_BANDS))
    invalid = ~np.isfinite(refl).all("band")  # NaN (nodata) and -inf (unreadable asset)
    if QA_BAND in bands:
        invalid = invalid | ~qa_valid(cube.sel(band=QA_BAND, drop=True), mask_clouds, mask_cirrus)
        invalid = invalid.drop_vars([c for c in invalid.coords if c not in refl.coords], errors="ignore")
    out = refl.where(~invalid)
    out.name = refl.name
    return out.transpose(*refl.dims)


def qa_valid(qa: xr.DataArray, mask_clouds: bool = True, mask_cirrus: bool = False) -> xr.DataArray:
    """Where the ``qa_pixel`` bits mark a usable pixel (bool, lazy if the input is).

    Invalid: the fill bit, a NaN or non-finite value (outside the footprint, unreadable asset) and, with
    ``mask_clouds``, the dilated-cloud, cloud and cloud-shadow bits (cirrus too with ``mask_cirrus``).
    """
    bad_bits = _bits(QA_FILL)
    if mask_clouds:
        bad_bits |= _bits(QA_DILATED_CLOUD, QA_CLOUD, QA_CLOUD_SHADOW)
        if mask_cirrus:
            bad_bits |= _bits(QA_CIRRUS)
    finite = np.isfinite(qa)
    qa_int = qa.where(finite, _bits(QA_FILL)).astype(np.uint16)
    return finite & ((qa_int & bad_bits) == 0)


def read_errors(cube: xr.DataArray) -> xr.DataArray:
    """Per scene and band: whether the asset was unreadable (the cube holds ``-inf`` there), lazy.

    :mod:`glacierflow.ingest.cube` turns a missing or corrupt file into a ``-inf`` window, so read errors are
    computed in the graph from the data itself.

    Returns
    -------
    xarray.DataArray
        ``(time, band)`` bool.
    """
    out = np.isneginf(cube).any(("y", "x"))
    out.name = "read_error"
    return out


def valid_fraction(masked: xr.DataArray) -> xr.DataArray:
    """Fraction of pixels per scene where every band is valid.

    Parameters
    ----------
    masked : xarray.DataArray
        Output of :func:`mask_invalid`, ``(time, band, y, x)``.

    Returns
    -------
    xarray.DataArray
        ``(time,)`` float64 in [0, 1], lazy if the input is.
    """
    frac = masked.notnull().all("band").mean(("y", "x"))
    frac.name = "valid_fraction"
    return frac


# --- NDSI -------------------------------------------------------------------------------------------------


def ndsi(filled: xr.DataArray) -> xr.DataArray:
    """Normalised difference snow index ``(green - swir16) / (green + swir16)``.

    Continuous (no threshold), float32. Where ``|green + swir16| <= 1e-6`` (dark pixels) the index is
    0 instead of a division blow-up; values are clipped to [-1, 1] (L2 surface reflectance can be
    slightly negative over dark targets, which would push the ratio outside its range). NaN in either
    band stays NaN.

    Parameters
    ----------
    filled : xarray.DataArray
        ``(time, band, y, x)`` with bands ``green`` and ``swir16``.

    Returns
    -------
    xarray.DataArray
        ``(time, y, x)`` float32 named ``ndsi``.
    """
    green = filled.sel(band="green", drop=True).astype(np.float32)
    swir = filled.sel(band="swir16", drop=True).astype(np.float32)
    den = green + swir
    den = den.where(~(abs(den) <= _NDSI_EPS), np.float32(np.inf))  # NaN stays NaN; ~0 -> ratio 0
    out = ((green - swir) / den).clip(-1.0, 1.0).astype(np.float32)
    out = out.drop_vars([c for c in out.coords if "band" in out[c].dims or c == "band"], errors="ignore")
    out.name = "ndsi"
    return out


def snow_mask(ndsi: xr.DataArray, threshold: float = 0.3) -> xr.DataArray:
    """The paper's snow map: NDSI where NDSI >= ``threshold``, else 0; NaN stays NaN.

    Parameters
    ----------
    ndsi : xarray.DataArray
        Continuous NDSI from :func:`ndsi`.
    threshold : float
        Snow threshold (0.3 after Vonica et al. 2021).

    Returns
    -------
    xarray.DataArray
        Same dims, coords and dtype as the input.
    """
    keep = (ndsi >= threshold) | ndsi.isnull()
    out = ndsi.where(keep, 0).astype(ndsi.dtype)
    out.name = ndsi.name
    return out
