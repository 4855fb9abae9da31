"""``build-cube``: search -> lazy cube -> preprocess -> align -> resample -> Zarr, as one Dask graph.

:func:`cube_dataset` assembles the whole graph lazily (nothing is read or computed); :func:`build_cube_store`
searches, assembles, and writes it in one pass with :func:`glacierflow.store.write_store`, so every scene is
read once and the per-scene diagnostics (valid fraction, shifts, ECC) are computed in the same pass as the
periodic cube.

Scenes over ``--max-missing`` are dropped *inside* the graph (their pixels become NaN before gap-filling,
which is then free, and they carry no weight in the reference or the period means), so the quality filter
needs no separate read of the data.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from glacierflow import __version__, align, catalog, cube, preprocess, store
from glacierflow.config import CubeSpec, PreprocessSpec
from glacierflow.errors import GlacierflowError

SPATIAL_CHUNK = 250  # store chunk side in pixels: 5 x the 50-px patch of the learning stage


@dataclass
class Assembled:
    """The lazy products of :func:`cube_dataset`."""

    cube: xr.Dataset  # ndsi(time, y, x), n_scenes, interpolated, spatial_ref
    scenes: xr.Dataset  # per scene in the cube: valid_fraction, used, shift_x, shift_y, ecc, aligned
    dropped: dict[str, str]  # item id -> why the cube builder left it out


def _stack(items: list[dict[str, Any]], spec: CubeSpec, reader: type | None) -> xr.DataArray:
    return cube.build_cube(
        items, bbox_lonlat=spec.bbox, epsg=spec.epsg, resolution=spec.resolution, platforms=spec.platforms,
        reader=reader or cube.ReportingRioReader,
    )


def _quality(raw: xr.DataArray, pre: PreprocessSpec) -> tuple[xr.DataArray, xr.DataArray, xr.DataArray]:
    """Masked bands, per-scene valid fraction and ``used`` flag (lazy)."""
    masked = preprocess.mask_invalid(raw, mask_clouds=pre.mask_clouds)
    frac = preprocess.valid_fraction(masked)
    return masked, frac, frac >= (1.0 - pre.max_missing)


def _reference(masked: xr.DataArray, used: xr.DataArray, pre: PreprocessSpec) -> xr.DataArray:
    """ECC template: median-filtered temporal mean (NaN-skipping) of the used scenes' grey images."""
    return align.reference_image(align.alignment_image(masked.where(used), highpass=pre.align_highpass))


def quality_pass(
    items: list[dict[str, Any]], spec: CubeSpec, pre: PreprocessSpec, reader: type | None = None
) -> tuple[xr.DataArray, xr.DataArray]:
    """Lazy per-scene valid fractions and the ECC reference: reads and masks only (no gap-fill, no ECC).

    :func:`build_cube_store` computes this first, so that the main pass holds no scene longer than its
    own tasks need (the reference needs every scene; the alignment needs the reference).
    """
    masked, frac, used = _quality(_stack(items, spec, reader), pre)
    return frac, _reference(masked, used, pre)


