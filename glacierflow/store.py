"""Zarr stores: CRS coordinate, safe writes (local path or any fsspec URL), lazy reads.

Safe writes: a store is written to a temporary sibling (``.<name>.partial-<uuid>``) and moved into
place only when complete; a completion attribute (``glacierflow_complete``) is set last. An interrupted
run therefore never leaves a corrupt store where a good one was, and readers refuse incomplete stores.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from typing import Any

import fsspec
import numpy as np
import xarray as xr
import zarr
from pyproj import CRS

from glacierflow.errors import GlacierflowError

COMPLETE = "glacierflow_complete"


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
    fs, path = fsspec.core.url_to_fs(str(url), **(storage_options or {}))
    return fs, path


def _full_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return fs.unstrip_protocol(path) if not _is_local(fs) else path


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def is_complete(url: str, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether a complete glacierflow store exists at ``url``."""
    fs, path = _fs(url, storage_options)
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
    return bool(fs.exists(path))


def _so(fs: fsspec.AbstractFileSystem, storage_options: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if _is_local(fs) else storage_options


def write_store(
    ds: xr.Dataset,
    url: str,
    *,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
    compute: Callable[[Any], Any] | None = None,
    groups: dict[str, xr.Dataset] | Callable[[xr.Dataset], dict[str, xr.Dataset]] | None = None,
    temporary: tuple[str, ...] = (),
) -> str:
    """Write ``ds`` (and optional sub-groups) as a Zarr store at ``url``, safely.

    Parameters
    ----------
    ds
        Dataset to write (lazy variables are computed here).
    url
        Local path or fsspec URL (``az://``, ``s3://``, ``gs://``, ``memory://``).
    overwrite
        Replace an existing complete store. Without it an existing store is refused.
    storage_options
        fsspec options (credentials, ``connection_string``, ``use_listings_cache=False`` for adlfs, ...).
    compute
        Called with the delayed write (``to_zarr(compute=False)``) to run it, e.g. with a progress bar;
        default: ``delayed.compute()``.
    groups
        Extra datasets written as Zarr groups (e.g. ``{"scenes": per_scene_table}``), or a callable
        returning them, called after ``compute`` with the written (temporary) store opened lazily, for tables
        built from computed results.
    temporary
        Variables of ``ds`` removed from the store after ``groups`` (e.g. per-scene results written in the
        same pass as the main arrays, so that they share one task graph, and then reshaped into a group).

    Returns
    -------
    str
        The store URL.
    """
    fs, path = _fs(url, storage_options)
    path = path.rstrip("/")
    if fs.exists(path):
        if not overwrite:
            state = "complete" if is_complete(url, storage_options) else "incomplete"
            raise GlacierflowError(f"store {url} already exists ({state}); pass --overwrite to replace it")
    parent, name = path.rsplit("/", 1) if "/" in path else ("", path)
    tmp_path = (
        f"{parent}/.{name}.partial-{uuid.uuid4().hex[:8]}" if parent else f".{name}.partial-{uuid.uuid4().hex[:8]}"
    )
    if _is_local(fs):
        os.makedirs(parent or ".", exist_ok=True)
    tmp_url = _full_url(fs, tmp_path)
    so = _so(fs, storage_options)
    try:
        ds = ds.copy()
        ds.attrs[COMPLETE] = False
        delayed = ds.to_zarr(tmp_url, mode="w", consolidated=False, compute=False, storage_options=so)
        (compute or (lambda d: d.compute()))(delayed)
        if callable(groups):
            groups = groups(xr.open_zarr(tmp_url, consolidated=False, storage_options=so))
        for gname, gds in (groups or {}).items():
            gds.to_zarr(tmp_url, group=gname, mode="w", consolidated=False, storage_options=so)
        root = zarr.open_group(tmp_url, mode="r+", storage_options=so)
        for name in temporary:
            del root[name]
        root.attrs[COMPLETE] = True
        if fs.exists(path):
            if _is_local(fs):
                old = f"{parent}/.{name}.old-{uuid.uuid4().hex[:8]}" if parent else f".{name}.old"
                os.rename(path, old)
                os.rename(tmp_path, path)
                fs.rm(old, recursive=True)
                return url
            fs.rm(path, recursive=True)
        if _is_local(fs):
            os.rename(tmp_path, path)
        else:
            _move_tree(fs, tmp_path, path)
    except BaseException:
        _remove_partial(fs, tmp_path)
        raise
    return url


def _move_tree(fs: fsspec.AbstractFileSystem, src: str, dst: str) -> None:
    """Copy every object of ``src`` to ``dst``, then delete ``src``.

    The root metadata goes last, so the store turns complete last. Object stores have no rename, and
    ``fs.mv(recursive=True)`` is unreliable across backends.
    """
    files = sorted(fs.find(src))
    root_meta = {f"{src}/zarr.json", f"{src}/.zattrs", f"{src}/.zgroup"}
    for f in [f for f in files if f not in root_meta] + [f for f in files if f in root_meta]:
        fs.cp_file(f, dst + f[len(src):])
    fs.rm(src, recursive=True)


def open_store(
    url: str, storage_options: dict[str, Any] | None = None, group: str | None = None, require: tuple[str, ...] = ()
) -> xr.Dataset:
    """Open a complete glacierflow store lazily (``decode_coords="all"``), with clear errors."""
    fs, path = _fs(url, storage_options)
    if not fs.exists(path):
        raise GlacierflowError(f"store {url} does not exist")
    if not is_complete(url, storage_options):
        raise GlacierflowError(f"store {url} is incomplete or not a glacierflow store; rebuild it with --overwrite")
    ds = xr.open_zarr(
        _full_url(fs, path),
        group=group,
        consolidated=False,
        decode_coords="all",
        storage_options=_so(fs, storage_options),
    )
    missing = [v for v in require if v not in ds.variables]
    if missing:
        raise GlacierflowError(f"store {url} lacks {', '.join(missing)}; is it the right kind of store?")
    return ds


def config_attr(ds: xr.Dataset, key: str) -> dict[str, Any]:
    """A JSON config recorded in the store attrs."""
    raw = ds.attrs.get(key)
    return json.loads(raw) if isinstance(raw, str) else dict(raw or {})
