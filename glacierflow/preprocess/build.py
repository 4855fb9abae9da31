"""``build-cube`` as a composition: search -> cube -> preprocess -> align -> resample -> one lazy Dataset.

:func:`cube_dataset` assembles the whole product lazily (nothing is read or computed): the periodic cube,
the per-scene table and the aligned guide images, as ordinary lazy variables of **one** Dataset;
:func:`as_tree` arranges it in the cube store's groups and :func:`glacierflow.storage.store.write` computes and
writes it in one pass. :func:`build_cube_store` is the whole command.

Every scene's COG windows (``qa_pixel`` and the bands) are read once, by one fused task per scene
(:mod:`glacierflow.preprocess.fused`: mask, NDSI, guide), followed by the two ECC passes and the period sums;
the scene table and the period figures come out of the same single pass. Above
:data:`glacierflow.preprocess.fused.SPILL_BYTES` of NDSI and guides the scenes go through a scratch Zarr store
between the passes instead of memory. :func:`plan_build` is everything that can be checked before a pixel is
read (output, search, grid): the CLI runs it before starting a cluster, and ``--dry-run`` prints it.
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
from glacierflow.preprocess import align, fused, periods
from glacierflow.preprocess import qa as preprocess
from glacierflow.specs import CubeSpec, PreprocessSpec
from glacierflow.storage import cf, stac_out, store
from glacierflow.storage.cubes import SPATIAL_CHUNK

#: Per-scene table variables (dim ``scene``; ``scene_time`` becomes ``time`` in the ``scenes`` group).
TABLE = ("item_id", "platform", "cloud_cover", "valid_fraction", "used", "reason", "aligned", "shift_x",
         "shift_y", "ecc", "wrs_path", "wrs_row", "collection_category")
#: The ECC references (group ``reference``): pass-1 and pass-2 templates, the pixels pass 2 looks at.
REFERENCE = ("reference_1", "reference_2", "reference_static")
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


def _reasons(frac: np.ndarray, qa_err: np.ndarray, asset_err: np.ndarray, aligned: np.ndarray, ecc: np.ndarray,
             band_err: np.ndarray, *, need: float, min_ecc: float, bands: tuple[str, ...]) -> np.ndarray:
    """Why each scene is not averaged ('' if it is): read error, missing, alignment (first that applies)."""
    out = np.empty(frac.shape, object)
    for i in range(frac.size):
        bad = [b for b, e in zip(bands, band_err[i], strict=True) if e]
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


def _reason_column(cols: dict[str, np.ndarray], need: float, min_ecc: float) -> dict[str, np.ndarray]:
    """The ``reason`` column from the per-scene columns of :func:`glacierflow.preprocess.fused.scene_columns`."""
    keys = ("valid_fraction", "qa_read_error", "asset_error", "aligned", "ecc", "band_error")
    return {"reason": _reasons(*(cols[k] for k in keys), need=need, min_ecc=min_ecc,
                               bands=preprocess.REFLECTANCE_BANDS)}


def scene_settings(items: list[dict[str, Any]], raw: xr.DataArray, spec: CubeSpec, pre: PreprocessSpec,
                   reader: type | None, scratch: str | None, storage_options: dict[str, Any] | None,
                   strict: bool) -> tuple[fused.SceneSettings, list[dict[str, Any]]]:
    """The per-scene tasks' settings and the normalised item of every stacked scene (for the asset check).

    A scratch store is created (empty arrays) only when the scenes' NDSI and guides together exceed
    :data:`glacierflow.preprocess.fused.SPILL_BYTES`.
    """
    bands = [str(b) for b in raw["band"].values]  # the assets checked are the ones stacked (the guide band's too)
    by_id = {str(it["id"]): it for it in items_mod.normalise_items(items, assets=bands, platforms=spec.platforms)}
    sign = reader.sign_href if isinstance(reader, type) and issubclass(reader, readers.SigningRioReader) else None
    n, shape = raw.sizes["time"], (raw.sizes["y"], raw.sizes["x"])
    spill = scratch is not None and n * shape[0] * shape[1] * 8 > fused.SPILL_BYTES
    so = storage_options if spill and "://" in str(scratch) and not str(scratch).startswith("file://") else None
    if spill:
        fused.create_scratch(str(scratch), n, shape, so)
    s = fused.SceneSettings(bands=tuple(str(b) for b in raw["band"].values), pre=pre, env=_env(spec), sign=sign,
                            scratch=scratch if spill else None, storage_options=so, strict=strict)
    return s, [by_id[str(i)] for i in raw["id"].values]


def cube_dataset(
    items: list[dict[str, Any]],
    spec: CubeSpec,
    pre: PreprocessSpec,
    *,
    reader: type | None = None,
    raw: xr.DataArray | None = None,
    scratch: str | None = None,
    storage_options: dict[str, Any] | None = None,
    rejected: list[catalog.Rejection] = (),  # type: ignore[assignment]
    strict: bool = False,
    references: fused.References | None = None,
    before: xr.DataArray | None = None,
) -> xr.Dataset:
    """The lazy cube store content as one Dataset (one fused task per scene, :mod:`glacierflow.preprocess.fused`).

    Parameters
    ----------
    items
        STAC item dicts (signed if the catalog needs it and ``reader`` does not sign).
    spec, pre
        What to stack and how to preprocess.
    reader
        stackstac reader class (default :class:`glacierflow.ingest.readers.ReportingRioReader`;
        :class:`glacierflow.ingest.readers.SigningRioReader` signs each href on the worker right before reading).
    raw
        The stacked cube of ``items`` (:func:`stack`) if already built (metadata only).
    scratch
        URL of a scratch store for the scenes' NDSI and guides, used when they would not fit
        :data:`glacierflow.preprocess.fused.SPILL_BYTES`; without it they stay in (worker) memory between the
        alignment passes.
    storage_options
        fsspec options for ``scratch``.
    rejected
        Search rejections, recorded as rows of the per-scene table.
    strict
        A scene whose assets are missing, unreadable or not as declared fails the build (one line) instead of
        being dropped.
    references
        Align against these ECC references (``--reference-from``, ``--update``) instead of estimating them from
        the scenes.
    before
        ``(y, x)`` cube of the period just before the first one built (an update): the first periods, if
        empty, are interpolated from it, as in the whole cube.

    Returns
    -------
    xarray.Dataset
        Cube variables ``ndsi``, ``n_valid`` (time, y, x), ``n_scenes``, ``interpolated``, ``time_mean``
        (time); per-scene table variables :data:`TABLE` and ``scene_time`` along ``scene`` (one row per
        scene considered, by time); ``guide(guide_scene, y, x)`` for every stacked scene (NaN for those not
        averaged) unless ``spec.guides`` is False; the references :data:`REFERENCE` ``(y, x)``. All lazy.
    """
    raw = stack(items, spec, reader, strict=strict, guide_band=pre.guide_band) if raw is None else raw
    starts, pos = periods.period_starts(raw["time"].values, pre.period, spec.start, spec.end)
    s, scene_items = scene_settings(items, raw, spec, pre, reader, scratch, storage_options, strict)
    shape = (raw.sizes["y"], raw.sizes["x"])
    blocks = list(raw.data.rechunk({1: -1}).to_delayed().ravel())
    g = fused.scene_graph(blocks, scene_items, pos, len(starts), shape, s, references)
    cols = fused.scene_columns(g, partial(_reason_column, need=1.0 - pre.max_missing, min_ecc=pre.min_ecc),
                               {"reason": STR})
    periodic = _periodic(g, cols, raw, starts, pos, pre, before)
    for name, ref in zip(REFERENCE, fused.reference_arrays(g, shape), strict=True):
        periodic[name] = (("y", "x"), ref)
    _describe(periodic, pre)
    table = _table(items, raw, cols, pre, rejected, dict(raw.attrs["dropped_items"]))
    out = xr.merge([periodic, table], compat="override", join="outer", combine_attrs="drop_conflicts")
    if spec.guides:
        guide = xr.DataArray(fused.guides(g, shape), dims=("guide_scene", "y", "x"),
                             coords={"guide_scene": raw["id"].values.astype(STR), "y": raw.y, "x": raw.x,
                                     "spatial_ref": raw.coords["spatial_ref"]})
        out["guide"] = guide.chunk({"guide_scene": 1, "y": SPATIAL_CHUNK, "x": SPATIAL_CHUNK})
        out["guide"].attrs.update(long_name="aligned QA-masked ECC guide image (NaN where not averaged)",
                                  grid_mapping="spatial_ref")
    return out


def _periodic(g: fused.Scenes, cols: dict[str, Any], raw: xr.DataArray, starts: pd.DatetimeIndex,
              pos: np.ndarray, pre: PreprocessSpec, before: xr.DataArray | None = None) -> xr.Dataset:
    """The periodic cube: means (gap-filled, empty periods interpolated), ``n_valid``, per-period figures.

    ``before``: the cube of the period before the first (interpolation runs from it; it is not returned).
    """
    shape = (raw.sizes["y"], raw.sizes["x"])
    means, n_valid = fused.period_cube(g, shape)
    mean = xr.DataArray(means, dims=("time", "y", "x"), coords={"time": starts.values})
    ndsi = periods.interpolate_periods(mean) if before is None else periods.interpolate_periods(xr.concat(
        [before.drop_vars(list(before.coords)).astype(np.float32).expand_dims(time=[np.datetime64(0, "ns")]),
         mean], "time", join="override")).isel(time=slice(1, None)).assign_coords(time=starts.values)
    used = cols["used"].rechunk(-1)
    t_ns = raw["time"].values.astype("datetime64[ns]").astype(np.int64)
    n_p = len(starts)
    n_scenes = used.map_blocks(_n_scenes, pos, n_p, chunks=((n_p,),), dtype=np.int64)
    t0 = starts.values.astype("datetime64[ns]")
    time_mean = used.map_blocks(_time_mean, pos, t_ns, n_p, t0, chunks=((n_p,),), dtype="datetime64[ns]")
    ds = xr.Dataset({
        "ndsi": ndsi,
        "n_valid": (("time", "y", "x"), n_valid),
        "n_scenes": ("time", n_scenes),
        "time_mean": ("time", time_mean),
    }, coords={"time": starts.values})
    ds["interpolated"] = ds["n_scenes"] == 0
    ds = ds.assign_coords(x=raw.x, y=raw.y, spatial_ref=raw.coords["spatial_ref"])
    return ds.chunk({"time": 1, "y": SPATIAL_CHUNK, "x": SPATIAL_CHUNK})


def _n_scenes(used: np.ndarray, pos: np.ndarray, n_p: int) -> np.ndarray:
    ok = used.astype(bool) & (pos >= 0)
    return np.bincount(pos[ok], minlength=n_p).astype(np.int64)


def _time_mean(used: np.ndarray, pos: np.ndarray, t_ns: np.ndarray, n_p: int, starts: np.ndarray) -> np.ndarray:
    """Mean acquisition time of the used scenes of each period (NaT where none).

    Averaged relative to the period's own start (ns exact in float64 within a period), so a period's figure
    does not depend on where the cube starts (an updated store equals a rebuild).
    """
    out = np.full(n_p, np.datetime64("NaT"), "datetime64[ns]")
    ok = used.astype(bool) & (pos >= 0)
    for k in range(n_p):
        mine = ok & (pos == k)
        if mine.any():
            rel = (t_ns[mine] - starts[k].astype(np.int64)).astype(np.float64)
            out[k] = starts[k] + np.round(rel.sum() / mine.sum()).astype("timedelta64[ns]")
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
def _table(items, raw, cols, pre, rejected, dropped) -> xr.Dataset:  # noqa: ANN001
    """One row per scene considered (stacked, dropped by the cube builder, rejected by the search)."""
    props = {str(it["id"]): it.get("properties", {}) for it in items}
    props.update({r.item_id: r.properties for r in rejected})
    ids = [str(i) for i in raw["id"].values]
    n = len(ids)
    reason = cols["reason"] if n else np.empty(0, STR)
    stacked = {
        "scene_time": raw["time"].values.astype("datetime64[ns]"),
        "item_id": np.array(ids, STR),
        "platform": np.array([_prop(props.get(i, {}), "platform") for i in ids], STR),
        "cloud_cover": np.array([_prop(props.get(i, {}), "eo:cloud_cover", float) for i in ids]),
        "valid_fraction": cols["valid_fraction"],
        "used": cols["used"],
        "reason": reason,
        "aligned": cols["aligned"],
        "shift_x": cols["shift_x"],
        "shift_y": cols["shift_y"],
        "ecc": cols["ecc"],
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


def as_tree(ds: xr.Dataset) -> xr.DataTree:
    """The cube store's layout: the cube at the root, groups ``scenes`` and (if present) ``guides``."""
    table = [v for v in TABLE if v in ds]
    guides = ["guide"] if "guide" in ds else []
    refs = [v for v in REFERENCE if v in ds]
    root = ds.drop_vars(table + guides + refs + ["scene_time", "guide_scene"], errors="ignore")
    root = root.drop_dims([d for d in ("scene", "guide_scene") if d in root.dims])
    scenes = ds[table].drop_vars(["x", "y", "time", "spatial_ref"], errors="ignore")
    scenes = scenes.assign_coords(scene_time=ds["scene_time"]).rename(scene_time="time")
    scenes.attrs = {"title": "one row per scene considered: used or why not, alignment diagnostics"}
    nodes = {"/": root, "scenes": scenes}
    if guides:
        g = ds[["guide"]].rename(guide_scene="scene")
        g.attrs = {"title": "aligned QA-masked ECC guide image of every scene that entered the alignment"}
        nodes["guides"] = g
    if refs:
        r = ds[refs].drop_vars(["time"], errors="ignore")
        r.attrs = {"title": "the ECC references every scene was aligned against (--update and --reference-from "
                            "align new scenes to them)"}
        nodes["reference"] = r
    return xr.DataTree.from_dict(nodes)


