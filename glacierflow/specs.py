"""Every stage's frozen spec, one base class, one unknown-key policy, errors that name fields.

Each spec is a frozen dataclass derived from :class:`Spec`. It is stored as JSON with what it produced
(Zarr attrs ``cube_spec``, ``preprocess_spec``, ``flow_spec``; checkpoints) and read back by the next
stage (:func:`spec_from_store`) instead of asking the user again.

Policies
--------
* **Validation** happens in ``__post_init__``; a bad value raises :class:`~glacierflow.errors.SpecError`
  whose ``field`` is the field at fault and whose message names fields (``start 2020-01-01 must be
  before end 2019-01-01``), never command-line flags: the CLI translates fields into its flags in one
  place (:func:`glacierflow.cli.app.flag_for`).
* **Unknown keys** in :meth:`Spec.from_dict` (a store written by a newer glacierflow, or by one that
  had a field since removed) are **ignored with a** :class:`SpecWarning` naming them: stores stay
  readable across versions, and nothing is silently dropped. Missing keys take the field's default;
  a missing key without a default is a :class:`~glacierflow.errors.SpecError` naming it.
* JSON lists become tuples for the tuple-typed fields (``bbox``, ``platforms``), so
  ``from_json(to_json(spec)) == spec``.
"""

from __future__ import annotations

import json
import numbers
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any, TypeVar

from glacierflow.choices import (
    BASES,
    BLEND_WINDOWS,
    CATEGORIES,
    DEFAULT_PLATFORMS,
    DEVICES,
    FLOW_IMAGES,
    FLOW_METHODS,
    GUIDE_BANDS,
    GUIDE_FILTERS,
    HEADS,
    MOTIONS,
    OBJECTIVES,
    PAIR_DAYS,
    PAIR_KINDS,
    PERIODS,
    SCHEDULES,
    SHRINKS,
    SPLITS,
)
from glacierflow.errors import GlacierflowError, SpecError
from glacierflow.geo.glaciers import Site, bbox_problem, get_site, site_from_bbox

S = TypeVar("S", bound="Spec")


class SpecWarning(UserWarning):
    """A stored spec carried keys this version of glacierflow does not know; they were ignored."""


def resolve_site(glacier: str | None, bbox: tuple[float, float, float, float] | None, epsg: int | None) -> Site:
    """The site from a registry name or a bbox (exactly one of them), with an optional EPSG override."""
    if glacier and bbox:
        raise SpecError("glacier", "and {bbox} were both given; pass one of them")
    if glacier:
        site = get_site(glacier)
        if epsg is not None and epsg != site.epsg:
            site = Site(site.name, site.bbox, int(epsg), site.start, site.end)
        return site
    if bbox:
        return site_from_bbox(tuple(bbox), epsg)  # type: ignore[arg-type]
    raise SpecError("glacier", "NAME or {bbox} W S E N is needed")


