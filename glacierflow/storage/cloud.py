"""Cloud object stores (``az://``, ``s3://``, ``gs://``): credentials, their secrecy, one-line errors.

fsspec opens every store URL (adlfs for ``az://``, s3fs for ``s3://``, gcsfs for ``gs://``);
:mod:`glacierflow.storage.store` asks this module for three things:

- :func:`storage_options`: the options of a URL, the caller's (``--storage-option KEY=VALUE``) or else the
  environment's credentials (``AZURE_STORAGE_*``, ``AWS_*``), given to the filesystem explicitly so that they
  also reach Dask workers whose environment lacks them (Gateway workers on Kubernetes). ``az://`` stores get
  ``use_listings_cache=False`` (a cached listing hides a store rewritten in the same process).
- :func:`redact`: every secret seen here (option values named like keys, secrets, tokens, the key inside a
  connection string) is replaced by ``<redacted>`` in text that is written or printed: store attributes
  (:func:`redact_attrs`), error lines.
- :func:`access`: a missing fsspec package, missing or refused credentials become one
  :class:`~glacierflow.errors.GlacierflowError` line naming the URL and what to set.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import weakref
from collections.abc import Iterator
from typing import Any

from glacierflow.errors import GlacierflowError

#: URL scheme -> credential family
FAMILY = {"az": "az", "abfs": "az", "abfss": "az", "s3": "s3", "s3a": "s3", "gs": "gs", "gcs": "gs"}
#: credential family -> the fsspec implementation to install
PACKAGES = {"az": "adlfs", "s3": "s3fs", "gs": "gcsfs"}
#: filesystem option -> environment variable the filesystem itself would read (adlfs, s3fs/botocore)
ENV = {
    "az": {"connection_string": "AZURE_STORAGE_CONNECTION_STRING", "account_name": "AZURE_STORAGE_ACCOUNT_NAME",
           "account_key": "AZURE_STORAGE_ACCOUNT_KEY", "sas_token": "AZURE_STORAGE_SAS_TOKEN",
           "client_id": "AZURE_STORAGE_CLIENT_ID", "client_secret": "AZURE_STORAGE_CLIENT_SECRET",
           "tenant_id": "AZURE_STORAGE_TENANT_ID"},
    "s3": {"key": "AWS_ACCESS_KEY_ID", "secret": "AWS_SECRET_ACCESS_KEY", "token": "AWS_SESSION_TOKEN"},
    "gs": {},
}
#: what to set, per family (the way out of a credential error)
HOW = {
    "az": "set AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY or "
          "AZURE_STORAGE_SAS_TOKEN, or pass --storage-option account_name=NAME --storage-option account_key=KEY",
    "s3": "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or pass "
          "--storage-option key=ID --storage-option secret=SECRET",
    "gs": "set GOOGLE_APPLICATION_CREDENTIALS to a service-account file, or pass --storage-option token=FILE",
}
_SECRET_NAME = re.compile(r"key|secret|token|password|credential|connection_string|sas", re.I)
_INLINE = re.compile(r"(AccountKey=|SharedAccessSignature=|[?&]sig=)([^;&\s'\"]+)", re.I)
_SECRETS: set[str] = set()
REDACTED = "<redacted>"


def family(url: str) -> str | None:
    """``"az"``, ``"s3"``, ``"gs"`` for a cloud URL, else ``None`` (local paths, ``memory://``, ``http://``)."""
    scheme = str(url).split("://", 1)[0].lower() if "://" in str(url) else ""
    return FAMILY.get(scheme)


def remember(opts: dict[str, Any] | None) -> None:
    """Remember the secret values of ``opts`` so that :func:`redact` removes them from any text."""
    for name, value in (opts or {}).items():
        if isinstance(value, str) and _SECRET_NAME.search(name) and len(value) >= 6:
            _SECRETS.add(value)
            _SECRETS.update(m.group(2) for m in _INLINE.finditer(value))


def storage_options(url: str, given: dict[str, Any] | None) -> dict[str, Any] | None:
    """The fsspec options of ``url``: ``given``, or the environment's credentials when ``given`` has none."""
    fam = family(url)
    if fam is None:
        return given
    opts = dict(given or {})
    if not any(name in opts for name in ENV[fam]) and "credential" not in opts and "anon" not in opts:
        opts = {**{k: os.environ[v] for k, v in ENV[fam].items() if os.environ.get(v)}, **opts}
    if fam == "az":
        opts.setdefault("use_listings_cache", False)
        _close_at_exit()
    remember(opts)
    return opts


_CLOSER: list[bool] = []


def _close_at_exit() -> None:
    """Register :func:`close_filesystems` once, and keep the Azure SDK's retry chatter off stderr."""
    if not _CLOSER:
        _CLOSER.append(True)
        atexit.register(close_filesystems)
        azure = logging.getLogger("azure")
        if azure.level == logging.NOTSET:
            azure.setLevel(logging.ERROR)


def close_filesystems() -> None:
    """Close every adlfs filesystem now, while the event loops that opened their clients still run.

    adlfs closes its Azure clients in ``weakref.finalize(fs, sync, fs.loop, close_service_client, fs)``; the
    finalizer holds ``fs`` itself, so it never runs before interpreter exit, when the loops have stopped
    ("RuntimeError: Loop is not running" tracebacks, unclosed aiohttp sessions). Run those finalizers here
    (at exit, before the stdlib's own finalizer hook, which was registered earlier): on fsspec's loop for sync
    instances, on zarr's loop for the asynchronous ones zarr opened (``loop=None``).
    """
    try:
        import adlfs
        from zarr.core.sync import sync as zarr_sync
    except ImportError:
        return
    cls = adlfs.AzureBlobFileSystem
    cls.clear_instance_cache()
    for finalizer in list(weakref.finalize._registry):  # the registry of live finalizers (stdlib, since 3.4)
        info = finalizer.peek()
        if info is None or not isinstance(info[0], cls) or len(info[2]) != 3:
            continue
        loop, close, fs = info[2]
        try:
            if loop is not None and not loop.is_closed() and loop.is_running():
                finalizer()
            elif finalizer.detach() is not None:
                zarr_sync(close(fs))
        except Exception:  # noqa: BLE001 - closing a client at exit must never fail the program
            pass


def redact(text: str, url: str | None = None) -> str:
    """``text`` without any secret: those seen by :func:`storage_options`, inline ones, a ``url``'s query.

    Inline secrets are ``AccountKey=...`` and the like; with ``url``, that URL's query string (a SAS token) is
    replaced and the URL shown without it. The one redactor of glacierflow: errors, logs and store
    attributes all pass through it.
    """
    if url and "?" in url:
        plain, query = url.split("?", 1)
        text = text.replace(url, plain).replace(query, REDACTED)
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return _INLINE.sub(lambda m: m.group(1) + REDACTED, text)


def redact_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """Store attributes with :func:`redact` applied to every string (nested lists and dicts too)."""
    def clean(value: Any) -> Any:
        if isinstance(value, str):
            return redact(value)
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(clean(v) for v in value)
        return value

    return {k: clean(v) for k, v in attrs.items()}


def has_credentials(url: str, opts: dict[str, Any] | None) -> bool:
    """Whether the resolved options of a cloud ``url`` name any credential (else: anonymous access)."""
    fam = family(url)
    names = {n for n in ENV.get(fam or "", {}) if n not in ("account_name", "tenant_id", "client_id")}
    return fam is None or any((opts or {}).get(n) for n in (*names, "credential", "token", "anon"))


def not_found_hint(url: str, opts: dict[str, Any] | None) -> str:
    """`` (or ...: what to set)`` for a cloud store not found without credentials; empty otherwise."""
    if has_credentials(url, storage_options(url, opts)):
        return ""
    return f" (or is not visible without credentials: {HOW[family(url) or 'az']})"


def no_credentials(url: str, why: str) -> GlacierflowError:
    """The one line for a cloud store that cannot be reached with the credentials at hand."""
    fam = family(url) or "az"
    return GlacierflowError(f"cannot access store {redact(url)} ({why}); {HOW[fam]}")


def _auth_failure(err: BaseException) -> str | None:
    """A short reason when ``err`` (or an error it came from) is a missing or refused credential."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        name = type(err).__name__
        status = getattr(err, "status_code", None) or getattr(getattr(err, "response", None), "status_code", None)
        if name in ("ClientAuthenticationError", "NoCredentialsError", "PartialCredentialsError",
                    "DefaultCredentialsError", "CredentialUnavailableError", "RefreshError",
                    "AzureSigningError"):
            return f"credentials refused or missing: {name}"
        if status in (401, 403):
            return f"credentials refused: HTTP {status}"
        if isinstance(err, PermissionError):
            return "permission denied"
        if isinstance(err, ValueError) and "connection_string or account_name" in str(err):
            return "no credentials"
        if isinstance(err, ValueError) and "connection string" in str(err).lower():
            return "malformed connection string"
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    return None


@contextlib.contextmanager
def access(url: str) -> Iterator[None]:
    """Turn a missing fsspec package or a credential failure on ``url`` into one GlacierflowError line."""
    fam = family(url)
    try:
        yield
    except GlacierflowError:
        raise
    except ImportError:
        if fam is None:
            raise
        pkg = PACKAGES[fam]
        extra = " (or pip install 'glacierflow[azure]')" if fam == "az" else ""
        raise GlacierflowError(f"store {redact(url)} needs the {pkg} package: pip install {pkg}{extra}") from None
    except Exception as err:
        why = _auth_failure(err) if fam else None
        if why is None:
            raise
        raise no_credentials(url, why) from None
