"""Zarr stores: CRS coordinate, safe writes (local path or any fsspec URL), lazy reads.

Safe writes (:func:`write`): any Dataset, or a DataTree of groups, is written to a temporary sibling
(``.<name>.partial-<uuid>``) as a template plus chunk regions in one computation, marked complete
(``glacierflow_complete``), its metadata consolidated, and moved into place only then. An interrupted
run therefore never leaves a corrupt store where a good one was, and readers refuse incomplete stores.
A run stopped between the steps of the replace leaves the previous store in a ``.<name>.old-<id>`` sibling,
which readers use and the next writer restores (:func:`recover`); one writer at a time (:func:`writer_lock`);
``--overwrite`` replaces only a glacierflow store (:func:`check_replaceable`), never an input of the run
(:func:`check_not_input`); each kind of store carries its layout version (:data:`FORMATS`, :func:`check_format`).
:func:`spill` routes a lazy Dataset through a scratch store inside a graph (read-once pipelines).
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import fsspec
import numpy as np
import xarray as xr
import zarr
from pyproj import CRS
from xarray.backends.zarr import ZarrArrayWrapper

from glacierflow.errors import GlacierflowError
from glacierflow.storage import cloud

# Every complete store carries consolidated metadata (one read opens it, also on object stores); zarr v3 warns
# on each write that consolidation is not in its spec yet. A process-wide filter for that one message, not
# ``warnings.catch_warnings()``: that is not thread-safe, and several sites write at once in a multi-site run
# (its warning leaked from there). Installed when glacierflow first writes or opens a store, not at import.
_CONSOLIDATED_WARNING = "Consolidated metadata is currently not part"
_quieted = False


def quiet_consolidated_warning() -> None:
    """Ignore zarr v3's consolidated-metadata warning from here on (once per process; idempotent)."""
    global _quieted
    if not _quieted:
        warnings.filterwarnings("ignore", message=_CONSOLIDATED_WARNING, category=UserWarning)
        _quieted = True

COMPLETE = "glacierflow_complete"
#: Root attr holding the store layout's version; readers refuse a newer one (written by a later glacierflow).
FORMAT = "glacierflow_format"
STORE_FORMAT = 1


def spatial_ref(epsg: int) -> xr.DataArray:
    """A CF grid-mapping scalar for ``EPSG:epsg``, as rioxarray writes it (``crs_wkt``, ``spatial_ref``)."""
    crs = CRS.from_epsg(int(epsg))
    attrs = crs.to_cf()
    attrs["spatial_ref"] = crs.to_wkt()
    attrs["crs_wkt"] = crs.to_wkt()
    attrs["epsg"] = int(epsg)
    return xr.DataArray(np.int32(0), attrs=attrs)


def add_spatial_ref(ds: xr.Dataset, epsg: int) -> xr.Dataset:
    """Attach the ``spatial_ref`` coordinate for ``EPSG:epsg`` and point y/x variables at it."""
    ds = ds.assign_coords(spatial_ref=spatial_ref(epsg))
    for name, var in ds.data_vars.items():
        if "x" in var.dims and "y" in var.dims:
            ds[name].attrs["grid_mapping"] = "spatial_ref"
    ds["x"].attrs.update(units="metre", standard_name="projection_x_coordinate", axis="X")
    ds["y"].attrs.update(units="metre", standard_name="projection_y_coordinate", axis="Y")
    return ds


def epsg_of(ds: xr.Dataset | xr.DataArray) -> int:
    """EPSG code recorded in a store's ``spatial_ref`` coordinate."""
    if "spatial_ref" not in ds.coords:
        raise GlacierflowError("dataset has no spatial_ref coordinate; was it written by glacierflow?")
    attrs = ds.coords["spatial_ref"].attrs
    if "epsg" in attrs:
        return int(attrs["epsg"])
    code = CRS.from_wkt(attrs["crs_wkt"]).to_epsg()
    if code is None:
        raise GlacierflowError("spatial_ref has no EPSG code")
    return int(code)