class Spec:
    """Base of every stage's spec: JSON round trip, one unknown-key policy, field-level checks."""

    # -- serialisation ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields."""
        return asdict(self)  # type: ignore[call-overload]

    def to_json(self) -> str:
        """JSON string of the fields (sorted keys)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls: type[S], data: Mapping[str, Any]) -> S:
        """Build from a dict; unknown keys are ignored with a :class:`SpecWarning` naming them."""
        known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(known))
        if unknown:
            warnings.warn(
                f"{cls.__name__}: ignoring unknown keys {', '.join(unknown)} (written by another glacierflow "
                f"version?); known: {', '.join(known)}",
                SpecWarning,
                stacklevel=2,
            )
        for name, f in known.items():
            if name not in data and f.default is MISSING and f.default_factory is MISSING:
                raise SpecError(name, f"is missing from the stored {cls.__name__}", cls.__name__)
        kw = {k: tuple(v) if isinstance(v, list) and str(known[k].type).startswith("tuple") else v
              for k, v in data.items() if k in known}
        return cls(**kw)

    @classmethod
    def from_json(cls: type[S], text: str) -> S:
        """Build from :meth:`to_json` output."""
        try:
            data = json.loads(text)
        except (TypeError, json.JSONDecodeError) as err:
            raise GlacierflowError(f"{cls.__name__}: stored spec is not JSON ({err})") from None
        return cls.from_dict(data)

    def replace(self: S, **changes: Any) -> S:
        """A copy with ``changes`` applied (validated again)."""
        return replace(self, **changes)  # type: ignore[type-var]

    # -- field-level checks (for ``__post_init__``) -------------------------------------------------------
    def _fail(self, name: str, message: str) -> SpecError:
        """A :class:`SpecError` for field ``name``; ``message`` follows the field's name and value."""
        return SpecError(name, message, type(self).__name__)

    def _require(self, ok: bool, name: str, message: str) -> None:
        """Raise a :class:`SpecError` on ``name`` unless ``ok``; ``message`` follows the field's name."""
        if not ok:
            raise self._fail(name, message)

    def _choice(self, name: str, choices: Iterable[str]) -> None:
        """Field ``name`` must be one of ``choices``."""
        choices = tuple(choices)
        value = getattr(self, name)
        self._require(value in choices, name, f"{value!r} is unknown; choose one of: {', '.join(choices)}")

    def _between(self, name: str, low: float, high: float, what: str = "") -> None:
        """Field ``name`` must lie in ``[low, high]``."""
        value = getattr(self, name)
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and low <= value <= high
        self._require(ok, name, f"{value!r} must be {what or 'a number'} between {low} and {high}")

    def _integer(self, name: str, low: int) -> None:
        """Field ``name`` must be an integer ``>= low``."""
        value = getattr(self, name)
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low
        self._require(ok, name, f"{value!r} must be an integer >= {low}")


_Spec = Spec  # the name the learning specs below were written against

#: A cube larger than this many pixels per scene needs ``--force``: about one Landsat scene (185 km square
#: at 30 m is 38 Mpx). A glacier site is a few tens of km across; a bbox this large is most often a typo.
MAX_PIXELS = 40_000_000


def epsg_problem(epsg: int) -> str:
    """Why ``EPSG:epsg`` cannot be a cube grid ('' if it can): unknown, or not projected in metres."""
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    try:
        crs = CRS.from_epsg(int(epsg))
    except (CRSError, ValueError, TypeError):
        return "is not a known EPSG code; leave {epsg} out for the site's UTM zone (e.g. 32643)"
    units = {a.unit_name for a in crs.axis_info}
    if not crs.is_projected or not units <= {"metre", "meter"}:
        return (f"({crs.name}) is not a projected CRS in metres; use a UTM zone (326xx north, 327xx south), "
                "or leave {epsg} out")
    return ""


