"""Watching glaciers: ``stats`` (what shrinks, per glacier and period) and ``monitor`` (every site, kept up to date)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer

from glacierflow.cli.app import DEFAULT_WHERE, StorageOpt, Where, app, computes, out, storage_options

#: a glacier whose outline the cube covers less than this is named in a note
PARTLY_COVERED = 0.95


def _fmt(v: float, spec: str = "+.3g") -> str:
    return format(v, spec) if math.isfinite(v) else "n/a"


def stats_lines(ds: Any) -> list[str]:
    """One row per glacier: outline area, the latest observed period's snow area and fraction, the trend."""
    import numpy as np

    rows = [f"{'rgi_id':<26s} {'name':<22s} {'outline km2':>11s} {'last period':>11s} {'snow km2':>9s} "
            f"{'frac':>5s} {'trend km2/yr [95%]':>28s}"]
    use = np.flatnonzero(~np.asarray(ds["interpolated"].values, bool))
    last = int(use[-1]) if use.size else ds.sizes["time"] - 1
    for k in range(ds.sizes["glacier"]):
        lo, hi = float(ds["snow_area_trend_low"].values[k]), float(ds["snow_area_trend_high"].values[k])
        ci = f"[{_fmt(lo)}, {_fmt(hi)}]" if math.isfinite(lo) else "[n/a]"
        rows.append(f"{str(ds['glacier'].values[k]):<26s} {str(ds['name'].values[k])[:22]:<22s} "
                    f"{float(ds['outline_area_km2'].values[k]):11.3f} "
                    f"{str(ds['time'].values[last])[:10]:>11s} {float(ds['snow_area_km2'].values[k, last]):9.3f} "
                    f"{float(ds['snow_fraction'].values[k, last]):5.2f} "
                    f"{_fmt(float(ds['snow_area_trend'].values[k])) + ' ' + ci:>28s}")
    return rows


@app.command("stats")
def stats_cmd(
    cube: Annotated[str, typer.Argument(metavar="CUBE", help="Cube store written by build-cube.")],
    outline: Annotated[str, typer.Option(metavar="OUTLINES", help="Glacier outlines, GeoJSON (e.g. RGI 7.0); "
                                         "one feature per glacier, ids from rgi_id.")],
    out_path: Annotated[
        Path, typer.Option("--out", metavar="PATH", help="Table: .csv (+ PATH-trend.csv) or .nc (CF NetCDF); "
                           "the figure goes beside it as .png.")
    ] = Path("stats.csv"),
    storage_option: StorageOpt = None,
) -> None:
    """Snow/ice-covered area per glacier and period, and its trend.

    Per outline and period: the area (km2) where NDSI >= the cube's threshold, the snow-covered fraction and
    the trend (km2/yr, seasonal Theil-Sen with a 95% interval); a table and a figure.
    """
    from glacierflow.monitor.stats import glacier_stats, write_stats
    from glacierflow.plots.glacier_stats import plot_glacier_stats  # deferred: matplotlib

    ds = glacier_stats(cube, outline, storage_options(storage_option))
    paths = write_stats(ds, out_path)
    png = out_path.with_suffix(".png")
    plot_glacier_stats(ds).savefig(png)
    for line in stats_lines(ds):
        out.print(line)
    for k in range(ds.sizes["glacier"]):
        if float(ds["cube_covers"].values[k]) < PARTLY_COVERED:
            out.print(f"note: the cube covers {100 * float(ds['cube_covers'].values[k]):.0f}% of "
                      f"{ds['glacier'].values[k]}'s outline; its figures describe that part only")
    out.print(f"trend: {ds.attrs['trend_method']}")
    out.print(f"written: {', '.join(str(p) for p in [*paths, png])}")


@app.command("monitor")
@computes
def monitor_cmd(
    sites_file: Annotated[Path, typer.Argument(metavar="SITES_FILE", help="TOML or YAML sites file (format in "
                                               "docs/usage.md: per site name, outlines, cube or glacier/bbox, "
                                               "catalog, run).")],
    out_dir: Annotated[Path, typer.Option("--out-dir", metavar="DIR", help="Folder of the per-site outputs and "
                                          "the summary.")],
    storage_option: StorageOpt = None,
    where: Where = DEFAULT_WHERE,
) -> None:
    """Update every site: cube, velocity, forecast, stats, report.

    Per site: build-cube --update, flow --update, predict --update, stats and the HTML report, on one
    cluster; one summary table (DIR/summary.json, DIR/summary.csv). Exit status 1 if any site failed.
    """
    from glacierflow.monitor.run import exit_status, run_monitor
    from glacierflow.monitor.sites import read_monitor_sites

    sites = read_monitor_sites(sites_file, out_dir)
    with where.client():
        outcomes = run_monitor(sites, out_dir, storage_options(storage_option))
    from rich.console import Console

    Console(soft_wrap=False, markup=False, width=max(out.width, 160)).print(summary_table(outcomes))  # cron logs
    out.print(f"written: {out_dir / 'summary.json'}, {out_dir / 'summary.csv'}")
    status = exit_status(outcomes)
    if status:
        raise typer.Exit(status)


def summary_table(outcomes: list[Any]) -> Any:
    """The run's rich table: one row per site, what changed per step."""
    from rich.table import Table

    table = Table(title="glacierflow monitor", show_lines=True)
    for col in ("site", "status", "cube", "velocity", "forecast", "stats", "snow/ice (latest)", "s"):
        table.add_column(col, overflow="fold")
    for o in outcomes:
        status = "ok" if o.ok else f"FAILED at {o.failed_step}: {o.error}"
        table.add_row(o.name, status, *(o.changes.get(k, "") for k in ("cube", "velocity", "forecast", "stats")),
                      o.snow, f"{o.seconds:.0f}")
    return table