def cube_dataset(
    items: list[dict[str, Any]],
    spec: CubeSpec,
    pre: PreprocessSpec,
    reader: type | None = None,
    quality: tuple[np.ndarray, np.ndarray] | None = None,
) -> Assembled:
    """Assemble the lazy periodic cube and per-scene diagnostics from (signed) items.

    Parameters
    ----------
    items
        STAC item dicts, signed if the catalog needs it.
    spec, pre
        What to stack and how to preprocess.
    reader
        stackstac reader class (default :class:`glacierflow.cube.ReportingRioReader`);
        :class:`glacierflow.cube.SigningRioReader` signs each href on the worker right before reading.
    quality
        Computed ``(valid_fraction per stacked scene, reference image)`` from :func:`quality_pass`: scenes
        over ``max_missing`` are then left out of the graph entirely. Without it, everything is one lazy
        graph (dropped scenes become NaN inside it).

    Returns
    -------
    Assembled
        Lazy datasets; nothing has been read.
    """
    raw = _stack(items, spec, reader)
    masked, frac, used = _quality(raw, pre)
    if quality is None:
        masked = masked.where(used)
        reference: xr.DataArray = _reference(masked, used, pre)
        kept = raw
    else:
        frac_values, ref_values = quality
        if len(frac_values) != raw.sizes["time"]:
            raise GlacierflowError("quality pass and cube disagree on the scenes; rerun build-cube")
        frac = xr.DataArray(np.asarray(frac_values, np.float32), dims="time")
        used = frac >= (1.0 - pre.max_missing)
        keep = np.flatnonzero(used.values)
        masked, kept = masked.isel(time=keep), raw.isel(time=keep)
        reference = xr.DataArray(np.asarray(ref_values), dims=("y", "x"), coords={"y": raw.y, "x": raw.x})
    filled = preprocess.gap_fill(masked, max_iter=pre.gap_fill_max_iter)
    index = preprocess.ndsi(filled)
    grey = align.alignment_image(filled, highpass=pre.align_highpass)
    aligned, diag = align.align(index, reference, motion=pre.motion, guide=grey)
    snow = preprocess.snow_mask(aligned, pre.ndsi_threshold)
    periodic = preprocess.resample(snow, pre.period, start=spec.start, end=spec.end)
    # scenes dropped inside the graph still have a time stamp: count only the used ones per period
    starts, pos = preprocess.period_starts(raw["time"].values, pre.period, spec.start, spec.end)
    onehot = np.zeros((len(pos), len(starts)), np.int64)
    inside = pos >= 0
    onehot[np.flatnonzero(inside), pos[inside]] = 1
    used_data = used.data if isinstance(used.data, da.Array) else da.from_array(np.asarray(used.data))
    n_used = da.dot(used_data.astype(np.int64), onehot)
    periodic["n_scenes"] = ("time", n_used)
    periodic["interpolated"] = ("time", n_used == 0)
    periodic = periodic.assign_coords(spatial_ref=raw.coords["spatial_ref"])
    periodic["ndsi"].attrs.update(
        long_name="snow-mask NDSI (NDSI where >= threshold, else 0), mean per period",
        threshold=pre.ndsi_threshold,
        period=pre.period,
        grid_mapping="spatial_ref",
    )
    periodic["n_scenes"].attrs["long_name"] = "number of scenes averaged in the period"
    periodic["interpolated"].attrs["long_name"] = "no scene in the period: linear interpolation in time"
    # per-scene table over every stacked scene (plain variables, no extra coords: merging lazily-computed
    # coords would trigger compute); alignment diagnostics of scenes left out of the graph stay empty
    ids = raw["id"].values.astype(object)
    diag = diag.drop_vars([c for c in diag.coords if c != "time"]).assign_coords(time=kept["time"].values)
    if quality is not None:
        diag = diag.reindex(time=raw["time"].values, fill_value={"aligned": False})
    per_scene = {
        "valid_fraction": frac.astype(np.float32),
        "used": used,
        **{k: diag[k] for k in ("shift_x", "shift_y", "ecc", "aligned")},
    }
    scenes = xr.Dataset(
        {k: ("time", v.data) for k, v in per_scene.items()},
        coords={"time": raw["time"].values, "item_id": ("time", ids)},
    )
    return Assembled(periodic.transpose("time", "y", "x"), scenes, dict(raw.attrs.get("dropped_items", {})))


def _naive(value: str) -> pd.Timestamp:
    """A STAC datetime as a naive UTC timestamp."""
    t = pd.Timestamp(value)
    return t if t.tz is None else t.tz_convert(None)


