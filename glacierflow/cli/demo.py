"""``demo``: the whole pipeline, every stage in turn, on the offline twins."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from glacierflow.cli.app import ClusterOpt, app, out
from glacierflow.demo import report_lines, run_demo


@app.command("demo")
def demo_cmd(
    workdir: Annotated[Path, typer.Option(metavar="DIR", help="Where everything is written.")] = Path("demo-out"),
    fresh: Annotated[bool, typer.Option("--fresh", help="Start over (remove DIR first).")] = False,
    size: Annotated[Literal["tiny", "small"], typer.Option(help="Twin size (small: the README's demo).")] = "small",
    model: Annotated[str, typer.Option(metavar="NAME", help="Learned model to train briefly.")] = "blend",
    cluster: ClusterOpt = "threads",  # the demo's small cubes: dask's threaded scheduler has the least overhead
) -> None:
    """The whole pipeline on the offline twin, start to end.

    Twin, cube, flow, train, evaluate, forecast, fine-tune, figures.
    """
    r = run_demo(workdir, fresh=fresh, cluster=cluster, say=out.print, size=size, model=model)
    for line in report_lines(r):
        out.print(line)
    from glacierflow.plots.report import write_report  # deferred: matplotlib

    out.print(f"report: {write_report(workdir)}")
