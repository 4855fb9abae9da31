"""build-cube's graph: one fused task per scene, the ECC references and the period means as tree reductions.

Per stacked scene ``i`` (``dask.delayed``; the results are assembled into arrays with
``dask.array.from_delayed``, so the caller still gets one lazy Dataset):

1. :func:`prepare_scene` -- the scene's window of every asset (read once, by stackstac) -> asset check, QA
   mask, valid fraction, read errors, NDSI, ECC guide (the functions of :mod:`glacierflow.preprocess.qa` and
   :mod:`glacierflow.preprocess.align`, called by name). Its NDSI and guide are held in memory, or written
   to a scratch Zarr store by the same task when the scenes together would exceed :data:`SPILL_BYTES`.
2. reference 1 -- a tree reduction (float64 sum and count, :data:`SPLIT_EVERY` inputs per task) of the
   guides of the scenes that enter, then the mean and the 3x3 median (:func:`align.reference_image`).
3. :func:`first_pass` -- ECC of the guide against reference 1; the guides it aligned make reference 2 (a
   second tree reduction, each leaf warping its scenes' guides again: no warped image is held).
4. :func:`static_mask` -- a third tree reduction: per pixel, the mean squared residual of the pass-1
   aligned guides against reference 2; ECC pass 2 looks only at the pixels whose guide follows the
   reference (:func:`align.steady_pixels`: moving ice and changing snow would bias it).
   :func:`second_pass` -- ECC from the pass-1 warp against reference 2 on those pixels, NDSI and guide
   warped, snow mask, whether the scene is averaged (``used``).
5. per period -- a tree reduction of the sum and count of the real observations of its used scenes, then
   the mean, ``n_valid`` and the paper's gap-fill of unobserved pixels (:func:`periods.fill_unobserved`);
   empty periods are interpolated in time by :func:`periods.interpolate_periods`.

Every step is the same arithmetic as the serial reference loop of ``benchmarks/bench_build_cube.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as dsa
import numpy as np
import xarray as xr
import zarr

from glacierflow.errors import GlacierflowError
from glacierflow.ingest import readers
from glacierflow.preprocess import align, periods
from glacierflow.preprocess import qa as preprocess
from glacierflow.specs import PreprocessSpec

#: Inputs per task of every tree reduction (references, period sums).
SPLIT_EVERY = 8
#: NDSI + guide of all stacked scenes above this many bytes go through a scratch store (when one is given):
#: below it they stay in memory between the ECC passes (512 MiB: ~65 scenes of 1000 x 1000 px, about 1.5 years
#: of one site with two WRS paths). In memory, peak RSS grows with the date range (measured x1.6 from 6 to 12
#: months of the full twin); spilled it stays flat, for a local write and read of each scene.
SPILL_BYTES = 1 << 29

Partial = tuple[np.ndarray, np.ndarray] | None  # (float64 sum, int32 count) over some images, or nothing


@dataclass(frozen=True)
class SceneSettings:
    """What every per-scene task needs (small, picklable)."""

    bands: tuple[str, ...]
    pre: PreprocessSpec
    env: Any = None  # GDAL env of the asset check (None: no check)
    sign: Any = None  # href -> signed href for the asset check
    scratch: str | None = None  # scratch Zarr group holding every scene's ndsi/guide, or None (memory)
    storage_options: dict[str, Any] | None = None
    strict: bool = False  # an asset error fails the build instead of dropping the scene

    @property
    def need(self) -> float:
        """Minimum valid fraction of a scene that enters the alignment."""
        return 1.0 - self.pre.max_missing


# --- per scene --------------------------------------------------------------------------------------------


def prepare_scene(raw: np.ndarray, item: dict[str, Any] | None, index: int, s: SceneSettings) -> dict[str, Any]:
    """One scene's ``(band, y, x)`` window -> quality figures and, if it enters, its NDSI and guide.

    Returns a dict with ``valid_fraction``, ``qa_read_error``, ``band_error`` (per reflectance band),
    ``asset_error`` ('' if the assets are as declared), ``enters`` and, if it enters, ``images``
    (the NDSI and guide, or where they were spilled).
    """
    error = readers.check_assets(item, s.bands, s.env, s.sign) if item is not None and s.env is not None else ""
    if error and s.strict:
        raise GlacierflowError(f"--strict: scene {item['id']}: {error.removeprefix('read error: ')}; fix the "
                               "asset or run without --strict to drop such scenes; no store was written")
    cube = xr.DataArray(raw.reshape((1, *raw.shape[-3:])), dims=("time", "band", "y", "x"),
                        coords={"band": list(s.bands)})
    qa = cube.sel(band=preprocess.QA_BAND, drop=True)
    frac = np.float32(preprocess.qa_valid(qa, mask_clouds=s.pre.mask_clouds).mean().item())
    out = {"valid_fraction": frac, "qa_read_error": bool(np.isneginf(qa.values).any()), "asset_error": error,
           "band_error": preprocess.read_errors(cube.sel(band=list(preprocess.REFLECTANCE_BANDS))).values[0]}
    out["enters"] = bool(frac >= s.need and not error)
    if out["enters"]:
        masked = preprocess.mask_invalid(cube, mask_clouds=s.pre.mask_clouds)
        ndsi = preprocess.ndsi(masked).values[0]
        guide = align.alignment_image(masked, highpass=s.pre.align_highpass, band=s.pre.guide_band, raw=cube,
                                      wallis=s.pre.guide_filter == "wallis").values[0]
        out["images"] = _hold(index, ndsi.astype(np.float32), guide.astype(np.float32), s)
    return out


def first_pass(prep: dict[str, Any], reference: np.ndarray | None, s: SceneSettings) -> dict[str, Any]:
    """ECC of a scene's guide against reference 1: ``warp`` (3x3) and ``ok``."""
    if not prep["enters"] or reference is None:
        return {"warp": np.eye(3), "ok": False}
    (guide,) = _load(prep["images"], s, ("guide",))
    warp, _, ok = align.find_warp(guide, reference, s.pre.motion, min_ecc=s.pre.min_ecc)
    return {"warp": warp, "ok": bool(ok)}


