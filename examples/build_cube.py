"""Build a cube from Python instead of the CLI (same library call the CLI makes).

    python examples/build_cube.py STAC_URL W S E N START END OUT

e.g. against a served twin: `glacierflow twin serve DIR --url-file url.txt`, bbox from DIR/twin.json.
Without a STAC URL argument this targets Planetary Computer for the parvati glacier.
"""

import sys

from glacierflow.build import build_cube_store
from glacierflow.catalog import PLANETARY_COMPUTER_URL
from glacierflow.cluster import get_client
from glacierflow.config import CubeSpec, PreprocessSpec
from glacierflow.glaciers import get_site

if len(sys.argv) == 9:
    url, *bbox, start, end, out = sys.argv[1:]
    spec = CubeSpec(name="example", bbox=tuple(map(float, bbox)), epsg=32643, start=start, end=end, catalog=url)
else:
    site = get_site("parvati")
    spec = CubeSpec(name=site.name, bbox=site.bbox, epsg=site.epsg, start="2019-01-01", end="2019-12-31",
                    catalog=PLANETARY_COMPUTER_URL)
    out = "parvati-2019-3ms.zarr"

with get_client("local:2"):
    print(build_cube_store(spec, PreprocessSpec(period="3MS"), out, overwrite=True))
