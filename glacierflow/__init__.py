"""glacierflow: glacier velocity and snow-cover forecasts from Landsat 8/9, STAC -> Dask -> Zarr -> PyTorch.

The Python API (:mod:`glacierflow.api`) is imported on first use, so ``import glacierflow`` is light and works in
a core install (without torch)::

    import glacierflow as gf
    cube = gf.build_cube("parvati", start="2021-01-01", end="2022-12-31")   # a lazy xarray.Dataset
    gf.plot_cube("parvati.zarr", -1)      # a matplotlib Figure of a store's last period (shows in a notebook)
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from glacierflow.errors import GlacierflowError, MissingExtraError, SpecError
from glacierflow.geo.glaciers import GLACIERS, Site, get_site

try:
    __version__ = version("glacierflow")  # one source of truth: pyproject.toml, via the installed metadata
except PackageNotFoundError:  # a source tree that was never installed (pip install -e .)
    __version__ = "0+unknown"

API = ("Run", "build_cube", "open_cube", "predict", "search", "train", "velocity", "write")
"""The notebook API's names, resolved lazily from :mod:`glacierflow.api`."""

PLOTS = ("plot_cube", "plot_flow", "plot_flow_at", "plot_forecast", "plot_forecast_flow", "plot_run", "save_figure")
"""The figures (each returns a matplotlib Figure; ``save_figure`` writes one), from :mod:`glacierflow.plots.figures`."""

__all__ = ["GLACIERS", "GlacierflowError", "MissingExtraError", "Site", "SpecError", "__version__", "get_site", *API,
           *PLOTS]


def __getattr__(name: str) -> Any:
    """The API's functions on first use (PEP 562): ``glacierflow.build_cube`` imports :mod:`glacierflow.api`."""
    if name in API:
        return getattr(import_module("glacierflow.api"), name)
    if name in PLOTS:  # matplotlib is imported on the first plot, not by `import glacierflow`
        return getattr(import_module("glacierflow.plots.figures"), name)
    raise AttributeError(f"module 'glacierflow' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(API) | set(PLOTS))
