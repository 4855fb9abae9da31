"""``glacierflow report DIR``: one self-contained HTML page of what a run did (figures inline, no fetches).

The page shows what the folder holds, section by section, and says so where something is absent (a folder
with only a cube store is a valid report): the pipeline summary (every store and run found, the demo's stage
times), the scenes table (used, or why not) and the shift statistics of the cube, the cube's NDSI, the
velocity map and its error, the loss curves of every run, the skill table per lead against every baseline
(with 95 % intervals where ``metrics.json`` has them) and the forecast panels. Maps carry lat/lon ticks at
their frame, a scale bar, and the glacier outline where one is known (a GeoJSON of lon/lat polygons in the
folder, e.g. the twin's outlines).

Stores are recognised by their variables (:func:`store_kind`), run directories by ``metrics.json`` or
``loss.csv``. Numbers in tables carry their full value in ``data-value`` (the browser test compares them with
``metrics.json``).
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from glacierflow.errors import GlacierflowError
from glacierflow.plots import figures
from glacierflow.storage import store as stores

DPI = 90
STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;margin-top:1.6em}table{border-collapse:collapse;font-size:.85em}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}th{background:#f3f3f3}td.t{text-align:left}
tr.unused{color:#999}img{max-width:100%;height:auto}.note{color:#666;font-style:italic}
.scroll{max-height:420px;overflow:auto;display:inline-block}td.d{white-space:nowrap;text-align:left}
table+table{margin-top:.8em}"""


@dataclass
class Found:
    """What a folder holds: stores by kind (``cube``, ``velocity``, ``forecast``, ``truth``), runs, extras."""

    stores: dict[str, list[Path]] = field(default_factory=dict)
    runs: list[Path] = field(default_factory=list)
    outlines: list[Path] = field(default_factory=list)
    demo: dict[str, Any] = field(default_factory=dict)


def store_kind(ds: xr.Dataset) -> str:
    """``cube``, ``velocity``, ``forecast``, ``truth`` or ``store`` from a store's variables."""
    names = set(ds.variables)
    if "lead" in names or "forecast_reference_time" in names:
        return "forecast"
    if names & {"vx", "u_composite", "speed_composite", "v_error"}:
        return "velocity"
    if "glacier_mask" in names or "defects" in names:
        return "truth"
    if "ndsi" in names:
        return "cube"
    return "store"


def discover(folder: Path, depth: int = 3) -> Found:
    """Stores, run directories and outline files under ``folder`` (``depth`` levels; never inside a store)."""
    found = Found()
    if (folder / "demo.json").is_file():
        found.demo = json.loads((folder / "demo.json").read_text())
    todo = [(folder, 0)]
    while todo:
        d, level = todo.pop()
        for p in sorted(d.iterdir()):
            if p.name.startswith("."):
                continue
            if p.is_dir() and p.suffix == ".zarr":
                try:
                    kind = store_kind(open_any(p))
                except (GlacierflowError, OSError, ValueError, KeyError):
                    continue  # an incomplete or foreign store: not part of the report
                found.stores.setdefault(kind, []).append(p)
            elif p.is_dir() and ((p / "metrics.json").is_file() or (p / "loss.csv").is_file()):
                found.runs.append(p)
            elif p.is_file() and p.suffix == ".geojson":
                found.outlines.append(p)
            elif p.is_dir() and level + 1 < depth:
                todo.append((p, level + 1))
    main = str(found.demo.get("cube", ""))  # the demo's own cube first (the other glacier's after it)
    if "cube" in found.stores:
        found.stores["cube"].sort(key=lambda p: str(p) != main)
    return found


def open_any(path: Path) -> xr.Dataset:
    """A glacierflow store (:func:`~glacierflow.storage.store.open_store`), or a plain Zarr store (the twin's truth)."""
    try:
        return stores.open_store(str(path))
    except GlacierflowError:
        return xr.open_zarr(str(path), decode_coords="all", consolidated=False)