def second_pass(prep: dict[str, Any], p1: dict[str, Any], reference: np.ndarray | None,
                s: SceneSettings, static: np.ndarray | None = None
                ) -> tuple[dict[str, Any], np.ndarray | None, np.ndarray | None]:
    """ECC from the pass-1 warp against reference 2; warped NDSI -> snow mask; the aligned guide.

    ECC sees the scene's guide only where ``static`` (:func:`static_mask`) is True, if given: the other
    pixels are left out of its input mask, the reference stays whole (as :func:`align.co_register`).

    Returns ``(row, snow, guide)``: the scene's table row (small: quality figures, ``aligned``, shifts, ``ecc``,
    ``used``), and the snow mask and aligned guide if it is used (else None). Three outputs, so that the task
    making the table never holds a scene's images.
    """
    row = {k: prep[k] for k in ("valid_fraction", "qa_read_error", "asset_error", "band_error")}
    row.update(aligned=False, shift_x=np.nan, shift_y=np.nan, ecc=np.nan, used=False)
    if not prep["enters"] or reference is None:
        return row, None, None
    ndsi, guide = _load(prep["images"], s)
    seen = guide if static is None else np.where(static, guide, np.nan)
    warp, ecc, ok = align.find_warp(seen, reference, s.pre.motion, init=p1["warp"], min_ecc=s.pre.min_ecc)
    row["ecc"] = ecc
    if ok:
        row["shift_x"], row["shift_y"] = align.centre_shift(warp, guide.shape)
        ndsi = align.warp_image(ndsi, warp, s.pre.motion)
        guide = align.warp_image(guide, warp, s.pre.motion)
    used = bool(ok and not prep["qa_read_error"] and not np.any(prep["band_error"]))
    row.update(aligned=bool(ok), used=used)
    if not used:
        return row, None, None
    snow = preprocess.snow_mask(xr.DataArray(ndsi, dims=("y", "x")), s.pre.ndsi_threshold)
    return row, snow.values.astype(np.float32), guide.astype(np.float32)


def _hold(index: int, ndsi: np.ndarray, guide: np.ndarray, s: SceneSettings) -> dict[str, Any]:
    if s.scratch is None:
        return {"ndsi": ndsi, "guide": guide}
    group = zarr.open_group(s.scratch, mode="r+", storage_options=s.storage_options)
    group["ndsi"][index] = ndsi
    group["guide"][index] = guide
    return {"index": index}