# --- the command --------------------------------------------------------------------------------------------


def default_store_name(name: str, period: str) -> str:
    """Default output path for a site: ``<name>-<period>.zarr``."""
    return f"{name}-{period.lower()}.zarr"


def signing(
    found: catalog.SearchResult, signer: Any, spec: CubeSpec
) -> tuple[list[dict[str, Any]], type | None]:
    """Items to stack and the reader class: Planetary Computer hrefs are signed on the workers at read time."""
    signer = signer or catalog.default_signer(spec.catalog)
    if isinstance(signer, type) and issubclass(signer, readers.SigningRioReader):
        return list(found.items), signer
    if signer == "planetary-computer":
        return list(found.items), readers.SigningRioReader
    return catalog.sign_items(found.items, signer), None


def cube_attrs(spec: CubeSpec, pre: PreprocessSpec, found: catalog.SearchResult) -> dict[str, Any]:
    """The cube store's root attributes: version, creation time, the specs and the search that found its scenes."""
    return {
        "glacierflow_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "cube_spec": spec.to_json(),
        "preprocess_spec": pre.to_json(),
        "search": json.dumps(found.parameters(), default=str),
        "title": f"glacierflow NDSI cube: {spec.name}, {pre.period} periods",
    }


@dataclass(frozen=True)
class BuildPlan:
    """What build-cube will read and write, known before any pixel is read or any cluster starts.

    Made by :func:`plan_build` (the search, the output check and the cube's grid: metadata only).
    """

    spec: CubeSpec
    pre: PreprocessSpec
    out: str
    found: catalog.SearchResult
    items: list[dict[str, Any]]
    reader: type | None
    raw: xr.DataArray  # the lazy stacked cube (metadata only)

    def lines(self) -> list[str]:
        """The ``--dry-run`` report: scenes found, the cube's shape, bytes read and written (estimates)."""
        n, n_assets = self.raw.sizes["time"], self.raw.sizes["band"]
        h, w = self.raw.sizes["y"], self.raw.sizes["x"]
        starts, _ = periods.period_starts(self.raw["time"].values, self.pre.period, self.spec.start, self.spec.end)
        read = n * n_assets * h * w * 2  # uint16 windows; COG compression makes the transfer smaller
        written = len(starts) * h * w * 5 + (n * h * w * 4 if self.spec.guides else 0)  # uncompressed
        found = len(self.found.items) + len(self.found.rejected)
        out = [f"scenes: {found} found, {len(self.found.items)} kept by the search, {n} stacked "
               f"({', '.join(f'{k} {v}' for k, v in sorted(_platforms(self.raw).items()))})"]
        out += [f"  rejected {v:4d}: {k}" for k, v in sorted(self.found.reasons().items())]
        out += [f"cube: ndsi (time {len(starts)}, y {h}, x {w}) {self.pre.period} periods from "
                f"{starts[0]:%Y-%m-%d} to {starts[-1]:%Y-%m-%d}; EPSG:{self.spec.epsg}, {self.spec.resolution:g} m",
                f"reads: {n} scenes x {n_assets} assets ({', '.join(map(str, self.raw['band'].values))}) "
                f"= {n * n_assets} windows, at most {_mb(read)} (uncompressed; compressed COGs send less)",
                f"writes: about {_mb(written)} uncompressed (ndsi + n_valid"
                f"{', guides of every stacked scene' if self.spec.guides else ''}) to {self.out}",
                "dry run: no cluster started, no pixel read, nothing written"]
        return out


