"""User-facing errors: one line, naming the bad value and the way out."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

_FIELD_REF = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


def first_line(err: BaseException, limit: int = 160) -> str:
    """An exception as one short line (its type name when it has no message).

    Every line of its message joined, spaces collapsed, at most ``limit`` characters: the one helper for this
    (checkpoints, Dask workers, several sites' summary).
    """
    return " ".join(str(err).split())[:limit] or type(err).__name__


class GlacierflowError(Exception):
    """A mistake the user can fix (bad name, bad path, server down, ...).

    The CLI prints ``str(error)`` on one line and exits non-zero, without a traceback.
    """


class SpecError(GlacierflowError):
    """A spec field holds a bad value; the message names fields, never command-line flags.

    Parameters
    ----------
    field
        The field at fault (``"start"``); the message begins with it.
    message
        The rest of the sentence. Other fields it mentions are written ``{name}``, so that each
        front end can name them its own way.
    spec
        The spec class name (``"CubeSpec"``), for messages that need it.

    Examples
    --------
    >>> e = SpecError("start", "2020-01-01 must be before {end} 2019-01-01")
    >>> str(e)
    'start 2020-01-01 must be before end 2019-01-01'
    >>> e.render(lambda name: "--" + name.replace("_", "-"))
    '--start 2020-01-01 must be before --end 2019-01-01'
    """

    def __init__(self, field: str, message: str, spec: str = "") -> None:
        self.field = field
        self.message = message
        self.spec = spec
        super().__init__(self.render(str))

    @property
    def fields(self) -> tuple[str, ...]:
        """Every field the message names, the one at fault first."""
        return tuple(dict.fromkeys((self.field, *_FIELD_REF.findall(self.message))))

    def render(self, name: Callable[[str], str]) -> str:
        """The message with each field written as ``name(field)`` (e.g. the command-line flag)."""
        return f"{name(self.field)} " + _FIELD_REF.sub(lambda m: name(m.group(1)), self.message)


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'parvati'?)"`` for the choice closest to ``value`` (difflib), or ``""`` if none is close.

    Examples
    --------
    >>> did_you_mean("parvatti", ["aletsch", "parvati"])
    " (did you mean 'parvati'?)"
    >>> did_you_mean("xyz", ["aletsch", "parvati"])
    ''
    """
    import difflib

    lowered = {str(c).lower(): str(c) for c in choices}
    close = difflib.get_close_matches(str(value).strip().lower(), list(lowered), n=1, cutoff=0.6)
    return f" (did you mean {lowered[close[0]]!r}?)" if close else ""


# The optional roles of pyproject.toml: the top-level module a role brings -> the extra that installs it.
EXTRAS: dict[str, str] = {
    "torch": "learn",
    "xbatcher": "learn",
    "rustac": "twin",
    "starlette": "twin",
    "uvicorn": "twin",
    "httpx": "twin",
    "dask_gateway": "gateway",
    "adlfs": "azure",
    "s3fs": "s3",
    "gcsfs": "gcs",
    "pypgstac": "pgstac",
    "psycopg": "pgstac",
}


class MissingExtraError(GlacierflowError):
    """An optional part of glacierflow is not installed: the message names the extra that installs it.

    Examples
    --------
    >>> print(MissingExtraError("torch"))
    this needs torch, from glacierflow's "learn" extra: pip install "glacierflow[learn]"
    """

    def __init__(self, module: str) -> None:
        self.module = module
        self.extra = EXTRAS[module]
        super().__init__(f'this needs {module}, from glacierflow\'s "{self.extra}" extra: '
                         f'pip install "glacierflow[{self.extra}]"')


def missing_extra(error: BaseException) -> MissingExtraError | None:
    """The :class:`MissingExtraError` for an import error of an optional role's module, else None.

    Parameters
    ----------
    error
        Any exception (typically ``ModuleNotFoundError`` from a deferred import).

    Returns
    -------
    MissingExtraError or None
        None when ``error`` is not about a module of :data:`EXTRAS` (a genuine bug stays a traceback).
    """
    name = getattr(error, "name", None) if isinstance(error, ModuleNotFoundError) else None
    top = (name or "").split(".")[0]
    return MissingExtraError(top) if top in EXTRAS else None