def _load(images: dict[str, Any], s: SceneSettings, names: tuple[str, ...] = ("ndsi", "guide")) -> list[np.ndarray]:
    """A scene's held images ``names`` (from memory, or read back from the scratch store)."""
    if "index" not in images:
        return [images[n] for n in names]
    group = zarr.open_group(s.scratch, mode="r", storage_options=s.storage_options)
    return [np.asarray(group[n][images["index"]]) for n in names]


def create_scratch(url: str, n: int, shape: tuple[int, int], storage_options: dict[str, Any] | None) -> None:
    """Empty scratch arrays ``ndsi`` and ``guide`` ``(n, y, x)``, one uncompressed chunk per scene."""
    group = zarr.open_group(url, mode="w", storage_options=storage_options)
    for name in ("ndsi", "guide"):
        group.create_array(name, shape=(n, *shape), chunks=(1, *shape), dtype=np.float32, compressors=None,
                           fill_value=np.nan)


# --- reductions -------------------------------------------------------------------------------------------


def _add(*parts: Partial) -> Partial:
    """Sum of partial (sum, count) pairs; None for nothing."""
    parts = tuple(p for p in parts if p is not None)
    if not parts:
        return None
    total, count = parts[0][0].copy(), parts[0][1].copy()
    for t, c in parts[1:]:
        total += t
        count += c
    return total, count


def _partial(images: Sequence[np.ndarray | None]) -> Partial:
    """(float64 sum, int32 count) of the finite pixels of ``images`` (None entries skipped)."""
    total, count = None, None
    for img in images:
        if img is None:
            continue
        ok = np.isfinite(img)
        if total is None:
            total, count = np.zeros(img.shape), np.zeros(img.shape, np.int32)
        total += np.where(ok, img, 0.0)
        count += ok
    return None if total is None else (total, count)


def _guides_leaf(s: SceneSettings, *preps: dict[str, Any]) -> Partial:
    return _partial([_load(p["images"], s, ("guide",))[0] if p["enters"] else None for p in preps])


def _aligned_leaf(s: SceneSettings, *flat: dict[str, Any]) -> Partial:
    """Sum and count of the guides pass 1 aligned, warped again here (cheap) rather than held.

    ``flat``: prep, pass 1, prep, pass 1, ... of the scenes.
    """
    pairs = zip(flat[0::2], flat[1::2], strict=True)
    return _partial([align.warp_image(_load(p["images"], s, ("guide",))[0], p1["warp"], s.pre.motion)
                     if p1["ok"] else None for p, p1 in pairs])


def _residual_leaf(s: SceneSettings, ref: np.ndarray | None, *flat: dict[str, Any]) -> Partial:
    """Sum and count of the squared residuals of the guides pass 1 aligned against reference 2.

    ``flat``: prep, pass 1, prep, pass 1, ... of the scenes (as :func:`_aligned_leaf`).
    """
    if ref is None:
        return None
    pairs = zip(flat[0::2], flat[1::2], strict=True)
    return _partial([(align.warp_image(_load(p["images"], s, ("guide",))[0], p1["warp"], s.pre.motion) - ref) ** 2
                     if p1["ok"] else None for p, p1 in pairs])


def static_mask(part: Partial, ref: np.ndarray | None) -> np.ndarray | None:
    """Where ECC pass 2 looks: :func:`align.steady_pixels` of the mean squared residual (None: no reference)."""
    if part is None or ref is None:
        return None
    total, count = part
    with np.errstate(invalid="ignore", divide="ignore"):
        residual = np.where(count > 0, total / count, np.nan).astype(np.float32)
    return align.steady_pixels(residual, ref)


def _snow_leaf(*snows: np.ndarray | None) -> Partial:
    return _partial(snows)


def tree(leaf: Callable[..., Partial], items: list[Any], *args: Any, width: int = 1) -> Any:
    """A delayed tree reduction: ``leaf(*args, *inputs)`` over groups of inputs, then :func:`_add` levels.

    :data:`SPLIT_EVERY` inputs per task, each ``width`` consecutive items. Delayed objects go in as separate
    arguments, never inside a list: dask optimises (culls) the whole graph for every call that gets a list
    of them (measured: 214 s of CPU to build the 9-year graph).
    """
    step = SPLIT_EVERY * width
    level = [dask.delayed(leaf, pure=True)(*args, *items[i:i + step]) for i in range(0, len(items), step)]
    while len(level) > 1:
        level = [dask.delayed(_add, pure=True)(*level[i:i + SPLIT_EVERY]) for i in range(0, len(level), SPLIT_EVERY)]
    return level[0] if level else dask.delayed(None)