def _scene_table(
    search: catalog.SearchResult, computed: xr.Dataset, dropped: dict[str, str], max_missing: float
) -> xr.Dataset:
    """One row per scene considered (searched, rejected or stacked), with why it was not used."""
    rows: list[dict[str, Any]] = []
    seen = set()
    ids = [str(i) for i in computed["item_id"].values]
    props = {it["id"]: it["properties"] for it in search.items}
    for k, item_id in enumerate(ids):
        p = props.get(item_id, {})
        used = bool(computed["used"].values[k])
        vf = float(computed["valid_fraction"].values[k])
        aligned = bool(computed["aligned"].values[k])
        reason = "" if used else f"missing: valid fraction {vf:.2f} < {1 - max_missing:.2f}"
        if used and not aligned:
            reason = "used unaligned: ECC did not converge"
        if item_id in dropped:
            reason = f"read error: {dropped[item_id]}"
        rows.append(
            {
                "time": pd.Timestamp(computed["time"].values[k]),
                "item_id": item_id,
                "platform": str(p.get("platform", "")),
                "cloud_cover": float(p.get("eo:cloud_cover", np.nan)),
                "valid_fraction": vf,
                "used": used,
                "reason": reason,
                "shift_x": float(computed["shift_x"].values[k]),
                "shift_y": float(computed["shift_y"].values[k]),
                "ecc": float(computed["ecc"].values[k]),
                "aligned": aligned,
            }
        )
        seen.add(item_id)
    for item_id, why in dropped.items():
        if item_id in seen or item_id not in props:
            continue
        p = props[item_id]
        rows.append(
            {
                "time": _naive(p["datetime"]),
                "item_id": item_id,
                "platform": str(p.get("platform", "")),
                "cloud_cover": float(p.get("eo:cloud_cover", np.nan)),
                "valid_fraction": np.nan,
                "used": False,
                "reason": why,
                "shift_x": np.nan,
                "shift_y": np.nan,
                "ecc": np.nan,
                "aligned": False,
            }
        )
    for rej in search.rejected:
        p = rej.properties
        rows.append(
            {
                "time": _naive(p["datetime"]) if p.get("datetime") else pd.NaT,
                "item_id": rej.item_id,
                "platform": str(p.get("platform", "")),
                "cloud_cover": float(p.get("eo:cloud_cover", np.nan)),
                "valid_fraction": np.nan,
                "used": False,
                "reason": f"{rej.reason}: {rej.detail}",
                "shift_x": np.nan,
                "shift_y": np.nan,
                "ecc": np.nan,
                "aligned": False,
            }
        )
    df = pd.DataFrame(rows)
    df["_t"] = df["time"].fillna(pd.Timestamp.max)
    df = df.sort_values(["_t", "item_id"]).drop(columns="_t").reset_index(drop=True)
    ds = xr.Dataset(
        {
            c: ("scene", df[c].to_numpy(dtype=object if c in ("item_id", "platform", "reason") else None))
            for c in df.columns
            if c != "time"
        },
        coords={"time": ("scene", df["time"].to_numpy(dtype="datetime64[ns]"))},
    )
    ds["shift_x"].attrs.update(units="pixel", description="scene[r, c] ~ reference[r - shift_y, c - shift_x]")
    ds["shift_y"].attrs.update(units="pixel")
    ds["ecc"].attrs["description"] = "ECC correlation coefficient with the reference after alignment"
    return ds


def default_store_name(name: str, period: str) -> str:
    """Default output path for a site: ``<name>-<period>.zarr``."""
    return f"{name}-{period.lower()}.zarr"


