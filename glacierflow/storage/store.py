"""Zarr stores: CRS coordinate, safe writes (local path or any fsspec URL), lazy reads.

Safe writes (:func:`write`): any Dataset, or a DataTree of groups, is written to a temporary sibling
(``.<name>.partial-<uuid>``) as a template plus chunk regions in one computation, marked complete
(``glacierflow_complete``), its metadata consolidated, and moved into place only then. An interrupted
run therefore never leaves a corrupt store where a good one was, and readers refuse incomplete stores.
:func:`spill` routes a lazy Dataset through a scratch store inside a graph (read-once pipelines).
"""

from __future__ import annotations

import json
import os
import uuid
import warnings
from collections.abc import Callable
from typing import Any

import fsspec
import numpy as np
import xarray as xr
import zarr
from pyproj import CRS

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

    Returns
    -------
    str
        The store URL.
    """
    quiet_consolidated_warning()
    import dask

    fs, path = _fs(url, storage_options)
    path = path.rstrip("/")
    if exists(url, storage_options) and not overwrite:
        state = "complete" if is_complete(url, storage_options) else "incomplete"
        raise GlacierflowError(f"store {url} already exists ({state}); pass --overwrite to replace it")
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    tmp_path = _tmp_sibling(path, "partial")
    if _is_local(fs):
        os.makedirs(parent or ".", exist_ok=True)
    tmp_url = _full_url(fs, tmp_path)
    so = _so(fs, storage_options)
    try:
        nodes = [(g, ds.copy()) for g, ds in _nodes(data)]
        nodes[0][1].attrs[COMPLETE] = 0  # 0/1, not a bool: netCDF has no boolean attribute
        nodes[0][1].attrs[FORMAT] = STORE_FORMAT
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
            (compute or (lambda objs: dask.compute(*objs)))([delayed])
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
        _replace(fs, tmp_path, path)
    except BaseException as err:
        _remove_partial(fs, tmp_path)
        if _disk_full(err):
            raise GlacierflowError(f"no space left on the device while writing {url}; nothing was written and "
                                   "an existing store there is untouched; free space or write elsewhere") from None
        raise
    return url


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


def _replace(fs: fsspec.AbstractFileSystem, tmp_path: str, path: str) -> None:
    """Move the finished temporary store into place (the old one, if any, removed only then)."""
    if _is_local(fs):
        if os.path.exists(path):
            old = _tmp_sibling(path, "old")
            os.rename(path, old)
            os.rename(tmp_path, path)
            fs.rm(old, recursive=True)
        else:
            os.rename(tmp_path, path)
        return
    _replace_remote(fs, tmp_path, path)


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


def _copy_tree(fs: fsspec.AbstractFileSystem, src: str, dst: str) -> None:
    """Copy every object of store ``src`` to ``dst``, the root metadata last (``dst`` turns complete last).

    Object stores have no rename; the objects are copied in one batched call (concurrent on adlfs, s3fs,
    gcsfs: server-side copies), as ``fs.mv(recursive=True)`` is unreliable across backends.
    """
    files = sorted(fs.find(src))
    root = _root_meta(src)
    body = [f for f in files if f not in root]
    if body:
        fs.copy(body, [dst + f[len(src):] for f in body])
    for f in [f for f in files if f in root]:
        fs.cp_file(f, dst + f[len(src):])


def _remove_tree(fs: fsspec.AbstractFileSystem, path: str) -> None:
    """Remove store ``path``, its root metadata first (it turns incomplete at once, never half-readable)."""
    for f in sorted(_root_meta(path)):
        if fs.exists(f):
            fs.rm_file(f)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def _replace_remote(fs: fsspec.AbstractFileSystem, tmp_path: str, path: str) -> None:
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
        _remove_tree(fs, path)
    _copy_tree(fs, tmp_path, path)
    fs.rm(tmp_path, recursive=True)
    for old in [*_previous(fs, path, complete=False), *([backup] if backup else [])]:
        _remove_tree(fs, old)


def _complete_at(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    """Whether the root metadata at ``path`` (zarr v3 ``zarr.json`` or v2 ``.zattrs``) marks it complete."""
    for name in ("zarr.json", ".zattrs"):
        f = f"{path}/{name}"
        if fs.exists(f):
            meta = json.loads(fs.cat_file(f))
            return bool(meta.get("attributes", meta).get(COMPLETE, False))
    return False


def _previous(fs: fsspec.AbstractFileSystem, path: str, complete: bool = True) -> list[str]:
    """Copies ``.<name>.old-<id>`` of the store at ``path`` kept by :func:`_replace_remote` (complete ones)."""
    parent, _, name = path.rpartition("/")
    try:
        entries = fs.ls(parent or "", detail=False) if parent or not _is_local(fs) else []
    except FileNotFoundError:
        return []
    found = [e.rstrip("/") for e in entries if e.rstrip("/").rpartition("/")[2].startswith(f".{name}.old-")]
    return [e for e in found if not complete or _complete_at(fs, e)]


def open_store(
    url: str, storage_options: dict[str, Any] | None = None, group: str | None = None, require: tuple[str, ...] = ()
) -> xr.Dataset:
    """Open a complete glacierflow store lazily (``decode_coords="all"``), with clear errors."""
    quiet_consolidated_warning()
    fs, path = _fs(url, storage_options)
    path = path.rstrip("/")
    with cloud.access(url):
        if not is_complete(url, storage_options):
            path = _open_previous(fs, path, url, storage_options)
    with cloud.access(url):
        ds = xr.open_zarr(
            _full_url(fs, path),
            group=group,
            consolidated=False,
            decode_coords="all",
            storage_options=_so(fs, storage_options),
        )
    check_format(ds if group is None else xr.Dataset(attrs=_root_attrs(fs, path) or {}), url)
    missing = [v for v in require if v not in ds.variables]
    if missing:
        raise GlacierflowError(f"store {url} lacks {', '.join(missing)}; is it the right kind of store?")
    return ds


def _open_previous(fs: fsspec.AbstractFileSystem, path: str, url: str, so: dict[str, Any] | None) -> str:
    """The path to read when ``url`` is missing or incomplete: the previous store kept by an interrupted write."""
    previous = [] if _is_local(fs) else _previous(fs, path)
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


def _why_unreadable(fs: fsspec.AbstractFileSystem, path: str, url: str) -> str:
    """One line: why the existing ``url`` is not a complete glacierflow store, and what to do."""
    attrs = _root_attrs(fs, path)
    if attrs is None:
        return f"{url} is not a Zarr store; pass a store written by glacierflow (build-cube, flow, predict)"
    if COMPLETE not in attrs and "glacierflow_version" not in attrs:
        return (f"store {url} is a Zarr store but not a glacierflow store (no glacierflow_version attr); pass a "
                "store written by glacierflow (build-cube, flow, predict)")
    return f"store {url} is incomplete (its write was interrupted or failed); rebuild it with --overwrite"


def check_format(ds: xr.Dataset, url: str) -> None:
    """Raise a one-line :class:`GlacierflowError` when ``ds`` (a store's root) has a newer layout than this reader."""
    from glacierflow import __version__

    fmt = ds.attrs.get(FORMAT, STORE_FORMAT)  # stores written before the attr existed have format 1
    if not isinstance(fmt, int) or fmt > STORE_FORMAT:
        raise GlacierflowError(
            f"store {url} has layout {FORMAT}={fmt!r}, written by glacierflow "
            f"{ds.attrs.get('glacierflow_version', '?')}; this glacierflow {__version__} reads layout "
            f"{STORE_FORMAT}: upgrade glacierflow, or rebuild the store with this version (--overwrite)")


def check_writable(url: str, storage_options: dict[str, Any] | None = None) -> None:
    """Fail early, in one line, when a store (or run directory) cannot be written at ``url``.

    Local paths: the nearest existing ancestor must be a directory this process can create entries in (a
    probe directory is made and removed, so read-only file systems are caught too). Cloud URLs: the
    credentials are resolved and the container reached (:func:`exists`); a write is not probed.
    """
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
