"""Asset readers for stackstac: GDAL settings, read errors turned into ``-inf`` windows, signing, redaction.

With ``on_read_error="nan"`` (default) a missing file (HTTP 404, local "No such file"), a server error that
outlived GDAL's retries (HTTP 5xx) or a corrupt TIFF becomes an asset window full of ``-inf``
(:data:`READ_ERROR_VALUE`) instead of killing a long run, so the error is *in the data*:
:func:`glacierflow.preprocess.qa.read_errors` finds it inside the graph, every mask treats it as missing, and
the cube builder reports the scene (``read error``). It is also logged on this module's logger.
HTTP 401/403 (an expired or missing signature) always raise: every later read would fail the same way.
Signed URLs never reach a log: :func:`redact_rasterio_logs` (installed by the readers, not at import)
replaces every query string in rasterio's records.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import rasterio
import stackstac
from rasterio.errors import RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from stackstac.nodata_reader import exception_matches, nodata_for_window
from stackstac.rio_env import LayeredEnv
from stackstac.rio_reader import AutoParallelRioReader

from glacierflow.errors import GlacierflowError
from glacierflow.ingest.items import DEFAULT_ASSETS
from glacierflow.storage.cloud import redact

logger = logging.getLogger(__name__)


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
        redact_rasterio_logs()
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
            if ds.count != 1 or (offset is None and ds.nodata is None):
                return super().read(window, **kwargs)  # stackstac's path (its errors, its alpha-band mask)
            if offset is None:
                return self._read_warped(ds, window)
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

    def _read_warped(self, ds: Any, window: Any) -> np.ndarray:
        """A scene in another CRS or pixel grid: one WarpedVRT read of the window, without its mask.

        The values outside the footprint are the file's nodata (DN 0, QA fill), which the cube masks itself;
        stackstac's masked read would warp the mask too (about 3x the time of this read).
        """
        try:
            with self.gdal_env.open_vrt:
                vrt = WarpedVRT(ds, sharing=False, resampling=self.resampling, **self.spec.vrt_params)
            with vrt, self.gdal_env.read:
                return vrt.read(1, window=window, out_dtype=self.dtype)
        except Exception as e:
            raise RuntimeError(f"Error reading {window} from {self.url!r}: {e!r}") from e

    def read(self, window: Any, **kwargs: Any) -> np.ndarray:
        """Read one window; matching errors give ``fill_value`` and a warning naming the file.

        Any other error (or every error, without ``errors_as_nodata``) raises :class:`AssetReadError`:
        one line naming the asset, its query string (a signature) redacted.
        """
        try:
            return self._read_plain(window, **kwargs)
        except Exception as err:
            cause = err.__cause__ if isinstance(err.__cause__, Exception) else err
            plain_url, detail = self.url.split("?", 1)[0], redact(str(cause), self.url)
            if not self.report_patterns or not exception_matches(cause, self.report_patterns):
                raise asset_error(plain_url, detail) from None
            logger.warning("glacierflow: unreadable asset %r (%s); reported as a read error", plain_url, detail)
            return nodata_for_window(window, READ_ERROR_VALUE, self.dtype)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["errors_as_nodata"] = self.report_patterns
        return state


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


_RASTERIO_LOGGERS = ("rasterio", "rasterio._base", "rasterio._env", "rasterio._io", "rasterio.env",
                     "rasterio._filepath", "rasterio.session")


def redact_rasterio_logs() -> None:
    """Install :class:`RedactQueries` on rasterio's loggers once per process (readers call it; idempotent)."""
    for name in _RASTERIO_LOGGERS:
        log = logging.getLogger(name)  # a logger's filters see only its own records
        if not any(isinstance(f, RedactQueries) for f in log.filters):
            log.addFilter(RedactQueries())


def _refused(detail: str) -> bool:
    return any(f"{word} {code}" in detail for code in ("401", "403") for word in ("HTTP response code:", "HTTP"))


def asset_error(plain_url: str, detail: str) -> AssetReadError:
    """The one line for an asset that cannot be read; HTTP 401/403 name the way out (credentials or signing)."""
    hint = " (expired or missing signature?)" if _refused(detail) else ""
    return AssetReadError(f"cannot read asset {plain_url}: {_short(detail)}{hint}")


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


def _header(url: str, env: LayeredEnv) -> tuple[Any, tuple[int, int]]:
    """CRS and size of a raster.

    A failed open of an HTTP file is tried once more uncached, so the error is this file's own (a read that
    timed out before leaves an empty header in GDAL's cache: "not a GeoTIFF" instead of the time-out).
    """
    try:
        with env.open, rasterio.open(url) as ds:
            return ds.crs, (ds.height, ds.width)
    except Exception:
        if not url.startswith(("http://", "https://")):
            raise
    with env.open, rasterio.Env(CPL_VSIL_CURL_NON_CACHED=f"/vsicurl/{url}"), rasterio.open(url) as ds:
        return ds.crs, (ds.height, ds.width)


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
    redact_rasterio_logs()
    props = item.get("properties", {})
    for key in assets:
        asset = item["assets"][key]
        url = sign(asset["href"]) if sign is not None else asset["href"]
        try:
            crs, shape = _header(url, env)
        except Exception as err:  # noqa: BLE001 - any open failure is the reason
            plain, detail = url.split("?", 1)[0], redact(str(err), url)
            if _refused(detail):
                raise asset_error(plain, detail) from None
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