def _platforms(raw: xr.DataArray) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in raw["platform"].values:
        counts[str(p)] = counts.get(str(p), 0) + 1
    return counts


def _mb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def search(spec: CubeSpec, start: str | None = None) -> catalog.SearchResult:
    """The STAC search of ``spec`` (from ``start`` instead of ``spec.start`` if given: an update's window)."""
    return catalog.search(spec.catalog, bbox=spec.bbox, start=start or spec.start, end=spec.end,
                          collection=spec.collection, platforms=spec.platforms, max_cloud=spec.max_cloud,
                          categories=spec.categories, retries=spec.http_retries, backoff=spec.http_retry_delay,
                          timeout=spec.http_timeout)


def load_references(url: str, raw: xr.DataArray, storage_options: dict[str, Any] | None = None
                    ) -> fused.References:
    """The ECC references of the cube store ``url`` (group ``reference``), checked against the grid of ``raw``.

    One line when the store has none (built before they were recorded) or lies on another grid.
    """
    root = store.open_store(url, storage_options)
    try:
        ref = store.open_store(url, storage_options, group="reference").load()
    except (GlacierflowError, FileNotFoundError, KeyError, OSError):
        ref = None
    if ref is None or any(v not in ref for v in REFERENCE):
        raise GlacierflowError(
            f"store {url} records no ECC reference (built by glacierflow {root.attrs.get('glacierflow_version', '?')}"
            f" before references were stored); rebuild it once with this version (--overwrite), then align to it")
    same = (store.epsg_of(root) == store.epsg_of(raw)
            and root.sizes["y"] == raw.sizes["y"] and root.sizes["x"] == raw.sizes["x"]
            and np.allclose(root["x"].values, raw["x"].values, atol=1e-6)
            and np.allclose(root["y"].values, raw["y"].values, atol=1e-6))
    if not same:
        raise GlacierflowError(
            f"--reference-from {url}: its grid (EPSG:{store.epsg_of(root)}, {root.sizes['y']}x{root.sizes['x']} px "
            f"from x {float(root['x'].min()):.0f}, y {float(root['y'].max()):.0f}) is not this cube's "
            f"(EPSG:{store.epsg_of(raw)}, {raw.sizes['y']}x{raw.sizes['x']} px from x {float(raw['x'].min()):.0f}, "
            f"y {float(raw['y'].max()):.0f}); align cubes of the same bbox, EPSG and resolution")
    images = [np.asarray(ref[v].values) for v in REFERENCE]
    first, second = (None if not np.isfinite(a).any() else a.astype(np.float32) for a in images[:2])
    return fused.References(first, second, images[2].astype(bool))


