"""``glacierflow monitor SITES_FILE --out-dir DIR``: every site kept up to date, one summary.

Per site (:func:`monitor_site`), in order, each step from what the previous one wrote:

1. **cube**: ``build-cube --update`` (:func:`glacierflow.preprocess.update.update_cube`) of the site's store,
   or, when it does not exist yet, a first ``build-cube`` from the site's ``glacier`` or ``bbox``;
2. **velocity**: ``flow --update`` (:func:`glacierflow.motion.update.update_flow`), or a first ``flow`` with the
   site's outlines;
3. **forecast**: ``predict --update`` (:func:`glacierflow.forecast.update.update_forecast`) with the site's
   run (skipped without one);
4. **stats**: the per-glacier snow/ice area, fraction and trend (:mod:`glacierflow.monitor.stats`) as
   ``DIR/NAME/stats.csv``, ``stats-trend.csv`` and ``stats.png``, compared with the previous run's table;
5. **report**: ``DIR/NAME/report.html`` (:func:`glacierflow.plots.report.write_report`) opening with what
   changed in this run.

The sites run one after another on the one Dask cluster the caller holds (each step spreads its own work
over it); a site that fails is reported with the step it failed in, and the others still run.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from glacierflow.errors import GlacierflowError, first_line
from glacierflow.monitor.sites import MonitorSite
from glacierflow.storage import store


@dataclass
class SiteOutcome:
    """One site's run: what changed per step (``changes``: step -> one line), or the step it failed in."""

    name: str
    ok: bool = True
    failed_step: str = ""
    error: str = ""
    seconds: float = 0.0
    changes: dict[str, str] = field(default_factory=dict)
    snow: str = ""
    report: str = ""


def _today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


def _cube(site: MonitorSite, so: dict[str, Any] | None) -> str:
    """Update the site's cube store, or build it the first time; one line of what changed."""
    if store.exists(site.cube, so):
        from glacierflow.preprocess.update import update_cube  # deferred: cv2

        s = update_cube(site.cube, end=site.end, catalog=site.catalog, storage_options=so)
        if s.unchanged:
            return f"up to date to {s.end}"
        return (f"+{s.new_scenes} scenes ({s.scenes_used} used) to {s.end}; periods added: "
                f"{', '.join(s.periods_added) or 'none'}; changed: {', '.join(s.periods_changed) or 'none'}")
    from glacierflow.geo.glaciers import get_site, site_from_bbox
    from glacierflow.ingest.catalog import PLANETARY_COMPUTER_URL
    from glacierflow.preprocess.build import build_cube_store
    from glacierflow.specs import CubeSpec, PreprocessSpec

    if site.glacier is None and site.bbox is None:
        raise GlacierflowError(f"cube store {site.cube} does not exist and the site gives no glacier or bbox to "
                               "build it from")
    where = get_site(site.glacier) if site.glacier else site_from_bbox(site.bbox, site.epsg, name=site.name)  # type: ignore[arg-type]
    spec = CubeSpec(name=site.name, bbox=where.bbox, epsg=site.epsg or where.epsg, start=site.start or where.start,
                    end=site.end or _today(), catalog=site.catalog or PLANETARY_COMPUTER_URL)
    pre = PreprocessSpec(period=site.period) if site.period else PreprocessSpec()
    b = build_cube_store(spec, pre, site.cube, storage_options=so)
    return f"built: {b.scenes_used} of {b.scenes_found} scenes, {b.periods} periods to {spec.end}"


def _velocity(site: MonitorSite, so: dict[str, Any] | None) -> str:
    from glacierflow.motion.update import update_flow
    from glacierflow.motion.velocity import run_flow

    if store.exists(site.velocity, so):
        u = update_flow(site.velocity, site.cube, storage_options=so)
        if u.unchanged:
            return f"up to date ({u.kept} pairs)"
        speed = f"; composite median speed {u.summary.median_speed:.1f} m/yr" if u.summary else ""
        return f"+{u.added} pairs matched, {u.kept} kept, {u.dropped} dropped{speed}"
    s = run_flow(site.cube, site.velocity, outline=site.outlines, storage_options=so)
    return f"built: {s.pairs} pairs; composite median speed {s.median_speed:.1f} m/yr"


def _forecast(site: MonitorSite, so: dict[str, Any] | None) -> str:
    if not site.run:
        return "no run given: skipped"
    from glacierflow.forecast.predict import load_forecaster  # deferred: torch
    from glacierflow.forecast.update import update_forecast

    u = update_forecast(load_forecaster(site.run), site.cube, site.forecast, storage_options=so)
    if u.unchanged:
        return f"up to date (last input {u.last_input})"
    was = f"from {u.previous_last_input} " if u.previous_last_input else ""
    return f"rolled {was}to last input {u.last_input}"


