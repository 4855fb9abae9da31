"""The twin's noise floor: MSE of the cube against the truth's clean snow mask, on the test samples.

Usage::

    python benchmarks/bench_noise_floor.py --cube CUBE --truth TWIN/truth.zarr [--test-starts 4]

The truth store holds the clean NDSI of every acquisition; per cube period the clean snow mask (NDSI where
>= the cube's threshold, else 0) is averaged over the acquisitions of that period, taken at the cube's
pixel centres (nearest truth pixel), and scored against the cube's ``ndsi`` on exactly the test samples'
observed target pixels (``glacierflow.learn.patches``, default patch spec). No forecast can be expected to
beat this figure by much: it is how far the cube itself is from the world it measures. Exits 1 when the
clean cube's own MSE against itself is not 0 (the equivalence check of the scoring path).
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import xarray as xr

from glacierflow.learn import patches
from glacierflow.specs import PatchSpec
from glacierflow.storage.cubes import cube_period
from glacierflow.storage.store import config_attr, open_store


def clean_periods(cube: xr.Dataset, truth: xr.Dataset, threshold: float) -> np.ndarray:
    """``(T, H, W)`` per-period means of the truth's clean snow mask on the cube's grid (NaN: no acquisition)."""
    starts = pd.DatetimeIndex(cube["time"].values)
    ends = starts + pd.tseries.frequencies.to_offset(cube_period(cube))
    nd = truth["ndsi"].sel(y=cube["y"], x=cube["x"], method="nearest")
    out = np.full((len(starts), cube.sizes["y"], cube.sizes["x"]), np.nan, np.float32)
    times = pd.DatetimeIndex(truth["time"].values)
    for k, (a, b) in enumerate(zip(starts, ends, strict=True)):
        sel = np.flatnonzero((times >= a) & (times < b))
        if sel.size:
            v = nd.isel(time=sel).values
            out[k] = np.where(v >= threshold, v, 0.0).mean(0)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cube", required=True)
    p.add_argument("--truth", required=True)
    p.add_argument("--test-starts", type=int, default=4)
    args = p.parse_args(argv)
    cube = open_store(args.cube, require=("ndsi",))
    truth = xr.open_zarr(args.truth, consolidated=False)
    threshold = float(config_attr(cube, "preprocess_spec").get("ndsi_threshold", 0.3))
    clean = clean_periods(cube, truth, threshold)
    spec = PatchSpec(test_starts=args.test_starts)
    samples = patches.prepare(cube, spec)
    starts = samples.starts[samples.sets["test"]]
    se = n = se_self = 0.0
    for i in range(0, len(starts), 256):
        b = samples.cube.gather(starts[i: i + 256])
        t, y, x = starts[i: i + 256].T
        ref = patches._frames(clean, t + spec.t_in, y, x, spec.t_out, spec.size).astype(np.float64)
        m = b["mask"] * np.isfinite(ref)
        ref = np.nan_to_num(ref)
        se += float((((b["y"] - ref) ** 2) * m).sum())
        se_self += float((((ref - ref) ** 2) * m).sum())
        n += float(m.sum())
    print(f"noise floor (cube vs clean truth, test targets, {len(starts)} samples, "
          f"{len(samples.origins('test'))} start dates): MSE {se / n:.5f}")
    if se_self != 0.0:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
