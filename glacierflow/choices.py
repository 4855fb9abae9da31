"""The names every registry answers to, in one small module that imports nothing heavy, and the period helper.

``specs`` validates user input against these tuples without importing OpenCV or PyTorch; each registry
(ECC motions in ``preprocess.align``, matchers in ``motion.matching``, objectives in ``learn.objectives``,
blend windows in ``geo.tiling``) asserts when it is built that its keys are exactly the tuple here, and
``tests/test_choices.py`` checks every pair, so a name added to one and not the other fails at import.

Periods: a cube's period is a January-anchored month-start alias (``"1MS"``, ``"3MS"``, ``"6MS"``);
:func:`period_months` and :func:`season_length` are the one place that turns it into months and periods per
year.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from glacierflow.errors import GlacierflowError

MOTIONS = ("translation", "euclidean", "affine", "homography")  # ECC motion models (preprocess.align)
PERIODS = ("1MS", "3MS", "6MS")  # cube periods build-cube offers
CATEGORIES = ("T1", "T2", "RT")  # Landsat Collection 2 tiers (landsat:collection_category)
#: platforms kept by default: Landsat 8 (OLI) and 9 (OLI-2) share band numbers and QA bits; 4/5/7 do not
DEFAULT_PLATFORMS = ("landsat-8", "landsat-9")
PAIR_KINDS = ("auto", "annual", "consecutive")  # or MIN:MAX days (FlowSpec.pairs)
PAIR_DAYS = {"annual": (300.0, 430.0), "consecutive": (0.5, 1e9)}  # days between the acquisitions
FLOW_METHODS = ("ncc", "farneback")  # matchers (motion.matching.METHODS)
FLOW_IMAGES = ("auto", "guides", "ndsi")  # what flow tracks
GUIDE_BANDS = ("red", "nir08", "green", "ndsi", "grey")  # what build-cube's guides are made of (preprocess.align)
GUIDE_FILTERS = ("highpass", "wallis")  # how the guide is filtered
SPLITS = ("temporal", "spatial")  # how samples are split into train/val/test
DEVICES = ("auto", "cpu", "cuda")  # torch devices (learn.runtime)
OBJECTIVES = ("patch", "full-scene")  # training objectives (learn.objectives.OBJECTIVES)
BLEND_WINDOWS = ("hann", "uniform")  # tile blending windows (geo.tiling.WINDOWS)
HEADS = ("residual", "direct")  # output heads of the learned models (learn.models.head)
BASES = ("seasonal", "climatology", "trend", "anomaly", "persistence")  # what a residual head starts from
SCHEDULES = ("cosine", "constant")  # learning-rate schedules (learn.train)
SHRINKS = ("fallback", "scale", "none")  # per-lead shrinkage of a residual correction (learn.shrink)

_PERIOD_RE = re.compile(r"^(\d*)(MS|QS|QS-JAN|YS|YS-JAN|AS|AS-JAN)$")
_ALIAS_MONTHS = {"MS": 1, "QS": 3, "QS-JAN": 3, "YS": 12, "YS-JAN": 12, "AS": 12, "AS-JAN": 12}


def period_months(period: str) -> int:
    """Number of calendar months in a period alias such as ``"1MS"``, ``"3MS"``, ``"6MS"``, ``"QS"``.

    Periods are anchored on January, so the period length must divide 12.

    Parameters
    ----------
    period : str
        Pandas month-start offset alias: ``"<n>MS"``, ``"QS"``, ``"YS"``.

    Returns
    -------
    int
        Months per period (a divisor of 12).
    """
    match = _PERIOD_RE.match(str(period).strip().upper())
    months = int(match.group(1) or 1) * _ALIAS_MONTHS[match.group(2)] if match else 0
    if months <= 0 or 12 % months:
        raise GlacierflowError(
            f"unsupported period {period!r}; use a month-start alias whose length divides 12: "
            "1MS, 2MS, 3MS (QS), 4MS, 6MS, 12MS (YS)"
        )
    return months


def season_length(period: str) -> int:
    """Periods per year of ``period`` (the seasonal baseline's season length): 12 for 1MS, 4 for 3MS, 2 for 6MS."""
    return 12 // period_months(period)


def check_registry(name: str, keys: Iterable[str], expected: tuple[str, ...]) -> None:
    """Raise when a registry's keys differ from its tuple here (called where each registry is built)."""
    found = tuple(keys)
    if found != expected:
        raise AssertionError(f"registry {name} has keys {found}; glacierflow.choices says {expected}")
