"""Velocity accuracy against the twins' truth: the flow table of ``benchmarks/README.md`` (issue 11).

Usage::

    python benchmarks/bench_flow_truth.py --root /tmp/gf-flow-truth            # basic, himalaya, slow
    python benchmarks/bench_flow_truth.py --root /tmp/gf-flow-truth --worlds basic --methods farneback,ncc
    python benchmarks/bench_flow_truth.py --root /tmp/gf-flow-truth --oracle ndsi,ndsi_surface   # + bounds

For each world a ``small`` parvati twin (4 years, seed 0) is made under ``--root`` (reused when there),
served over HTTP as ``twin serve`` does, built into a cube store as ``build-cube`` does (reused when
there), then ``velocity`` (what ``flow`` computes, with the twin's ``outlines.geojson`` as ``--outline``)
runs per method with the default pairs and its composite is
scored against ``truth.zarr`` by :func:`glacierflow.testing.flow_figures` (the figures of
``tests/test_flow_truth.py``). Worlds: ``basic`` (the original twin), ``himalaya`` (the harder default)
and ``slow`` (himalaya, ``--max-speed 60 --glacier-width 15``: the slow, narrow glacier). One row per
world and method; the issue's targets in the last line.

``--oracle VAR[,VAR]`` adds rows where the guides are replaced by the twin's noise-free truth images
(:func:`glacierflow.testing.oracle_guides`: ``red_clean``, the clean (illuminated) red band:
the truth-image bound; ``ndsi``, clean illuminated NDSI; ``ndsi_surface``, without the terrain light):
the same pairs, matcher and composite, so the gap between an
oracle row and the observed row is what better preprocessing could at most win, and the oracle row's
own error is the matcher's and the world's (texture decorrelation, snow).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import dask

from glacierflow.motion.masks import read_ice_mask
from glacierflow.motion.velocity import open_cube, velocity
from glacierflow.preprocess.build import build_cube_store
from glacierflow.specs import CubeSpec, FlowSpec, PreprocessSpec
from glacierflow.testing import flow_figures, flow_truth, oracle_guides
from glacierflow.twin.make import make_twin
from glacierflow.twin.serve import serve_twin

WORLDS: dict[str, dict] = {
    "basic": {"realism": "basic"},
    "himalaya": {"realism": "himalaya"},
    "slow": {"realism": "himalaya", "max_speed": 60.0, "glacier_width": 15},
}


def cube_for(root: Path, world: str) -> tuple[str, Path]:
    """Make (or reuse) the world's twin and its cube store; return the cube URL and the twin folder."""
    twin = root / f"parvati-small-{world}"
    if not (twin / "truth.zarr").exists():
        t = time.perf_counter()
        make_twin(twin, glacier="parvati", size="small", seed=0, overwrite=True, **WORLDS[world])
        print(f"  made twin {twin} in {time.perf_counter() - t:.0f} s")
    cube = root / f"cube-{world}.zarr"
    if not cube.exists():
        with serve_twin(twin, backend="rustac") as served:
            m = served["meta"]
            spec = CubeSpec(name=f"parvati-{world}", bbox=tuple(m["bbox"]), epsg=m["epsg"], start=m["start"],
                            end=m["end"], catalog=served["stac_url"])
            t = time.perf_counter()
            with dask.config.set(scheduler="threads"):
                build_cube_store(spec, PreprocessSpec(), str(cube))
            print(f"  built {cube} in {time.perf_counter() - t:.0f} s")
    return str(cube), twin


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("/tmp/gf-flow-truth"), help="twins and cubes (reused)")
    ap.add_argument("--worlds", default=",".join(WORLDS), help="comma-separated: " + ", ".join(WORLDS))
    ap.add_argument("--methods", default="ncc", help="comma-separated (ncc, farneback)")
    ap.add_argument("--no-outline", action="store_true", help="stable ground from the NDSI climatology")
    ap.add_argument("--max-pairs-per-scene", type=int, default=FlowSpec.max_pairs_per_scene)
    ap.add_argument("--max-speed", type=float, default=FlowSpec.max_speed, help="NCC search range (m/yr)")
    ap.add_argument("--oracle", default="",
                    help="comma-separated truth variables to track as well (red_clean, ndsi, ndsi_surface)")
    args = ap.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    rows = []
    for world in args.worlds.split(","):
        url, twin = cube_for(args.root, world)
        cube, guides = open_cube(url)
        truth = flow_truth(cube, str(twin / "truth.zarr"))
        ice = None if args.no_outline else read_ice_mask(str(twin / "outlines.geojson"), cube)
        inputs = {"": guides}
        for var in filter(None, args.oracle.split(",")):
            if var == "ndsi_surface" and WORLDS[world]["realism"] == "basic":
                continue  # the basic world renders no terrain illumination
            hp = PreprocessSpec().align_highpass if var == "red_clean" else 0.0  # as the guides are filtered
            inputs[f", truth {var}"] = oracle_guides(guides, str(twin / "truth.zarr"), var, highpass=hp)
        for method in args.methods.split(","):
            for label, images in inputs.items():
                spec = FlowSpec(method=method, max_speed=args.max_speed,
                                max_pairs_per_scene=args.max_pairs_per_scene)
                t = time.perf_counter()
                with dask.config.set(scheduler="threads"):
                    ds = velocity(cube, spec, guides=images, ice_mask=ice).compute()
                f = flow_figures(ds, truth)
                rows.append((world, method + label, ds.sizes["time"], f, time.perf_counter() - t))
                print(f"  {world} {method}{label}: {ds.sizes['time']} pairs in {rows[-1][-1]:.0f} s")
    print(f"\n{'world':9s} {'method':30s} {'pairs':>5s} {'true med':>8s} {'speed err':>9s} {'dir':>6s} "
          f"{'ice cov':>7s} {'stable':>7s} {'valid':>6s} {'err ratio':>9s} {'vx ratio':>8s} {'vy ratio':>8s} {'s':>5s}")
    for world, method, n, f, secs in rows:
        print(f"{world:9s} {method:30s} {n:5d} {f['true_median']:8.1f} {f['rel']:9.3f} {f['direction']:5.1f}° "
              f"{f['ice_coverage']:7.2f} {f['stable']:7.2f} {f['stable_valid']:6.2f} {f['error_ratio']:9.2f} "
              f"{f['error_ratio_x']:8.2f} {f['error_ratio_y']:8.2f} {secs:5.0f}")
    print(f"{'target':9s} {'':30s} {'':>5s} {'':>8s} {'0.10':>9s} {'5.0°':>6s} {'0.90':>7s} {'3 (5)':>7s} "
          f"{'0.80':>6s} {'0.5-2':>9s} {'0.5-2':>8s} {'0.5-2':>8s}   (slow: speed err 0.20, stable 5)")


if __name__ == "__main__":
    main()