def reference(part: Partial) -> np.ndarray | None:
    """The ECC template from a (sum, count) reduction: NaN-skipping mean, 3x3 median (``reference_image``)."""
    if part is None:
        return None
    total, count = part
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / count, np.nan).astype(np.float32)
    return align.reference_image(xr.DataArray(mean[None], dims=("time", "y", "x"))).values


def period_mean(part: Partial, shape: tuple[int, int], max_iter: int) -> dict[str, np.ndarray]:
    """One period's mean of real observations (gap-filled where unobserved) and ``n_valid`` (uint8)."""
    if part is None:
        return {"ndsi": np.full(shape, np.nan, np.float32), "n_valid": np.zeros(shape, np.uint8)}
    total, count = part
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / count, np.nan).astype(np.float32)
    filled = periods.fill_unobserved(xr.DataArray(mean, dims=("y", "x")), max_iter=max_iter).values
    return {"ndsi": filled.astype(np.float32), "n_valid": np.clip(count, 0, 255).astype(np.uint8)}


# --- assembly ---------------------------------------------------------------------------------------------


@dataclass
class Scenes:
    """The delayed per-scene results and per-period means of :func:`scene_graph`."""

    rows: list[Any]  # each scene's table row (small)
    guides: list[Any]  # each scene's aligned guide, None if not used
    means: list[Any]  # each period's mean and n_valid
    refs: tuple[Any, Any, Any] = (None, None, None)  # delayed ECC reference 1, reference 2, static mask


@dataclass(frozen=True)
class References:
    """The ECC references of a cube: what every scene was aligned against (the store's group ``reference``).

    ``first``: pass-1 template; ``second``: pass-2 template; ``static``: the pixels pass 2 looks at
    (:func:`static_mask`). None where the build had none (no scene entered the alignment).
    """

    first: np.ndarray | None
    second: np.ndarray | None
    static: np.ndarray | None


def scene_graph(blocks: Sequence[Any], items: Sequence[dict[str, Any] | None], pos: np.ndarray,
                n_periods: int, shape: tuple[int, int], s: SceneSettings, refs: References | None = None) -> Scenes:
    """The delayed graph of every scene.

    ``blocks`` are the delayed ``(1, band, y, x)`` windows of the stacked scenes, ``pos`` the period of each
    scene (-1 outside the periods). ``refs``: align against these references (another cube's, or the store's
    own when it is updated) instead of estimating them from these scenes.
    """
    prep = [dask.delayed(prepare_scene, pure=True)(b, it, i, s) for i, (b, it) in enumerate(zip(blocks, items,
                                                                                                strict=True))]
    if refs is None:
        ref1 = dask.delayed(reference, pure=True)(tree(_guides_leaf, prep, s))
    else:
        ref1 = dask.delayed(refs.first, pure=True)
    first = [dask.delayed(first_pass, pure=True)(p, ref1, s) for p in prep]
    flat = [d for pair in zip(prep, first, strict=True) for d in pair]
    if refs is None:
        ref2 = dask.delayed(reference, pure=True)(tree(_aligned_leaf, flat, s, width=2))
        static = dask.delayed(static_mask, pure=True)(tree(_residual_leaf, flat, s, ref2, width=2), ref2)
    else:
        ref2, static = dask.delayed(refs.second, pure=True), dask.delayed(refs.static, pure=True)
    second = [dask.delayed(second_pass, pure=True, nout=3)(p, p1, ref2, s, static)
              for p, p1 in zip(prep, first, strict=True)]
    means = []
    for k in range(n_periods):
        mine = [second[i][1] for i in np.flatnonzero(pos == k)]
        means.append(dask.delayed(period_mean, pure=True)(tree(_snow_leaf, mine), shape,
                                                          s.pre.gap_fill_max_iter))
    return Scenes([c[0] for c in second], [c[2] for c in second], means, (ref1, ref2, static))


