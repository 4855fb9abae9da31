"""``build-cube --update``: bring a cube store up to date with the scenes acquired since it was built.

The store's own specs and search parameters say what to search; only the scenes newer than the store's last
period start are searched, processed with the fused per-scene pipeline (:mod:`glacierflow.preprocess.fused`)
and aligned against the store's recorded ECC references (group ``reference``), so old scenes keep their
alignment. The periods the new scenes touch, the interpolated periods whose neighbours changed and the new
periods are written; the rest of the store is kept as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class UpdateSummary:
    """What :func:`update_cube` did."""

    store: str
    new_scenes: int
    periods_changed: list[str] = field(default_factory=list)
    periods_added: list[str] = field(default_factory=list)
    unchanged: bool = False
    seconds: float = 0.0

    def lines(self) -> list[str]:
        """The summary as the CLI prints it."""
        if self.unchanged:
            return [f"{self.store}: up to date, nothing new (no new scene, no new period); nothing written"]
        return [f"{self.store}: {self.new_scenes} new scenes; periods changed: "
                f"{', '.join(self.periods_changed) or 'none'}; added: {', '.join(self.periods_added) or 'none'}"]


def update_cube(store: str, *, end: str | None = None, catalog: str | None = None,
                storage_options: dict[str, Any] | None = None, cluster: str | None = None,
                workers: int | None = None) -> UpdateSummary:
    """Update the cube store ``store`` with the scenes acquired up to ``end`` (default today)."""
    raise NotImplementedError("build-cube --update is being written")
