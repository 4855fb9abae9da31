"""STAC items -> lazy ``(time, band, y, x)`` cube with stackstac.

Two jobs:

* :func:`normalise_items` turns search results (plain dicts or pystac Items) into the plain dicts
  stackstac 0.5.1 reads: ``proj:epsg`` restored from pystac's ``proj:code``, only the needed assets,
  only allowed platforms (Landsat 4/5/7 share ``landsat-c2-l2`` with other band numbers), links dropped
  (stackstac would otherwise try to resolve the API root through pystac).
* :func:`build_cube` stacks them on an explicit UTM grid and returns a lazy float32 cube.

Grid convention
---------------
The grid is aligned to the Landsat Collection 2 grid: pixel *corners* sit at ``anchor + k * resolution``
(15 m + k * 30 m for Landsat UTM products, see ``proj:transform`` in the items), so pixel *centres* are whole
multiples of 30 m and the reprojection is a pure copy for scenes already in the target zone. The cube's
``x``/``y`` coordinates are pixel **centres** (DESIGN.md's store contract), ``y`` decreasing.

Values
------
Reflectance assets: ``DN * scale + offset`` from each asset's ``raster:bands`` (2.75e-5, -0.2 for Landsat C2),
DN 0 (``raster:bands.nodata``, which stackstac ignores) -> NaN. Bitfield assets (``qa_pixel``): raw bits
kept as float32 (exact for uint16), fill bit 0 set -> NaN. Pixels outside a scene's footprint are NaN.

stackstac 0.5.1 with numpy 2 refuses ``rescale=True`` with ``dtype=float32`` ("safe casting cannot be
completed between asset scale value 2.75e-05 and output dtype float32"), so the cube is stacked raw
(``rescale=False``) and scale/offset are applied here, lazily, per item and asset.

Read errors
-----------
With ``on_read_error="nan"`` (default) a missing file (HTTP 404, local "No such file"), a server error that
outlived GDAL's retries (HTTP 5xx) or a corrupt TIFF becomes an asset window full of ``-inf``
(:data:`READ_ERROR_VALUE`) instead of killing a long run, so the error is *in the data*:
:func:`glacierflow.preprocess.qa.read_errors` finds it inside the graph, every mask treats it as missing, and
the cube builder reports the scene (``read error``). It is also logged on the ``glacierflow.ingest.cube`` logger.
HTTP 401/403 (an expired or missing signature) always raise: every later read
would fail the same way. ``on_read_error="raise"`` makes every read error fatal.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import dask.array as da
import numpy as np
import pandas as pd
import rasterio
import stackstac
import xarray as xr
from pyproj import CRS, Transformer
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError
from rasterio.windows import Window
from stackstac.nodata_reader import exception_matches, nodata_for_window
from stackstac.rio_env import LayeredEnv
from stackstac.rio_reader import AutoParallelRioReader

from glacierflow.errors import GlacierflowError
from glacierflow.storage import store

logger = logging.getLogger(__name__)

BBox = tuple[float, float, float, float]

DEFAULT_ASSETS: tuple[str, ...] = ("green", "swir16", "qa_pixel")
DEFAULT_PLATFORMS: tuple[str, ...] = ("landsat-8",)
#: Assets holding bit fields: never rescaled, fill bit (bit 0) -> NaN.
BITFIELD_ASSETS: frozenset[str] = frozenset({"qa_pixel"})
#: Item properties kept as ``time`` coordinates (besides ``id`` and ``time``).
TIME_PROPERTIES: tuple[str, ...] = ("platform", "eo:cloud_cover")
#: Landsat C2 UTM grids put pixel corners at 15 m + k * 30 m.
LANDSAT_GRID_ANCHOR = 15.0



def gdal_env(http_timeout: float = 60.0, http_retries: int = 5, http_retry_delay: float = 2.0) -> LayeredEnv:
    """GDAL options for every open/read, on every worker, with the given HTTP timeout and retries.

    A :class:`stackstac.rio_env.LayeredEnv` is part of each reader in the Dask graph, so the options travel
    to the workers with the tasks and apply there (``rasterio.Env`` around each open and read). GDAL retries
    HTTP 429/5xx and timed-out or reset connections ``http_retries`` times, the first after
    ``http_retry_delay`` seconds, with exponential backoff; a request not done after ``http_timeout``
    seconds (a stalled server) is abandoned and retried (``GDAL_HTTP_TIMEOUT``, whole seconds).
    """
    return stackstac.DEFAULT_GDAL_ENV.updated(
        always=dict(
            GDAL_HTTP_MAX_RETRY=str(int(http_retries)),
            GDAL_HTTP_RETRY_DELAY=f"{float(http_retry_delay):g}",
            GDAL_HTTP_TIMEOUT=str(max(1, round(float(http_timeout)))),  # GDAL takes whole seconds
            GDAL_HTTP_MULTIRANGE="YES",
            GDAL_HTTP_MERGE_CONSECUTIVE_RANGES="YES",
            GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR",
            CPL_VSIL_CURL_ALLOWED_EXTENSIONS=".tif,.TIF,.tiff,.TIFF",
        )
    )


#: The default GDAL options (60 s timeout, 5 retries from 2 s): :func:`gdal_env` with its defaults.
GDAL_ENV = gdal_env()

#: What an unreadable asset window holds (NaN means "outside the footprint / nodata").
READ_ERROR_VALUE = np.float32(-np.inf)

#: Resampling when the cube grid is not the asset's grid (another UTM zone, another pixel grid):
#: reflectance bilinear, bit fields nearest (an interpolated bit field means nothing).
RESAMPLING: dict[str, str] = {"reflectance": "bilinear", "bitfield": "nearest"}

#: Read errors turned into an unreadable-asset window (matched with ``re.match`` against the GDAL error text).
READ_ERRORS_AS_NODATA: tuple[Exception, ...] = (
    RasterioIOError(r"(?s).*HTTP response code: (404|5\d\d)"),
    RasterioIOError(r"(?s).*No such file or directory"),
    RasterioIOError(r"(?s).*(TIFFRead|IReadBlock failed|Read or write failed|Read failed|not recognized as)"),
    RasterioIOError(r"(?s).*(timed out|Timeout was reached|Connection reset|Empty reply)"),  # retries spent
)


class AssetReadError(GlacierflowError, RuntimeError):
    """An asset that cannot be read, named (query string redacted); raised where read errors are fatal."""


def _pixel_offset(spec: Any, ds: Any) -> tuple[int, int] | None:
    """``(row, col)`` of the cube grid's origin in the file's pixels, if the grids differ by whole pixels."""
    vrt = spec.vrt_params
    if ds.crs is None or ds.crs.to_epsg() != vrt["crs"]:
        return None
    a, b = vrt["transform"], ds.transform
    if (a.a, a.b, a.d, a.e) != (b.a, b.b, b.d, b.e):
        return None
    col, row = (a.c - b.c) / b.a, (a.f - b.f) / b.e
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    return int(round(row)), int(round(col))


class ReportingRioReader(AutoParallelRioReader):
    """stackstac reader that turns matching read errors into :data:`READ_ERROR_VALUE` windows and logs them.

    stackstac's own ``errors_as_nodata`` fills NaN, indistinguishable from "outside the footprint"; this
    reader fills ``-inf``, so the error travels with the data through the graph.
    """

    def __init__(self, *, errors_as_nodata: tuple[Exception, ...] = (), **kwargs: Any) -> None:
        super().__init__(errors_as_nodata=(), **kwargs)
        self.report_patterns = tuple(errors_as_nodata)

    def _read_plain(self, window: Any, **kwargs: Any) -> np.ndarray:
        """Read without a mask when no rescaling is asked for (nodata is handled downstream).

        stackstac always reads a masked array, which makes GDAL decode the mask band too: about twice the
        work of the plain read. glacierflow stacks with ``rescale=False`` and masks DN 0 / the QA fill bit
        itself, so the mask is not needed.
        """
        if tuple(self.scale_offset) != (1, 0) or kwargs:
            return super().read(window, **kwargs)
        # One open, one windowed read when the file's grid is the cube's grid shifted by whole pixels (the
        # usual case: same UTM zone and Landsat grid). stackstac would open each file twice (to inspect it,
        # then per thread) and read through a WarpedVRT whenever the cube is a crop of the scene.
        with self.gdal_env.open:
            try:
                ds = rasterio.open(self.url, sharing=False)
            except Exception as e:
                raise RuntimeError(f"Error opening {self.url!r}: {e!r}") from e
        with ds:
            offset = _pixel_offset(self.spec, ds)
            if offset is None or ds.count != 1:
                return super().read(window, **kwargs)  # a real warp is needed: stackstac's WarpedVRT path
            out = np.full((int(window.height), int(window.width)), self.fill_value, dtype=self.dtype)
            row0, col0 = int(window.row_off) + offset[0], int(window.col_off) + offset[1]
            r0, c0 = max(row0, 0), max(col0, 0)
            r1, c1 = min(row0 + out.shape[0], ds.height), min(col0 + out.shape[1], ds.width)
            if r1 <= r0 or c1 <= c0:
                return out
            try:
                with self.gdal_env.read:
                    part = ds.read(1, window=Window(c0, r0, c1 - c0, r1 - r0), out_dtype=self.dtype)
            except Exception as e:
                raise RuntimeError(f"Error reading {window} from {self.url!r}: {e!r}") from e
            out[r0 - row0 : r1 - row0, c0 - col0 : c1 - col0] = part
            return out

    def read(self, window: Any, **kwargs: Any) -> np.ndarray:
        """Read one window; matching errors give ``fill_value`` and a warning naming the file.

        Any other error (or every error, without ``errors_as_nodata``) raises :class:`AssetReadError`:
        one line naming the asset, its query string (a signature) redacted.
        """
        try:
            return self._read_plain(window, **kwargs)
        except Exception as err:
            cause = err.__cause__ if isinstance(err.__cause__, Exception) else err
            plain_url, detail = redact(self.url, str(cause))
            if not self.report_patterns or not exception_matches(cause, self.report_patterns):
                raise AssetReadError(f"cannot read asset {plain_url}: {_short(detail)}") from None
            logger.warning("glacierflow: unreadable asset %r (%s); reported as a read error", plain_url, detail)
            return nodata_for_window(window, READ_ERROR_VALUE, self.dtype)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["errors_as_nodata"] = self.report_patterns
        return state


def redact(url: str, text: str = "") -> tuple[str, str]:
    """``url`` without its query string (a SAS token), and ``text`` with the URL and query replaced."""
    plain = url.split("?", 1)[0]
    text = text.replace(url, plain)
    if "?" in url:
        text = text.replace(url.split("?", 1)[1], "<redacted>")
    return plain, text


_SIGNED = re.compile(r"((?:https?|az|abfss?)://[^\s'\"?]+)\?[^\s'\"]*")


class RedactQueries(logging.Filter):
    """Replaces the query string (a SAS token) of every URL in a log record's message with ``<redacted>``.

    Installed on the loggers of rasterio, which name datasets by their signed URL in their DEBUG records.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact the record's message in place; always keep the record."""
        message = record.getMessage()
        if "?" in message:
            record.msg, record.args = _SIGNED.sub(r"\1?<redacted>", message), ()
        return True