def build_cube_store(
    spec: CubeSpec,
    pre: PreprocessSpec,
    out: str,
    *,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
    signer: str | Callable[[dict[str, Any]], dict[str, Any]] | type | None = None,
    compute: Callable[[list[Any]], list[Any]] | None = None,
) -> dict[str, Any]:
    """Search, assemble and write a cube store; returns a summary dict.

    Parameters
    ----------
    spec, pre
        Stage specs (stored in the store's attrs).
    out
        Local path or fsspec URL of the store.
    overwrite
        Replace an existing store.
    storage_options
        fsspec options for ``out``.
    signer
        Signing hook: a name in :data:`glacierflow.catalog.SIGNERS`, a callable signing item dicts, or a
        :class:`glacierflow.cube.SigningRioReader` subclass (signs at read time); default by catalog URL
        (``planetary-computer`` signs at read time).
    compute
        Runs a list of dask objects and returns their results (progress bars, distributed clients);
        default ``dask.compute``.
    """
    t0 = time.perf_counter()
    if not overwrite and store.exists(out, storage_options):
        raise GlacierflowError(f"store {out} already exists; pass --overwrite to replace it")
    found = catalog.search(
        spec.catalog,
        bbox=spec.bbox,
        start=spec.start,
        end=spec.end,
        collection=spec.collection,
        platforms=spec.platforms,
        max_cloud=spec.max_cloud,
    )
    found.raise_if_empty()
    # Planetary Computer tokens expire (~45 min): its hrefs are signed on the workers, when each reader is
    # made right before its read; other signers sign the items here. Signed hrefs never reach the store.
    signer = signer or catalog.default_signer(spec.catalog)
    if isinstance(signer, type) and issubclass(signer, cube.SigningRioReader):
        signed, reader = list(found.items), signer
    elif signer == "planetary-computer":
        signed, reader = list(found.items), cube.SigningRioReader
    else:
        signed, reader = catalog.sign_items(found.items, signer), None
    run = compute or (lambda objs: list(dask.compute(*objs)))
    dropped: dict[str, str] = {}

    def _run_reporting(objs: list[Any]) -> list[Any]:
        # unreadable assets become NaN (cube.ReportingRioReader) and are reported as warnings, which
        # distributed forwards from the workers to this client: collect them to name the scenes.
        # Low-level fusion off: the per-scene diagnostics share the alignment tasks with the Zarr write
        # (with fusion on, the write's fused copy of each task would run ECC a second time).
        with warnings.catch_warnings(record=True) as caught, dask.config.set({"optimization.fuse.active": False}):
            warnings.simplefilter("always")
            results = run(objs)
        messages = [str(w.message) for w in caught if "unreadable asset" in str(w.message)]
        for item in signed:
            for key, asset in item["assets"].items():
                plain = str(asset.get("href", "")).split("?", 1)[0]
                if plain and any(plain in m for m in messages):
                    dropped[item["id"]] = f"unreadable {key} asset"
        return results

    # pass 1 (reads + QA masks only): valid fractions and the ECC reference, so that pass 2 leaves the
    # dropped scenes out and never has to keep every scene in memory while the reference is reduced
    frac_values, ref_values = _run_reporting(list(quality_pass(signed, spec, pre, reader)))
    if not (np.asarray(frac_values) >= 1.0 - pre.max_missing).any():
        best = float(np.nanmax(frac_values)) if len(frac_values) else 0.0
        raise GlacierflowError(
            f"none of the {len(frac_values)} scenes has enough valid pixels over the bbox (best valid "
            f"fraction {best:.2f}, need {1 - pre.max_missing:.2f}); check the bbox against the scenes' "
            "footprints or raise --max-missing; no store was written"
        )
    assembled = cube_dataset(signed, spec, pre, reader=reader, quality=(frac_values, ref_values))
    # Zarr chunks: one period, 250x250 px (a multiple of the 50-px training patch)
    ds = assembled.cube.chunk({"time": 1, "y": SPATIAL_CHUNK, "x": SPATIAL_CHUNK})
    ds.attrs = {
        "glacierflow_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "cube_spec": spec.to_json(),
        "preprocess_spec": pre.to_json(),
        "search": json.dumps(found.parameters(), default=str),
        "title": f"glacierflow NDSI cube: {spec.name}, {pre.period} periods",
    }
    dropped.update(assembled.dropped)
    # the per-scene diagnostics are written in the same pass as the cube (one graph: ECC runs once per
    # scene), as temporary root variables along "_scene", then reshaped into the "scenes" group
    diag_names = {k: f"_scene_{k}" for k in assembled.scenes.data_vars}
    scene_vars = assembled.scenes.drop_vars(["time", "item_id"]).rename({"time": "_scene", **diag_names})
    ds = ds.assign(scene_vars.data_vars)
    state: dict[str, Any] = {}

    def _compute(delayed: Any) -> None:
        _run_reporting([delayed])

    def _groups(written: xr.Dataset) -> dict[str, xr.Dataset]:
        scenes = xr.Dataset(
            {k: ("time", written[v].values) for k, v in diag_names.items()},
            coords={"time": assembled.scenes["time"].values, "item_id": assembled.scenes["item_id"]},
        )
        state["scenes"] = scenes
        state["table"] = _scene_table(found, scenes, dropped, pre.max_missing)
        return {"scenes": state["table"]}

    store.write_store(
        ds, out, overwrite=overwrite, storage_options=storage_options, compute=_compute, groups=_groups,
        temporary=tuple(diag_names.values()),
    )
    table, scenes = state["table"], state["scenes"]
    used = scenes["used"].values.astype(bool)
    aligned = scenes["aligned"].values.astype(bool) & used
    result = store.open_store(out, storage_options)
    reasons: dict[str, int] = {}
    for r in table["reason"].values:
        if r:
            key = str(r).split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
    return {
        "store": out,
        "scenes_found": len(found.items) + len(found.rejected),
        "scenes_stacked": int(len(used)),
        "scenes_used": int(used.sum()),
        "dropped": reasons,
        "periods": int(result.sizes["time"]),
        "periods_interpolated": int(result["interpolated"].values.sum()),
        "aligned": int(aligned.sum()),
        "shift_rms_px": float(
            np.sqrt(np.nanmean(scenes["shift_x"].values[aligned] ** 2 + scenes["shift_y"].values[aligned] ** 2))
        )
        if aligned.any()
        else None,
        "ecc_median": float(np.nanmedian(scenes["ecc"].values[aligned])) if aligned.any() else None,
        "server_filter": found.server_filter,
        "seconds": round(time.perf_counter() - t0, 2),
    }
