"""glacierflow: glacier movement prediction from Landsat-8, STAC -> Dask -> Zarr -> PyTorch."""

from glacierflow.errors import GlacierflowError
from glacierflow.glaciers import GLACIERS, Site, get_site

__version__ = "0.1.0"
__all__ = ["GLACIERS", "GlacierflowError", "Site", "get_site", "__version__"]
