"""Shared fixtures: real Planetary Computer JSON and real local STAC servers (no mocks)."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from glacierflow.twin.stac_servers import PgstacServer, RustacMemoryServer, pgstac_available

#: With CI=true a skipped test fails: a service a test needs (pgstac, Azurite, dask-gateway, a tmpfs mount, a package)
#: must be there in CI. Only skips whose reason starts with this say the test cannot apply on this machine.
NOT_APPLICABLE = "not applicable here:"


def ci() -> bool:
    """Whether this is a CI run (``CI=true``, as GitHub Actions, GitLab and .ci/run set it)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Under CI=true, turn a skip into a failure unless its reason starts with :data:`NOT_APPLICABLE`."""
    outcome = yield
    report = outcome.get_result()
    if not (ci() and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    _fail_in_ci(report, reason.removeprefix("Skipped: "))


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    """... and a module skipped as a whole (``pytest.importorskip`` at import) likewise."""
    outcome = yield
    report = outcome.get_result()
    if ci() and report.skipped:
        _fail_in_ci(report, report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr))


def _fail_in_ci(report: pytest.TestReport | pytest.CollectReport, reason: str) -> None:
    reason = reason.removeprefix("Skipped: ")
    if not reason.startswith(NOT_APPLICABLE):
        report.outcome = "failed"
        report.longrepr = f"CI=true and this was skipped ({reason}): CI must run it; install or start what it needs"


# Real, unmodified Planetary Computer responses (see tests/data/planetary-computer/README.md for sources)
PC_FIXTURES = Path(__file__).resolve().parent / "data" / "planetary-computer"
PGSTAC_SKIP = "PostgreSQL + PostGIS not installed; run scripts/setup-services.sh"


def load_pc_fixture(name: str) -> Any:
    """Parsed JSON of one file of the Planetary Computer fixtures shipped with the tests."""
    return json.loads((PC_FIXTURES / name).read_text())


def varied_items() -> list[dict[str, Any]]:
    """21 real ``landsat-c2-l2`` items with properties varied so that search filters matter.

    The 20 Landsat-9 items of ``landsat-c2-l2_items_20_mixed-epsg_2023-10.json`` (index i, file order)
    become Landsat-8 for even i (id prefix ``LC08``), with datetime 2023-10-08 minus 20*i days (same time
    of day); their bboxes and cloud covers stay real. The Landsat-7 item is moved to 2023-06-01 with 5 %
    cloud, so only the platform check can reject it.
    """
    items = copy.deepcopy(load_pc_fixture("landsat-c2-l2_items_20_mixed-epsg_2023-10.json"))
    for i, item in enumerate(items):
        props = item["properties"]
        if i % 2 == 0:
            props["platform"] = "landsat-8"
            item["id"] = item["id"].replace("LC09", "LC08", 1)
        t = datetime.fromisoformat(props["datetime"].replace("Z", "+00:00")) - timedelta(days=20 * i)
        props["datetime"] = t.astimezone(UTC).isoformat().replace("+00:00", "Z")
    le07 = copy.deepcopy(load_pc_fixture("landsat-c2-l2_LE07_item_trimmed.json"))
    le07["properties"]["datetime"] = "2023-06-01T07:39:19.180002Z"
    le07["properties"]["eo:cloud_cover"] = 5.0
    return [*items, le07]


@pytest.fixture
def pc_collection() -> dict[str, Any]:
    """Planetary Computer's ``landsat-c2-l2`` collection document."""
    return load_pc_fixture("landsat-c2-l2_collection_2025-07.json")


@pytest.fixture
def search_items() -> list[dict[str, Any]]:
    """See :func:`varied_items`."""
    return varied_items()


@pytest.fixture(scope="session")
def rustac_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RustacMemoryServer]:
    """``rustac serve`` (memory backend) serving :func:`varied_items`, for the whole session."""
    coll = load_pc_fixture("landsat-c2-l2_collection_2025-07.json")
    server = RustacMemoryServer(varied_items(), coll, tmp_path_factory.mktemp("rustac"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pgstac_stac_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgstacServer]:
    """PostgreSQL + pgstac served by ``rustac serve --pgstac``, holding :func:`varied_items`."""
    if not pgstac_available():
        pytest.skip(PGSTAC_SKIP)
    coll = load_pc_fixture("landsat-c2-l2_collection_2025-07.json")
    server = PgstacServer(varied_items(), coll, tmp_path_factory.mktemp("pgstac"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["rustac-memory", pytest.param("pgstac", marks=pytest.mark.pgstac)])
def stac_server(request: pytest.FixtureRequest) -> RustacMemoryServer | PgstacServer:
    """Each real STAC server in turn (pgstac skips only where PostgreSQL is not installed)."""
    name = "rustac_server" if request.param == "rustac-memory" else "pgstac_stac_server"
    return request.getfixturevalue(name)


# offline twin fixtures (tiny/small twins on disk and served, the monthly tiny cube): tests/twin_fixtures.py
# a real dask-gateway-server on 127.0.0.1 (deploy/gateway-config.py), once per session: tests/gateway_fixtures.py
from .gateway_fixtures import gateway_server  # noqa: E402, F401
from .twin_fixtures import (  # noqa: E402, F401
    served_small_twin,
    served_twin,
    small_twin,
    tiny_cube_1ms,
    tiny_cube_summer,
    tiny_twin,
)
