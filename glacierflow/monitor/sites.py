"""The monitor's sites file (TOML or YAML): which glaciers to keep up to date, and with what.

TOML (``.toml``)::

    [defaults]                    # optional: any site key, for every site
    catalog = "https://planetarycomputer.microsoft.com/api/stac/v1"
    run = "runs/convlstm"         # a trained run (glacierflow train) to forecast with

    [[sites]]
    name = "parvati"              # letters, digits, _ - . ; names the site's folder under --out-dir
    cube = "stores/parvati.zarr"  # the cube store (default: OUT_DIR/parvati/cube.zarr)
    glacier = "parvati"           # to build the cube the first time: a registry glacier ...
    outlines = "outlines/parvati.geojson"   # RGI-style outlines: stats per glacier, flow's stable ground

    [[sites]]
    name = "south-col"
    bbox = [86.90, 27.95, 87.00, 28.02]     # ... or a bbox (W, S, E, N degrees) with optional epsg
    start = "2019-01-01"                    # first date of the first build (default: the glacier's)
    outlines = "outlines/south-col.geojson"

YAML (``.yaml``/``.yml``): the same keys, ``defaults:`` a mapping and ``sites:`` a list of mappings.

Keys per site: ``name`` (required), ``outlines`` (required), ``cube``, ``glacier`` or ``bbox`` [+ ``epsg``,
``start``, ``period``] (needed only while the cube store does not exist), ``catalog`` (default: the cube's own),
``run`` (default: none, then no forecast), ``velocity`` and ``forecast`` (stores; default
``OUT_DIR/NAME/velocity.zarr`` and ``forecast.zarr``), ``end`` (last date searched; default today).
Relative paths are relative to the sites file (cron runs from anywhere); URLs (``scheme://``) are kept.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glacierflow.errors import GlacierflowError

KEYS = ("name", "cube", "glacier", "bbox", "epsg", "start", "period", "end", "outlines", "catalog", "run",
        "velocity", "forecast")
_PATHS = ("cube", "outlines", "run", "velocity", "forecast")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class MonitorSite:
    """One site of a sites file, its paths resolved (module notes)."""

    name: str
    outlines: str
    cube: str
    velocity: str
    forecast: str
    folder: str
    glacier: str | None = None
    bbox: tuple[float, float, float, float] | None = None
    epsg: int | None = None
    start: str | None = None
    period: str | None = None
    end: str | None = None
    catalog: str | None = None
    run: str | None = None


def _load(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as err:
        raise GlacierflowError(f"cannot read sites file {str(path)!r}: {err.strerror or err}") from None
    try:
        if path.suffix.lower() == ".toml":
            return tomllib.loads(text)
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            doc = yaml.safe_load(text)
            return doc if isinstance(doc, dict) else {}
    except (tomllib.TOMLDecodeError, ValueError) as err:
        raise GlacierflowError(f"sites file {path.name} is not valid {path.suffix[1:].upper()}: {err}") from None
    except Exception as err:  # yaml.YAMLError (yaml imported lazily): one line, not a traceback
        raise GlacierflowError(f"sites file {path.name} is not valid YAML: {' '.join(str(err).split())}") from None
    raise GlacierflowError(f"sites file {path.name}: use .toml, .yaml or .yml (format in `glacierflow monitor --help`)")


def _resolve(value: Any, base: Path) -> str:
    text = str(value)
    return text if "://" in text or Path(text).is_absolute() else str(base / text)


def _site(raw: dict[str, Any], defaults: dict[str, Any], base: Path, out_dir: Path, where: str) -> MonitorSite:
    entry = {**defaults, **raw}
    unknown = sorted(set(entry) - set(KEYS))
    if unknown:
        raise GlacierflowError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(KEYS)}")
    name = str(entry.get("name", ""))
    if not _NAME.match(name) or ".." in name:
        raise GlacierflowError(f"{where}: bad or missing site name {name!r}; use letters, digits, '_', '-', '.'")
    if not entry.get("outlines"):
        raise GlacierflowError(f"{where} ({name}): 'outlines' is required (RGI-style GeoJSON of the glaciers)")
    paths = {k: _resolve(entry[k], base) for k in _PATHS if entry.get(k)}
    folder = out_dir / name
    bbox = entry.get("bbox")
    if bbox is not None and (not isinstance(bbox, list | tuple) or len(bbox) != 4):
        raise GlacierflowError(f"{where} ({name}): bbox must be [W, S, E, N] in degrees")
    return MonitorSite(
        name=name, outlines=paths["outlines"], cube=paths.get("cube", str(folder / "cube.zarr")),
        velocity=paths.get("velocity", str(folder / "velocity.zarr")),
        forecast=paths.get("forecast", str(folder / "forecast.zarr")), folder=str(folder),
        glacier=entry.get("glacier"), bbox=tuple(float(v) for v in bbox) if bbox else None,  # type: ignore[arg-type]
        epsg=int(entry["epsg"]) if entry.get("epsg") else None, start=entry.get("start"), period=entry.get("period"),
        end=str(entry["end"]) if entry.get("end") else None, catalog=entry.get("catalog"), run=paths.get("run"))


def read_monitor_sites(path: str | Path, out_dir: str | Path) -> list[MonitorSite]:
    """The sites of a TOML/YAML sites file (module notes), in file order; one line for any mistake."""
    path = Path(path)
    doc = _load(path)
    defaults = doc.get("defaults") or {}
    raw = doc.get("sites", doc.get("site"))
    if not isinstance(raw, list) or not raw or not all(isinstance(s, dict) for s in raw):
        raise GlacierflowError(f"sites file {path.name} lists no site; add [[sites]] tables (TOML) or a 'sites:' "
                               "list (YAML), each with at least name and outlines")
    sites = [_site(s, defaults, path.parent, Path(out_dir), f"{path.name} site {n}") for n, s in enumerate(raw, 1)]
    names = [s.name for s in sites]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise GlacierflowError(f"sites file {path.name}: site {twice[0]!r} is given twice; names must differ")
    return sites
