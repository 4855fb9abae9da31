"""Build a cube from Python with the notebook API (the same library calls the CLI makes).

    python examples/build_cube.py [STAC_URL W S E N START END OUT [CLUSTER]]

e.g. against a served twin: `glacierflow twin serve DIR --url-file url.txt`, bbox from DIR/twin.json. The UTM
zone comes from the bbox centre; CLUSTER is any `--cluster` form (default `local:2`; `threads` for small cubes).
Without a STAC URL argument this targets Planetary Computer for the parvati glacier.
"""

import sys

import glacierflow as gf
from glacierflow.compute.cluster import get_client


def main(argv: list[str]) -> None:
    """Build the cube named by ``argv`` (see the module docstring)."""
    cluster = "local:2"
    if len(argv) in (8, 9):
        url, *bbox, start, end, out = argv[:8]
        cluster = argv[8] if len(argv) == 9 else cluster
        where = {"bbox": tuple(map(float, bbox)), "catalog": url}
    else:
        where, start, end, out = {"site": "parvati"}, "2019-01-01", "2019-12-31", "parvati-2019-3ms.zarr"
    cube = gf.build_cube(**where, start=start, end=end, period="3MS")  # the search runs now; pixels later
    print(f"{cube.sizes['scene']} scenes considered, cube {dict(cube['ndsi'].sizes)}")
    with get_client(cluster):  # the Dask client that gf.write computes on
        gf.write(cube, out, overwrite=True)
    print(f"written: {out}")


if __name__ == "__main__":  # needed: a local cluster starts worker processes that import this file
    main(sys.argv[1:])