def _stats(site: MonitorSite, so: dict[str, Any] | None) -> tuple[str, str, Any]:
    """Write the site's stats table and figure; what changed against the previous table, and the latest areas."""
    from glacierflow.monitor.stats import glacier_stats, write_stats
    from glacierflow.plots.glacier_stats import plot_glacier_stats  # deferred: matplotlib

    table = Path(site.folder) / "stats.csv"
    before = pd.read_csv(table) if table.is_file() else None
    ds = glacier_stats(site.cube, site.outlines, so)
    write_stats(ds, table)
    fig = plot_glacier_stats(ds)
    fig.savefig(table.with_suffix(".png"))
    now = pd.read_csv(table)
    return _stats_change(before, now), _latest(now), fig


def _stats_change(before: pd.DataFrame | None, now: pd.DataFrame) -> str:
    if before is None:
        return f"first table: {now['rgi_id'].nunique()} glaciers x {now['time'].nunique()} periods"
    key = ["rgi_id", "time"]
    merged = now.merge(before[[*key, "snow_area_km2"]], on=key, how="left", suffixes=("", "_before"))
    new = merged[merged["snow_area_km2_before"].isna()]
    diff = (merged["snow_area_km2"] - merged["snow_area_km2_before"]).abs()
    changed = merged[diff > 1e-9]
    biggest = diff.max() if diff.notna().any() else 0.0
    return (f"{new['time'].nunique()} new period(s) ({', '.join(sorted(new['time'].unique())) or 'none'}); "
            f"{changed['time'].nunique()} period(s) revised (max |change| {biggest:.4f} km2)")


def _latest(now: pd.DataFrame) -> str:
    obs = now[~now["interpolated"].astype(bool)]
    if obs.empty:
        return ""
    last = obs["time"].max()
    rows = obs[obs["time"] == last]
    return f"{last}: " + ", ".join(f"{r['name']} {r['snow_area_km2']:.3f} km2" for _, r in rows.iterrows())


def _preface(outcome: SiteOutcome, fig: Any) -> str:
    """The report's first section: what this run changed, and the stats figure."""
    rows = "".join(f"<tr><td class='t'>{html.escape(k)}</td><td class='t'>{html.escape(v)}</td></tr>"
                   for k, v in outcome.changes.items())
    img = ""
    if fig is not None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        data = base64.b64encode(buf.getvalue()).decode()
        img = f"<img alt='snow and ice area per glacier' src='data:image/png;base64,{data}'>"
    return (f"<h2>What changed ({html.escape(_today())})</h2><table><tr><th>step</th><th>change</th></tr>{rows}"
            f"</table><h2>Snow and ice area per glacier</h2>{img}")


STEPS = ("cube", "velocity", "forecast", "stats", "report")


def monitor_site(site: MonitorSite, storage_options: dict[str, Any] | None = None) -> SiteOutcome:
    """Run every step for one site (module notes); a failure ends the site's run, recorded, never raised."""
    t0 = time.perf_counter()
    outcome = SiteOutcome(site.name)
    Path(site.folder).mkdir(parents=True, exist_ok=True)
    fig = None
    step = STEPS[0]
    try:
        outcome.changes["cube"] = _cube(site, storage_options)
        step = "velocity"
        outcome.changes["velocity"] = _velocity(site, storage_options)
        step = "forecast"
        outcome.changes["forecast"] = _forecast(site, storage_options)
        step = "stats"
        outcome.changes["stats"], outcome.snow, fig = _stats(site, storage_options)
        step = "report"
        from glacierflow.plots.report import write_report  # deferred: matplotlib

        outcome.report = str(write_report(site.folder, also=(site.cube, site.outlines),
                                          preface=_preface(outcome, fig)))
    except GlacierflowError as err:
        outcome.ok, outcome.failed_step, outcome.error = False, step, str(err)
    except Exception as err:  # one site's crash is reported with the others', never a lost run
        outcome.ok, outcome.failed_step, outcome.error = False, step, f"{type(err).__name__}: {first_line(err)}"
    outcome.seconds = round(time.perf_counter() - t0, 1)
    return outcome


def run_monitor(sites: list[MonitorSite], out_dir: str | Path, storage_options: dict[str, Any] | None = None
                ) -> list[SiteOutcome]:
    """Every site in turn (on the caller's Dask client), then ``DIR/summary.json`` and ``DIR/summary.csv``."""
    outcomes = [monitor_site(s, storage_options) for s in sites]
    write_summary(outcomes, Path(out_dir))
    return outcomes


def write_summary(outcomes: list[SiteOutcome], out_dir: Path) -> tuple[Path, Path]:
    """``summary.json`` (every field, and when) and ``summary.csv`` (one row per site, a column per step)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "failed": int(sum(not o.ok for o in outcomes)),
           "sites": [asdict(o) for o in outcomes]}
    js = out_dir / "summary.json"
    js.write_text(json.dumps(doc, indent=1))
    rows = [{"site": o.name, "status": "ok" if o.ok else f"FAILED at {o.failed_step}",
             **{s: o.changes.get(s, "") for s in STEPS[:4]}, "snow_latest": o.snow, "seconds": o.seconds,
             "report": o.report, "error": o.error} for o in outcomes]
    csv = out_dir / "summary.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return js, csv


def exit_status(outcomes: list[SiteOutcome]) -> int:
    """0 when every site ran through, 1 when any failed."""
    return int(bool(np.any([not o.ok for o in outcomes])))