for _name in ("rasterio", "rasterio._base", "rasterio._env", "rasterio._io", "rasterio.env", "rasterio._filepath",
              "rasterio.session"):
    logging.getLogger(_name).addFilter(RedactQueries())  # a logger's filters see only its own records


def _short(text: str) -> str:
    """A GDAL error message in a few words (HTTP status, timed out, missing, corrupt), else its first 160 chars."""
    text = " ".join(text.split())
    status = re.search(r"HTTP response code: (\d+)", text)
    if status:
        return f"HTTP {status.group(1)}"
    if "No such file or directory" in text:
        return "no such file"
    if re.search(r"timed out|Timeout was reached", text):
        return "timed out"
    if re.search(r"not recognized as|TIFFRead|IReadBlock failed|Read failed", text):
        return "not a readable GeoTIFF (truncated or corrupt)"
    return text[:160]


def check_assets(item: Mapping[str, Any], assets: Sequence[str] = DEFAULT_ASSETS, env: LayeredEnv = GDAL_ENV,
                 sign: Any = None) -> str:
    """Why an item's assets cannot be stacked as declared ('' if they can): opens each header (cheap).

    Checks that each asset opens, and that its CRS and size are the item's ``proj:epsg`` / ``proj:shape``
    (asset-level values first): a COG in another CRS than its item says would be warped from the wrong
    place without an error. Returns e.g. ``"read error: swir16 HTTP 404"`` or ``"read error: green CRS
    EPSG:32644, item says EPSG:32643"``. HTTP 401/403 (an expired or missing signature) raise
    :class:`AssetReadError`: every other asset would fail the same way.

    Parameters
    ----------
    item
        A normalised item dict (:func:`normalise_items`).
    assets
        Asset keys to check.
    env
        GDAL options (:func:`gdal_env`).
    sign
        ``href -> signed href`` (e.g. :meth:`SigningRioReader.sign_href`), or None.
    """
    props = item.get("properties", {})
    for key in assets:
        asset = item["assets"][key]
        url = sign(asset["href"]) if sign is not None else asset["href"]
        try:
            with env.open, rasterio.open(url) as ds:
                crs, shape = ds.crs, (ds.height, ds.width)
        except Exception as err:  # noqa: BLE001 - any open failure is the reason
            plain, detail = redact(url, str(err))
            if "HTTP response code: 401" in detail or "HTTP response code: 403" in detail:
                raise AssetReadError(f"cannot read asset {plain}: {_short(detail)} (expired or missing "
                                     "signature?)") from None
            return f"read error: {key} {_short(detail)}"
        epsg = asset.get("proj:epsg", props.get("proj:epsg"))
        found = crs.to_epsg() if crs is not None else None
        if epsg is not None and found != int(epsg):
            return f"read error: {key} CRS {f'EPSG:{found}' if found else 'missing'}, item says EPSG:{int(epsg)}"
        declared = asset.get("proj:shape", props.get("proj:shape"))
        if declared and tuple(int(v) for v in declared) != shape:
            return f"read error: {key} size {shape[0]}x{shape[1]} px, item says {declared[0]}x{declared[1]}"
    return ""


