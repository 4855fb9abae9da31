"""Tests for glacierflow.choices: every registry answers to exactly the names specs and the CLI offer."""

from __future__ import annotations

import pytest

from glacierflow import choices
from glacierflow.errors import GlacierflowError
from glacierflow.geo.tiling import WINDOWS
from glacierflow.learn.objectives import OBJECTIVES
from glacierflow.learn.runtime import resolve_device
from glacierflow.motion.matching import METHODS
from glacierflow.preprocess.align import MOTIONS


@pytest.mark.parametrize(("registry", "names"), [
    (MOTIONS, choices.MOTIONS), (METHODS, choices.FLOW_METHODS), (OBJECTIVES, choices.OBJECTIVES),
    (WINDOWS, choices.BLEND_WINDOWS),
])
def test_registry_keys_are_the_choices(registry: dict, names: tuple[str, ...]) -> None:
    assert tuple(registry) == names


def test_check_registry_refuses_a_drifted_registry() -> None:
    with pytest.raises(AssertionError, match="glacierflow.choices says"):
        choices.check_registry("x", {"ncc": 1}, ("ncc", "farneback"))


def test_every_device_choice_resolves() -> None:
    assert {resolve_device(d).type for d in ("auto", "cpu")} <= {"cpu", "cuda"}
    assert set(choices.DEVICES) == {"auto", "cpu", "cuda"}


@pytest.mark.parametrize(("period", "months", "season"), [("1MS", 1, 12), ("3MS", 3, 4), ("6MS", 6, 2),
                                                          ("QS", 3, 4), ("12MS", 12, 1)])
def test_period_helper(period: str, months: int, season: int) -> None:
    assert choices.period_months(period) == months and choices.season_length(period) == season


@pytest.mark.parametrize("bad", ["5MS", "2W", "", "MS-X"])
def test_period_helper_one_line_for_a_bad_period(bad: str) -> None:
    with pytest.raises(GlacierflowError, match="unsupported period"):
        choices.period_months(bad)
