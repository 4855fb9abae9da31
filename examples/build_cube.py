"""Build a cube from Python instead of the CLI (same library call the CLI makes).

    python examples/build_cube.py [STAC_URL W S E N START END OUT [CLUSTER]]

e.g. against a served twin: `glacierflow twin serve DIR --url-file url.txt`, bbox from DIR/twin.json. The UTM
zone comes from the bbox centre; CLUSTER is any `--cluster` form (default `local:2`; `threads` for small cubes).
Without a STAC URL argument this targets Planetary Computer for the parvati glacier.
"""

import sys

from glacierflow.compute.cluster import get_client
from glacierflow.compute.runner import runner
from glacierflow.geo.glaciers import get_site, site_from_bbox
from glacierflow.ingest.catalog import PLANETARY_COMPUTER_URL
from glacierflow.preprocess.build import build_cube_store
from glacierflow.specs import CubeSpec, PreprocessSpec


def main(argv: list[str]) -> None:
    """Build the cube named by ``argv`` (see the module docstring)."""
    cluster = "local:2"
    if len(argv) in (8, 9):
        url, *bbox, start, end, out = argv[:8]
        cluster = argv[8] if len(argv) == 9 else cluster
        site = site_from_bbox(tuple(map(float, bbox)), name="example")
    else:
        url, start, end, out = PLANETARY_COMPUTER_URL, "2019-01-01", "2019-12-31", "parvati-2019-3ms.zarr"
        site = get_site("parvati")
    spec = CubeSpec(name=site.name, bbox=site.bbox, epsg=site.epsg, start=start, end=end, catalog=url)
    with get_client(cluster) as client:
        summary = build_cube_store(spec, PreprocessSpec(period="3MS"), out, overwrite=True, compute=runner(client))
    print("\n".join(summary.lines()))


if __name__ == "__main__":  # needed: a local cluster starts worker processes that import this file
    main(sys.argv[1:])
