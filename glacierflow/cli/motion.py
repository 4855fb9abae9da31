"""Stage 2, motion: ``flow``, surface velocity from a cube's scene pairs (or from a forecast's predicted frames)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from glacierflow.cli.app import (
    DEFAULT_WHERE,
    OverwriteOpt,
    StorageOpt,
    Where,
    app,
    check_writable_output,
    computes,
    out,
    storage_options,
)
from glacierflow.specs import FLOW_IMAGES, FLOW_METHODS, PAIR_KINDS, FlowSpec


@app.command("flow")
@computes
def flow_cmd(
    cube: Annotated[str | None, typer.Argument(metavar="CUBE", help="Cube store written by build-cube "
                                               "(with --update: default the store's own).")] = None,
    out_store: Annotated[str | None, typer.Option("--out", metavar="STORE", help="Velocity store to write.")] = None,
    method: Annotated[
        str | None, typer.Option(metavar="|".join(FLOW_METHODS), help="Matcher (default farneback).")
    ] = None,
    images: Annotated[
        str | None, typer.Option(metavar="|".join(FLOW_IMAGES), help="Track scene guides or NDSI periods.")
    ] = None,
    pairs: Annotated[
        str | None, typer.Option(metavar="|".join(PAIR_KINDS) + "|MIN:MAX", help="Which acquisitions are paired.")
    ] = None,
    max_pairs_per_scene: Annotated[int | None, typer.Option(help="At most this many pairs per scene.")] = None,
    chip: Annotated[int | None, typer.Option(help="NCC chip side, px (odd).")] = None,
    search: Annotated[int | None, typer.Option(help="NCC search range, px; 0: from --max-speed.")] = None,
    max_speed: Annotated[float | None, typer.Option(help="Fastest expected speed, m/yr.")] = None,
    min_corr: Annotated[float | None, typer.Option(help="NCC: mask peaks below this correlation.")] = None,
    outline: Annotated[
        str | None, typer.Option(metavar="FILE", help="Ice outlines (GeoJSON, e.g. RGI 7.0) or a raster "
                                 "mask; stable ground is outside them (default: NDSI climatology, with a warning).")
    ] = None,
    reference: Annotated[
        str | None, typer.Option(metavar="STORE", help="Velocity store (vx, vy m/yr, any CRS) centring the NCC "
                                 "search (default: a coarse first pass).")
    ] = None,
    max_days: Annotated[float | None, typer.Option(help="Longest pair of --pairs auto, days (ITS_LIVE: 546).")] = None,
    chip_max: Annotated[int | None, typer.Option(help="NCC: chip grown to this side (px, odd) where the small fails.")
                        ] = None,
    ndc: Annotated[float | None, typer.Option(help="NCC: NDC filter tolerance, px from the 5x5 median (0: off).")
                   ] = None,
    ice_fraction: Annotated[float | None, typer.Option(help="Climatology: ice if snowy this often.")] = None,
    stable_margin: Annotated[int | None, typer.Option(help="Stable ground: px away from the ice.")] = None,
    levels: Annotated[int | None, typer.Option(help="Farneback pyramid levels (paper: 6).")] = None,
    pyr_scale: Annotated[float | None, typer.Option(help="Farneback pyramid scale (paper: 0.5).")] = None,
    iterations: Annotated[int | None, typer.Option(help="Farneback iterations per level (paper: 10).")] = None,
    winsize: Annotated[int | None, typer.Option(help="Farneback averaging window, px (default 9).")] = None,
    min_texture: Annotated[
        float | None, typer.Option(help="Mask pixels whose local std (image in [0, 1]) is below this.")
    ] = None,
    max_fb_error: Annotated[
        float | None, typer.Option(help="Forward/backward check (px); 0: off.")
    ] = None,
    update: Annotated[str | None, typer.Option("--update", metavar="VELOCITY", help="Bring this velocity store "
                                               "up to date with its cube: match only the new pairs.")] = None,
    overwrite: OverwriteOpt = False,
    storage_option: StorageOpt = None,
    where: Where = DEFAULT_WHERE,
) -> None:
    """Surface velocity (m/yr) of a cube -> velocity store.

    From pairs of scenes (or of NDSI periods) of the cube; --update VELOCITY adds the pairs of new scenes.
    """
    from glacierflow.motion.forecast_flow import is_forecast_url  # deferred: scipy
    from glacierflow.motion.velocity import run_flow  # deferred: scipy

    given = {"method": method, "images": images, "pairs": pairs, "max_pairs_per_scene": max_pairs_per_scene,
             "max_days": max_days, "chip_max": chip_max, "ndc": ndc,
             "chip": chip, "search": search, "max_speed": max_speed, "min_corr": min_corr,
             "ice_fraction": ice_fraction, "stable_margin": stable_margin, "levels": levels, "pyr_scale": pyr_scale,
             "iterations": iterations, "winsize": winsize, "min_texture": min_texture, "max_fb_error": max_fb_error}
    if update or cube is None or out_store is None:
        return _flow_update(update, cube, out_store, [k for k, v in given.items() if v is not None] +
                            [k for k, v in (("outline", outline), ("reference", reference)) if v], storage_option,
                            where)
    spec = FlowSpec(**{k: v for k, v in given.items() if v is not None})  # unset flags: the spec's defaults
    check_writable_output(out_store, storage_option, inputs=tuple(p for p in (cube, outline, reference) if p))
    if is_forecast_url(cube, storage_options(storage_option)):  # predict's output: the predicted frames
        paper = spec.replace(method=method or "farneback", pairs=pairs or "consecutive")  # the paper's way
        return _flow_forecast(cube, out_store, paper,
                              overwrite=overwrite, storage_option=storage_option, ice_mask=outline, where=where)
    with where.client():
        s = run_flow(cube, out_store, spec, overwrite=overwrite, storage_options=storage_options(storage_option),
                     outline=outline, reference=reference)
    for line in s.lines():
        out.print(line)


def _flow_update(velocity: str | None, cube: str | None, out_store: str | None, flags: list[str],
                 storage_option: list[str] | None, where: Any) -> None:
    """``flow --update VELOCITY [CUBE]``: the store's own spec, only the missing pairs (motion.update)."""
    from glacierflow.errors import GlacierflowError
    from glacierflow.motion.update import update_flow  # deferred: scipy

    if not velocity:
        missing = "option '--out'" if cube else "argument 'CUBE'"
        raise GlacierflowError(f"Missing {missing}: flow CUBE --out STORE, or flow --update VELOCITY to bring a "
                               "velocity store up to date")
    if out_store or flags:
        given = ["--out"] * bool(out_store) + ["--" + f.replace("_", "-") for f in flags]
        raise GlacierflowError(f"--update reuses the store's own flow settings; drop {', '.join(given)} (or "
                               "rebuild with flow CUBE --out STORE --overwrite)")
    with where.client():
        for line in update_flow(velocity, cube, storage_options=storage_options(storage_option)).lines():
            out.print(line)


def _flow_forecast(fc: str, out_store: str, spec: Any, *, overwrite: bool, storage_option: list[str] | None,
                   ice_mask: str | None, where: Any) -> None:
    """``flow FORECAST``: flow of the predicted frames and of the cube's true frames of the same periods."""
    from glacierflow.motion.forecast_flow import format_comparison, ndsi_store_flow  # deferred: scipy

    with where.client():
        s = ndsi_store_flow(fc, out_store, spec, overwrite=overwrite, storage_options=storage_options(storage_option),
                            ice_mask=ice_mask)
    out.print(f"forecast store: {s['pairs']} {spec.pairs} pairs of predicted NDSI periods ({s['method']}, Δt from "
              f"the period starts); composite median speed {s['median_speed']:.1f} m/yr")
    out.print(format_comparison(s))
    out.print(f"written: {s['out']}")
