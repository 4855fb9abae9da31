"""Realism levels of the twin: a registry (``REALISMS``) from name to world, renderer and schedule.

``basic`` is the original world, kept bit for bit for quick unit tests; ``himalaya`` (the default)
adds the defects of real Himalayan Landsat scenes (see :mod:`glacierflow.twin.himalaya`): two WRS
paths, some Tier-2 items with larger shifts, a monsoon cloud climate and, for the ``full`` size,
the eastern path's items delivered in the neighbouring UTM zone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from glacierflow.twin.climate import monsoon_cloud
from glacierflow.twin.himalaya import HimalayaWorld, render_himalaya
from glacierflow.twin.scene import Acquisition, render_basic, sun_angles
from glacierflow.twin.world import World

DT_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
# signed off-nadir view angle (degrees) at the site from each WRS path: the main path sees it near its
# eastern swath edge, the path to the east near its western edge (centres ~157 km apart at 32 N)
VIEW_ANGLE = {"main": 7.0, "east": -5.8}
T2_FRACTION = 0.08
T2_SHIFT = 5.0  # pixels: T2 items are shifted uniformly within +-T2_SHIFT (T1: +-2)


@dataclass(frozen=True)
class ScheduleContext:
    """What a realism's schedule hook needs besides the basic acquisitions."""

    seed: int
    size: str
    end: datetime  # exclusive
    epsg: int


@dataclass(frozen=True)
class Realism:
    """One realism level: how its world is built, how a scene is rendered, how acquisitions are drawn."""

    description: str
    world: Callable[..., World]  # (shape, seed, max_speed, glacier_width) -> World
    render: Callable[[Any, Acquisition], dict[str, Any]]
    schedule: Callable[[list[Acquisition], ScheduleContext], list[Acquisition]] | None = None
    truth_layers: tuple[str, ...] = ()  # extra (time, y, x) float32 truth layers the renderer returns
    options: bool = False  # accepts max_speed / glacier_width


def _basic_world(shape: tuple[int, int], seed: int, max_speed: float | None, glacier_width: float | None) -> World:
    return World(shape, seed=seed)


def _himalaya_world(shape: tuple[int, int], seed: int, max_speed: float | None,
                    glacier_width: float | None) -> HimalayaWorld:
    return HimalayaWorld(shape, seed=seed, max_speed=150.0 if max_speed is None else max_speed,
                         glacier_width=glacier_width)


def _with_category(text: str, category: str) -> str:
    return text[: -len("T1")] + category if text.endswith("_T1") else text


def _himalaya_schedule(base: list[Acquisition], ctx: ScheduleContext) -> list[Acquisition]:
    """Monsoon clouds, Tier-2 items and a second WRS path (7 days later) on top of the basic schedule."""
    rng = np.random.default_rng([ctx.seed, 23])
    out: list[Acquisition] = []

    def drawn(a: Acquisition, path_key: str) -> Acquisition:
        doy = (a.year % 1) * 365.25
        t2 = bool(rng.random() < T2_FRACTION)
        limit = T2_SHIFT if t2 else 2.0
        sx, sy = (float(rng.uniform(-limit, limit)) for _ in range(2))
        if not t2 and path_key == "main":
            sx, sy = a.shift_x, a.shift_y  # the basic draw: same translations as the basic world
        category = "T2" if t2 else "T1"
        view = VIEW_ANGLE[path_key] + float(rng.normal(0, 0.3))
        return replace(
            a, item_id=_with_category(a.item_id, category), product_id=_with_category(a.product_id, category),
            shift_x=sx, shift_y=sy, category=category,
            cloud_target=monsoon_cloud(doy, float(rng.random()), float(rng.random())),
            view_tan=float(np.tan(np.radians(view))),
        )

    for a in base:
        out.append(drawn(a, "main"))
    for a in base:
        if a.platform != "landsat-8":
            continue
        when = datetime.strptime(a.datetime, DT_FORMAT) + timedelta(days=7, seconds=float(rng.uniform(-40, 40)))
        if when >= ctx.end.replace(tzinfo=None):
            continue
        path = a.wrs_path - 1  # WRS-2 paths are numbered westwards: the eastern neighbour
        day, processed = when.strftime("%Y%m%d"), (when + timedelta(days=9)).strftime("%Y%m%d")
        year = a.year + (when - datetime.strptime(a.datetime, DT_FORMAT)).total_seconds() / (365.25 * 86400)
        elevation, azimuth = sun_angles(year)
        f = rng.random()
        b = replace(
            a,
            item_id=f"LC08_L2SP_{path:03d}{a.wrs_row:03d}_{day}_02_T1",
            product_id=f"LC08_L2SP_{path:03d}{a.wrs_row:03d}_{day}_{processed}_02_T1",
            datetime=when.strftime(DT_FORMAT), year=year, wrs_path=path,
            sun_elevation=elevation - 0.4, sun_azimuth=azimuth + 1.2,
            valid_target=float(rng.uniform(0.55, 0.9)) if f < 0.3 else 1.0,
            stripes=int(rng.integers(1, 4)) if rng.random() < 0.1 else 0,
            seed=int(rng.integers(0, 2**31 - 1)),
            epsg=ctx.epsg + 1 if ctx.size == "full" else None,
        )
        out.append(drawn(b, "east"))
    out.sort(key=lambda a: a.datetime)
    return [replace(a, index=i) for i, a in enumerate(out)]


REALISMS: dict[str, Realism] = {
    "basic": Realism(
        description="the original world: steady smooth flow, one WRS path, perfect QA, aseasonal clouds",
        world=_basic_world,
        render=render_basic,
        truth_layers=("red_clean",),
    ),
    "himalaya": Realism(
        description="terrain light and cast shadow, snowfall events, debris tongue, decorrelating texture, "
        "seasonal speed-up, monsoon clouds, QA errors, terrain parallax, two WRS paths, T2 items",
        world=_himalaya_world,
        render=render_himalaya,
        schedule=_himalaya_schedule,
        truth_layers=("ndsi_surface", "red_clean", "u_t", "v_t", "terrain_dx", "terrain_dy"),
        options=True,
    ),
}
DEFAULT_REALISM = "himalaya"