def write_report(folder: str | os.PathLike, out: str | os.PathLike | None = None, *,
                 also: tuple[str | os.PathLike, ...] = (), preface: str = "") -> Path:
    """Write the report of ``folder`` (default ``folder/report.html``); returns its path.

    ``also``: stores (``*.zarr``) and outlines (``*.geojson``) outside the folder to report on first (the
    monitor's cube); ``preface``: an HTML section put before the others (the monitor's "what changed").
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise GlacierflowError(f"report: {folder} is not a folder; pass a demo folder or one holding stores")
    found = discover(folder)
    for p in map(Path, also):
        if p.suffix == ".geojson" and p not in found.outlines:
            found.outlines.insert(0, p)
        elif p.suffix != ".geojson" and p.is_dir() and all(p not in v for v in found.stores.values()):
            found.stores.setdefault(store_kind(open_any(p)), []).insert(0, p)
    if not found.stores and not found.runs:
        raise GlacierflowError(f"report: no glacierflow store (*.zarr) or run directory in {folder}")
    sections = [preface, _summary(folder, found), _scenes(found), _cube_maps(found), _velocity(found),
                _losses(found), _skill(found), _forecasts(found)]
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>glacierflow report: "
            f"{html.escape(folder.resolve().name)}</title><style>{STYLE}</style></head><body>"
            f"<h1>glacierflow report: {html.escape(folder.resolve().name)}</h1>{''.join(sections)}</body></html>")
    path = Path(out) if out else folder / "report.html"
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


# --- pieces -------------------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value))


def _img(png: bytes, alt: str) -> str:
    return f"<img alt='{_e(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def _fig_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _figure_png(fig: Figure) -> bytes:
    """PNG bytes of a figure the CLI draws (``glacierflow.plots.figures``), at its own size and dpi."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi="figure")
    return buf.getvalue()