def plan_build(spec: CubeSpec, pre: PreprocessSpec, out: str, *, overwrite: bool = False,
               storage_options: dict[str, Any] | None = None,
               signer: str | Callable[[dict[str, Any]], dict[str, Any]] | type | None = None,
               strict: bool = False) -> BuildPlan:
    """Every check build-cube can make before reading a pixel: the output, the search, the cube's grid.

    Cheap and local (one STAC search): the CLI runs it before it starts a cluster, and ``--dry-run`` prints
    :meth:`BuildPlan.lines`. Parameters as :func:`build_cube_store`.
    """
    if not overwrite and store.exists(out, storage_options):
        raise GlacierflowError(f"store {out} already exists; pass --overwrite to replace it")
    found = search(spec)
    found.raise_if_empty()
    items, reader = signing(found, signer, spec)
    return BuildPlan(spec, pre, out, found, items, reader,
                     stack(items, spec, reader, strict=strict, guide_band=pre.guide_band))


def lazy_cube(spec: CubeSpec, pre: PreprocessSpec, *, signer: Any = None, strict: bool = False) -> xr.Dataset:
    """The cube store's content for ``spec``, lazy: only the search runs now (the Python API's ``build_cube``).

    Parameters
    ----------
    spec, pre
        What to search and stack, and how to preprocess.
    signer
        As :func:`build_cube_store`.
    strict
        As :func:`build_cube_store`.

    Returns
    -------
    xarray.Dataset
        As :func:`cube_dataset`, with :func:`cube_attrs`; the scenes stay in (worker) memory between the
        alignment passes (no scratch store).
    """
    plan = plan_build(spec, pre, "", overwrite=True, signer=signer, strict=strict)  # no output to check
    ds = cube_dataset(plan.items, spec, pre, reader=plan.reader, raw=plan.raw, rejected=plan.found.rejected,
                      strict=strict)
    ds.attrs = cube_attrs(spec, pre, plan.found)
    return ds


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
    plan: BuildPlan | None = None,
    reference_from: str | None = None,
) -> BuildSummary:
    """Search, assemble and write a cube store in one pass over the pixels (see the module notes).

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
    plan
        :func:`plan_build` of the same arguments, if already made (the CLI makes it before the cluster).
    reference_from
        Align every scene to the ECC references of this cube store (same grid) instead of estimating them
        (``--reference-from``): cubes of one glacier co-registered across runs.
    """
    t0 = time.perf_counter()
    plan = plan or plan_build(spec, pre, out, overwrite=overwrite, storage_options=storage_options, signer=signer,
                              strict=strict)
    run = compute or (lambda objs: list(dask.compute(*objs)))
    refs = load_references(reference_from, plan.raw, storage_options) if reference_from else None
    scratch = store.sibling(out, "scratch")
    try:
        ds = cube_dataset(plan.items, spec, pre, reader=plan.reader, raw=plan.raw, scratch=scratch,
                          storage_options=storage_options, rejected=plan.found.rejected, strict=strict,
                          references=refs)
        ds.attrs = cube_attrs(spec, pre, plan.found)
        stac_out.beside(store.write(cf.conform(as_tree(ds), period_means=True), out, overwrite=overwrite,
                                    storage_options=storage_options,
                                    compute=_refusing_if_none_used(run, ds, pre)), storage_options)
    finally:
        store.remove(scratch, storage_options)
    return summarise(out, storage_options, scenes_found=len(plan.found.items) + len(plan.found.rejected),
                     server_filter=plan.found.server_filter, seconds=time.perf_counter() - t0)


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


def _refusing_if_none_used(run: Callable[[list[Any]], list[Any]], ds: xr.Dataset,
                           pre: PreprocessSpec) -> Callable[[list[Any]], list]:
    """``run`` that also computes the scenes' ``used``, ``reason``, ``valid_fraction``; raises when none is used.

    They are computed in the same pass as the store. Raising inside :func:`glacierflow.storage.store.write`
    abandons the partial store: nothing is left, and a previous store at the same place is untouched.
    """
    def checked(objs: list[Any]) -> list[Any]:
        *results, used, reasons, frac = run([*objs, ds["used"].data, ds["reason"].data, ds["valid_fraction"].data])
        if not np.asarray(used).any():
            _raise_if_unusable(np.asarray(frac), pre)
            raise GlacierflowError(every_scene_dropped(reasons))
        return results

    return checked


def _raise_if_unusable(frac: np.ndarray, pre: PreprocessSpec) -> None:
    """The one line for a build in which no stacked scene has enough valid pixels."""
    frac = frac[np.isfinite(frac)]  # stacked scenes (rows of rejected items are NaN)
    if not (frac >= 1.0 - pre.max_missing).any():
        best = float(np.max(frac)) if frac.size else 0.0
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
