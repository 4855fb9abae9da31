"""The Python API for notebooks: one call per stage, lazy where the stage is lazy.

``import glacierflow as gf`` exposes these functions at the top level (imported on first use, so
``import glacierflow`` stays light and works in a core install without torch)::

    import glacierflow as gf

    cube = gf.build_cube("parvati", start="2021-01-01", end="2022-12-31", period="3MS")   # lazy Dataset
    gf.write(cube, "parvati.zarr")                                                       # computes, writes
    cube = gf.open_cube("parvati.zarr")                                                  # lazy, from the store
    v = gf.velocity(cube)                                                                # lazy velocity Dataset
    run = gf.train("parvati.zarr", "runs/convlstm", epochs=2)                            # needs glacierflow[learn]
    forecast = gf.predict(run, "parvati.zarr")                                          # lazy forecast Dataset

Each function takes the same options as its command line (``glacierflow build-cube --help``) as keyword
arguments, named like the stage's spec fields (``max_cloud=``, ``period=``, ``epochs=``). Nothing here computes a
cube: :func:`write` and the trainers do. The command line calls the same library functions.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import xarray as xr

from glacierflow.errors import GlacierflowError, missing_extra
from glacierflow.geo.glaciers import Site
from glacierflow.specs import CubeSpec, FlowSpec, PreprocessSpec, Spec, resolve_site

__all__ = ["Run", "build_cube", "open_cube", "predict", "search", "train", "velocity", "write"]


def _split(options: dict[str, Any], *specs: type[Spec]) -> list[dict[str, Any]]:
    """``options`` divided among ``specs`` by field name; an option no spec knows is one clear error."""
    names = [{f.name for f in fields(s)} for s in specs]  # type: ignore[arg-type]
    unknown = sorted(set(options) - set().union(*names))
    if unknown:
        known = ", ".join(sorted(set().union(*names)))
        raise GlacierflowError(f"unknown option(s) {', '.join(unknown)}; known: {known}")
    return [{k: v for k, v in options.items() if k in n} for n in names]


def _site(site: str | Site | None, bbox: Sequence[float] | None, epsg: int | None) -> Site:
    if isinstance(site, Site):
        return site
    return resolve_site(site, tuple(bbox) if bbox is not None else None, epsg)  # type: ignore[arg-type]


def _cube_specs(site: str | Site | None, bbox: Sequence[float] | None, start: str | None, end: str | None,
                catalog: str | None, epsg: int | None, options: dict[str, Any]) -> tuple[CubeSpec, PreprocessSpec]:
    from glacierflow.ingest.catalog import PLANETARY_COMPUTER_URL  # deferred: pystac-client

    where = _site(site, bbox, epsg)
    cube_kw, pre_kw = _split(options, CubeSpec, PreprocessSpec)
    for key in ("platforms", "categories"):
        if key in cube_kw:
            cube_kw[key] = tuple(cube_kw[key])
    spec = CubeSpec(name=where.name, bbox=where.bbox, epsg=where.epsg, start=start or where.start,
                    end=end or where.end, catalog=catalog or PLANETARY_COMPUTER_URL, **cube_kw)
    return spec, PreprocessSpec(**pre_kw)


def search(site: str | Site | None = None, *, bbox: Sequence[float] | None = None, start: str | None = None,
           end: str | None = None, catalog: str | None = None, epsg: int | None = None, **options: Any) -> Any:
    """Search the STAC API for the Landsat scenes of a glacier (metadata only; no pixels are read).

    Parameters
    ----------
    site
        A glacier from the registry (``"parvati"``) or a :class:`~glacierflow.geo.glaciers.Site`; or ``bbox``.
    bbox
        ``(west, south, east, north)`` in degrees, instead of ``site``.
    start, end
        Date range (YYYY-MM-DD); default: the site's.
    catalog
        STAC API URL; default Planetary Computer.
    epsg
        Grid EPSG (default: the site's UTM zone).
    **options
        :class:`~glacierflow.specs.CubeSpec` fields (``max_cloud=``, ``platforms=``, ``collection=``...).

    Returns
    -------
    glacierflow.ingest.catalog.SearchResult
        ``.items`` (STAC item dicts), ``.rejected`` with reasons, ``.ids``.
    """
    from glacierflow.ingest import catalog as cat  # deferred: pystac-client

    spec, _ = _cube_specs(site, bbox, start, end, catalog, epsg, options)
    return cat.search(spec.catalog, bbox=spec.bbox, start=spec.start, end=spec.end, collection=spec.collection,
                      platforms=spec.platforms, max_cloud=spec.max_cloud, categories=spec.categories,
                      retries=spec.http_retries, backoff=spec.http_retry_delay, timeout=spec.http_timeout)


def build_cube(site: str | Site | None = None, *, bbox: Sequence[float] | None = None, start: str | None = None,
               end: str | None = None, catalog: str | None = None, epsg: int | None = None,
               **options: Any) -> xr.Dataset:
    """The preprocessed cube of a glacier as a lazy Dataset (search, stack, mask, NDSI, ECC, period means).

    Only the search runs now; pixels are read when the Dataset is computed or written (:func:`write`), on the
    Dask scheduler in use (a ``distributed.Client`` if one is active).

    Parameters
    ----------
    site, bbox, start, end, catalog, epsg
        As :func:`search`.
    **options
        :class:`~glacierflow.specs.CubeSpec` and :class:`~glacierflow.specs.PreprocessSpec` fields, e.g.
        ``period="3MS"``, ``max_cloud=20``, ``max_missing=0.5``.

    Returns
    -------
    xarray.Dataset
        The cube store's content (``ndsi``, ``n_valid``, ``time_mean``, the ``scenes`` table...), lazy, with the
        store attributes (specs, search) that :func:`write` keeps.
    """
    from glacierflow.preprocess.build import lazy_cube  # deferred: the preprocessing stack

    spec, pre = _cube_specs(site, bbox, start, end, catalog, epsg, options)
    return lazy_cube(spec, pre)


def open_cube(url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None) -> xr.Dataset:
    """Open a cube store lazily (local path or ``az://``/``s3://``/``gs://`` URL).

    Parameters
    ----------
    url
        The store written by ``build-cube`` or :func:`write`.
    storage_options
        fsspec options (credentials) for a cloud store.

    Returns
    -------
    xarray.Dataset
        The store's root group, lazy (dask arrays).
    """
    from glacierflow.storage.cubes import open_cube as _open  # deferred: zarr

    ds = _open(str(url), storage_options).data
    ds.encoding["source"] = str(url)  # velocity() reads the store's groups (guides, scenes) from here
    return ds


def velocity(cube: xr.Dataset | str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None,
             **options: Any) -> xr.DataTree:
    """Surface velocity from the cube's scene pairs, lazy, in the velocity store's layout (ITS_LIVE names).

    Parameters
    ----------
    cube
        A cube store URL, or a Dataset from :func:`open_cube` (a store-backed cube: the tracked guide images
        live in the store's groups).
    storage_options
        fsspec options for a cloud store.
    **options
        :class:`~glacierflow.specs.FlowSpec` fields (``method=``, ``max_speed=``...); ``outline=`` (RGI-style
        GeoJSON outlines: stable ground outside them) and ``reference=`` (a velocity store centring the search)
        as ``flow --outline`` and ``--reference``.

    Returns
    -------
    xarray.DataTree
        The root holds the composite ``vx``, ``vy`` (m/yr, +x east, +y north), ``v``, ``v_error``, ``count``
        on ``(y, x)``; the ``pairs`` group each pair's ``vx``, ``vy``, ``v`` on ``mid_date``. Lazy;
        :func:`write` computes and stores it.
    """
    import pandas as pd

    from glacierflow import __version__
    from glacierflow.motion import velocity as vel  # deferred: the matchers

    url = cube if not isinstance(cube, xr.Dataset) else cube.encoding.get("source")
    if url is None:
        raise GlacierflowError("velocity() needs a cube store: pass its URL, or a Dataset from gf.open_cube(url)")
    cube_ds, guides = vel.open_cube(str(url), storage_options)
    (flow_kw,) = _split(options, FlowSpec)
    spec = FlowSpec(**flow_kw)
    ice = vel.read_ice_mask(spec.outline, cube_ds) if spec.outline else None  # as `flow --outline`
    ref = vel.open_reference(spec.reference, storage_options) if spec.reference else None
    ds = vel.velocity(cube_ds, spec, guides=guides, ice_mask=ice, reference=ref)
    specs = vel.cube_specs(cube_ds) if "cube_spec" in cube_ds.attrs else None
    ds.attrs.update(glacierflow_version=__version__, source_cube=str(url),
                    created=pd.Timestamp.now(tz="UTC").isoformat(),
                    **({"cube_spec": specs[0].to_json(), "preprocess_spec": specs[1].to_json()} if specs else {}))
    return vel.its_live(ds)


def write(ds: xr.Dataset | xr.DataTree, url: str | os.PathLike[str], *, overwrite: bool = False,
          storage_options: dict[str, Any] | None = None, progress: bool = True) -> str:
    """Compute ``ds`` and write it as a Zarr store (CF-1.10, STAC beside it), atomically.

    As the command line writes its stores: a failed write leaves no partial store, and never touches an
    existing one unless ``overwrite``.

    Parameters
    ----------
    ds
        A Dataset (or DataTree) from :func:`build_cube`, :func:`velocity` or :func:`predict` (any works).
    url
        Local path or fsspec URL.
    overwrite
        Replace an existing store.
    storage_options
        fsspec options for a cloud store.
    progress
        A progress bar on a terminal or in a notebook (:mod:`glacierflow.progress`), following the Dask
        scheduler in use (a ``distributed.Client`` if one is the default).

    Returns
    -------
    str
        ``url``; open it with ``xarray.open_zarr`` or :func:`open_cube`.
    """
    from dask.base import get_scheduler

    from glacierflow.compute.runner import runner
    from glacierflow.preprocess.build import as_tree  # deferred: the preprocessing stack
    from glacierflow.storage import cf, stac_out, store  # deferred: zarr, pystac

    if isinstance(ds, xr.DataTree):  # e.g. velocity(): the composite and its pairs group
        data: Any = cf.conform(ds)
    else:
        cube = "scene" in ds.dims  # a cube: its per-scene table goes to the `scenes` group, as build-cube writes
        data = cf.conform(as_tree(ds) if cube else ds, period_means=cube or "lead" in ds.dims)
    client = getattr(get_scheduler(), "__self__", None)  # the default distributed.Client's bound get, if any
    run = runner(client, progress_bar=progress, label=f"writing {Path(str(url)).name}")
    stac_out.beside(store.write(data, str(url), overwrite=overwrite, storage_options=storage_options, compute=run),
                    storage_options)
    return str(url)


@dataclass(frozen=True)
class Run:
    """A training run directory: ``best.pt``, ``last.pt``, ``loss.csv``, ``run.json``.

    Parameters
    ----------
    path
        The run directory.
    summary
        What training reported (epochs, best validation loss, ...).
    """

    path: Path
    summary: Any = None

    def __fspath__(self) -> str:
        return str(self.path)


def _learning(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a missing ``learn`` extra into one clear error naming it."""
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ModuleNotFoundError as e:
            extra = missing_extra(e)
            if extra is None:
                raise
            raise extra from None

    wrapped.__name__, wrapped.__doc__, wrapped.__wrapped__ = fn.__name__, fn.__doc__, fn  # type: ignore[attr-defined]
    return wrapped


@_learning
def train(cube: str | os.PathLike[str], out: str | os.PathLike[str], *, model: str | None = None,
          resume: bool = False, progress: bool = True, storage_options: dict[str, Any] | None = None,
          **options: Any) -> Run:
    """Train a model on patch sequences of a cube store (needs ``pip install "glacierflow[learn]"``).

    Parameters
    ----------
    cube
        Cube store URL.
    out
        Run directory (created).
    model
        A registered model (``glacierflow models``); default the measured-best recipe's.
    resume
        Continue from ``out/last.pt``.
    progress
        Show a progress bar.
    storage_options
        fsspec options for a cloud store.
    **options
        :class:`~glacierflow.specs.ModelSpec`, :class:`~glacierflow.specs.PatchSpec` and
        :class:`~glacierflow.specs.TrainSpec` fields (``epochs=``, ``t_in=``, ``lr=``...).

    Returns
    -------
    Run
        The run directory and its summary.
    """
    from glacierflow.learn.train import fit  # deferred: torch
    from glacierflow.specs import ModelSpec, PatchSpec, TrainSpec

    model_kw, patch_kw, train_kw = _split(options, ModelSpec, PatchSpec, TrainSpec)
    if model is not None:
        model_kw["name"] = model
    summary = fit(str(cube), out, ModelSpec(**model_kw) if model_kw or model else None,
                  PatchSpec(**patch_kw) if patch_kw else None, TrainSpec(**train_kw) if train_kw else None,
                  resume=resume, progress=progress, storage_options=storage_options)
    return Run(Path(out), summary)


@_learning
def predict(run: Run | str | os.PathLike[str], cube: str | os.PathLike[str], out: str | None = None, *,
            checkpoint: str = "best.pt", overwrite: bool = False, storage_options: dict[str, Any] | None = None,
            **options: Any) -> xr.Dataset:
    """Full-scene forecast of the periods after the cube's last ones (needs ``glacierflow[learn]``).

    Parameters
    ----------
    run
        A :class:`Run` or a run directory.
    cube
        The cube store to forecast from.
    out
        Forecast store to write; default a temporary directory (the returned Dataset reads from it lazily).
    checkpoint
        ``best.pt`` or ``last.pt``.
    overwrite
        Replace an existing ``out``.
    storage_options
        fsspec options for cloud stores.
    **options
        :class:`~glacierflow.specs.PredictSpec` fields (``last_input=``, ``overlap=``...).

    Returns
    -------
    xarray.Dataset
        The forecast store, opened lazily.
    """
    from glacierflow.forecast.predict import load_forecaster, predict_cube  # deferred: torch
    from glacierflow.specs import PredictSpec
    from glacierflow.storage.store import open_store  # deferred: zarr

    (predict_kw,) = _split(options, PredictSpec)
    target = out or str(Path(tempfile.mkdtemp(prefix="glacierflow-forecast-")) / "forecast.zarr")
    predict_cube(load_forecaster(os.fspath(run), checkpoint), str(cube), target,
                 PredictSpec(**predict_kw) if predict_kw else None, overwrite=overwrite,
                 storage_options=storage_options)
    return open_store(target, storage_options)