def _num(value: Any, digits: int = 4) -> str:
    """A table cell holding a number: shown rounded, the full value in ``data-value``."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "<td data-value=''>–</td>"
    return f"<td data-value='{float(value)!r}'>{float(value):.{digits}g}</td>"


def _section(title: str, body: str, anchor: str) -> str:
    return f"<section id='{anchor}'><h2>{_e(title)}</h2>{body}</section>"


def _absent(what: str) -> str:
    return f"<p class='note'>{_e(what)}</p>"


def _summary(folder: Path, found: Found) -> str:
    rows = []
    for kind, paths in sorted(found.stores.items()):
        for p in paths:
            ds = open_any(p)
            dims = " × ".join(f"{d} {n}" for d, n in ds.sizes.items() if d != "bnds")
            t = ds["time"].values if "time" in ds.coords else None
            span = f"{pd.Timestamp(t.min()):%Y-%m-%d} .. {pd.Timestamp(t.max()):%Y-%m-%d}" if t is not None else ""
            shown = p.relative_to(folder) if p.is_relative_to(folder) else p  # the monitor's cube may lie elsewhere
            rows.append(f"<tr><td class='t'>{_e(kind)}</td><td class='t'>{_e(shown)}</td>"
                        f"<td class='t'>{_e(dims)}</td><td class='t'>{_e(span)}</td>"
                        f"<td class='t'>{_e(ds.attrs.get('glacierflow_version', ''))}</td>"
                        f"<td class='t'>{_e(ds.attrs.get('created', ''))}</td></tr>")
    for run in found.runs:
        rows.append(f"<tr><td class='t'>run</td><td class='t'>{_e(run.relative_to(folder))}</td>"
                    f"<td class='t' colspan='4'>{_e(', '.join(sorted(f.name for f in run.iterdir())))}</td></tr>")
    body = ("<table id='outputs'><tr><th>kind</th><th>path</th><th>size</th><th>time</th><th>version</th>"
            f"<th>created</th></tr>{''.join(rows)}</table>")
    stages = found.demo.get("stages") or {}
    if stages:
        cells = "".join(f"<tr><td class='t'>{_e(k)}</td>{_num(_seconds(v), 3)}</tr>" for k, v in stages.items())
        body += f"<h3>stage times (s)</h3><table id='stages'><tr><th>stage</th><th>wall s</th></tr>{cells}</table>"
    return _section("Pipeline summary", body, "summary")


def _seconds(v: Any) -> float | None:
    if isinstance(v, dict):
        v = next((v[k] for k in ("wall_s", "wall", "seconds") if k in v), None)
    if isinstance(v, list | tuple):
        v = v[0] if v else None
    return float(v) if isinstance(v, int | float) else None


SCENE_COLUMNS = ("time", "item_id", "platform", "cloud_cover", "valid_fraction", "used", "reason", "aligned",
                 "shift_x", "shift_y", "ecc")


def _scenes(found: Found) -> str:
    cubes = found.stores.get("cube", [])
    if not cubes:
        return _section("Scenes", _absent("no cube store in the folder: no scenes table"), "scenes")
    parts = []
    for cube in cubes:
        try:
            table = stores.open_store(str(cube), group="scenes").load().to_dataframe().reset_index()
        except (GlacierflowError, OSError, KeyError, ValueError):
            parts.append(_absent(f"{cube.name}: no scenes group"))
            continue
        cols = [c for c in SCENE_COLUMNS if c in table.columns]
        head = "".join(f"<th>{_e(c)}</th>" for c in cols)
        rows = "".join(_scene_row(r, cols) for _, r in table.iterrows())
        used = table["used"].astype(bool) if "used" in table else pd.Series(True, index=table.index)
        # reasons read "<kind>: <detail>" (cloud: eo:cloud_cover 60 > 20): counted by kind, the detail per row
        why = (table.loc[~used, "reason"].astype(str).str.split(":").str[0].value_counts() if "reason" in table
               else pd.Series(dtype=int))
        reasons = ", ".join(f"{_e(k)}: {v}" for k, v in why.items()) or "none"
        parts.append(f"<h3>{_e(cube.name)}: {int(used.sum())} of {len(table)} scenes used</h3>"
                     f"<p>not used: {reasons}</p>{_shift_stats(table, used)}"
                     f"<div class='scroll'><table class='scenes'><tr>{head}</tr>{rows}</table></div>")
    return _section("Scenes (used, or why not) and shifts", "".join(parts), "scenes")


def _scene_row(r: pd.Series, cols: list[str]) -> str:
    cells = []
    for c in cols:
        v = r[c]
        if c == "time":
            cells.append(f"<td class='d'>{pd.Timestamp(v):%Y-%m-%d %H:%M}</td>")
        elif isinstance(v, float | np.floating):
            cells.append(_num(v, 3))
        else:
            cells.append(f"<td class='t'>{_e(v)}</td>")
    used = bool(r.get("used", True))
    return f"<tr class='{'used' if used else 'unused'}'>{''.join(cells)}</tr>"


def _shift_stats(table: pd.DataFrame, used: pd.Series) -> str:
    """Shift statistics (pixels) over the used scenes: mean, median, RMS, largest magnitude."""
    if not {"shift_x", "shift_y"} <= set(table.columns):
        return ""
    sel = table.loc[used, ["shift_x", "shift_y"]].astype(float).dropna()
    if sel.empty:
        return _absent("no used scene with a shift")
    mag = np.hypot(sel["shift_x"], sel["shift_y"])
    rows = "".join(
        f"<tr><td class='t'>{name}</td>{_num(f(sel['shift_x']), 3)}{_num(f(sel['shift_y']), 3)}{_num(f(mag), 3)}</tr>"
        for name, f in (("mean", np.mean), ("median", np.median), ("RMS", lambda s: np.sqrt(np.mean(np.square(s)))),
                        ("max |·|", lambda s: np.max(np.abs(s)))))
    return ("<table class='shifts'><tr><th>shift (px)</th><th>x (columns)</th><th>y (rows)</th>"
            f"<th>magnitude</th></tr>{rows}</table>")


# --- maps: lat/lon ticks at the frame, a scale bar, the outline where known ------------------------------------


def _extent(ds: xr.Dataset) -> tuple[float, float, float, float]:
    """(left, right, bottom, top) of the pixel edges, in the store's CRS units."""
    x, y = np.asarray(ds["x"].values, float), np.asarray(ds["y"].values, float)
    hx, hy = abs(x[1] - x[0]) / 2, abs(y[1] - y[0]) / 2
    return x.min() - hx, x.max() + hx, y.min() - hy, y.max() + hy


def nice_length(value: float) -> float:
    """The largest 1, 2 or 5 x 10^k not above ``value`` (a scale bar's length)."""
    exp = 10 ** np.floor(np.log10(value)) if value > 0 else 1.0
    return float(next(m * exp for m in (5, 2, 1, 0.5) if m * exp <= max(value, exp / 2)))