def reference_arrays(g: Scenes, shape: tuple[int, int]) -> tuple[dsa.Array, dsa.Array, dsa.Array]:
    """The references of :func:`scene_graph` as ``(y, x)`` dask arrays: two templates (NaN: none), static mask."""
    ref1, ref2, static = g.refs
    one = dsa.from_delayed(dask.delayed(_image, pure=True)(ref1, shape), shape, dtype=np.float32)
    two = dsa.from_delayed(dask.delayed(_image, pure=True)(ref2, shape), shape, dtype=np.float32)
    mask = dsa.from_delayed(dask.delayed(_mask, pure=True)(static, shape), shape, dtype=bool)
    return one, two, mask


def _mask(static: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    return np.ones(shape, bool) if static is None else np.asarray(static, bool)


def _pick(obj: Any, key: str, shape: tuple[int, ...], dtype: Any) -> dsa.Array:
    """``obj[key]`` of a delayed dict as a dask array."""
    return dsa.from_delayed(dask.delayed(_value, pure=True)(obj, key, shape, dtype), shape, dtype=dtype)


def _value(obj: dict[str, Any], key: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    return np.asarray(obj[key], dtype).reshape(shape)


def _image(img: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    return np.full(shape, np.nan, np.float32) if img is None else np.asarray(img, np.float32)


def period_cube(g: Scenes, shape: tuple[int, int]) -> tuple[dsa.Array, dsa.Array]:
    """``(ndsi, n_valid)`` ``(time, y, x)`` dask arrays: period means (empty periods NaN) and counts."""
    ndsi = dsa.stack([_pick(m, "ndsi", shape, np.float32) for m in g.means]) if g.means else \
        dsa.zeros((0, *shape), np.float32)
    n_valid = dsa.stack([_pick(m, "n_valid", shape, np.uint8) for m in g.means]) if g.means else \
        dsa.zeros((0, *shape), np.uint8)
    return ndsi, n_valid


def guides(g: Scenes, shape: tuple[int, int]) -> dsa.Array:
    """``(scene, y, x)`` aligned guides of every stacked scene (NaN where not used)."""
    return dsa.stack([dsa.from_delayed(dask.delayed(_image, pure=True)(c, shape), shape, dtype=np.float32)
                      for c in g.guides])


def scene_columns(g: Scenes, extra: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None,
                  extra_kinds: dict[str, Any] | None = None) -> dict[str, dsa.Array]:
    """Per stacked scene (lazy, one task for the lot): the table's columns.

    ``valid_fraction``, ``qa_read_error``, ``asset_error``, ``band_error`` (scene, band), ``aligned``,
    ``shift_x``, ``shift_y``, ``ecc``, ``used``, and the columns ``extra(columns)`` adds (dtypes in
    ``extra_kinds``), computed in the same task. (A dask array handed to ``dask.delayed`` is optimised
    apart from the graph, renaming -- and so re-running -- every scene's tasks: columns derived from these
    must come out of this task, not from a delayed call on the arrays.)
    """
    n = len(g.rows)
    cols = dask.delayed(_columns, pure=True)(extra, *g.rows)
    kinds = {"valid_fraction": np.float32, "qa_read_error": bool, "asset_error": object, "aligned": bool,
             "shift_x": np.float64, "shift_y": np.float64, "ecc": np.float64, "used": bool, **(extra_kinds or {})}
    out = {k: dsa.from_delayed(dask.delayed(_column, pure=True)(cols, k), (n,), dtype=t,
                               meta=np.empty(0, t)) for k, t in kinds.items()}
    nb = len(preprocess.REFLECTANCE_BANDS)
    out["band_error"] = dsa.from_delayed(dask.delayed(_column, pure=True)(cols, "band_error"), (n, nb), dtype=bool)
    return out


def _columns(extra: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None,
             *rows: dict[str, Any]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for k, t in (("valid_fraction", np.float32), ("qa_read_error", bool), ("asset_error", object), ("aligned", bool),
                 ("shift_x", np.float64), ("shift_y", np.float64), ("ecc", np.float64), ("used", bool)):
        out[k] = np.array([r[k] for r in rows], dtype=t)
    out["band_error"] = np.array([np.asarray(r["band_error"], bool) for r in rows], bool).reshape(
        len(rows), len(preprocess.REFLECTANCE_BANDS))
    return {**out, **(extra(out) if extra else {})}


def _column(cols: dict[str, np.ndarray], key: str) -> np.ndarray:
    return cols[key]