def grid_pixels(spec: CubeSpec) -> tuple[int, int]:
    """Approximate ``(rows, columns)`` of the cube grid of ``spec`` (bbox projected to ``epsg``, densified)."""
    from pyproj import Transformer

    t = Transformer.from_crs(4326, spec.epsg, always_xy=True)
    x0, y0, x1, y1 = t.transform_bounds(*spec.bbox, densify_pts=21)
    return int(abs(y1 - y0) // spec.resolution) + 1, int(abs(x1 - x0) // spec.resolution) + 1


def check_size(spec: CubeSpec, force: bool = False, limit: int = MAX_PIXELS) -> tuple[int, int]:
    """The grid shape of ``spec``; a :class:`SpecError` on ``bbox`` above ``limit`` pixels, unless ``force``."""
    rows, cols = grid_pixels(spec)
    if rows * cols > limit and not force:
        km = f"{rows * spec.resolution / 1000:.0f} x {cols * spec.resolution / 1000:.0f} km"
        raise spec._fail("bbox", f"{' '.join(f'{v:g}' for v in spec.bbox)} covers about {km}: {rows} x {cols} = "
                                 f"{rows * cols:.2g} pixels at {spec.resolution:g} m, more than one Landsat scene "
                                 f"({limit:.2g}); pass a smaller {{bbox}}, or {{force}} to build it anyway")
    return rows, cols


def _date(spec: Spec, name: str) -> Any:
    import pandas as pd

    value = getattr(spec, name)
    try:
        return pd.Timestamp(value)
    except (TypeError, ValueError):
        raise spec._fail(name, f"{value!r} is not a date; use YYYY-MM-DD") from None


# ------------------------------------------------------------------------------------------------ cube
@dataclass(frozen=True)
class CubeSpec(Spec):
    """What to search and stack (``build-cube``: search, cube).

    Parameters
    ----------
    name
        Site name (registry key, or ``bbox`` for a bbox site); names the default store.
    bbox
        ``(west, south, east, north)`` in degrees.
    epsg
        EPSG code of the cube grid (the site's UTM zone).
    start, end
        Date range (YYYY-MM-DD), ``start`` before ``end``.
    catalog
        STAC API URL.
    collection
        STAC collection.
    platforms
        Platforms kept (default Landsat 8 and 9: the same bands and QA bits).
    max_cloud
        Maximum ``eo:cloud_cover`` in percent.
    resolution
        Pixel size in metres.
    categories
        Landsat collection categories kept (``landsat:collection_category``: T1, T2, RT).
    guides
        Also store the aligned per-scene guide images (group ``guides``).
    http_timeout
        Seconds one HTTP request (STAC page, COG range read) may take before it is retried
        (``GDAL_HTTP_TIMEOUT`` on the workers, the STAC client's timeout).
    http_retries
        Retries of a failed or timed-out request (``GDAL_HTTP_MAX_RETRY``, urllib3 ``Retry``).
    http_retry_delay
        Seconds before the first retry, doubling after each (``GDAL_HTTP_RETRY_DELAY``, urllib3 backoff).
    """

    name: str
    bbox: tuple[float, float, float, float]
    epsg: int
    start: str
    end: str
    catalog: str
    collection: str = "landsat-c2-l2"
    platforms: tuple[str, ...] = DEFAULT_PLATFORMS
    max_cloud: float = 20.0
    resolution: float = 30.0
    categories: tuple[str, ...] = ("T1", "T2")
    guides: bool = True
    http_timeout: float = 60.0
    http_retries: int = 5
    http_retry_delay: float = 2.0

    def __post_init__(self) -> None:
        if _date(self, "start") >= _date(self, "end"):
            raise self._fail("start", f"{self.start} must be before {{end}} {self.end}")
        self._require(len(self.bbox) == 4, "bbox", f"{self.bbox} must be 4 numbers: W S E N")
        problem = bbox_problem(self.bbox)
        self._require(not problem, "bbox",
                      f"{' '.join(map(str, self.bbox))} must be W S E N degrees with W < E and S < N: {problem}")
        self._integer("epsg", 1024)
        self._require(not epsg_problem(self.epsg), "epsg", f"{self.epsg} {epsg_problem(self.epsg)}")
        self._between("max_cloud", 0, 100, "a percentage")
        self._require(bool(self.platforms), "platforms", "is empty; name at least one platform, e.g. landsat-8")
        self._require(self.resolution > 0, "resolution", f"{self.resolution} must be > 0 metres")
        self._require(bool(self.categories) and set(self.categories) <= set(CATEGORIES), "categories",
                      f"{' '.join(self.categories) or 'nothing'} must be some of: {', '.join(CATEGORIES)}")
        self._between("http_timeout", 0.1, 3600, "seconds")
        self._integer("http_retries", 0)
        self._between("http_retry_delay", 0, 600, "seconds")


@dataclass(frozen=True)
class PreprocessSpec(Spec):
    """Quality filter, cloud mask, gap-fill, NDSI, alignment, resampling (``build-cube``: preprocess, align).

    Parameters
    ----------
    max_missing
        Scenes with a larger fraction of missing (QA-invalid) pixels are not used.
    mask_clouds
        Mask the QA cloud, dilated-cloud and shadow bits.
    ndsi_threshold
        The paper's snow mask: NDSI where NDSI >= threshold, else 0.
    motion
        ECC motion model, one of :data:`MOTIONS`.
    period
        Period of the cube, one of :data:`PERIODS` (January-anchored).
    gap_fill_max_iter
        Exact 5x5 gap-fill passes before the multi-scale fill.
    align_highpass
        Sigma (px) of the high-pass applied to the ECC guide image.
    guide_band
        What the guide images (ECC's image and what ``flow`` tracks) are made of, one of
        :data:`GUIDE_BANDS`: ``red`` (default: where ice shows its texture, as autoRIFT's panchromatic band;
        measured in benchmarks/README.md), ``nir08``, ``green``, ``ndsi`` or ``grey`` (the research code's
        ``0.114 green + 0.886 swir16``, the guide before this option).
    guide_filter
        ``highpass`` (subtract the local mean, sigma ``align_highpass``) or ``wallis`` (then also divide by
        the local standard deviation, autoRIFT's Wallis filter: equal contrast in bright and dark areas).
    min_ecc
        ECC correlation below which a scene counts as not aligned and is not averaged (``alignment``).
    extra
        Free-form options for experiments (recorded with the store).
    """

    max_missing: float = 0.5
    mask_clouds: bool = True
    ndsi_threshold: float = 0.3
    motion: str = "translation"
    period: str = "3MS"
    gap_fill_max_iter: int = 32
    align_highpass: float = 6.0
    min_ecc: float = 0.3
    guide_band: str = "red"
    guide_filter: str = "highpass"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._between("max_missing", 0, 1, "a fraction")
        self._choice("motion", MOTIONS)
        self._choice("period", PERIODS)
        self._between("ndsi_threshold", -1, 1, "an NDSI")
        self._integer("gap_fill_max_iter", 0)
        self._require(self.align_highpass >= 0, "align_highpass", f"{self.align_highpass} must be >= 0 px")
        self._choice("guide_band", GUIDE_BANDS)
        self._choice("guide_filter", GUIDE_FILTERS)
        self._between("min_ecc", -1, 1, "a correlation")

    @property
    def period_months(self) -> int:
        """Months per period (1, 3 or 6)."""
        return int(self.period[:-2])


# ------------------------------------------------------------------------------------------------ flow
@dataclass(frozen=True)
class FlowSpec(Spec):
    """Parameters of the flow stage (``flow.py``, matchers in ``matching.py``).

    Parameters
    ----------
    method
        Matcher (:data:`glacierflow.motion.matching.METHODS`): ``"ncc"`` (the default, the autoRIFT way: chips
        matched around a search prior, grown where the small chip fails, NDC-filtered, least-squares sub-pixel;
        measured in benchmarks/README.md) or ``"farneback"`` (dense optical flow, the paper's method).
    images
        What is tracked: ``"guides"`` (the cube store's aligned per-scene guide images, pairs of
        acquisitions), ``"ndsi"`` (the ``ndsi`` periods of a cube or forecast store) or ``"auto"``
        (guides where the store has them; the ``ndsi`` of a forecast store; a cube store built without
        guides is an error naming both ways out).
    pairs
        ``"auto"`` (default, as ITS_LIVE: 16 days to ``max_days`` apart, Δt near a year first),
        ``"annual"`` (acquisitions 300-430 days apart), ``"consecutive"`` (each acquisition with the next
        one, on the same WRS path where there is one) or ``"MIN:MAX"`` days apart.
    max_pairs_per_scene
        At most this many pairs per acquisition (same-path pairs first, then the Δt closest to the
        middle of the window), so the pair count grows linearly with the scenes.
    max_days
        Longest pair (days) of ``pairs="auto"`` (ITS_LIVE: 546).
    chip, chip_max
        NCC chip sides in pixels (odd): 9 px (270 m at 30 m, autoRIFT's smallest ~240 m) first, grown to
        ``chip_max`` 17 px (510 m, autoRIFT's ~480 m) where the small chip fails; the coarse first pass
        uses ``chip_max``.
    ndc
        NCC: normalised displacement coherence filter, px from the 5x5 median (0: off).
    reference
        Reference velocity store (``vx``, ``vy`` in m/yr with a CRS) centring the NCC search; "" = a
        coarse first pass per pair.
    outline
        Ice outlines (GeoJSON/Shapefile, or a raster mask) the stable ground is taken outside of.
    search
        NCC search range in pixels along each axis; ``0``: from ``max_speed`` and each pair's Δt
        (``ceil(max_speed * dt / pixel) + 2``).
    max_speed
        The fastest expected surface speed in m/yr (sets the search range).
    min_corr
        NCC: pixels whose correlation peak is lower are NaN.
    ice_fraction
        Without an ice mask, a pixel is ice where at least this fraction of the cube's observed periods
        show snow or ice (the NDSI climatology).
    stable_margin
        Stable ground is off-ice ground at least this many pixels from the ice.
    pyr_scale, levels, iterations
        Farnebäck pyramid scale, number of pyramid levels and iterations per level (the paper: 0.5, 6, 10).
    winsize
        Farnebäck averaging window in pixels. Default 9 (270 m at 30 m): the window must stay well
        below the glacier width, because Farnebäck averages the displacement over it and so flattens
        the cross-glacier speed profile. Measured on the ``small`` twin (valley glacier 20-36 px wide),
        median speed error with annual period pairs: 15 px 27 %, 11 px 24 %, 9 px 23 %.
    poly_n, poly_sigma
        Polynomial expansion neighbourhood and Gaussian sigma (the paper's code: 5, 1.1).
    min_texture
        Minimum local standard deviation (images in [0, 1], :func:`glacierflow.motion.matching.prepare`) a pixel
        needs in both images; below it the pixel is NaN.
    texture_window
        Side of the Farnebäck texture box (pixels); ``0`` means ``winsize``. NCC uses the chip.
    max_fb_error
        Forward-backward consistency: Farnebäck masks pixels whose forward plus backward flow is longer
        than this (px); NCC, when it is > 0, masks pixels whose best backward match does not return to
        the same integer offset. ``0`` disables the check.
    """

    method: str = "ncc"  # measured on the small twin: see benchmarks/README.md (flow)
    images: str = "auto"
    pairs: str = "auto"
    max_days: float = 546.0
    max_pairs_per_scene: int = 3
    chip: int = 9
    chip_max: int = 17
    ndc: float = 1.0
    reference: str = ""
    outline: str = ""
    search: int = 0
    max_speed: float = 200.0
    min_corr: float = 0.3
    ice_fraction: float = 0.6
    stable_margin: int = 3
    pyr_scale: float = 0.5
    levels: int = 6
    winsize: int = 9
    iterations: int = 10
    poly_n: int = 5
    poly_sigma: float = 1.1
    min_texture: float = 0.02
    texture_window: int = 0
    max_fb_error: float = 0.5

    def __post_init__(self) -> None:
        self._choice("method", FLOW_METHODS)
        self._choice("images", FLOW_IMAGES)
        self._require(self.pairs in PAIR_KINDS or self.day_range is not None, "pairs",
                      f"{self.pairs!r} is unknown; choose one of: {', '.join(PAIR_KINDS)}, or MIN:MAX days "
                      "(e.g. 10:60)")
        self._integer("max_pairs_per_scene", 1)
        self._require(isinstance(self.chip, int) and self.chip >= 5 and self.chip % 2 == 1, "chip",
                      f"{self.chip!r} must be an odd integer >= 5 (pixels)")
        self._require(isinstance(self.chip_max, int) and self.chip_max >= self.chip and self.chip_max % 2 == 1,
                      "chip_max", f"{self.chip_max!r} must be an odd integer >= {{chip}} {self.chip} (pixels)")
        self._require(self.max_days >= 16, "max_days", f"{self.max_days} must be >= 16 days")
        self._require(self.ndc >= 0, "ndc", f"{self.ndc} must be >= 0 pixels (0 disables the NDC filter)")
        self._integer("search", 0)
        self._require(self.max_speed > 0, "max_speed", f"{self.max_speed} must be > 0 m/yr")
        self._between("min_corr", -1, 1, "a correlation")
        self._between("ice_fraction", 0, 1, "a fraction")
        self._integer("stable_margin", 0)
        self._require(0.0 < self.pyr_scale < 1.0, "pyr_scale", f"{self.pyr_scale} must be in (0, 1), e.g. 0.5")
        self._integer("levels", 1)
        self._integer("winsize", 3)
        self._integer("iterations", 1)
        self._require(self.poly_n in (5, 7), "poly_n", f"{self.poly_n!r} must be 5 or 7 (OpenCV supports only these)")
        self._require(self.poly_sigma > 0, "poly_sigma",
                      f"{self.poly_sigma} must be > 0, e.g. 1.1 ({{poly_n}} 5) or 1.5 ({{poly_n}} 7)")
        self._require(self.min_texture >= 0, "min_texture", f"{self.min_texture} must be >= 0 (0 disables masking)")
        self._integer("texture_window", 0)
        self._require(self.max_fb_error >= 0, "max_fb_error",
                      f"{self.max_fb_error} must be >= 0 pixels (0 disables the consistency check)")

    @property
    def day_range(self) -> tuple[float, float] | None:
        """``(min_days, max_days)`` of ``pairs`` (named kinds included); None if it is not understood."""
        if self.pairs == "auto":
            return (16.0, float(self.max_days))
        if self.pairs in PAIR_DAYS:
            return PAIR_DAYS[self.pairs]
        lo, sep, hi = str(self.pairs).partition(":")
        try:
            low, high = float(lo), float(hi)
        except ValueError:
            return None
        return (low, high) if sep and 0 < low < high else None

    @property
    def texture_box(self) -> int:
        """Side of the Farnebäck texture box in pixels."""
        return self.texture_window or self.winsize


def spec_from_store(attrs: Mapping[str, Any], key: str, cls: type[S], where: str = "the store") -> S:
    """Read the spec ``cls`` stored as JSON under ``attrs[key]`` (e.g. a cube's ``preprocess_spec``).

    Raises
    ------
    GlacierflowError
        When the attribute is missing: the store was not written by the stage that records it.
    """
    raw = attrs.get(key)
    if raw is None:
        raise GlacierflowError(f"{where} has no {key} attribute; was it written by glacierflow? rebuild it")
    return cls.from_dict(raw) if isinstance(raw, Mapping) else cls.from_json(raw)


# ------------------------------------------------------------------------------------------------ learning


@dataclass(frozen=True)
class PatchSpec(Spec):
    """Patch sequences (``patches.py``): windows of ``t_in + t_out`` periods, ``size`` px, and the split.

    Temporal split: ``test_starts`` successive forecast start dates at the end of the cube (rolling origin)
    and ``val_starts`` before them; their target periods are held out (the gap between sets is the output
    length, ``t_out``); ``test_periods`` (0: ``t_out + test_starts - 1``) overrides the test block's length;
    ``guard`` (0: ``size``) is the width in px of the unused band between spatial blocks of different sets;
    ``test_fraction``/``val_fraction`` size the spatial blocks (fractions of the width).
    """

    t_in: int = 4
    t_out: int = 4
    size: int = 50
    stride: int = 10
    time_stride: int = 1
    split: str = "temporal"
    test_periods: int = 0
    test_starts: int = 4
    val_starts: int = 2
    guard: int = 0
    test_fraction: float = 0.2
    val_fraction: float = 0.15
    max_memory_gb: float = 4.0

    def __post_init__(self) -> None:
        for name in ("t_in", "t_out", "size", "stride", "time_stride", "test_starts", "val_starts"):
            self._integer(name, 1)
        self._integer("test_periods", 0)
        self._integer("guard", 0)
        self._choice("split", SPLITS)
        self._require(not self.guard or self.guard >= self.size, "guard",
                      f"{self.guard} px is narrower than one patch ({{size}} {self.size} px)")
        self._between("test_fraction", 0.01, 0.49, "a fraction")
        self._between("val_fraction", 0.01, 0.49, "a fraction")

    @property
    def window(self) -> int:
        """Periods per sample (inputs + targets)."""
        return self.t_in + self.t_out

    @property
    def guard_px(self) -> int:
        """The guard band in px (at least one patch)."""
        return self.guard or self.size


@dataclass(frozen=True)
class ModelSpec(Spec):
    """Which registered model (``glacierflow.learn.models.MODELS``), its keyword arguments, and its output head.

    ``head``: ``residual`` (the network adds a zero-initialised correction to the ``base`` forecast, one of the
    statistical baselines) or ``direct`` (the correction is added to the network's own forecast);
    ``calendar``: period-of-year (sin/cos) of the inputs and targets and a lead embedding reach the head;
    ``climatology``: the climatology, trend and anomaly forecasts (training periods only) are head channels.
    """

    name: str = "blend"  # the default recipe, chosen on validation start dates (benchmarks/README.md, issue 19)
    kwargs: dict[str, Any] = field(default_factory=dict)
    head: str = "residual"
    base: str = "anomaly"
    calendar: bool = True
    climatology: bool = True

    def __post_init__(self) -> None:
        self._choice("head", HEADS)
        self._choice("base", BASES)


@dataclass(frozen=True)
class TrainSpec(Spec):
    """Optimisation (``train.py``): AdamW, masked MSE, early stopping on the validation loss.

    ``lr``/``weight_decay`` default to values that learn in minutes on a CPU (the paper: 1e-4 / 1e-3).
    Teacher forcing decays linearly from ``teacher_forcing`` at the first epoch to 0 at epoch
    ``teacher_forcing_epochs`` (independent of ``epochs``, so a resumed, longer run keeps the schedule;
    models without a decoder ignore it); the gradient norm is clipped at ``clip``; ``steps_per_epoch`` (0: all
    batches) bounds an epoch's work, ``val_samples`` (0: all) the validation set (a seeded subset);
    ``amp``: bf16/fp16 autocast on CUDA. ``objective``: ``patch`` (masked MSE per patch sample) or
    ``full-scene`` (each step forecasts all tiles of a ``scene_window`` px scene window, blends them as
    ``predict`` does and takes the masked MSE on the window; 0: three patches, see ``glacierflow.learn.objectives``),
    the tiles overlapping by ``scene_overlap`` px (-1: half a patch, predict's default; 0: the paper's
    non-overlapping tiles, for ``predict --overlap 0``). ``max_minutes`` (0: none) stops the run cleanly at a
    wall-clock budget (validation, checkpoints, resumable); ``schedule``: ``cosine`` (linear warm-up over the
    first ``warmup`` of the run, then cosine decay to 5 % of ``lr``; the run's length is its epochs or, with
    ``max_minutes``, its time budget, whichever ends first) or ``constant``; ``log_every``: steps between
    loss reads (no per-step host sync on a GPU); ``compile``: ``torch.compile`` the model. ``shrink``: after
    training, per lead, how much of a residual head's correction ``best.pt`` keeps, fitted on the validation
    start dates (:mod:`glacierflow.learn.shrink`: ``fallback`` drops it where it is significantly worse than the
    base, ``scale`` scales it by the least-squares factor in [0, 1], ``none`` keeps it).
    """

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-3
    seed: int = 0
    device: str = "auto"
    patience: int = 5
    clip: float = 1.0
    teacher_forcing: float = 1.0
    teacher_forcing_epochs: int = 5
    steps_per_epoch: int = 0
    val_samples: int = 0
    num_workers: int = 0
    amp: bool = True
    objective: str = "patch"
    scene_window: int = 0
    scene_overlap: int = -1
    max_minutes: float = 0.0
    warmup: float = 0.05
    schedule: str = "cosine"
    log_every: int = 10
    compile: bool = False
    shrink: str = "fallback"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "patience", "teacher_forcing_epochs"):
            self._integer(name, 1)
        for name in ("steps_per_epoch", "val_samples", "num_workers", "scene_window"):
            self._integer(name, 0)
        self._between("lr", 1e-12, 10.0)
        self._between("weight_decay", 0.0, 10.0)
        self._between("clip", 1e-6, 1e6)
        self._between("teacher_forcing", 0.0, 1.0, "a probability")
        self._choice("device", DEVICES)
        self._choice("objective", OBJECTIVES)
        self._integer("scene_overlap", -1)
        self._between("max_minutes", 0.0, 1e6, "minutes (0: no time budget)")
        self._between("warmup", 0.0, 0.5, "a fraction of the run")
        self._choice("schedule", SCHEDULES)
        self._choice("shrink", SHRINKS)
        self._integer("log_every", 1)


# ------------------------------------------------------------------------------------------------ forecast


@dataclass(frozen=True)
class PredictSpec(Spec):
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
        self._integer("overlap", -1)
        self._choice("window", BLEND_WINDOWS)
        self._between("floor", 1e-9, 1.0)
        self._integer("batch_size", 1)
        self._choice("device", DEVICES)
        if self.last_input:
            _date(self, "last_input")

    def overlap_px(self, patch: int) -> int:
        """The overlap in px for tiles of ``patch`` px."""
        return patch // 2 if self.overlap < 0 else self.overlap