def _geo_frame(ax: Any, ds: xr.Dataset, found: Found) -> None:
    """Longitude ticks along the bottom edge, latitude ticks along the left edge, a scale bar, outlines."""
    from pyproj import CRS, Transformer

    left, right, bottom, top = _extent(ds)
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    if "spatial_ref" not in ds.variables:
        return
    crs = CRS.from_wkt(ds["spatial_ref"].attrs["crs_wkt"])
    to_ll = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    xt = np.linspace(left, right, 5)[1:-1]
    yt = np.linspace(bottom, top, 5)[1:-1]
    lon, _ = to_ll.transform(xt, np.full_like(xt, bottom))
    _, lat = to_ll.transform(np.full_like(yt, left), yt)
    ax.set_xticks(xt, [f"{abs(v):.3f}°{'E' if v >= 0 else 'W'}" for v in lon], fontsize=7)
    ax.set_yticks(yt, [f"{abs(v):.3f}°{'N' if v >= 0 else 'S'}" for v in lat], fontsize=7)
    if not crs.is_geographic:
        length = nice_length((right - left) / 4)
        x0, y0 = left + (right - left) * 0.05, bottom + (top - bottom) * 0.06
        ax.plot([x0, x0 + length], [y0, y0], color="black", lw=3, solid_capstyle="butt")
        ax.plot([x0, x0 + length], [y0, y0], color="white", lw=1.2, solid_capstyle="butt")
        label = f"{length / 1000:g} km" if length >= 1000 else f"{length:g} m"
        ax.text(x0 + length / 2, y0 + (top - bottom) * 0.025, label, ha="center", fontsize=7,
                bbox={"facecolor": "white", "alpha": 0.7, "lw": 0, "pad": 1})
    for path in found.outlines:
        _draw_outline(ax, path, Transformer.from_crs("EPSG:4326", crs, always_xy=True))
    mask = _glacier_mask(found, ds)
    if mask is not None:
        ax.contour(ds["x"].values, ds["y"].values, mask.astype(float), levels=[0.5], colors="magenta",
                   linewidths=0.8)


def _glacier_mask(found: Found, ds: xr.Dataset) -> np.ndarray | None:
    """The truth store's ``glacier_mask`` where one lies on exactly this grid (the twin's known outline)."""
    for path in found.stores.get("truth", []):
        truth = open_any(path)
        if "glacier_mask" not in truth:
            continue
        try:
            return truth["glacier_mask"].sel(x=ds["x"].values, y=ds["y"].values).values
        except KeyError:
            continue
    return None


def _draw_outline(ax: Any, path: Path, to_map: Any) -> None:
    """Polygons of a lon/lat GeoJSON (an RGI-shaped outline file) drawn on the map; others ignored."""
    try:
        features = json.loads(path.read_text()).get("features", [])
    except (ValueError, OSError):
        return
    for f in features:
        geom = f.get("geometry") or {}
        polys = {"Polygon": [geom.get("coordinates", [])],
                 "MultiPolygon": geom.get("coordinates", [])}.get(geom.get("type"), [])
        for poly in polys:
            for ring in poly:
                xy = np.asarray(ring, float)
                if xy.ndim == 2 and xy.shape[1] >= 2:
                    x, y = to_map.transform(xy[:, 0], xy[:, 1])
                    ax.plot(x, y, color="magenta", lw=1.0)


