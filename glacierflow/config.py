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


# ------------------------------------------------------------------------------------------------ learning
SPLITS = ("temporal", "spatial")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class PatchSpec(_Spec):
    """Patch sequences (``patches.py``): windows of ``t_in + t_out`` periods, ``size`` px, and the split.

    ``test_periods`` (temporal split; 0: one window, ``t_in + t_out``) are the last periods of the cube;
    ``guard`` (0: ``size``) is the width in px of the unused band between spatial blocks of different sets.
    """

    t_in: int = 4
    t_out: int = 4
    size: int = 50
    stride: int = 10
    time_stride: int = 1
    split: str = "temporal"
    test_periods: int = 0
    guard: int = 0
    test_fraction: float = 0.2
    val_fraction: float = 0.15
    max_memory_gb: float = 4.0

    def __post_init__(self) -> None:
        for name in ("t_in", "t_out", "size", "stride", "time_stride"):
            if int(getattr(self, name)) < 1:
                raise GlacierflowError(f"patch {name}={getattr(self, name)} must be a positive integer")
        if self.split not in SPLITS:
            raise GlacierflowError(f"unknown --split {self.split!r}; choose one of: {', '.join(SPLITS)}")
        if self.guard and self.guard < self.size:
            raise GlacierflowError(f"guard band {self.guard} px is narrower than one patch ({self.size} px)")
        for name in ("test_fraction", "val_fraction"):
            if not 0 < getattr(self, name) < 0.5:
                raise GlacierflowError(f"{name}={getattr(self, name)} must lie in (0, 0.5)")

    @property
    def window(self) -> int:
        """Periods per sample (inputs + targets)."""
        return self.t_in + self.t_out

    @property
    def guard_px(self) -> int:
        """The guard band in px (at least one patch)."""
        return self.guard or self.size


@dataclass(frozen=True)
class ModelSpec(_Spec):
    """Which registered model (``glacierflow.models.MODELS``) and its keyword arguments (overriding defaults)."""

    name: str = "convlstm"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainSpec(_Spec):
    """Optimisation (``train.py``). AdamW; ``lr``/``weight_decay`` default to values that learn in minutes on CPU.

    Teacher forcing decays linearly from ``teacher_forcing`` at epoch 1 to 0 at the last epoch
    (models without a decoder ignore it). ``steps_per_epoch`` (0: all batches) bounds an epoch's work.
    """

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-3
    seed: int = 0
    device: str = "auto"
    patience: int = 5
    clip: float = 3.0
    teacher_forcing: float = 1.0
    steps_per_epoch: int = 0
    num_workers: int = 0
    amp: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise GlacierflowError(f"--epochs {self.epochs} and --batch-size {self.batch_size} must be >= 1")
        if not self.lr > 0 or self.weight_decay < 0:
            raise GlacierflowError(f"--lr {self.lr} must be > 0 and --weight-decay {self.weight_decay} >= 0")
        if self.device not in DEVICES:
            raise GlacierflowError(f"unknown --device {self.device!r}; choose one of: {', '.join(DEVICES)}")
        if self.patience < 1:
            raise GlacierflowError(f"--patience {self.patience} must be >= 1")
        if not 0 <= self.teacher_forcing <= 1:
            raise GlacierflowError(f"teacher forcing {self.teacher_forcing} must be a probability in [0, 1]")


# ------------------------------------------------------------------------------------------------ forecast
BLEND_WINDOWS = ("hann", "uniform")


@dataclass(frozen=True)
class PredictSpec(_Spec):
    """Full-scene inference (``predict.py``): tiling, blending, batches, device.

    ``overlap`` (px; -1: half a patch) between neighbouring tiles; ``window`` weights each tile before the
    overlapping tiles are averaged (``hann``: sin^2 with ``floor``; ``uniform``: plain mean); ``last_input``
    (YYYY-MM-DD; empty: the cube's last period) is the period the forecast starts after.
    """

    overlap: int = -1
    window: str = "hann"
    floor: float = 0.01
    batch_size: int = 64
    device: str = "auto"
    last_input: str = ""

    def __post_init__(self) -> None:
        if self.overlap < -1:
            raise GlacierflowError(f"--overlap {self.overlap} must be >= 0 px (or -1 for half a patch)")
        if self.window not in BLEND_WINDOWS:
            raise GlacierflowError(f"unknown blending window {self.window!r}; choose one of: {', '.join(BLEND_WINDOWS)}")
        if not 0 < self.floor <= 1:
            raise GlacierflowError(f"window floor {self.floor} must lie in (0, 1]")
        if self.batch_size < 1:
            raise GlacierflowError(f"--batch-size {self.batch_size} must be >= 1")
        if self.device not in DEVICES:
            raise GlacierflowError(f"unknown --device {self.device!r}; choose one of: {', '.join(DEVICES)}")

    def overlap_px(self, patch: int) -> int:
        """The overlap in px for tiles of ``patch`` px."""
        return patch // 2 if self.overlap < 0 else self.overlap
