"""Open a forecast store lazily, pick a point and a region, and plot their NDSI history and forecast.

    python examples/query_forecast.py FORECAST_STORE [OUT_PNG]

The cube the forecast came from is named in the store's attrs (``source_cube``). Only the chunks of the
point and the region are read from either store.
"""

import json
import sys

import numpy as np
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

forecast = xr.open_zarr(sys.argv[1], decode_coords="all")
out_png = sys.argv[2] if len(sys.argv) > 2 else "query_forecast.png"
cube = xr.open_zarr(forecast.attrs["source_cube"], decode_coords="all")
print(forecast)
print("model:", forecast.attrs["model"], "| inputs:", json.loads(forecast.attrs["input_periods"]))
if "scores" in forecast.attrs:
    for name, s in json.loads(forecast.attrs["scores"]).items():
        print(f"  full-scene {name:12s} MSE {s['mse']:.4f}  MAE {s['mae']:.4f}")

# a point (the scene centre) and a 10 x 10 px region around it, chosen by UTM coordinates
x0 = float(forecast.x[forecast.sizes["x"] // 2])
y0 = float(forecast.y[forecast.sizes["y"] // 2])
point_fc = forecast["ndsi"].sel(x=x0, y=y0, method="nearest")
point_cube = cube["ndsi"].sel(x=x0, y=y0, method="nearest")
window = {"x": slice(x0 - 150, x0 + 150), "y": slice(y0 + 150, y0 - 150)}  # y decreases downwards
region_fc = forecast["ndsi"].sel(window).mean(("x", "y"))
region_cube = cube["ndsi"].sel(window).mean(("x", "y"))
lead1 = forecast["ndsi"].swap_dims(time="lead").sel(lead=1)  # one lead: one period's chunks
print(f"point ({x0:.0f}, {y0:.0f}) m: forecast {np.round(point_fc.values, 3)}")
print(f"region mean: forecast {np.round(region_fc.values, 3)}; lead-1 scene mean {float(lead1.mean()):.3f}")

fig = Figure(figsize=(9, 4), dpi=100)
FigureCanvasAgg(fig)
ax = fig.subplots()
ax.plot(cube.time, point_cube, "o-", color="tab:blue", label="cube, point")
ax.plot(cube.time, region_cube, "-", color="tab:cyan", label="cube, 10x10 px region mean")
ax.plot(forecast.time, point_fc, "s--", color="tab:red", label="forecast, point")
ax.plot(forecast.time, region_fc, "--", color="tab:orange", label="forecast, region mean")
ax.axvline(np.datetime64(forecast.attrs["last_input"]), color="grey", ls=":", label="last input")
ax.set_xlabel("period start")
ax.set_ylabel("snow-mask NDSI (1)")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(out_png)
print("written:", out_png)