def _map_figure(panels: list[tuple[np.ndarray, str, str, dict[str, Any]]], ds: xr.Dataset,
                found: Found) -> bytes:
    """One row of maps on the store's grid: ``(image, title, colourbar label, imshow options)`` each."""
    fig = Figure(figsize=(3.6 * len(panels), 3.6), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    ext = _extent(ds)
    flip = ds["y"].values[0] < ds["y"].values[-1]
    for ax, (img, title, label, opts) in zip(axes, panels, strict=True):
        shown = ax.imshow(img[::-1] if flip else img, extent=ext, origin="upper", **opts)
        _geo_frame(ax, ds, found)
        ax.set_title(title, fontsize=9)
        fig.colorbar(shown, ax=ax, shrink=0.8, label=label)
    fig.tight_layout()
    return _fig_png(fig)


def _cube_maps(found: Found) -> str:
    cubes = found.stores.get("cube", [])
    if not cubes:
        return ""
    ds = stores.open_store(str(cubes[0]))
    idx = np.unique(np.linspace(0, ds.sizes["time"] - 1, min(4, ds.sizes["time"])).astype(int))
    panels = [(ds["ndsi"].isel(time=int(i)).values, f"{pd.Timestamp(ds['time'].values[i]):%Y-%m-%d}",
               "snow-mask NDSI", {"vmin": 0, "vmax": 1, "cmap": "Blues_r"}) for i in idx]
    return _section(f"Snow-mask NDSI ({cubes[0].name})", _img(_map_figure(panels, ds, found),
                    "snow-mask NDSI of the cube"), "cube")


def _velocity(found: Found) -> str:
    vels = found.stores.get("velocity", [])
    if not vels:
        return _section("Velocity", _absent("no velocity store in the folder"), "velocity")
    ds = stores.open_store(str(vels[0]))
    speed = next((n for n in ("v", "speed_composite") if n in ds and ds[n].dims == ("y", "x")), None)
    error = next((n for n in ("v_error", "speed_error") if n in ds), None)
    if speed is None:
        return _section("Velocity", _absent(f"{vels[0].name}: no composite speed"), "velocity")
    s = ds[speed].values
    top = float(np.nanpercentile(s, 99)) if np.isfinite(s).any() else 1.0
    panels = [(s, f"speed ({speed})", "m/yr", {"vmin": 0, "vmax": top, "cmap": "viridis"})]
    if error:
        e = ds[error].values
        etop = float(np.nanpercentile(e, 99)) if np.isfinite(e).any() else 1.0
        panels.append((e, f"1-sigma error ({error})", "m/yr", {"vmin": 0, "vmax": etop, "cmap": "magma"}))
    med = float(np.nanmedian(s)) if np.isfinite(s).any() else float("nan")
    body = (f"<p>{_e(vels[0].name)}: median speed {med:.1f} m/yr, 95th percentile "
            f"{float(np.nanpercentile(s, 95)) if np.isfinite(s).any() else float('nan'):.1f} m/yr</p>"
            + _img(_map_figure(panels, ds, found), "velocity map and its error"))
    return _section("Velocity map and error", body, "velocity")


def _losses(found: Found) -> str:
    runs = [r for r in found.runs if (r / "loss.csv").is_file()]
    if not runs:
        return _section("Loss curves", _absent("no training run (loss.csv) in the folder"), "losses")
    imgs = []
    for run in runs:
        try:
            imgs.append(_img(_figure_png(figures.plot_run(run)), f"loss curves of {run.name}"))
        except GlacierflowError as err:
            imgs.append(_absent(f"{run.name}: {err}"))
    return _section("Loss curves", "".join(imgs), "losses")


def _forecasts(found: Found) -> str:
    fcs = found.stores.get("forecast", [])
    if not fcs:
        return _section("Forecasts", _absent("no forecast store in the folder"), "forecasts")
    imgs = []
    for fc in fcs:
        try:
            imgs.append(_img(_figure_png(figures.plot_forecast(fc)), f"forecast {fc.name}"))
        except GlacierflowError:  # the source cube moved: the forecast alone
            ds = stores.open_store(str(fc))
            panels = [(ds["ndsi"].isel(time=i).values, f"{pd.Timestamp(t):%Y-%m-%d}", "NDSI",
                       {"vmin": 0, "vmax": 1, "cmap": "Blues_r"}) for i, t in enumerate(ds["time"].values[:4])]
            imgs.append(_img(_map_figure(panels, ds, found), f"forecast {fc.name}"))
    return _section("Forecast panels", "".join(imgs), "forecasts")


# --- skill: metrics.json of every run, today's schema and the one with model/origins/iou/skill_ci95 -------------


def metric_tables(metrics: dict[str, Any]) -> list[tuple[str, str | None, dict[str, dict[str, Any]]]]:
    """``(split, model name or None, {name: scores})`` per split: entries are dicts holding ``mse``."""
    out = []
    for split, block in metrics.items():
        if not isinstance(block, dict):
            continue  # e.g. "model": NAME at the top
        entries = {str(k): v for k, v in block.items() if isinstance(v, dict) and "mse" in v}
        if entries:
            model = block.get("model") if isinstance(block.get("model"), str) else metrics.get("model")
            out.append((str(split), model if isinstance(model, str) else None, entries))
    return out


def _skill(found: Found) -> str:
    runs = [r for r in found.runs if (r / "metrics.json").is_file()]
    if not runs:
        return _section("Skill", _absent("no metrics.json in the folder (evaluate writes one)"), "skill")
    parts = []
    for run in runs:
        try:
            metrics = json.loads((run / "metrics.json").read_text())
        except ValueError as err:
            parts.append(_absent(f"{run.name}/metrics.json unreadable: {err}"))
            continue
        for split, model, entries in metric_tables(metrics):
            parts.append(f"<h3>{_e(run.name)}: {_e(split)} split</h3>" + _score_table(run.name, split, entries)
                         + _skill_table(run.name, split, model, entries))
    return _section("Skill per lead against every baseline", "".join(parts), "skill")


def _leads(entries: dict[str, dict[str, Any]]) -> int:
    return max((len((v.get("per_lead") or {}).get("mse") or []) for v in entries.values()), default=0)


def _score_table(run: str, split: str, entries: dict[str, dict[str, Any]]) -> str:
    n = _leads(entries)
    extra = [k for k in ("iou",) if any(k in v for v in entries.values())]
    head = "".join(f"<th>{h}</th>" for h in ["", "MSE", "MAE", *(e.upper() for e in extra)]) + "".join(
        f"<th>MSE lead {h}</th>" for h in range(1, n + 1))
    rows = []
    for name, v in entries.items():
        key = f"data-run='{_e(run)}' data-split='{_e(split)}' data-name='{_e(name)}'"
        cells = [_cell(v.get(m), key, m) for m in ("mse", "mae", *extra)]
        per = (v.get("per_lead") or {}).get("mse") or []
        cells += [_cell(per[h] if h < len(per) else None, key, "mse", lead=h + 1) for h in range(n)]
        rows.append(f"<tr><td class='t'>{_e(name)}</td>{''.join(cells)}</tr>")
    return f"<table class='scores'><tr>{head}</tr>{''.join(rows)}</table>"


def _cell(value: Any, key: str, metric: str, lead: int | None = None, baseline: str | None = None,
          ci: Any = None) -> str:
    attrs = f"{key} data-metric='{metric}'" + (f" data-lead='{lead}'" if lead else "") + (
        f" data-baseline='{_e(baseline)}'" if baseline else "")
    if not isinstance(value, int | float) or not np.isfinite(value):
        return f"<td {attrs} data-value=''>–</td>"
    interval = ""
    if isinstance(ci, list | tuple) and len(ci) == 2 and all(isinstance(c, int | float) for c in ci):
        interval = f" <small>[{ci[0]:.3g}, {ci[1]:.3g}]</small>"
        attrs += f" data-ci='{float(ci[0])!r},{float(ci[1])!r}'"
    return f"<td {attrs} data-value='{float(value)!r}'>{float(value):.4g}{interval}</td>"


def _skill_table(run: str, split: str, model: str | None, entries: dict[str, dict[str, Any]]) -> str:
    """Skill (1 - MSE / MSE of the baseline) overall and per lead, with 95 % intervals where recorded."""
    bases = list(dict.fromkeys(b for v in entries.values() for b in (v.get("skill") or {})))
    bases = [b for b in bases if b in entries] or [b for b in ("persistence", "seasonal") if b in entries]
    models = [model] if model in entries else [k for k in entries if k not in bases] or list(entries)
    n = _leads(entries)
    head = "<th>model</th><th>baseline</th><th>skill</th>" + "".join(f"<th>lead {h}</th>" for h in range(1, n + 1))
    rows = []
    for m in models:
        for b in bases:
            if b == m:
                continue
            key = f"data-run='{_e(run)}' data-split='{_e(split)}' data-name='{_e(m)}'"
            overall = (entries[m].get("skill") or {}).get(b)
            ci = (entries[m].get("skill_ci95") or {}).get(b)
            per_ci = ci if isinstance(ci, list) and ci and isinstance(ci[0], list | tuple) else None
            cells = [_cell(overall, key, "skill", baseline=b, ci=None if per_ci else ci)]
            per = _per_lead_skill(entries[m], entries[b], b)
            cells += [_cell(per[h], key, "skill", lead=h + 1, baseline=b,
                            ci=per_ci[h] if per_ci and h < len(per_ci) else None) for h in range(len(per))]
            rows.append(f"<tr><td class='t'>{_e(m)}</td><td class='t'>{_e(b)}</td>{''.join(cells)}</tr>")
    if not rows:
        return ""
    note = "<p class='note'>skill = 1 − MSE / MSE of the baseline; per lead from the per-lead MSE</p>"
    return f"<table class='skill'><tr>{head}</tr>{''.join(rows)}</table>{note}"


def _per_lead_skill(model: dict[str, Any], base: dict[str, Any], name: str) -> list[float | None]:
    """The per-lead skill recorded (``per_lead.skill[name]``), else 1 - MSE_h / MSE_base_h."""
    recorded = ((model.get("per_lead") or {}).get("skill") or {}).get(name)
    if isinstance(recorded, list):
        return recorded
    mm = (model.get("per_lead") or {}).get("mse") or []
    mb = (base.get("per_lead") or {}).get("mse") or []
    return [1 - a / b if isinstance(a, int | float) and isinstance(b, int | float) and b > 0 else None
            for a, b in zip(mm, mb, strict=False)]