class SigningRioReader(ReportingRioReader):
    """:class:`ReportingRioReader` that signs each asset href when the reader is made, on the worker.

    stackstac makes readers in the task just before the pixel reads, so the signature is fresh however
    long the run is (Planetary Computer's SAS tokens expire after ~45 minutes). :meth:`sign_href` uses
    ``planetary_computer.sign`` (which caches a token per storage container and renews it); subclass and
    override it for another signer.
    """

    @staticmethod
    def sign_href(href: str) -> str:
        """Signed URL for ``href``."""
        import planetary_computer

        return str(planetary_computer.sign(href))

    def __init__(self, *, url: str, **kwargs: Any) -> None:
        super().__init__(url=self.sign_href(url), **kwargs)


# --------------------------------------------------------------------------------------------- items


def _epsg_from_code(code: Any) -> int | None:
    """``"EPSG:32643"`` -> 32643; anything else (None, other authorities) -> None."""
    if isinstance(code, str) and code.upper().startswith("EPSG:"):
        try:
            return int(code.split(":", 1)[1])
        except ValueError:
            return None
    return None


def _restore_epsg(fields: dict[str, Any]) -> None:
    """In place: set integer ``proj:epsg`` from ``proj:code`` (pystac >= 1.12 schema) where missing."""
    if fields.get("proj:epsg") is None and "proj:code" in fields:
        epsg = _epsg_from_code(fields["proj:code"])
        if epsg is not None:
            fields["proj:epsg"] = epsg
    elif fields.get("proj:epsg") is not None:
        fields["proj:epsg"] = int(fields["proj:epsg"])


