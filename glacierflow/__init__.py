"""glacierflow: glacier movement prediction from Landsat-8, STAC -> Dask -> Zarr -> PyTorch."""

from importlib.metadata import PackageNotFoundError, version

from glacierflow.errors import GlacierflowError, SpecError
from glacierflow.geo.glaciers import GLACIERS, Site, get_site

try:
    __version__ = version("glacierflow")  # one source of truth: pyproject.toml, via the installed metadata
except PackageNotFoundError:  # a source tree that was never installed (pip install -e .)
    __version__ = "0+unknown"

__all__ = ["GLACIERS", "GlacierflowError", "Site", "SpecError", "__version__", "get_site"]
