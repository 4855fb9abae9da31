"""Open glacierflow stores lazily and look at them without loading everything.

    python examples/open_lazily.py CUBE_STORE [VELOCITY_STORE]
"""

import sys

import xarray as xr

cube = xr.open_zarr(sys.argv[1], decode_coords="all", consolidated=False)
print(cube)
print("CRS:", cube.spatial_ref.attrs["crs_wkt"][:60], "...")
print("scenes per period:", cube["n_scenes"].values, "interpolated:", cube["interpolated"].values)
scenes = xr.open_zarr(sys.argv[1], group="scenes", consolidated=False)
used = scenes["used"].values.astype(bool)
reasons = sorted({str(r).split(":")[0] for r in scenes["reason"].values if r})
print(f"{used.sum()} of {used.size} scenes used; reasons:", reasons)
# one period, one window: only these chunks are read
window = cube["ndsi"].isel(time=0, y=slice(0, 50), x=slice(0, 50))
print("mean snow-mask NDSI, first period, top-left 50x50:", float(window.mean()))
if len(sys.argv) > 2:
    vel = xr.open_zarr(sys.argv[2], decode_coords="all", consolidated=False)  # the composite (ITS_LIVE names)
    pairs = xr.open_zarr(sys.argv[2], group="pairs", decode_coords="all", consolidated=False)
    print("velocity pairs:", pairs.sizes["mid_date"], "max composite speed v (m/yr):", float(vel["v"].max()))
