"""``build-cube`` as a composition: search -> cube -> preprocess -> align -> resample -> one lazy Dataset.

:func:`cube_dataset` assembles the whole product lazily (nothing is read or computed): the periodic cube,
the per-scene table and the aligned guide images, as ordinary lazy variables of **one** Dataset;
:func:`as_tree` arranges it in the cube store's groups and :func:`glacierflow.storage.store.write` computes and
writes it in one pass. :func:`build_cube_store` is the whole command.

Every scene's COG windows are read once for the product: a cheap first read of ``qa_pixel`` alone
(:func:`quality`, computed first) says which scenes have enough valid pixels, and only those scenes'
reflectance is read, once. Their masked NDSI and guide images go through a scratch Zarr store inside the
graph (:func:`glacierflow.storage.store.spill`) so that no scene is held in memory across the two reductions over
all scenes that the alignment needs (reference, re-estimated reference).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import dask
import dask.array as dsa
import numpy as np
import pandas as pd
import xarray as xr

from glacierflow import __version__
from glacierflow.errors import GlacierflowError
from glacierflow.ingest import catalog, cube, readers
from glacierflow.ingest import items as items_mod
from glacierflow.preprocess import align, periods
from glacierflow.preprocess import qa as preprocess
from glacierflow.specs import CubeSpec, PreprocessSpec
from glacierflow.storage import store
from glacierflow.storage.cubes import SPATIAL_CHUNK

#: Per-scene table variables (dim ``scene``; ``scene_time`` becomes ``time`` in the ``scenes`` group).
TABLE = ("item_id", "platform", "cloud_cover", "valid_fraction", "used", "reason", "aligned", "shift_x",
         "shift_y", "ecc", "wrs_path", "wrs_row", "collection_category")
#: Variable-length strings (numpy StringDType): Zarr v3 writes them without loading a lazy column first.
STR = np.dtypes.StringDType()


@dataclass(frozen=True)
class BuildSummary:
    """What :func:`build_cube_store` did (read back from the written store)."""

    store: str
    scenes_found: int
    scenes_stacked: int
    scenes_used: int
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> scenes not used for it
    periods: int = 0
    periods_interpolated: int = 0
    aligned: int = 0
    shift_rms_px: float | None = None
    ecc_median: float | None = None
    server_filter: bool = False
    seconds: float = 0.0

    def lines(self) -> list[str]:
        """The summary as the CLI prints it (the one wording of build-cube's report)."""
        out = [f"scenes: {self.scenes_found} found, {self.scenes_stacked} stacked, {self.scenes_used} used"]
        out += [f"  not used / flagged {n:4d}: {reason}" for reason, n in sorted(self.dropped.items())]
        out.append(f"periods: {self.periods} ({self.periods_interpolated} interpolated)")
        if self.aligned and self.shift_rms_px is not None and self.ecc_median is not None:
            out.append(f"alignment: {self.aligned} scenes aligned, RMS shift {self.shift_rms_px:.2f} px, "
                       f"median ECC {self.ecc_median:.3f}")
        out.append(f"written: {self.store}  ({self.seconds:.1f} s)")
        return out


# --- stages ---------------------------------------------------------------------------------------------


def _env(spec: CubeSpec) -> Any:
    return readers.gdal_env(spec.http_timeout, spec.http_retries, spec.http_retry_delay)


def stack(items: list[dict[str, Any]], spec: CubeSpec, reader: type | None = None, *,
          strict: bool = False, guide_band: str = "grey") -> xr.DataArray:
    """The lazy ``(time, band, y, x)`` cube of the items on the site's Landsat grid (``strict``: reads raise).

    The assets: green, swir16, those the guides of ``guide_band`` need, qa_pixel.
    """
    assets = tuple(dict.fromkeys(("green", "swir16", *align.GUIDE_ASSETS[guide_band], "qa_pixel")))
    return cube.build_cube(
        items, bbox_lonlat=spec.bbox, epsg=spec.epsg, resolution=spec.resolution, platforms=spec.platforms,
        assets=assets,
        reader=reader or readers.ReportingRioReader, env=_env(spec), on_read_error="raise" if strict else "nan",
    )


def asset_errors(items: list[dict[str, Any]], raw: xr.DataArray, spec: CubeSpec,
                 reader: type | None = None) -> xr.DataArray:
    """Per stacked scene (lazy): why its assets cannot be stacked as declared ('' if they can).

    One task per scene opens the headers of its assets (:func:`glacierflow.ingest.readers.check_assets`): a missing
    asset, an unreadable file, a CRS or size other than the item declares.
    """
    env, bands = _env(spec), [str(b) for b in raw["band"].values]
    by_id = {str(it["id"]): it for it in items_mod.normalise_items(items, assets=bands, platforms=spec.platforms)}
    sign = reader.sign_href if isinstance(reader, type) and issubclass(reader, readers.SigningRioReader) else None
    check = dask.delayed(_check_scene, pure=True)
    parts = [dsa.from_delayed(check(by_id[str(i)], bands, env, sign), shape=(1,), dtype=object)
             for i in raw["id"].values]
    data = dsa.concatenate(parts) if parts else np.empty(0, object)
    return xr.DataArray(data, dims="time", coords={"time": raw["time"].values})


def _check_scene(item: dict[str, Any], bands: list[str], env: Any, sign: Any) -> np.ndarray:
    return np.array([readers.check_assets(item, bands, env, sign)], dtype=object)


def quality(raw: xr.DataArray, pre: PreprocessSpec, asset_error: xr.DataArray | None = None) -> xr.Dataset:
    """Per stacked scene (lazy): ``valid_fraction``, ``qa_read_error`` and ``asset_error``.

    ``valid_fraction`` and ``qa_read_error`` come from ``qa_pixel`` alone; ``asset_error`` is
    :func:`asset_errors` ('' for every scene when not given).
    """
    qa = raw.sel(band=preprocess.QA_BAND, drop=True)
    frac = preprocess.qa_valid(qa, mask_clouds=pre.mask_clouds).mean(("y", "x")).astype(np.float32)
    unreadable = np.isneginf(qa).any(("y", "x"))
    if asset_error is None:
        asset_error = xr.DataArray(np.full(raw.sizes["time"], "", object), dims="time")
    return xr.Dataset({"valid_fraction": frac, "qa_read_error": unreadable,
                       "asset_error": asset_error.reset_coords(drop=True).assign_coords(time=raw["time"])
                       }).reset_coords(drop=True)


def _reasons(frac: np.ndarray, qa_err: np.ndarray, asset_err: np.ndarray, aligned: np.ndarray, ecc: np.ndarray,
             *band_err: np.ndarray, need: float, min_ecc: float, bands: tuple[str, ...]) -> np.ndarray:
    """Why each scene is not averaged ('' if it is): read error, missing, alignment (first that applies)."""
    out = np.empty(frac.shape, object)
    for i in range(frac.size):
        bad = [b for b, e in zip(bands, band_err, strict=True) if e[i]]
        if asset_err[i]:
            out[i] = str(asset_err[i])
        elif qa_err[i] or bad:
            out[i] = f"read error: unreadable {', '.join(bad or ['qa_pixel'])} asset"
        elif not frac[i] >= need:
            out[i] = f"missing: valid fraction {frac[i]:.2f} < {need:.2f}"
        elif not aligned[i]:
            why = "ECC failed" if not np.isfinite(ecc[i]) else f"ECC correlation {ecc[i]:.2f} < {min_ecc:.2f}"
            out[i] = f"alignment: {why}"
        else:
            out[i] = ""
    return out.astype(STR)


def _scenes_entering(
    raw: xr.DataArray, q: xr.Dataset, pre: PreprocessSpec
) -> tuple[xr.DataArray, np.ndarray | None]:
    """The scenes that enter the main pass: those over the quality threshold when ``q`` is computed."""
    if isinstance(q["valid_fraction"].data, dsa.Array):
        return raw, None  # one graph: every scene enters, the threshold applies inside it
    keep = np.flatnonzero((q["valid_fraction"].values >= 1.0 - pre.max_missing)
                          & (q["asset_error"].values == ""))
    return raw.isel(time=keep), keep


def cube_dataset(
    items: list[dict[str, Any]],
    spec: CubeSpec,
    pre: PreprocessSpec,
    *,
    reader: type | None = None,
    quality_figures: xr.Dataset | None = None,
    scratch: str | None = None,
    storage_options: dict[str, Any] | None = None,
    rejected: list[catalog.Rejection] = (),  # type: ignore[assignment]
    strict: bool = False,
) -> xr.Dataset:
    """The lazy cube store content as one Dataset.

    Parameters
    ----------
    items
        STAC item dicts (signed if the catalog needs it and ``reader`` does not sign).
    spec, pre
        What to stack and how to preprocess.
    reader
        stackstac reader class (default :class:`glacierflow.ingest.readers.ReportingRioReader`;
        :class:`glacierflow.ingest.readers.SigningRioReader` signs each href on the worker right before reading).
    quality_figures
        Computed :func:`quality` of the stacked scenes: only the scenes over ``max_missing`` enter the
        graph. Without it every scene enters and the threshold is applied inside the one lazy graph.
    scratch
        URL of a scratch store for the masked scenes (:func:`glacierflow.storage.store.spill`); without it the
        scenes stay in (worker) memory between the alignment passes.
    storage_options
        fsspec options for ``scratch``.
    rejected
        Search rejections, recorded as rows of the per-scene table.
    strict
        Unreadable pixels raise :class:`glacierflow.ingest.readers.AssetReadError` instead of dropping the scene.

    Returns
    -------
    xarray.Dataset
        Cube variables ``ndsi``, ``n_valid`` (time, y, x), ``n_scenes``, ``interpolated``, ``time_mean``
        (time); per-scene table variables :data:`TABLE` and ``scene_time`` along ``scene`` (one row per
        scene considered, by time); ``guide(guide_scene, y, x)`` for the scenes that entered the alignment
        (NaN for those not averaged) unless ``spec.guides`` is False. All lazy.
    """
    raw = stack(items, spec, reader, strict=strict, guide_band=pre.guide_band)
    q = quality(raw, pre, asset_errors(items, raw, spec, reader)) if quality_figures is None else quality_figures
    if q.sizes["time"] != raw.sizes["time"]:
        raise GlacierflowError("quality figures and cube disagree on the scenes; rerun build-cube")
    sel, keep = _scenes_entering(raw, q, pre)
    qsel = q if keep is None else q.isel(time=keep)
    masked = preprocess.mask_invalid(sel, mask_clouds=pre.mask_clouds)
    ok_assets = qsel["asset_error"] == ""
    if keep is None:  # scenes under the threshold carry no weight anywhere (reference, means)
        masked = masked.where((qsel["valid_fraction"] >= 1.0 - pre.max_missing) & ok_assets)
    scenes = xr.Dataset({
        "ndsi": preprocess.ndsi(masked).reset_coords(drop=True),
        "guide": align.alignment_image(masked, highpass=pre.align_highpass, band=pre.guide_band, raw=sel,
                                       wallis=pre.guide_filter == "wallis").reset_coords(drop=True),
    }).chunk({"time": 1, "y": -1, "x": -1})
    source: xr.Dataset | Callable[[], xr.Dataset] = scenes
    if scratch is not None:
        source = store.spill(scenes, scratch, storage_options).read
    reg = align.co_register(source, pre.motion, min_ecc=pre.min_ecc)
    band_err = preprocess.read_errors(sel.sel(band=list(preprocess.REFLECTANCE_BANDS))).reset_coords(drop=True)
    ok_quality = qsel["valid_fraction"] >= 1.0 - pre.max_missing
    averaged = (reg["aligned"] & ok_quality & ok_assets & ~band_err.any("band")
                & ~qsel["qa_read_error"]).reset_coords(drop=True)
    snow = preprocess.snow_mask(reg["ndsi"], pre.ndsi_threshold).assign_coords(time=sel["time"].values)
    periodic = periods.resample(snow, pre.period, start=spec.start, end=spec.end, use=averaged,
                                   max_iter=pre.gap_fill_max_iter)
    periodic = periodic.assign_coords(x=raw.x, y=raw.y, spatial_ref=raw.coords["spatial_ref"])
    periodic = periodic.chunk({"time": 1, "y": SPATIAL_CHUNK, "x": SPATIAL_CHUNK})
    _describe(periodic, pre)
    table = _table(items, raw, q, keep, reg, band_err, averaged, pre, rejected, dict(raw.attrs["dropped_items"]))
    out = xr.merge([periodic, table], compat="override", join="outer", combine_attrs="drop_conflicts")
    if spec.guides:
        guide = reg["guide"].where(averaged).astype(np.float32).reset_coords(drop=True)
        guide = guide.rename(time="guide_scene").assign_coords(guide_scene=sel["id"].values.astype(STR))
        out["guide"] = guide.chunk({"guide_scene": 1, "y": SPATIAL_CHUNK, "x": SPATIAL_CHUNK})
        out["guide"].attrs.update(long_name="aligned QA-masked ECC guide image (NaN where not observed)",
                                  grid_mapping="spatial_ref")
    return out


def _describe(ds: xr.Dataset, pre: PreprocessSpec) -> None:
    """Variable attributes of the cube (in place)."""
    ds["ndsi"].attrs.update(
        long_name="snow-mask NDSI (NDSI where >= threshold, else 0): mean of the observations per period; "
                  "gap-filled where n_valid == 0, interpolated in time where no scene",
        threshold=pre.ndsi_threshold, period=pre.period, grid_mapping="spatial_ref",
    )
    ds["n_valid"].attrs.update(long_name="real (not gap-filled) observations averaged", grid_mapping="spatial_ref")
    ds["n_scenes"].attrs["long_name"] = "number of scenes averaged in the period"
    ds["interpolated"].attrs["long_name"] = "no scene in the period: linear interpolation in time"
    ds["time_mean"].attrs["long_name"] = "mean acquisition time of the scenes averaged in the period"


def _prop(props: dict[str, Any], key: str, kind: type = str) -> Any:
    value = props.get(key)
    if kind is float:
        return float(value) if isinstance(value, (int, float)) else np.nan
    if kind is int:
        try:
            return int(value)
        except (TypeError, ValueError):
            return -1
    return "" if value is None else str(value)


def _naive(value: str | None) -> np.datetime64:
    if not value:
        return np.datetime64("NaT", "ns")
    t = pd.Timestamp(value)
    return (t if t.tz is None else t.tz_convert(None)).to_datetime64().astype("datetime64[ns]")


# One piece on purpose (one of three): the scenes table is one column per line, each a lazy expression over
# the same per-scene arrays; the columns read best side by side.
def _table(items, raw, q, keep, reg, band_err, averaged, pre, rejected, dropped) -> xr.Dataset:  # noqa: ANN001
    """One row per scene considered (stacked, dropped by the cube builder, rejected by the search)."""
    props = {str(it["id"]): it.get("properties", {}) for it in items}
    props.update({r.item_id: r.properties for r in rejected})
    ids = [str(i) for i in raw["id"].values]
    n = len(ids)
    frac = q["valid_fraction"].data
    need = 1.0 - pre.max_missing

    def entered(var: xr.DataArray, fill: Any) -> Any:
        """A main-pass per-scene variable over every stacked scene (``fill`` where it did not enter)."""
        return _expand(var.data, keep, n, fill)

    aligned = entered(reg["aligned"], False)
    ecc = entered(reg["ecc"], np.nan)
    berr = entered(band_err.transpose("time", "band"), False)
    used = entered(averaged, False)
    inputs = [(a if isinstance(a, dsa.Array) else dsa.from_array(np.asarray(a), chunks=-1)).rechunk(-1)
              for a in (frac, q["qa_read_error"].data, q["asset_error"].data, aligned, ecc)]
    inputs += [berr[:, b].rechunk(-1) for b in range(berr.shape[1])]
    reason = dsa.map_blocks(
        partial(_reasons, need=need, min_ecc=pre.min_ecc, bands=preprocess.REFLECTANCE_BANDS), *inputs,
        dtype=STR, meta=np.empty(0, STR),
    ) if n else np.empty(0, STR)
    stacked = {
        "scene_time": raw["time"].values.astype("datetime64[ns]"),
        "item_id": np.array(ids, STR),
        "platform": np.array([_prop(props.get(i, {}), "platform") for i in ids], STR),
        "cloud_cover": np.array([_prop(props.get(i, {}), "eo:cloud_cover", float) for i in ids]),
        "valid_fraction": dsa.asarray(frac).astype(np.float32),
        "used": used,
        "reason": reason,
        "aligned": aligned,
        "shift_x": entered(reg["shift_x"], np.nan),
        "shift_y": entered(reg["shift_y"], np.nan),
        "ecc": ecc,
    }
    others = [(i, why) for i, why in dropped.items()] + [(r.item_id, f"{r.reason}: {r.detail}") for r in rejected]
    rest = {
        "scene_time": np.array([_naive(props.get(i, {}).get("datetime")) for i, _ in others], "datetime64[ns]"),
        "item_id": np.array([i for i, _ in others], STR),
        "platform": np.array([_prop(props.get(i, {}), "platform") for i, _ in others], STR),
        "cloud_cover": np.array([_prop(props.get(i, {}), "eo:cloud_cover", float) for i, _ in others]),
        "valid_fraction": np.full(len(others), np.nan, np.float32),
        "used": np.zeros(len(others), bool),
        "reason": np.array([why for _, why in others], STR),
        "aligned": np.zeros(len(others), bool),
        "shift_x": np.full(len(others), np.nan),
        "shift_y": np.full(len(others), np.nan),
        "ecc": np.full(len(others), np.nan),
    }
    all_ids = ids + [i for i, _ in others]
    columns = {}
    for k in stacked:
        a, b = stacked[k], rest[k]
        lazy = isinstance(a, dsa.Array)
        columns[k] = dsa.concatenate([a, dsa.from_array(b, chunks=-1)]) if lazy else np.concatenate([a, b])
    columns["wrs_path"] = np.array([_prop(props.get(i, {}), "landsat:wrs_path", int) for i in all_ids], np.int16)
    columns["wrs_row"] = np.array([_prop(props.get(i, {}), "landsat:wrs_row", int) for i in all_ids], np.int16)
    columns["collection_category"] = np.array(
        [_prop(props.get(i, {}), "landsat:collection_category") for i in all_ids], STR)
    t = columns.pop("scene_time")
    order = np.lexsort((np.array(all_ids, str), np.where(np.isnat(t), np.datetime64("2262-01-01", "ns"), t)))
    ds = xr.Dataset(
        {k: ("scene", v[order]) for k, v in columns.items()},
        coords={"scene_time": ("scene", t[order])},
    )
    ds = ds.chunk({"scene": -1})  # a small table: one chunk per variable
    ds["shift_x"].attrs.update(units="pixel", description="scene[r, c] ~ reference[r - shift_y, c - shift_x]")
    ds["shift_y"].attrs.update(units="pixel")
    ds["ecc"].attrs["description"] = "ECC correlation coefficient with the re-estimated reference"
    ds["used"].attrs["description"] = "averaged into its period (QA-valid enough, readable, aligned)"
    return ds


def _expand(data: Any, keep: np.ndarray | None, n: int, fill: Any) -> dsa.Array:
    """Rows of ``data`` (the scenes that entered the main pass) placed among all ``n`` stacked scenes."""
    data = data if isinstance(data, dsa.Array) else dsa.from_array(np.asarray(data), chunks=-1)
    if keep is None:
        return data
    idx = np.full(n, keep.size)
    idx[keep] = np.arange(keep.size)
    pad = dsa.full((1, *data.shape[1:]), fill, dtype=data.dtype)
    return dsa.concatenate([data, pad], axis=0)[idx]


def as_tree(ds: xr.Dataset) -> xr.DataTree:
    """The cube store's layout: the cube at the root, groups ``scenes`` and (if present) ``guides``."""
    table = [v for v in TABLE if v in ds]
    guides = ["guide"] if "guide" in ds else []
    root = ds.drop_vars(table + guides + ["scene_time", "guide_scene"], errors="ignore")
    root = root.drop_dims([d for d in ("scene", "guide_scene") if d in root.dims])
    scenes = ds[table].drop_vars(["x", "y", "time", "spatial_ref"], errors="ignore")
    scenes = scenes.assign_coords(scene_time=ds["scene_time"]).rename(scene_time="time")
    scenes.attrs = {"title": "one row per scene considered: used or why not, alignment diagnostics"}
    nodes = {"/": root, "scenes": scenes}
    if guides:
        g = ds[["guide"]].rename(guide_scene="scene")
        g.attrs = {"title": "aligned QA-masked ECC guide image of every scene that entered the alignment"}
        nodes["guides"] = g
    return xr.DataTree.from_dict(nodes)


# --- the command --------------------------------------------------------------------------------------------


def default_store_name(name: str, period: str) -> str:
    """Default output path for a site: ``<name>-<period>.zarr``."""
    return f"{name}-{period.lower()}.zarr"


def _signing(
    found: catalog.SearchResult, signer: Any, spec: CubeSpec
) -> tuple[list[dict[str, Any]], type | None]:
    """Items to stack and the reader class: Planetary Computer hrefs are signed on the workers at read time."""
    signer = signer or catalog.default_signer(spec.catalog)
    if isinstance(signer, type) and issubclass(signer, readers.SigningRioReader):
        return list(found.items), signer
    if signer == "planetary-computer":
        return list(found.items), readers.SigningRioReader
    return catalog.sign_items(found.items, signer), None


def build_cube_store(
    spec: CubeSpec,
    pre: PreprocessSpec,
    out: str,
    *,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
    signer: str | Callable[[dict[str, Any]], dict[str, Any]] | type | None = None,
    compute: Callable[[list[Any]], list[Any]] | None = None,
    strict: bool = False,
) -> BuildSummary:
    """Search, assemble and write a cube store (see the module notes).

    Parameters
    ----------
    spec, pre
        Stage specs (stored in the store's attrs).
    out
        Local path or fsspec URL of the store.
    overwrite
        Replace an existing store.
    storage_options
        fsspec options for ``out`` (and its scratch sibling).
    signer
        Signing hook: a name in :data:`glacierflow.ingest.catalog.SIGNERS`, a callable signing item dicts, or a
        :class:`glacierflow.ingest.readers.SigningRioReader` subclass (signs at read time); default by catalog URL.
    compute
        Runs a list of dask objects and returns their results (progress bars, distributed clients);
        default ``dask.compute``.
    strict
        Fail (one line naming the asset) on a scene whose assets are missing, unreadable, or not what the
        item declares, instead of dropping it with the reason in the ``scenes`` table.
    """
    t0 = time.perf_counter()
    if not overwrite and store.exists(out, storage_options):
        raise GlacierflowError(f"store {out} already exists; pass --overwrite to replace it")
    found = catalog.search(spec.catalog, bbox=spec.bbox, start=spec.start, end=spec.end,
                           collection=spec.collection, platforms=spec.platforms, max_cloud=spec.max_cloud,
                           categories=spec.categories, retries=spec.http_retries, backoff=spec.http_retry_delay,
                           timeout=spec.http_timeout)
    found.raise_if_empty()
    items, reader = _signing(found, signer, spec)
    run = compute or (lambda objs: list(dask.compute(*objs)))
    raw = stack(items, spec, reader, strict=strict, guide_band=pre.guide_band)
    (q,) = run([quality(raw, pre, asset_errors(items, raw, spec, reader))])
    if strict:
        _raise_if_asset_errors(q, raw)
    _raise_if_unusable(q, pre)
    scratch = store.sibling(out, "scratch")
    try:
        ds = cube_dataset(items, spec, pre, reader=reader, quality_figures=q, scratch=scratch,
                          storage_options=storage_options, rejected=found.rejected, strict=strict)
        ds.attrs = {
            "glacierflow_version": __version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "cube_spec": spec.to_json(),
            "preprocess_spec": pre.to_json(),
            "search": json.dumps(found.parameters(), default=str),
            "title": f"glacierflow NDSI cube: {spec.name}, {pre.period} periods",
        }
        store.write(as_tree(ds), out, overwrite=overwrite, storage_options=storage_options,
                    compute=_refusing_if_none_used(run, ds))
    finally:
        store.remove(scratch, storage_options)
    return summarise(out, storage_options, scenes_found=len(found.items) + len(found.rejected),
                     server_filter=found.server_filter, seconds=time.perf_counter() - t0)


def _raise_if_asset_errors(q: xr.Dataset, raw: xr.DataArray) -> None:
    bad = [(str(i), str(e)) for i, e in zip(raw["id"].values, q["asset_error"].values, strict=True) if e]
    if bad:
        item, why = bad[0]
        more = f" (and {len(bad) - 1} more scenes)" if len(bad) > 1 else ""
        raise GlacierflowError(f"--strict: scene {item}: {why.removeprefix('read error: ')}{more}; fix the "
                               "asset or run without --strict to drop such scenes; no store was written")


#: The way out for each reason of the ``scenes`` table (the text before its first ``:``).
REASON_FIXES = {"alignment": "lower --min-ecc", "missing": "raise --max-missing", "cloud": "raise --max-cloud",
                "platform": "add a --platform", "category": "add a --category", "read error": "check the assets",
                "datetime": "widen --start/--end", "bbox": "check --bbox"}


def every_scene_dropped(reasons: Any) -> str:
    """One line for a build in which no scene was used: counts per reason and the flags that change them."""
    counts: dict[str, int] = {}
    for r in np.asarray(reasons).ravel():
        key = str(r).split(":")[0] or "unknown"
        counts[key] = counts.get(key, 0) + 1
    text = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    fixes = ", ".join(dict.fromkeys(REASON_FIXES.get(k, k) for k in sorted(counts)))
    return (f"every scene was dropped ({text}; {sum(counts.values())} considered); no store was written; "
            f"{fixes}")


def _refusing_if_none_used(run: Callable[[list[Any]], list[Any]], ds: xr.Dataset) -> Callable[[list[Any]], list]:
    """``run`` that also computes the scenes' ``used`` and ``reason`` in the same pass and raises when none is used.

    Raising inside :func:`glacierflow.storage.store.write` abandons the partial store: nothing is left, and a previous
    store at the same place is untouched.
    """
    def checked(objs: list[Any]) -> list[Any]:
        *results, used, reasons = run([*objs, ds["used"].data, ds["reason"].data])
        if not np.asarray(used).any():
            raise GlacierflowError(every_scene_dropped(reasons))
        return results

    return checked


def _raise_if_unusable(q: xr.Dataset, pre: PreprocessSpec) -> None:
    frac = q["valid_fraction"].values
    if not (frac >= 1.0 - pre.max_missing).any():
        best = float(np.nanmax(frac)) if frac.size else 0.0
        raise GlacierflowError(
            f"none of the {frac.size} scenes has enough valid pixels over the bbox (best valid fraction "
            f"{best:.3f}, need {1 - pre.max_missing:.3f}); check the bbox against the scenes' footprints or "
            "raise --max-missing; no store was written"
        )


def summarise(out: str, storage_options: dict[str, Any] | None = None, **extra: Any) -> BuildSummary:
    """:class:`BuildSummary` of a written cube store (reads only its small variables)."""
    cube_ds = store.open_store(out, storage_options)
    scenes = store.open_store(out, storage_options, group="scenes")[["used", "aligned", "reason", "shift_x",
                                                                       "shift_y", "ecc", "valid_fraction"]].load()
    used = scenes["used"].values.astype(bool)
    stacked = np.isfinite(scenes["valid_fraction"].values)
    reasons: dict[str, int] = {}
    for r in scenes["reason"].values:
        if str(r):
            key = str(r).split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
    sx, sy, ecc = (scenes[k].values[used] for k in ("shift_x", "shift_y", "ecc"))
    return BuildSummary(
        store=out,
        scenes_found=int(extra.pop("scenes_found", scenes.sizes["scene"])),
        scenes_stacked=int(stacked.sum()),
        scenes_used=int(used.sum()),
        dropped=reasons,
        periods=int(cube_ds.sizes["time"]),
        periods_interpolated=int(cube_ds["interpolated"].values.sum()),
        aligned=int((scenes["aligned"].values.astype(bool) & stacked).sum()),
        shift_rms_px=float(np.sqrt(np.mean(sx**2 + sy**2))) if used.any() else None,
        ecc_median=float(np.median(ecc)) if used.any() else None,
        server_filter=bool(extra.pop("server_filter", False)),
        seconds=round(float(extra.pop("seconds", 0.0)), 2),
    )
