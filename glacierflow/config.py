"""Frozen, validated specs for the stages; serialised to JSON for Zarr attrs and checkpoints."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import pandas as pd

from glacierflow.errors import GlacierflowError
from glacierflow.glaciers import Site, get_site, site_from_bbox

MOTIONS = ("translation", "euclidean", "affine", "homography")
PERIODS = ("1MS", "3MS", "6MS")


def resolve_site(glacier: str | None, bbox: tuple[float, float, float, float] | None, epsg: int | None) -> Site:
    """The site from ``--glacier`` or ``--bbox [--epsg]`` (exactly one of them)."""
    if glacier and bbox:
        raise GlacierflowError("pass either --glacier or --bbox, not both")
    if glacier:
        site = get_site(glacier)
        if epsg is not None and epsg != site.epsg:
            site = Site(site.name, site.bbox, int(epsg), site.start, site.end)
        return site
    if bbox:
        return site_from_bbox(tuple(bbox), epsg)  # type: ignore[arg-type]
    raise GlacierflowError("pass --glacier NAME or --bbox W S E N")


class _Spec:
    """JSON round-trip for frozen dataclass specs."""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields."""
        return asdict(self)  # type: ignore[call-overload]

    def to_json(self) -> str:
        """JSON string of the fields."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Any:
        """Build from :meth:`to_json` output."""
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        """Build from a dict, ignoring unknown keys (forward compatibility)."""
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names}
        return cls(**kw)


@dataclass(frozen=True)
class CubeSpec(_Spec):
    """What to search and stack (``build-cube`` stages 1-3)."""

    name: str
    bbox: tuple[float, float, float, float]
    epsg: int
    start: str
    end: str
    catalog: str
    collection: str = "landsat-c2-l2"
    platforms: tuple[str, ...] = ("landsat-8",)
    max_cloud: float = 20.0
    resolution: float = 30.0

    def __post_init__(self) -> None:
        try:
            s, e = pd.Timestamp(self.start), pd.Timestamp(self.end)
        except ValueError as err:
            raise GlacierflowError(f"bad date ({err}); use YYYY-MM-DD") from None
        if s >= e:
            raise GlacierflowError(f"--start {self.start} must be before --end {self.end}")
        if not 0 <= self.max_cloud <= 100:
            raise GlacierflowError(f"--max-cloud {self.max_cloud} must be between 0 and 100")
        if not self.platforms:
            raise GlacierflowError("at least one --platform is needed")


@dataclass(frozen=True)
class PreprocessSpec(_Spec):
    """Quality filter, cloud mask, gap-fill, NDSI, alignment, resampling (``build-cube`` stages 4-8)."""

    max_missing: float = 0.5
    mask_clouds: bool = True
    ndsi_threshold: float = 0.3
    motion: str = "translation"
    period: str = "3MS"
    gap_fill_max_iter: int = 32
    align_highpass: float = 6.0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 <= self.max_missing <= 1:
            raise GlacierflowError(f"--max-missing {self.max_missing} must be a fraction between 0 and 1")
        if self.motion not in MOTIONS:
            raise GlacierflowError(f"unknown --motion {self.motion!r}; choose one of: {', '.join(MOTIONS)}")
        if self.period not in PERIODS:
            raise GlacierflowError(f"unsupported --period {self.period!r}; choose one of: {', '.join(PERIODS)}")
        if not -1 <= self.ndsi_threshold <= 1:
            raise GlacierflowError(f"NDSI threshold {self.ndsi_threshold} must lie in [-1, 1]")