def _fs(url: str, storage_options: dict[str, Any] | None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and path of ``url``, with the cloud credentials resolved (:func:`cloud.storage_options`)."""
    with cloud.access(str(url)):
        fs, path = fsspec.core.url_to_fs(str(url), **(cloud.storage_options(str(url), storage_options) or {}))
    return fs, path


def _full_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return fs.unstrip_protocol(path) if not _is_local(fs) else path


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def is_complete(url: str, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether a complete glacierflow store exists at ``url``."""
    fs, path = _fs(url, storage_options)
    with cloud.access(url):
        if not fs.exists(path):
            return False
    try:
        g = zarr.open_group(_full_url(fs, path), mode="r", storage_options=_so(fs, storage_options))
    except Exception:  # noqa: BLE001 - any unreadable store counts as incomplete
        return False
    return bool(g.attrs.get(COMPLETE, False))


def _remove_partial(fs: fsspec.AbstractFileSystem, tmp_path: str) -> None:
    """Remove a partial store; retried, since tasks still running after a failure may write into it."""
    import time

    for _ in range(10):
        try:
            if fs.exists(tmp_path):
                fs.rm(tmp_path, recursive=True)
        except Exception:  # noqa: BLE001 - cleanup must not hide the original error
            pass
        time.sleep(0.2)
        if not fs.exists(tmp_path):
            return


def exists(url: str, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether anything exists at ``url``."""
    fs, path = _fs(url, storage_options)
    with cloud.access(url):
        return bool(fs.exists(path))


def _so(fs: fsspec.AbstractFileSystem, storage_options: dict[str, Any] | None) -> dict[str, Any] | None:
    """The options Zarr is given for a store on ``fs`` (``None`` for local paths; cloud credentials resolved)."""
    if _is_local(fs):
        return None
    proto = fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol
    return cloud.storage_options(f"{proto}://", storage_options)


def _tmp_sibling(path: str, kind: str) -> str:
    parent, name = path.rsplit("/", 1) if "/" in path else ("", path)
    leaf = f".{name}.{kind}-{uuid.uuid4().hex[:8]}"
    return f"{parent}/{leaf}" if parent else leaf


def _nodes(data: xr.Dataset | xr.DataTree) -> list[tuple[str | None, xr.Dataset]]:
    """``(group path or None for the root, dataset)`` of every node, root first."""
    if isinstance(data, xr.Dataset):
        return [(None, data)]
    out: list[tuple[str | None, xr.Dataset]] = []
    for node in data.subtree:
        path = node.relative_to(data)
        own = node.to_dataset(inherit=False)
        # each group stands on its own (readers open one group): add the inherited coordinates it uses
        used = {d for v in own.data_vars.values() for d in v.dims}
        full = node.to_dataset(inherit=True)
        extra = {c: full[c].variable for c in full.coords
                 if c not in own.variables and set(full[c].dims) <= used}
        ds = own.assign_coords(extra)
        out.append((None if path in ("", ".") else path, ds))
    return out


def write(
    data: xr.Dataset | xr.DataTree,
    url: str,
    *,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
    compute: Callable[[list[Any]], Any] | None = None,
    attrs: Callable[[], dict[str, Any]] | None = None,
    step: Callable[[str], None] | None = None,
) -> str:
    """Write a Dataset (or a DataTree: root + groups) as a Zarr store at ``url``, safely.

    ``attrs`` (optional) is called once the data is written and returns root attributes known only then
    (e.g. scores computed in the same pass); they are set before the completion marker.

    The store is written to a temporary sibling (``.<name>.partial-<id>``): first the template of every
    group (metadata, coordinates and in-memory variables; ``to_zarr(compute=False)``), then every lazy
    variable of every group by chunk regions in **one** computation, so tasks shared between groups (a
    per-scene table and the cube it was computed with) run once. Then the completion marker
    (``glacierflow_complete``), consolidated metadata, and the move into place. An interrupted or failed
    write leaves nothing behind and the previous store untouched.

    Parameters
    ----------
    data
        What to write (lazy variables are computed here, and only here).
    url
        Local path or fsspec URL (``az://``, ``s3://``, ``gs://``, ``memory://``).
    overwrite
        Replace an existing store. Without it an existing store is refused.
    storage_options
        fsspec options (credentials, ``connection_string``, ``use_listings_cache=False`` for adlfs, ...).
    compute
        Runs the list of delayed region writes (progress bars, a distributed client); default
        ``dask.compute``.
    step
        Called with the name of each step of the replace (:func:`replace_store`); tests stop a run there.

    The writer holds :func:`writer_lock` throughout (a second writer of the same store gets one line), first
    recovers what a killed run left next to the store (:func:`recover`), and replaces an existing store only
    with ``overwrite`` and only when it is a glacierflow store (:func:`check_replaceable`).

    Returns
    -------
    str
        The store URL.
    """
    quiet_consolidated_warning()
    fs, path = _fs(url, storage_options)
    path = path.rstrip("/")
    with writer_lock(url, storage_options):
        _recover(fs, path, url)  # a killed run's leftovers first: the previous store restored, or removed
        if exists(url, storage_options):
            check_replaceable(url, storage_options, overwrite=overwrite)
        return _write_locked(data, url, fs, path, storage_options, compute, attrs, step)


def _write_locked(data: xr.Dataset | xr.DataTree, url: str, fs: fsspec.AbstractFileSystem, path: str,
                  storage_options: dict[str, Any] | None, compute: Callable[[list[Any]], Any] | None,
                  attrs: Callable[[], dict[str, Any]] | None, step: Callable[[str], None] | None) -> str:
    """:func:`write` once the writer lock is held and the target checked."""
    import dask

    tmp_path = _tmp_sibling(path, "partial")
    tmp_url, so = _prepare_tmp(fs, path, tmp_path, storage_options)
    try:
        nodes, clash, delayed = _template(data, tmp_url, so)
        with dask.config.set({"optimization.fuse.active": False}):
            (compute or (lambda objs: dask.compute(*objs)))([delayed])
        _finish(nodes, clash, tmp_url, so, attrs)
        _replace(fs, tmp_path, path, step or _no_step)
    except BaseException as err:
        _abandon(fs, tmp_path, err, url)
        raise
    return url


def _prepare_tmp(fs: fsspec.AbstractFileSystem, path: str, tmp_path: str,
                 storage_options: dict[str, Any] | None) -> tuple[str, dict[str, Any] | None]:
    """The URL of the temporary sibling ``tmp_path`` (its parent made on local disks) and Zarr's options."""
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if _is_local(fs):
        os.makedirs(parent or ".", exist_ok=True)
    return _full_url(fs, tmp_path), _so(fs, storage_options)


def _abandon(fs: fsspec.AbstractFileSystem, tmp_path: str, err: BaseException, url: str) -> None:
    """Remove a failed write's temporary store; a full disk becomes one line (the previous store untouched)."""
    _remove_partial(fs, tmp_path)
    if _disk_full(err):
        raise GlacierflowError(f"no space left on the device while writing {url}; nothing was written and "
                               "an existing store there is untouched; free space or write elsewhere") from None


def _template(data: xr.Dataset | xr.DataTree, tmp_url: str, so: dict[str, Any] | None
              ) -> tuple[list[tuple[str | None, xr.Dataset]], dict[str, list[str]], Any]:
    """Write every group's template (metadata, in-memory variables) to ``tmp_url``, marked incomplete.

    Returns the nodes, the group variables named like a different root variable (written by :func:`_finish`),
    and the delayed writes of every chunk of every lazy variable (not run here).
    """
    import dask

    nodes = [(g, ds.copy()) for g, ds in _nodes(data)]
    nodes[0][1].attrs[COMPLETE] = 0  # 0/1, not a bool: netCDF has no boolean attribute
    nodes[0][1].attrs[FORMAT] = int(nodes[0][1].attrs.get(FORMAT, layout_for(nodes[0][1].attrs)))
    top = nodes[0][1]
    # a group's own variable named like a different root variable (the scenes' time): written after
    clash = {g: [n for n in ds.variables if n in top.variables and not ds[n].variable.equals(top[n].variable)]
             for g, ds in nodes[1:]}
    # One writer for every group (DataTree.to_zarr): a task shared by two groups (the per-scene table
    # and the cube computed with it) runs once; separate to_zarr calls would each rename (optimise) it.
    tree = xr.DataTree.from_dict(
        {("/" if g is None else g): ds if g is None else ds.drop_vars(clash[g]) for g, ds in nodes}
    )
    with dask.config.set({"optimization.fuse.active": False}):
        delayed = tree.to_zarr(tmp_url, mode="w", consolidated=False, compute=False, storage_options=so,
                               write_inherited_coords=True)
    return nodes, clash, delayed


def _finish(nodes: list[tuple[str | None, xr.Dataset]], clash: dict[str, list[str]], tmp_url: str,
            so: dict[str, Any] | None, attrs: Callable[[], dict[str, Any]] | None) -> None:
    """After the chunks: the groups' clashing variables, late attributes, redaction, completion, consolidation."""
    root = zarr.open_group(tmp_url, mode="r+", storage_options=so)
    for group, ds in nodes[1:]:  # inherited coordinates a group does not use, or its own under that name
        for name in [n for n in root[group].array_keys() if n not in ds.variables or n in clash[group]]:
            del root[group][name]
        if clash[group]:
            _rewrite(ds, clash[group], tmp_url, group, so)
    root.attrs.update(attrs() if attrs else {})
    for group in [None, *(g for g, _ in nodes[1:])]:  # no credential in any attribute, ever
        node = root if group is None else root[group]
        node.attrs.put(cloud.redact_attrs(dict(node.attrs)))
    root.attrs[COMPLETE] = 1
    zarr.consolidate_metadata(  # zarr v3's warning about it is filtered at import (below the imports)
        tmp_url if not so else zarr.storage.FsspecStore.from_url(tmp_url, storage_options=so)
    )


def write_update(
    data: xr.DataTree,
    url: str,
    *,
    reuse: dict[str, dict[int, int]],
    storage_options: dict[str, Any] | None = None,
    compute: Callable[[list[Any]], Any] | None = None,
    step: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Replace the complete store ``url`` by a new version of it, taking over the chunks that did not change.

    The new version is written as :func:`write` writes (temporary sibling, completion marker, consolidated
    metadata, the same replace, the writer lock and recovery), except that the chunk rows named in ``reuse``
    are taken over from the current store instead of being computed: hard links on a local disk (no byte
    written, the current store's files are never opened for writing), server-side copies on an object store.
    A variable whose chunk layout (chunk shape, codecs, data type, fill value) differs from the current one
    takes nothing over: its chunks are computed from ``data`` (which reads them lazily from the store).

    Parameters
    ----------
    data
        The whole new version (lazy).
    url
        The store to update (must be complete).
    reuse
        By variable path (``"ndsi"``, ``"guides/guide"``): ``{new index: old index}`` along its first dimension,
        the rows whose chunks are the current store's (a variable chunked by 1 along that dimension).
    storage_options, compute, step
        As :func:`write`.

    Returns
    -------
    dict
        ``written`` (bytes of the new version's objects written here) and ``reused`` (bytes taken over).
    """
    quiet_consolidated_warning()
    fs, path = _fs(url, storage_options)
    path = path.rstrip("/")
    with writer_lock(url, storage_options):
        _recover(fs, path, url)
        if not _complete_at(fs, path):
            raise GlacierflowError(f"store {url} is missing or incomplete; build it with build-cube first")
        tmp_path = _tmp_sibling(path, "partial")
        tmp_url, so = _prepare_tmp(fs, path, tmp_path, storage_options)
        try:
            nodes, clash, _ = _template(data, tmp_url, so)  # the full write is not run: rows are taken over
            copied = _take_over(fs, path, tmp_path, nodes, reuse, so)
            _write_rows(nodes, clash, tmp_url, so, copied, compute)
            _finish(nodes, clash, tmp_url, so, None)
            sizes = _sizes(fs, tmp_path, {f for _, files in copied.values() for f in files})
            _replace(fs, tmp_path, path, step or _no_step)
        except BaseException as err:
            _abandon(fs, tmp_path, err, url)
            raise
    return sizes


def _var_path(group: str | None, name: str) -> str:
    return str(name) if group is None else f"{group}/{name}"


def _layout(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, Any] | None:
    """A Zarr v3 array's metadata without shape and attributes (what decides how its chunks are stored)."""
    f = f"{path}/zarr.json"
    if not fs.exists(f):
        return None
    meta = json.loads(fs.cat_file(f))
    if meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
        return None
    return {k: v for k, v in meta.items() if k not in ("shape", "attributes")}


def _take_over(fs: fsspec.AbstractFileSystem, old: str, new: str, nodes: list[tuple[str | None, xr.Dataset]],
               reuse: dict[str, dict[int, int]], so: dict[str, Any] | None
               ) -> dict[str, tuple[set[int], list[str]]]:
    """Link (or copy) the reused chunk rows into the new version: by variable path, (rows taken, files made)."""
    import itertools

    import dask.array as dsa

    out: dict[str, tuple[set[int], list[str]]] = {}
    for group, ds in nodes:
        for name, var in ds.data_vars.items():
            key = _var_path(group, str(name))
            rows = reuse.get(key)
            if not rows or not isinstance(var.data, dsa.Array):
                continue
            layout = _layout(fs, f"{old}/{key}")
            if layout is None or layout != _layout(fs, f"{new}/{key}"):
                continue
            grid = layout["chunk_grid"]["configuration"]["chunk_shape"]
            if grid[0] != 1:
                continue
            arr = zarr.open_array(_full_url(fs, f"{new}/{key}"), mode="r", storage_options=so)
            enc = arr.metadata.chunk_key_encoding
            rest = [range(-(-n // c)) for n, c in zip(arr.shape[1:], grid[1:], strict=True)]
            src, dst = [], []
            for i, j in rows.items():
                for r in itertools.product(*rest):
                    src.append(f"{old}/{key}/{enc.encode_chunk_key((j, *r))}")
                    dst.append(f"{new}/{key}/{enc.encode_chunk_key((i, *r))}")
            out[key] = (set(rows), _link(fs, src, dst))
    return out


def _link(fs: fsspec.AbstractFileSystem, src: list[str], dst: list[str]) -> list[str]:
    """Hard-link (local) or server-side copy (object store) the existing ``src`` objects to ``dst``."""
    pairs = [(a, b) for a, b in zip(src, dst, strict=True) if fs.exists(a)]  # a chunk of fill values is no object
    if not pairs:
        return []
    if _is_local(fs):
        for a, b in pairs:
            os.makedirs(os.path.dirname(b), exist_ok=True)
            os.link(a, b)
    else:
        fs.copy([a for a, _ in pairs], [b for _, b in pairs])
    return [b for _, b in pairs]


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` runs of sorted indices."""
    out: list[tuple[int, int]] = []
    for i in indices:
        if out and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out


def _write_rows(nodes: list[tuple[str | None, xr.Dataset]], clash: dict[str, list[str]], tmp_url: str,
                so: dict[str, Any] | None, copied: dict[str, tuple[set[int], list[str]]],
                compute: Callable[[list[Any]], Any] | None) -> None:
    """Compute and write every chunk row of every lazy variable not taken over, in **one** ``dask.array.store``.

    One call for all (not one ``to_zarr(region=...)`` per variable): each call optimises its own sources,
    renaming the tasks they share, which then run once per call (measured: every scene's tasks 10 times).
    """
    import dask
    import dask.array as dsa

    sources, targets, regions = [], [], []
    for group, ds in nodes:
        for name, var in ds.data_vars.items():
            if not isinstance(var.data, dsa.Array) or name in clash.get(group or "", []):
                continue
            key = _var_path(group, str(name))
            target = zarr.open_array(f"{tmp_url.rstrip('/')}/{key}", mode="r+", storage_options=so)
            data = _encoded(var.variable, dict(target.attrs), target.dtype)
            taken = copied.get(key, (set(), []))[0]
            for a, b in _runs([i for i in range(var.shape[0]) if i not in taken]):
                sources.append(data[a:b])
                targets.append(target)
                regions.append((slice(a, b), *(slice(0, n) for n in var.shape[1:])))
    if not sources:
        return
    with dask.config.set({"optimization.fuse.active": False}):
        stored = dsa.store(sources, targets, regions=regions, lock=False, compute=False)
        (compute or (lambda objs: dask.compute(*objs)))([stored])


def _encoded(var: xr.Variable, attrs: dict[str, Any], dtype: Any) -> Any:
    """``var``'s dask data as its Zarr array (made by the template, attributes ``attrs``) stores it (lazy).

    Times are encoded with the array's ``units``/``calendar`` (as xarray encodes them); the rest is stored as is.
    """
    if var.dtype.kind not in "mM":
        return var.data if var.dtype == dtype else var.data.astype(dtype)
    from xarray.backends.zarr import encode_zarr_variable

    var = var.copy(deep=False)
    var.attrs = {}
    var.encoding = {k: attrs[k] for k in ("units", "calendar") if k in attrs} | {"dtype": np.dtype(dtype)}
    return encode_zarr_variable(var).data


def _sizes(fs: fsspec.AbstractFileSystem, path: str, taken: set[str]) -> dict[str, int]:
    """Bytes of the objects of store ``path`` written here and taken over (links or server-side copies)."""
    written = reused = 0
    for f, info in fs.find(path, detail=True).items():
        size = int(info.get("size") or 0)
        if f in taken or (_is_local(fs) and os.stat(f).st_nlink > 1):
            reused += size
        else:
            written += size
    return {"written": written, "reused": reused}


def _disk_full(err: BaseException) -> bool:
    """Whether ``err`` (or what it was raised from) is "no space left on device" (ENOSPC)."""
    import errno

    for _ in range(10):  # the chain of causes, not a cycle
        if err is None:
            return False
        if (isinstance(err, OSError) and err.errno == errno.ENOSPC) or "No space left on device" in str(err):
            return True
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    return False


def _rewrite(ds: xr.Dataset, names: list[str], url: str, group: str, so: dict[str, Any] | None) -> None:
    """Write variables ``names`` of ``ds`` (small, e.g. a table's time coordinate) into ``group`` again."""
    part = ds[[n for n in names if n in ds.data_vars]] if any(n in ds.data_vars for n in names) else xr.Dataset()
    part = part.assign_coords({n: ds[n].variable for n in names if n in ds.coords}).load()
    part.attrs = {}
    part.to_zarr(url, group=group, mode="a", consolidated=False, storage_options=so)
    g = zarr.open_group(url, path=group, mode="r+", storage_options=so)
    coords = [n for n in names if n in ds.coords]
    for name in g.array_keys():  # every variable of the group names the rewritten coordinates again
        arr = g[name]
        if name not in ds.coords and coords and name in ds.data_vars:
            have = str(arr.attrs.get("coordinates", "")).split()
            arr.attrs["coordinates"] = " ".join(dict.fromkeys([*have, *coords]))


def _no_step(name: str) -> None:
    """The default ``step`` of a replace: nothing."""


#: The steps of a local replace, in order, as :func:`replace_store` names them to its ``step`` callback.
LOCAL_STEPS = ("start", "old-moved", "new-moved", "done")
#: ... and of an object-store replace (no rename there: copies, root metadata last; removals, root metadata first).
REMOTE_STEPS = ("start", "old-copied", "old-removed", "new-body-copied", "new-copied", "partial-removed", "done")


def _replace(fs: fsspec.AbstractFileSystem, tmp_path: str, path: str, step: Callable[[str], None]) -> None:
    """Move the finished temporary store into place (the old one, if any, removed only then).

    A run killed between two steps leaves a complete store readable (the target, or the previous store kept
    in a ``.<name>.old-<id>`` sibling, which :func:`open_store` reads), and the next writer recovers it first.
    """
    step("start")
    if not _is_local(fs):
        _replace_remote(fs, tmp_path, path, step)
        return
    if os.path.exists(path):
        old = _tmp_sibling(path, "old")
        os.rename(path, old)
        step("old-moved")  # the window: no store at the target; the previous one is the .old- sibling
        os.rename(tmp_path, path)
        step("new-moved")
        fs.rm(old, recursive=True)
    else:
        os.rename(tmp_path, path)
    step("done")


def replace_store(tmp_url: str, url: str, storage_options: dict[str, Any] | None = None,
                  step: Callable[[str], None] | None = None) -> None:
    """Move the complete store ``tmp_url`` (a sibling of ``url``) into place, as :func:`write` does last.

    Parameters
    ----------
    tmp_url, url
        The finished store and where it goes (same directory or bucket).
    storage_options
        fsspec options of both.
    step
        Called with each step's name (:data:`LOCAL_STEPS`, :data:`REMOTE_STEPS`) once it is done; an exception
        raised there stops the replace at that point, as a killed run would stop (no cleanup runs).
    """
    fs, path = _fs(url, storage_options)
    _replace(fs, _fs(tmp_url, storage_options)[1].rstrip("/"), path.rstrip("/"), step or _no_step)


def write_store(
    ds: xr.Dataset,
    url: str,
    *,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
    compute: Callable[[Any], Any] | None = None,
) -> str:
    """:func:`write` of one Dataset (kept for callers of the first version)."""
    run = None if compute is None else (lambda objs: [compute(d) for d in objs])
    return write(ds, url, overwrite=overwrite, storage_options=storage_options, compute=run)


class Spilled:
    """Chunks of a lazy Dataset written to a scratch Zarr store *inside* the graph, read back on demand.

    Made by :func:`spill`. Every call of :meth:`read` returns a fresh lazy copy whose chunks are read
    from the scratch store after their write: each consumer of the data reads its own copy, so no
    scene is held in memory between two stages that are separated by a reduction over all scenes.
    """

    def __init__(self, url: str, written: dict[str, Any], like: xr.Dataset, so: dict[str, Any] | None) -> None:
        self.url, self._written, self._like, self._so = url, written, like, so
        self._reads = 0

    def read(self) -> xr.Dataset:
        """A lazy copy of the spilled Dataset (new task keys at every call)."""
        import dask.array as dsa

        self._reads += 1
        out = {}
        for name, var in self._like.data_vars.items():
            token = self._written[name]
            data = dsa.map_blocks(
                _read_chunk, token, dtype=var.dtype, chunks=var.chunks, url=self.url, var=name,
                so=self._so, read=self._reads, meta=np.empty((0,) * var.ndim, var.dtype),
            )
            out[name] = (var.dims, data, var.attrs)
        return xr.Dataset(out, coords=self._like.coords)


def _block_slices(block_info: dict[Any, Any] | None, which: int | None) -> tuple[slice, ...]:
    loc = (block_info or {})[which]["array-location"]
    return tuple(slice(a, b) for a, b in loc)


def _write_chunk(block: np.ndarray, url: str, var: str, so: dict[str, Any] | None,
                 block_info: dict[Any, Any] | None = None) -> np.ndarray:
    arr = zarr.open_array(f"{url.rstrip('/')}/{var}", mode="r+",
                          storage_options=so)
    arr[_block_slices(block_info, 0)] = block  # the input chunk's place
    return np.ones((1,) * block.ndim, bool)


def _read_chunk(token: np.ndarray, url: str, var: str, so: dict[str, Any] | None, read: int,
                block_info: dict[Any, Any] | None = None) -> np.ndarray:
    del token, read  # the token orders the read after the write; read makes each copy's keys unique
    arr = zarr.open_array(f"{url.rstrip('/')}/{var}", mode="r",
                          storage_options=so)
    return np.asarray(arr[_block_slices(block_info, None)])  # the output chunk's


def spill(ds: xr.Dataset, url: str, storage_options: dict[str, Any] | None = None) -> Spilled:
    """Route the chunks of ``ds`` through a scratch Zarr store at ``url`` (lazily; nothing is computed).

    The empty arrays are created now (metadata only, uncompressed, the chunks of ``ds``); each chunk is
    written by a task of the graph that returns a one-byte token, and :meth:`Spilled.read` reads chunks
    back in tasks that depend on those tokens. The caller removes the scratch store with
    :func:`remove` once the graph has run. ``url`` must be reachable from every Dask worker (a local
    path for local clusters, the output's object store for remote ones).
    """
    import dask.array as dsa

    fs, path = _fs(url, storage_options)
    so = _so(fs, storage_options)
    full = _full_url(fs, path)
    root = zarr.open_group(full, mode="w", storage_options=so)
    written = {}
    for name, var in ds.data_vars.items():
        data = var.data if isinstance(var.data, dsa.Array) else dsa.from_array(np.asarray(var.data))
        chunks = tuple(max(c) for c in data.chunks)
        root.create_array(name, shape=data.shape, chunks=chunks, dtype=data.dtype, compressors=None,
                          fill_value=None)
        written[name] = dsa.map_blocks(
            _write_chunk, data, dtype=bool, chunks=tuple((1,) * len(c) for c in data.chunks), url=full,
            var=name, so=so, meta=np.empty((0,) * data.ndim, bool),
        )
    like = ds.copy()
    for name in like.data_vars:
        if not isinstance(like[name].data, dsa.Array):
            like[name] = like[name].chunk()
    return Spilled(full, written, like, so)


def sibling(url: str, kind: str) -> str:
    """A unique hidden sibling of ``url`` (same directory or bucket): ``.<name>.<kind>-<id>``."""
    head, sep, name = str(url).rstrip("/").rpartition("/")
    return f"{head}{sep}.{name}.{kind}-{uuid.uuid4().hex[:8]}"


def remove(url: str, storage_options: dict[str, Any] | None = None) -> None:
    """Remove a store or scratch store at ``url`` if it exists (retried, like a partial store)."""
    fs, path = _fs(url, storage_options)
    _remove_partial(fs, path)


def _root_meta(path: str) -> set[str]:
    return {f"{path}/zarr.json", f"{path}/.zattrs", f"{path}/.zgroup", f"{path}/.zmetadata"}


def _copy_tree(fs: fsspec.AbstractFileSystem, src: str, dst: str,
               step: Callable[[str], None] | None = None) -> None:
    """Copy every object of store ``src`` to ``dst``, the root metadata last (``dst`` turns complete last).

    Object stores have no rename; the objects are copied in one batched call (concurrent on adlfs, s3fs,
    gcsfs: server-side copies), as ``fs.mv(recursive=True)`` is unreliable across backends.
    """
    files = sorted(fs.find(src))
    root = _root_meta(src)
    body = [f for f in files if f not in root]
    if body:
        fs.copy(body, [dst + f[len(src):] for f in body])
    if step:
        step("new-body-copied")
    for f in [f for f in files if f in root]:
        fs.cp_file(f, dst + f[len(src):])


def _remove_tree(fs: fsspec.AbstractFileSystem, path: str) -> None:
    """Remove store ``path``, its root metadata first (it turns incomplete at once, never half-readable)."""
    for f in sorted(_root_meta(path)):
        if fs.exists(f):
            fs.rm_file(f)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def _replace_remote(fs: fsspec.AbstractFileSystem, tmp_path: str, path: str, step: Callable[[str], None]) -> None:
    """Move the finished store ``tmp_path`` to ``path`` on an object store, the previous store kept readable.

    A complete previous store is first copied to a hidden ``.<name>.old-<id>`` sibling, then removed and the
    new one copied into place. A run killed at any point leaves a complete store readable: ``path`` itself
    (old or new), or the copy, which :func:`open_store` reads while ``path`` is incomplete. Copies of the old
    store left by earlier killed runs are removed once the new store is in place.
    """
    backup = None
    if fs.exists(path):
        if _complete_at(fs, path):
            backup = _tmp_sibling(path, "old")
            _copy_tree(fs, path, backup)
            step("old-copied")
        _remove_tree(fs, path)
        step("old-removed")
    _copy_tree(fs, tmp_path, path, step)
    step("new-copied")
    fs.rm(tmp_path, recursive=True)
    step("partial-removed")
    for old in [*_previous(fs, path, complete=False), *([backup] if backup else [])]:
        _remove_tree(fs, old)
    step("done")


def _complete_at(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    """Whether the root metadata at ``path`` (zarr v3 ``zarr.json`` or v2 ``.zattrs``) marks it complete."""
    for name in ("zarr.json", ".zattrs"):
        f = f"{path}/{name}"
        if fs.exists(f):
            meta = json.loads(fs.cat_file(f))
            return bool(meta.get("attributes", meta).get(COMPLETE, False))
    return False


def _siblings(fs: fsspec.AbstractFileSystem, path: str, kind: str) -> list[str]:
    """The hidden siblings ``.<name>.<kind>-<id>`` of ``path`` (sorted)."""
    parent, _, name = path.rpartition("/")
    if not parent and _is_local(fs):
        parent = os.getcwd()
    try:
        entries = fs.ls(parent, detail=False)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(e.rstrip("/") for e in entries if e.rstrip("/").rpartition("/")[2].startswith(f".{name}.{kind}-"))


def _previous(fs: fsspec.AbstractFileSystem, path: str, complete: bool = True) -> list[str]:
    """Copies ``.<name>.old-<id>`` of the store at ``path`` kept by :func:`_replace` (complete ones)."""
    return [e for e in _siblings(fs, path, "old") if not complete or _complete_at(fs, e)]


def open_store(
    url: str, storage_options: dict[str, Any] | None = None, group: str | None = None, require: tuple[str, ...] = (),
    format: int | None = None,
) -> xr.Dataset:
    """Open a complete glacierflow store lazily (``decode_coords="all"``), with clear errors.

    ``format``: the layout version this reader needs (:func:`check_format`); a corrupt store (unreadable
    metadata or chunk) is one line naming it when opened or computed later.
    """
    quiet_consolidated_warning()
    fs, path = _fs(url, storage_options)
    path = path.rstrip("/")
    with cloud.access(url):
        if not is_complete(url, storage_options):
            path = _open_previous(fs, path, url, storage_options)
    try:
        with cloud.access(url):
            ds = xr.open_zarr(
                _full_url(fs, path),
                group=group,
                consolidated=False,
                decode_coords="all",
                storage_options=_so(fs, storage_options),
            )
    except (ValueError, TypeError) as err:  # a metadata document that is not JSON, or not Zarr's
        raise GlacierflowError(f"store {url} is corrupt: its metadata cannot be read ({_first_line(err)}); rebuild "
                               "it with --overwrite, or restore it from a copy") from None
    name_corrupt_chunks(ds)
    check_format(ds if group is None else xr.Dataset(attrs=_root_attrs(fs, path) or {}), url, format)
    missing = [v for v in require if v not in ds.variables]
    if missing:
        raise GlacierflowError(f"store {url} lacks {', '.join(missing)}; is it the right kind of store?")
    return ds


def _open_previous(fs: fsspec.AbstractFileSystem, path: str, url: str, so: dict[str, Any] | None) -> str:
    """The path to read when ``url`` is missing or incomplete: the previous store kept by an interrupted write."""
    previous = _previous(fs, path)
    if previous:
        warnings.warn(f"store {url} was being replaced when a write was interrupted; reading the previous "
                      f"store kept at {_full_url(fs, previous[0])} (write it again to finish)", UserWarning,
                      stacklevel=3)
        return previous[0]
    if not fs.exists(path):
        raise GlacierflowError(f"store {url} does not exist{cloud.not_found_hint(url, so)}")
    raise GlacierflowError(_why_unreadable(fs, path, url))


def _root_attrs(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, Any] | None:
    """The root attributes of the Zarr store at ``path`` (v3 ``zarr.json`` or v2 ``.zattrs``); None if not Zarr."""
    for name in ("zarr.json", ".zattrs", ".zgroup"):
        f = f"{path}/{name}"
        if not fs.exists(f):
            continue
        try:
            meta = json.loads(fs.cat_file(f))
        except (ValueError, OSError):
            return None
        return {} if name == ".zgroup" else dict(meta.get("attributes", {}) if name == "zarr.json" else meta)
    return None


def _first_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:160] or type(err).__name__


def _corrupt_root(fs: fsspec.AbstractFileSystem, path: str) -> str | None:
    """The root metadata file of ``path`` when it exists but is not JSON (a corrupt store), else None."""
    for name in ("zarr.json", ".zattrs", ".zgroup"):
        f = f"{path}/{name}"
        if fs.exists(f):
            try:
                json.loads(fs.cat_file(f))
            except (ValueError, UnicodeDecodeError):
                return name
            return None
    return None


def _why_unreadable(fs: fsspec.AbstractFileSystem, path: str, url: str) -> str:
    """One line: why the existing ``url`` is not a complete glacierflow store, and what to do."""
    bad = _corrupt_root(fs, path)
    if bad:
        return f"store {url} is corrupt: its {bad} is not valid JSON; rebuild it with --overwrite, or restore it"
    attrs = _root_attrs(fs, path)
    if attrs is None:
        return f"{url} is not a Zarr store; pass a store written by glacierflow (build-cube, flow, predict)"
    if COMPLETE not in attrs and "glacierflow_version" not in attrs:
        return (f"store {url} is a Zarr store but not a glacierflow store (no glacierflow_version attr); pass a "
                "store written by glacierflow (build-cube, flow, predict)")
    return f"store {url} is incomplete (its write was interrupted or failed); rebuild it with --overwrite"


#: The command that rebuilds a store, by the spec attribute that marks its kind (the most derived first).
REBUILD = (("predict_spec", "glacierflow predict RUN_DIR --cube CUBE --out {url} --overwrite"),
           ("flow_spec", "glacierflow flow CUBE --out {url} --overwrite"),
           ("cube_spec", "glacierflow build-cube ... --out {url} --overwrite (with the flags it was built with)"))


#: The layout version of each kind of store, by the spec attribute that marks the kind (a key of :data:`REBUILD`):
#: a stage that changes its store's layout bumps its entry (``FORMATS["flow_spec"] = 2``); the writer stamps it in
#: the store's root attribute :data:`FORMAT`, and every reader compares the two. Kinds not listed: STORE_FORMAT.
FORMATS: dict[str, int] = {}


def layout_for(attrs: dict[str, Any]) -> int:
    """The layout version this glacierflow writes and reads for a store with root attributes ``attrs``."""
    kind = next((key for key, _ in REBUILD if key in attrs), None)
    return int(FORMATS.get(kind, STORE_FORMAT)) if kind else STORE_FORMAT


def rebuild_command(attrs: dict[str, Any], url: str) -> str:
    """The command that writes the store ``url`` again, from the spec attributes it carries."""
    for key, command in REBUILD:
        if key in attrs:
            return command.format(url=url)
    return f"the glacierflow command that wrote it, with --out {url} --overwrite"


def check_format(ds: xr.Dataset, url: str, format: int | None = None) -> None:
    """One :class:`GlacierflowError` line when the layout of store ``url`` (root ``ds``) is not the reader's.

    The layout version is read from the store's own root attribute :data:`FORMAT` (stores written before it
    existed have layout 1). ``format`` is the layout the reading stage needs (default: this glacierflow's layout
    for the store's kind, :func:`layout_for`): a newer store asks for a newer glacierflow; an older one names both
    versions and the command that rebuilds it.
    """
    from glacierflow import __version__

    fmt = ds.attrs.get(FORMAT, 1)
    want = layout_for(dict(ds.attrs)) if format is None else int(format)
    written = f"written by glacierflow {ds.attrs.get('glacierflow_version', '?')}"
    if not isinstance(fmt, int) or fmt > want:
        raise GlacierflowError(
            f"store {url} has layout {FORMAT}={fmt!r}, {written}; this glacierflow {__version__} reads layout "
            f"{want}: upgrade glacierflow, or rebuild the store with this version (--overwrite)")
    if fmt < want:
        raise GlacierflowError(
            f"store {url} has the older layout {FORMAT}={fmt} ({written}); this glacierflow {__version__} needs "
            f"layout {want}: rebuild it with `{rebuild_command(dict(ds.attrs), url)}`")


def check_writable(url: str, storage_options: dict[str, Any] | None = None, inputs: tuple[str | None, ...] = ()
                   ) -> None:
    """Fail early, in one line, when a store (or run directory) cannot be written at ``url``.

    ``inputs``: the paths or URLs the run reads; ``url`` equal to one (or inside one) is refused
    (:func:`check_not_input`).

    Local paths: the nearest existing ancestor must be a directory this process can create entries in (a
    probe directory is made and removed, so read-only file systems are caught too). Cloud URLs: the
    credentials are resolved and the container reached (:func:`exists`); a write is not probed.
    """
    check_not_input(url, inputs, storage_options)
    fs, path = _fs(url, storage_options)
    if not _is_local(fs):
        exists(url, storage_options)
        return
    import tempfile

    target = os.path.abspath(path)
    parent = os.path.dirname(target.rstrip("/")) or "/"
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise GlacierflowError(f"cannot write {url}: {parent} is a file, not a directory; choose another output path")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".glacierflow-probe-", dir=parent))
    except OSError as err:
        raise GlacierflowError(f"cannot write {url}: {parent} is not writable ({err.strerror}); choose another "
                               "output path, or fix its permissions") from None


def config_attr(ds: xr.Dataset, key: str) -> dict[str, Any]:
    """A JSON config recorded in the store attrs."""
    raw = ds.attrs.get(key)
    return json.loads(raw) if isinstance(raw, str) else dict(raw or {})


# -- what --overwrite may replace, and what it must not ------------------------------------------------------

def _holds(fs: fsspec.AbstractFileSystem, path: str) -> str | None:
    """What ``path`` holds when it is not a glacierflow store ``--overwrite`` may replace (None when it is one)."""
    if fs.isfile(path):
        return "a file"
    attrs = _root_attrs(fs, path)
    if attrs is None:
        try:
            names = sorted(e.rstrip("/").rpartition("/")[2] for e in fs.ls(path, detail=False))
        except (FileNotFoundError, NotADirectoryError):
            names = []
        if not names:
            return None  # an empty directory: nothing to lose
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        return f"{len(names)} entries ({shown}) and no Zarr metadata"
    if COMPLETE not in attrs:
        return "a Zarr store not written by glacierflow (no glacierflow_complete attribute)"
    if not isinstance(attrs.get(FORMAT, STORE_FORMAT), int):
        return f"a store of an unknown layout ({FORMAT}={attrs.get(FORMAT)!r})"
    return None


def check_replaceable(url: str, storage_options: dict[str, Any] | None = None, *, overwrite: bool = True) -> None:
    """One line unless the existing ``url`` may be replaced: ``overwrite`` given and a glacierflow store there.

    A glacierflow store is a Zarr group whose root carries the completion marker (``glacierflow_complete``,
    true or false: an interrupted write is replaceable too) and an integer layout version. Anything else (a
    directory of the user's files, a file, another program's Zarr store, a non-store object prefix) is never
    removed by ``--overwrite``.
    """
    fs, path = _fs(url, storage_options)
    with cloud.access(url):
        what = _holds(fs, path.rstrip("/"))
    if what is not None:
        raise GlacierflowError(f"refusing to replace {url}: it holds {what}, not a glacierflow store; "
                               "--overwrite only replaces stores glacierflow wrote: choose another output path")
    if not overwrite:
        state = "complete" if is_complete(url, storage_options) else "incomplete"
        raise GlacierflowError(f"store {url} already exists ({state}); pass --overwrite to replace it")


def _canonical(url: str, storage_options: dict[str, Any] | None) -> tuple[str, str]:
    """(protocol, absolute path with links resolved) of a path or URL, for comparing an output with inputs."""
    fs, path = _fs(url, storage_options)
    proto = fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol
    if _is_local(fs):
        return "file", os.path.realpath(path)
    return str(proto), path.rstrip("/")


def check_not_input(url: str, inputs: tuple[str | None, ...], storage_options: dict[str, Any] | None = None) -> None:
    """One line when the output ``url`` is an input of the same run, or holds one (a directory above it).

    ``flow CUBE --out CUBE --overwrite`` would replace the cube it reads with its own result. An output inside
    an input (``predict RUN --out RUN/forecast.zarr``) replaces nothing of it and is allowed.
    """
    proto, out = _canonical(url, storage_options)
    for given in [i for i in inputs if i]:
        p, inp = _canonical(str(given), storage_options)
        if p != proto:
            continue
        if out == inp or inp.startswith(out + "/"):
            relation = "is" if out == inp else "contains"
            raise GlacierflowError(f"output {url} {relation} the input {given} of this run; choose another "
                                   "output path (the input would be replaced by the output)")


# -- one writer per store ------------------------------------------------------------------------------------

#: A lock whose owner is on another host and older than this is stale (a local owner: stale once its pid is gone).
STALE_LOCK_S = 24 * 3600


def _lock_path(path: str) -> str:
    parent, sep, name = path.rpartition("/")
    return f"{parent}{sep}.{name}.lock"


def _stale(owner: dict[str, Any]) -> bool:
    """Whether a lock's owner is gone: same host and no such process, or another host and too old."""
    import socket
    import time

    if owner.get("host") == socket.gethostname():
        try:
            os.kill(int(owner.get("pid", -1)), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, OverflowError, ValueError):
            return False
        return False
    return time.time() - float(owner.get("since", 0)) > STALE_LOCK_S


def _read_lock(fs: fsspec.AbstractFileSystem, lock: str) -> dict[str, Any] | None:
    try:
        return dict(json.loads(fs.cat_file(lock)))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, OSError):
        return {}  # half-written by a killed run: stale


def _try_lock(fs: fsspec.AbstractFileSystem, lock: str, me: dict[str, Any]) -> bool:
    """Create ``lock`` holding ``me`` unless it exists (atomic on local disks; write-then-read-back on objects)."""
    body = json.dumps(me).encode()
    if _is_local(fs):
        try:
            os.makedirs(os.path.dirname(lock) or ".", exist_ok=True)
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as err:
            raise GlacierflowError(f"cannot write next to {os.path.dirname(lock)} ({err.strerror}); choose another "
                                   "output path, or fix its permissions") from None
        with os.fdopen(fd, "wb") as f:
            f.write(body)
        return True
    if fs.exists(lock):
        return False
    fs.pipe_file(lock, body)
    return (_read_lock(fs, lock) or {}).get("token") == me["token"]  # the last of two racing writers wins


@contextlib.contextmanager
def writer_lock(url: str, storage_options: dict[str, Any] | None = None) -> Iterator[None]:
    """Hold the writer lock of store ``url``: a ``.<name>.lock`` object next to it naming the owner.

    The lock holds the owner's host, pid and start time. A second writer gets one line naming the owner; a
    stale lock (its process gone on this host, or older than :data:`STALE_LOCK_S` from another host) is taken
    over with a warning saying so. On object stores the lock is written, then read back (no atomic create).
    """
    import socket
    import time

    fs, path = _fs(url, storage_options)
    lock = _lock_path(path.rstrip("/"))
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(), "token": uuid.uuid4().hex}
    with cloud.access(url):
        for _ in range(3):
            if _try_lock(fs, lock, me):
                break
            owner = _read_lock(fs, lock)
            if owner is None:
                continue  # released meanwhile
            if not _stale(owner):
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(owner.get("since", 0))))
                raise GlacierflowError(
                    f"store {url} is being written by another run (pid {owner.get('pid')} on {owner.get('host')}, "
                    f"since {since}); wait for it, or remove {_full_url(fs, lock)} if that run is gone")
            warnings.warn(f"store {url}: taking over the stale writer lock of pid {owner.get('pid')} on "
                          f"{owner.get('host')} (that run is gone)", UserWarning, stacklevel=3)
            fs.rm_file(lock)
        else:
            raise GlacierflowError(f"store {url}: could not take the writer lock {_full_url(fs, lock)}; try again")
    try:
        yield
    finally:
        if (_read_lock(fs, lock) or {}).get("token") == me["token"]:
            fs.rm_file(lock)


# -- recovery after a killed run ----------------------------------------------------------------------------

def recover(url: str, storage_options: dict[str, Any] | None = None) -> str | None:
    """Restore or clean what a killed write left next to store ``url`` (under the writer lock).

    Returns the one line said (also warned), or None when there was nothing to do.
    """
    fs, path = _fs(url, storage_options)
    with writer_lock(url, storage_options):
        return _recover(fs, path.rstrip("/"), url)


def _recover(fs: fsspec.AbstractFileSystem, path: str, url: str) -> str | None:
    """:func:`recover` with the lock held: a complete target wins; else the previous store is put back."""
    olds, partials = _siblings(fs, path, "old"), _siblings(fs, path, "partial")
    if not olds and not partials:
        return None
    said = ""
    if not _complete_at(fs, path):
        good = [o for o in olds if _complete_at(fs, o)]
        if good:
            if fs.exists(path):
                _remove_tree(fs, path)
            if _is_local(fs):
                os.rename(good[0], path)
                olds.remove(good[0])
            else:
                _copy_tree(fs, good[0], path)
            said = f"restored the previous store from {_full_url(fs, good[0])}; "
    for leftover in [*olds, *partials]:
        _remove_tree(fs, leftover)
    n = len(olds) + len(partials)
    removed = f"removed {n} leftover cop{'y' if n == 1 else 'ies'} of it" if n else ""
    line = f"store {url}: a write was killed here before; {said}{removed}".rstrip("; ")
    warnings.warn(line, UserWarning, stacklevel=3)
    return line


# -- a corrupt chunk: one line naming the store and the variable, from whichever worker reads it -----------------

class _NamingZarrArray(ZarrArrayWrapper):
    """xarray's Zarr array wrapper whose reads turn a chunk that cannot be decoded into one line naming it."""

    __slots__ = ()

    def __getitem__(self, key: Any) -> Any:
        try:
            return super().__getitem__(key)
        except (RuntimeError, ValueError) as err:  # zstd/blosc "decompression error", a buffer of the wrong size
            where = self._array.store_path
            root = getattr(where.store, "root", None)
            if root is None:
                fs = getattr(where.store, "fs", None)
                root = fs.unstrip_protocol(where.store.path) if fs is not None else str(where.store)
            raise GlacierflowError(f"store {root} is corrupt: a chunk of {where.path} cannot be decoded "
                                   f"({_first_line(err)}); rebuild it with --overwrite, or restore it") from None


def name_corrupt_chunks(ds: xr.Dataset) -> None:
    """Make the reads of every lazily opened variable of ``ds`` name their store when a chunk is corrupt.

    The arrays are the ones :func:`xarray.open_zarr` put in the graph (its ``original-`` layers); their
    wrapper is switched to :class:`_NamingZarrArray` in place (same slots, nothing else changes, the graph and
    its task names stay as they were).
    """
    import dask.array as dsa

    for var in ds.variables.values():
        data = var._data
        if not isinstance(data, dsa.Array):
            continue
        for name, layer in data.dask.layers.items():
            if not str(name).startswith("original-"):
                continue
            for obj in layer.values():
                for _ in range(8):  # adapters wrap adapters (lazy indexing, copy-on-write, caching)
                    if isinstance(obj, ZarrArrayWrapper):
                        obj.__class__ = _NamingZarrArray
                        break
                    obj = getattr(obj, "array", None)