def _as_plain(item: Any) -> dict[str, Any]:
    """A deep-copied plain STAC dict from a dict or a pystac Item (no link resolution, no network)."""
    if isinstance(item, Mapping):
        return copy.deepcopy(dict(item))
    to_dict = getattr(item, "to_dict", None)
    if to_dict is None:
        raise GlacierflowError(
            f"cannot read STAC item of type {type(item).__name__}; pass STAC item dicts or pystac Items"
        )
    # transform_hrefs=False: otherwise pystac resolves the root link over the network.
    return to_dict(transform_hrefs=False, include_self_link=False)


def normalise_items_with_report(
    items: Iterable[Any],
    *,
    assets: Sequence[str] = DEFAULT_ASSETS,
    platforms: Sequence[str] | None = DEFAULT_PLATFORMS,
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Like :func:`normalise_items`, also returning ``{item id: why it was dropped}``."""
    wanted = list(assets)
    allowed = None if platforms is None else {p.lower() for p in platforms}
    kept: list[dict[str, Any]] = []
    dropped: dict[str, str] = {}
    for raw in items:
        item = _as_plain(raw)
        item_id = str(item.get("id", f"<item {len(kept) + len(dropped)}>"))
        props = item.setdefault("properties", {})
        platform = str(props.get("platform", "")).lower()
        if allowed is not None and platform not in allowed:
            dropped[item_id] = f"platform {platform or 'missing'!r} not in {sorted(allowed)}"
            continue
        if not props.get("datetime"):
            dropped[item_id] = "no datetime"
            continue
        item_assets = item.get("assets", {})
        missing = [a for a in wanted if a not in item_assets]
        if missing:
            dropped[item_id] = f"missing assets {missing}"
            continue
        _restore_epsg(props)
        item["assets"] = {key: item_assets[key] for key in wanted}
        for asset in item["assets"].values():
            _restore_epsg(asset)
        item.pop("links", None)  # stackstac/pystac would try to resolve the API root
        kept.append(item)
    if dropped:
        reasons = sorted(set(dropped.values()))
        logger.warning(
            "dropped %d of %d items: %s", len(dropped), len(kept) + len(dropped), "; ".join(reasons)
        )
    return kept, dropped


def normalise_items(
    items: Iterable[Any],
    *,
    assets: Sequence[str] = DEFAULT_ASSETS,
    platforms: Sequence[str] | None = DEFAULT_PLATFORMS,
) -> list[dict[str, Any]]:
    """Plain STAC dicts that stackstac 0.5.1 stacks correctly.

    Parameters
    ----------
    items
        STAC item dicts (as the API returns them) or pystac Items (``proj:code`` schema).
    assets
        Asset keys to keep; items lacking one of them are dropped.
    platforms
        Allowed ``platform`` values (case-insensitive); ``None`` keeps every platform.

    Returns
    -------
    list of dict
        Deep copies (the input is never modified) with integer ``proj:epsg`` at item and asset level, only
        ``assets``, no links. Dropped items are logged (``glacierflow.ingest.cube`` logger, with the reason); use
        :func:`normalise_items_with_report` to get them as a dict.
    """
    return normalise_items_with_report(items, assets=assets, platforms=platforms)[0]


# ---------------------------------------------------------------------------------------------- grid


def snapped_bounds(
    bbox_lonlat: BBox, epsg: int, resolution: float = 30, anchor: float = LANDSAT_GRID_ANCHOR
) -> BBox:
    """Bounds in ``epsg`` covering ``bbox_lonlat``, with edges on ``anchor + k * resolution``.

    Parameters
    ----------
    bbox_lonlat
        ``(west, south, east, north)`` in degrees.
    epsg
        Target CRS.
    resolution
        Pixel size in CRS units.
    anchor
        Offset of pixel corners from multiples of ``resolution`` (15 m for Landsat C2 UTM grids).

    Returns
    -------
    tuple
        ``(minx, miny, maxx, maxy)``, expanded outwards to the grid.
    """
    w, s, e, n = bbox_lonlat
    if not (w < e and s < n):
        raise GlacierflowError(f"invalid bbox {tuple(bbox_lonlat)}: need west < east and south < north")
    to_crs = Transformer.from_crs(CRS.from_epsg(4326), CRS.from_epsg(int(epsg)), always_xy=True)
    minx, miny, maxx, maxy = to_crs.transform_bounds(w, s, e, n, densify_pts=21)
    if not all(np.isfinite([minx, miny, maxx, maxy])):
        raise GlacierflowError(f"bbox {tuple(bbox_lonlat)} cannot be projected to EPSG:{epsg}; check --epsg")

    def down(v: float) -> float:
        return float(np.floor((v - anchor) / resolution) * resolution + anchor)

    def up(v: float) -> float:
        return float(np.ceil((v - anchor) / resolution) * resolution + anchor)

    return down(minx), down(miny), up(maxx), up(maxy)


# ---------------------------------------------------------------------------------------------- cube


def _odd(dn: np.ndarray) -> np.ndarray:
    """``fmod(dn, 2) == 1`` (a QA fill bit), quiet for the -inf of unreadable pixels (False there)."""
    with np.errstate(invalid="ignore"):
        return np.fmod(dn, 2) == 1


def _scale_offset(items: Sequence[Mapping[str, Any]], assets: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(time, band)`` float32 scale and offset from each asset's ``raster:bands`` (1, 0 for bit fields)."""
    scale = np.ones((len(items), len(assets)), dtype=np.float32)
    offset = np.zeros((len(items), len(assets)), dtype=np.float32)
    for t, item in enumerate(items):
        for b, key in enumerate(assets):
            if key in BITFIELD_ASSETS:
                continue
            bands = item["assets"][key].get("raster:bands") or [{}]
            scale[t, b] = bands[0].get("scale", 1.0)
            offset[t, b] = bands[0].get("offset", 0.0)
    return scale, offset


def build_cube(
    items: Iterable[Any],
    *,
    bbox_lonlat: BBox,
    epsg: int,
    resolution: float = 30,
    assets: Sequence[str] = DEFAULT_ASSETS,
    platforms: Sequence[str] | None = DEFAULT_PLATFORMS,
    anchor: float = LANDSAT_GRID_ANCHOR,
    on_read_error: Literal["nan", "raise"] = "nan",
    reader: type[ReportingRioReader] = ReportingRioReader,
    env: LayeredEnv = GDAL_ENV,
) -> xr.DataArray:
    """Lazy float32 cube ``(time, band, y, x)`` of the items over ``bbox_lonlat`` on an explicit grid.

    Parameters
    ----------
    items
        STAC item dicts or pystac Items (see :func:`normalise_items`).
    bbox_lonlat
        ``(west, south, east, north)`` in degrees.
    epsg
        Output CRS; explicit, so items from several UTM zones are reprojected onto one grid.
    resolution
        Pixel size in metres.
    assets
        Asset keys, in band order; those in :data:`BITFIELD_ASSETS` keep raw bits.
    platforms
        Allowed platforms; others are dropped (recorded in ``attrs["dropped_items"]``).
    anchor
        Grid anchor, see :func:`snapped_bounds`.
    on_read_error
        ``"nan"``: missing/corrupt files become NaN and are reported (see the module notes); ``"raise"``.
    reader
        stackstac reader class; :class:`SigningRioReader` signs hrefs at read time (pass unsigned items).
    env
        GDAL options of every open and read (:func:`gdal_env`: HTTP timeout and retries).

    Returns
    -------
    xarray.DataArray
        Dims ``(time, band, y, x)``, float32, chunks ``(1, 1, full y, full x)`` (one asset of one scene per
        chunk). Coordinates: ``time`` (sorted; items with equal datetimes are all kept, ordered by id),
        ``id``, ``platform``, ``eo:cloud_cover`` along ``time``; ``band`` = asset keys; ``x``/``y`` pixel
        centres in metres; ``spatial_ref`` (CF grid mapping with ``crs_wkt`` and ``epsg``). Attrs: ``epsg``,
        ``resolution``, ``transform`` (GDAL order, pixel corners), ``dropped_items`` (id -> reason),
        ``resampling`` (asset -> ``bilinear`` | ``nearest``, used wherever the grids differ). An unreadable
        asset window is ``-inf`` (see the module notes).
    """
    if on_read_error not in ("nan", "raise"):
        raise GlacierflowError(f"unknown on_read_error {on_read_error!r}; use 'nan' or 'raise'")
    if isinstance(epsg, bool) or not isinstance(epsg, int | np.integer) or epsg <= 0:
        raise GlacierflowError(f"invalid epsg {epsg!r}: pass the UTM EPSG code of the site, e.g. 32643")
    plain, dropped = normalise_items_with_report(items, assets=assets, platforms=platforms)
    if not plain:
        why = f" (dropped: {'; '.join(sorted(set(dropped.values())))})" if dropped else ""
        raise GlacierflowError(f"no usable items for the cube{why}; widen the search or check --platform")
    plain.sort(key=lambda it: (pd.Timestamp(it["properties"]["datetime"]), str(it.get("id"))))
    bounds = snapped_bounds(bbox_lonlat, epsg, resolution, anchor)

    def stack(keys: list[str], resampling: str) -> xr.DataArray:
        return stackstac.stack(
            plain,
            assets=keys,
            epsg=int(epsg),
            resolution=resolution,
            bounds=bounds,
            snap_bounds=False,
            chunksize=(1, 1, -1, -1),
            dtype=np.dtype("float32"),
            fill_value=np.float32(np.nan),
            rescale=False,
            sortby_date=False,
            xy_coords="center",
            properties=list(TIME_PROPERTIES),
            band_coords=False,
            gdal_env=env,
            errors_as_nodata=READ_ERRORS_AS_NODATA if on_read_error == "nan" else (),
            reader=reader,
            resampling=Resampling[resampling],
        )

    # one stack per resampling kind (bilinear reflectance, nearest bit fields), joined along band in the
    # asset order; on the assets' own grid neither resamples (direct window reads)
    kinds = {a: RESAMPLING["bitfield" if a in BITFIELD_ASSETS else "reflectance"] for a in assets}
    parts, run = [], []
    for a in assets:
        if run and kinds[run[-1]] != kinds[a]:
            parts.append(stack(run, kinds[run[-1]]))
            run = []
        run.append(a)
    parts.append(stack(run, kinds[run[-1]]))
    raw = parts[0] if len(parts) == 1 else xr.concat(parts, dim="band", coords="minimal", compat="override",
                                                     join="override")

    kept_ids = [str(i) for i in np.atleast_1d(raw["id"].values)]  # metadata only: no pixels read
    by_id = {str(it["id"]): it for it in plain}
    for item_id in by_id.keys() - set(kept_ids):
        dropped[item_id] = "no overlap with the bbox"
    if not kept_ids:
        raise GlacierflowError(
            f"none of the {len(plain)} items overlaps bbox {tuple(bbox_lonlat)}; check the bbox or the search"
        )
    scale, offset = _scale_offset([by_id[i] for i in kept_ids], assets)
    is_bits = np.array([a in BITFIELD_ASSETS for a in assets])[None, :, None, None]
    dn = raw.data
    reflectance = dn * scale[:, :, None, None] + offset[:, :, None, None]
    # NaN and -inf (unreadable) compare False here and stay what they are below
    fill = da.where(is_bits, da.map_blocks(_odd, dn, dtype=bool), dn == 0)
    data = da.where(fill, np.float32(np.nan), da.where(is_bits, dn, reflectance)).astype(np.float32)

    cube = xr.DataArray(data, coords=raw.coords, dims=raw.dims, name="reflectance")
    # stackstac collapses constant properties to scalars: rebuild them along time from the items.
    cube = cube.drop_vars([c for c in cube.coords if c not in {"time", "band", "y", "x"}])
    kept = [by_id[i] for i in kept_ids]
    cube = cube.assign_coords(
        id=("time", np.array(kept_ids, dtype=str)),
        platform=("time", np.array([str(it["properties"].get("platform", "")) for it in kept], dtype=str)),
        **{
            "eo:cloud_cover": (
                "time",
                np.array([float(it["properties"].get("eo:cloud_cover", np.nan)) for it in kept], np.float32),
            )
        },
    )
    cube = cube.assign_coords(spatial_ref=store.spatial_ref(int(epsg)))
    minx, _, _, maxy = bounds
    cube.attrs = {
        "epsg": int(epsg),
        "resolution": float(resolution),
        "transform": [float(resolution), 0.0, minx, 0.0, -float(resolution), maxy],
        "grid_mapping": "spatial_ref",
        "dropped_items": dict(dropped),
        "resampling": {a: kinds[a] for a in assets},
    }
    return cube
