"""``build-cube --update``: bring a cube store up to date with the scenes acquired since it was built.

What an update does, from the store alone (its ``cube_spec``, ``preprocess_spec``, ``search`` attributes and
its ECC references, group ``reference``):

1. searches the catalog from the start of the store's last period (its still-open period and every scene
   acquired after its last acquisition) to ``end``;
2. the new items (ids not in the ``scenes`` table) decide what changes: the periods they fall in, the new
   periods up to ``end``, and every interpolated period between the last period with scenes before them and
   them (their interpolation runs from that period);
3. the scenes of those periods go through the fused per-scene pipeline (:mod:`glacierflow.preprocess.fused`)
   aligned against the store's own references: the old scenes get the alignment they had (same reference,
   same arithmetic), and nothing older is read again;
4. the new version is written by :func:`glacierflow.storage.store.write_update`: the periods, guides and
   scenes that did not change are taken over (hard links on a local disk), the rest is computed, and the
   store is swapped in as a whole under the writer lock, so an interrupted update leaves the previous version.

The result equals ``build-cube`` over the whole range with ``--reference-from`` the store as it was before.
The reference stays the store's: when the glacier or the sensor changed so much that new scenes align badly
(ECC correlations falling, ``alignment`` reasons piling up in ``scenes``), rebuild the cube (a new reference
from all scenes) with ``build-cube ... --overwrite``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import dask
import numpy as np
import pandas as pd
import xarray as xr

from glacierflow.errors import GlacierflowError
from glacierflow.ingest import catalog
from glacierflow.preprocess import build, fused, periods
from glacierflow.specs import CubeSpec, PreprocessSpec
from glacierflow.storage import cf, stac_out
from glacierflow.storage import store as zstore

#: Root variables along ``time`` (one row per period).
PERIODIC = ("ndsi", "n_valid", "n_scenes", "time_mean", "interpolated")


@dataclass(frozen=True)
class UpdateSummary:
    """What :func:`update_cube` did."""

    store: str
    new_scenes: int
    periods_changed: list[str] = field(default_factory=list)
    periods_added: list[str] = field(default_factory=list)
    unchanged: bool = False
    new_rows: int = 0  # rows added to the scenes table (new scenes and new rejections)
    scenes_used: int = 0  # of the new scenes, averaged into their period
    bytes_written: int = 0
    bytes_reused: int = 0  # taken over from the previous version (hard links, server-side copies)
    end: str = ""
    seconds: float = 0.0

    def lines(self) -> list[str]:
        """The summary as the CLI prints it (one line when nothing changed)."""
        if self.unchanged:
            return [f"{self.store}: up to date to {self.end}; no new scene, no new period; nothing written"]
        total = self.bytes_written + self.bytes_reused
        share = f" ({100 * self.bytes_written / total:.1f} % of the store)" if total else ""
        return [
            f"updated {self.store} to {self.end}",
            f"scenes: {self.new_scenes} new, {self.scenes_used} of them used; {self.new_rows} rows added to scenes",
            f"periods changed ({len(self.periods_changed)}): {', '.join(self.periods_changed) or 'none'}",
            f"periods added ({len(self.periods_added)}): {', '.join(self.periods_added) or 'none'}",
            f"written: {_mb(self.bytes_written)}{share}, {_mb(self.bytes_reused)} kept  ({self.seconds:.1f} s)",
        ]


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


@dataclass(frozen=True)
class UpdatePlan:
    """What an update reads and recomputes, known after one STAC search (no pixel read)."""

    url: str
    spec: CubeSpec  # the store's spec with the new end (and catalog)
    pre: PreprocessSpec
    root: xr.Dataset  # the store as it is (lazy)
    scenes: xr.Dataset  # its scenes table (loaded)
    starts: pd.DatetimeIndex  # every period of the updated store
    first: int  # first period recomputed (the ones before are kept)
    found: catalog.SearchResult  # the window's search
    new_ids: list[str]  # item ids (kept and rejected) not in the table yet
    stack_ids: list[str]  # kept items of the recomputed periods (old and new)

    @property
    def n_old(self) -> int:
        """Periods of the store as it is."""
        return int(self.root.sizes["time"])

    @property
    def unchanged(self) -> bool:
        """Nothing new: no item the table lacks and no new period."""
        return not self.new_ids and len(self.starts) == self.n_old


def _today() -> str:
    return datetime.now(UTC).date().isoformat()


def _check_updatable(url: str, root: xr.Dataset, storage_options: dict[str, Any] | None) -> None:
    """One line unless ``root`` is a cube store with specs, search parameters and ECC references."""
    if "cube_spec" not in root.attrs:
        raise GlacierflowError(f"store {url} is not a cube store (no cube_spec attribute); --update takes a store "
                               "written by build-cube")
    missing = [k for k in ("preprocess_spec", "search") if k not in root.attrs]
    try:
        zstore.open_store(url, storage_options, group="reference")
    except (GlacierflowError, FileNotFoundError, KeyError, OSError):
        missing.append("ECC reference")
    if missing:
        raise GlacierflowError(
            f"store {url} was built by glacierflow {root.attrs.get('glacierflow_version', '?')} and records no "
            f"{', '.join(missing)} to update from; rebuild it once with this version (build-cube ... --out {url} "
            "--overwrite), then --update it")


def plan_update(url: str, *, end: str | None = None, catalog_url: str | None = None,
                storage_options: dict[str, Any] | None = None) -> UpdatePlan:
    """The store's specs, the window's search and what changes (see the module notes); reads no pixel."""
    zstore.recover(url, storage_options)  # a killed writer's leftovers: the previous version restored first
    root = zstore.open_store(url, storage_options, require=("ndsi", "n_scenes"))
    _check_updatable(url, root, storage_options)
    spec = CubeSpec.from_json(root.attrs["cube_spec"])
    pre = PreprocessSpec.from_json(root.attrs["preprocess_spec"])
    searched = zstore.config_attr(root, "search")
    end = str(end or _today())[:10]
    if pd.Timestamp(end) < pd.Timestamp(spec.end):
        raise GlacierflowError(f"--end {end} lies before the store's end {spec.end}; an update only adds time "
                               "(build a new cube for an earlier range)")
    spec = spec.replace(end=end, catalog=catalog_url or searched.get("url") or spec.catalog)
    starts, _ = periods.period_starts(np.array([], "datetime64[ns]"), pre.period, spec.start, spec.end)
    old = pd.DatetimeIndex(root["time"].values)
    if len(starts) < len(old) or not (starts[:len(old)] == old).all():
        raise GlacierflowError(f"store {url}: its periods do not follow its {pre.period} spec from {spec.start}; "
                               "rebuild it with --overwrite")
    scenes = zstore.open_store(url, storage_options, group="scenes").load()
    found = build.search(spec, start=str(old[-1].date()))
    known = {str(i) for i in scenes["item_id"].values}
    new_ids = [str(it["id"]) for it in found.items if str(it["id"]) not in known]
    new_ids += [r.item_id for r in found.rejected if r.item_id not in known]
    times = [it["properties"]["datetime"] for it in found.items]
    pos = periods.period_starts(pd.DatetimeIndex(pd.to_datetime(times, utc=True)).tz_convert(None).values,
                                pre.period, spec.start, spec.end)[1] if times else np.array([], int)
    touched = [int(p) for it, p in zip(found.items, pos, strict=True) if str(it["id"]) not in known and p >= 0]
    first_changed = min([*touched, len(old)])
    n_scenes = root["n_scenes"].values[:first_changed]
    anchor = int(np.flatnonzero(n_scenes > 0)[-1]) if (n_scenes > 0).any() else -1
    stack_ids = [str(it["id"]) for it, p in zip(found.items, pos, strict=True) if p > anchor]
    return UpdatePlan(url, spec, pre, root, scenes, starts, anchor + 1, found, new_ids, stack_ids)


def _recomputed(plan: UpdatePlan, references: fused.References, scratch: str,
                storage_options: dict[str, Any] | None) -> xr.Dataset:
    """The lazy cube content of periods ``plan.first`` on (:func:`build.cube_dataset` over the window's scenes).

    Their interpolation runs from the period before (kept from the store), as it runs in the whole cube.
    """
    before = plan.root["ndsi"].isel(time=plan.first - 1) if plan.first > 0 else None
    spec = plan.spec.replace(start=str(plan.starts[plan.first].date()))
    chosen = set(plan.stack_ids)
    found = [it for it in plan.found.items if str(it["id"]) in chosen]
    rejected = [r for r in plan.found.rejected if r.item_id in set(plan.new_ids)]
    if not found:
        return _no_scene(plan, before, rejected)
    items, reader = build.signing(catalog.SearchResult(found, [], plan.found.server_filter, plan.found.url,
                                                       plan.found.criteria), None, spec)
    raw = build.stack(items, spec, reader, guide_band=plan.pre.guide_band)
    return build.cube_dataset(items, spec, plan.pre, reader=reader, raw=raw, scratch=scratch,
                              storage_options=storage_options, rejected=rejected, references=references,
                              before=before)


def _no_scene(plan: UpdatePlan, before: xr.DataArray | None, rejected: list[catalog.Rejection]) -> xr.Dataset:
    """The recomputed periods when none holds a scene: interpolated from the period before (or NaN)."""
    new = plan.starts[plan.first:]
    y, x = plan.root["y"], plan.root["x"]
    nan = xr.DataArray(np.full((len(new), y.size, x.size), np.nan, np.float32), dims=("time", "y", "x"),
                       coords={"time": new.values})
    if before is not None:
        nan = xr.concat([before.drop_vars(list(before.coords)).expand_dims(time=[np.datetime64(0, "ns")]), nan],
                        "time", join="override")
    ndsi = periods.interpolate_periods(nan.chunk())[-len(new):].assign_coords(time=new.values)
    ds = xr.Dataset({"ndsi": ndsi, "n_valid": (("time", "y", "x"), np.zeros(ndsi.shape, np.uint8)),
                     "n_scenes": ("time", np.zeros(len(new), np.int64)),
                     "time_mean": ("time", np.full(len(new), np.datetime64("NaT"), "datetime64[ns]")),
                     "interpolated": ("time", np.ones(len(new), bool))},
                    coords={"time": new.values, "y": y, "x": x})
    table = {k: ("scene", np.asarray(v)) for k, v in _rejection_rows(rejected).items()}
    return ds.assign(table).assign_coords(scene_time=("scene", _rejection_times(rejected)))


def _rejection_rows(rejected: list[catalog.Rejection]) -> dict[str, np.ndarray]:
    """Table rows of search rejections (as :func:`build.cube_dataset` makes them)."""
    def prop(r: catalog.Rejection, key: str) -> Any:
        return r.properties.get(key)

    n = len(rejected)
    return {
        "item_id": np.array([r.item_id for r in rejected], build.STR),
        "platform": np.array([str(prop(r, "platform") or "") for r in rejected], build.STR),
        "cloud_cover": np.array([float(prop(r, "eo:cloud_cover")) if isinstance(prop(r, "eo:cloud_cover"),
                                 (int, float)) else np.nan for r in rejected]),
        "valid_fraction": np.full(n, np.nan, np.float32), "used": np.zeros(n, bool),
        "reason": np.array([f"{r.reason}: {r.detail}" for r in rejected], build.STR),
        "aligned": np.zeros(n, bool), "shift_x": np.full(n, np.nan), "shift_y": np.full(n, np.nan),
        "ecc": np.full(n, np.nan),
        "wrs_path": np.array([_int(prop(r, "landsat:wrs_path")) for r in rejected], np.int16),
        "wrs_row": np.array([_int(prop(r, "landsat:wrs_row")) for r in rejected], np.int16),
        "collection_category": np.array([str(prop(r, "landsat:collection_category") or "") for r in rejected],
                                        build.STR),
    }


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


def _rejection_times(rejected: list[catalog.Rejection]) -> np.ndarray:
    out = []
    for r in rejected:
        t = r.properties.get("datetime")
        out.append(pd.Timestamp(t).tz_convert(None) if t and pd.Timestamp(t).tz else pd.Timestamp(t) if t else
                   pd.NaT)
    return np.array(out, "datetime64[ns]")


def _order(times: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Rows by time (NaT last), then id: the scenes table's and the guides' order in a build."""
    t = np.asarray(times, "datetime64[ns]")
    keys = np.array([str(i) for i in np.asarray(ids).ravel()])
    return np.lexsort((keys, np.where(np.isnat(t), np.datetime64("2262-01-01", "ns"), t)))


def _merged_table(old: xr.Dataset, new: xr.Dataset) -> xr.Dataset:
    """The store's table with the rows of the recomputed periods' table in place of its own, in build order.

    The scenes of the recomputed periods were processed again (same reference, same arithmetic: their rows come
    out as they were, unless a read that failed then succeeded now); their rows are the ones their periods were
    computed from.
    """
    fresh_ids = {str(i) for i in new["item_id"].values}
    names = [v for v in build.TABLE if v in old]
    fresh = new[names].drop_vars([c for c in new.coords if c != "scene_time"], errors="ignore")
    kept = old[names].rename(time="scene_time").drop_vars(
        [c for c in old.coords if c not in ("time", "scene_time")], errors="ignore")
    kept = kept.isel(scene=[k for k, i in enumerate(kept["item_id"].values) if str(i) not in fresh_ids])
    kept = kept.assign({n: kept[n].astype(build.STR) for n in names if kept[n].dtype.kind in "OUT"})
    kept = kept.chunk({"scene": -1})
    fresh = fresh.assign({n: fresh[n].astype(build.STR) for n in names if fresh[n].dtype.kind in "OUT"})
    both = xr.concat([kept, fresh], "scene", data_vars="all", coords="minimal", join="override",
                     combine_attrs="override")
    order = _order(both["scene_time"].values, both["item_id"].values)
    both = both.isel(scene=order).chunk({"scene": -1})
    for name in names:
        both[name].attrs = dict(old[name].attrs)
    return both


def _merged_guides(old: xr.Dataset | None, new: xr.Dataset, table: xr.Dataset) -> tuple[xr.DataArray | None,
                                                                                       dict[int, int]]:
    """Every guide (the store's and the new scenes'), in build order, and which rows are the store's."""
    if old is None:
        return None, {}
    again = {str(i) for i in new["guide_scene"].values} if "guide" in new else set()
    known = [str(i) for i in old["scene"].values]
    olds = old["guide"].rename(scene="guide_scene").drop_vars(["spatial_ref"], errors="ignore")
    parts = [olds.isel(guide_scene=[k for k, i in enumerate(known) if i not in again])]
    if "guide" in new:
        parts.append(new["guide"].drop_vars(["spatial_ref"], errors="ignore"))
    both = xr.concat(parts, "guide_scene", join="override", coords="minimal", combine_attrs="override")
    when = dict(zip((str(i) for i in table["item_id"].values), table["scene_time"].values, strict=True))
    ids = np.array([str(i) for i in both["guide_scene"].values])
    order = _order(np.array([when.get(i, np.datetime64("NaT")) for i in ids], "datetime64[ns]"), ids)
    both = both.isel(guide_scene=order)
    where = {s: k for k, s in enumerate(known) if s not in again}
    reuse = {i: where[str(s)] for i, s in enumerate(both["guide_scene"].values) if str(s) in where}
    both.attrs = dict(old["guide"].attrs)
    return both, reuse


def _new_version(plan: UpdatePlan, sub: xr.Dataset, guides: xr.Dataset | None,
                 references: xr.Dataset) -> tuple[xr.DataTree, dict[str, dict[int, int]]]:
    """The updated store's tree (lazy: kept parts read from the store) and the rows taken over from it."""
    keep = plan.root.isel(time=slice(0, plan.first))
    periodic = {}
    for name in PERIODIC:
        var = xr.concat([keep[name].drop_vars(["spatial_ref"], errors="ignore"),
                         sub[name].drop_vars(["spatial_ref"], errors="ignore")], "time", join="override")
        var.attrs = dict(sub[name].attrs) or dict(plan.root[name].attrs)
        periodic[name] = var.assign_coords(time=plan.starts.values)
    table = _merged_table(plan.scenes, sub)
    guide, guide_rows = _merged_guides(guides, sub, table)
    flat = xr.Dataset(periodic).assign_coords(x=plan.root["x"], y=plan.root["y"],
                                              spatial_ref=plan.root.coords["spatial_ref"])
    flat = flat.chunk({"time": 1, "y": build.SPATIAL_CHUNK, "x": build.SPATIAL_CHUNK})
    flat = xr.merge([flat, table], compat="override", join="outer", combine_attrs="drop_conflicts")
    if guide is not None:
        flat["guide"] = guide.chunk({"guide_scene": 1, "y": build.SPATIAL_CHUNK, "x": build.SPATIAL_CHUNK})
    for name in build.REFERENCE:
        flat[name] = references[name].drop_vars(["spatial_ref"], errors="ignore")
    flat.attrs = _attrs(plan)
    for var in flat.variables.values():  # written as a build writes them (the store's encoding is not carried)
        var.encoding = {}
    tree = cf.conform(build.as_tree(flat), period_means=True)
    reuse = {name: {k: k for k in range(plan.first)} for name in PERIODIC}
    if guide_rows:
        reuse["guides/guide"] = guide_rows
    return tree, reuse


def _attrs(plan: UpdatePlan) -> dict[str, Any]:
    """The updated store's root attributes: the spec with the new end, the search over the whole range."""
    attrs = {k: v for k, v in plan.root.attrs.items() if k not in (zstore.COMPLETE, "Conventions")}
    search = zstore.config_attr(plan.root, "search")
    search.update(url=plan.spec.catalog, end=f"{plan.spec.end}T23:59:59Z")
    attrs.update(cube_spec=plan.spec.to_json(), search=json.dumps(search, default=str),
                 updated=datetime.now(UTC).isoformat(timespec="seconds"))
    return attrs


@contextmanager
def _compute(cluster: str | None, workers: int | None) -> Iterator[Callable[[list[Any]], list[Any]]]:
    """Run on ``cluster`` (as ``--cluster`` names it) if given, else on the current Dask scheduler."""
    if cluster is None and workers is None:
        yield lambda objs: list(dask.compute(*objs))
        return
    from glacierflow.compute.cluster import get_client  # deferred: distributed; see pyproject's ignore_imports
    from glacierflow.compute.runner import runner

    with get_client(cluster, workers=workers) as client:
        yield runner(client, progress_bar=False)


def update_cube(store: str, *, end: str | None = None, catalog: str | None = None,
                storage_options: dict[str, Any] | None = None, cluster: str | None = None,
                workers: int | None = None, compute: Callable[[list[Any]], list[Any]] | None = None,
                step: Callable[[str], None] | None = None) -> UpdateSummary:
    """Update the cube store with the scenes acquired up to ``end`` (``build-cube --update STORE``).

    Parameters
    ----------
    store
        The cube store (path or fsspec URL), written by ``build-cube``.
    end
        Last date searched (``YYYY-MM-DD``; default today, UTC).
    catalog
        STAC API URL (default: the one the store was searched in).
    storage_options
        fsspec options of the store.
    cluster, workers
        Where the work runs (as ``--cluster``/``--workers``); default: the current Dask scheduler (a
        distributed client already made, or dask's threads).
    compute
        Runs a list of dask objects instead (the CLI's progress bars); overrides ``cluster``.
    step
        Called with each step of the final replace (tests stop an update there).

    Returns
    -------
    UpdateSummary
        New scenes, periods changed and added, bytes written; ``unchanged`` when nothing was new (then
        nothing is written).
    """
    t0 = time.perf_counter()
    plan = plan_update(store, end=end, catalog_url=catalog, storage_options=storage_options)
    if plan.unchanged:
        return UpdateSummary(store, 0, unchanged=True, end=plan.spec.end, seconds=time.perf_counter() - t0)
    refs = zstore.open_store(store, storage_options, group="reference").load()
    references = build.load_references(store, plan.root, storage_options)
    guides = zstore.open_store(store, storage_options, group="guides") if plan.spec.guides else None
    scratch = zstore.sibling(store, "scratch")
    try:
        sub = _recomputed(plan, references, scratch, storage_options)
        tree, reuse = _new_version(plan, sub, guides, refs)
        with _compute(cluster, workers) if compute is None else _given(compute) as run:
            sizes = zstore.write_update(tree, store, reuse=reuse, storage_options=storage_options, compute=run,
                                        step=step)
    finally:
        zstore.remove(scratch, storage_options)
    stac_out.beside(store, storage_options)  # the STAC beside it: the new time extent and source items
    return _summary(plan, sizes, storage_options, time.perf_counter() - t0)


@contextmanager
def _given(compute: Callable[[list[Any]], list[Any]]) -> Iterator[Callable[[list[Any]], list[Any]]]:
    yield compute


def _summary(plan: UpdatePlan, sizes: dict[str, int], storage_options: dict[str, Any] | None,
             seconds: float) -> UpdateSummary:
    """The summary, read back from the written store's table (which of the new scenes were used)."""
    table = zstore.open_store(plan.url, storage_options, group="scenes")
    fresh = set(plan.new_ids)
    kept = {str(it["id"]) for it in plan.found.items}
    ids = [str(i) for i in table["item_id"].values]
    used = table["used"].values.astype(bool)
    day = [f"{t:%Y-%m-%d}" for t in plan.starts]
    return UpdateSummary(
        store=plan.url, new_scenes=len(fresh & kept),
        periods_changed=day[plan.first:plan.n_old], periods_added=day[plan.n_old:],
        new_rows=sum(i in fresh for i in ids),
        scenes_used=int(sum(bool(u) for i, u in zip(ids, used, strict=True) if i in fresh and i in kept)),
        bytes_written=int(sizes["written"]), bytes_reused=int(sizes["reused"]), end=plan.spec.end,
        seconds=round(seconds, 2))
