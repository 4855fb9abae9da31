"""Options every command shares, added in one place: ``--config``, ``--quiet``/``--verbose``, ``--log-file``.

:func:`with_common_options` walks the click command tree built from the typer ``app`` and appends the options to
every command (sub-commands included), so each command's ``--help`` lists them and no command can forget one.

* ``--config FILE.toml|yaml`` holds any command's options, named as their flags without the dashes
  (``max-cloud = 10`` or ``max_cloud = 10``): top-level keys apply to every command that has such an option (e.g.
  ``cluster = "local:2"``); a table named after a command (``[build-cube]``, ``[twin.make]``) holds that
  command's own. Flags typed on the command line override the file (click's ``default_map``). A key that no
  command knows, or that the named command lacks, is one line naming the key and the file.
* ``--quiet`` hides progress bars and informational logging (warnings and errors still print);
  ``--verbose`` shows glacierflow's and Dask's informational logging on stderr; ``--log-file FILE`` writes
  glacierflow's log (debug level, credentials redacted) to a file as well.
"""

from __future__ import annotations

import logging
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from glacierflow import progress
from glacierflow.errors import GlacierflowError
from glacierflow.storage.cloud import redact

LOGGERS = ("glacierflow", "distributed", "dask")
"""The loggers ``--verbose``/``--quiet``/``--log-file`` act on."""

_STATE: dict[str, int] = {"verbosity": 0}
_ADDED: list[tuple[logging.Logger, logging.Handler]] = []
_LEVELS: dict[str, int] = {}


def progress_enabled() -> bool:
    """Whether to draw progress bars: on a terminal or in a notebook, unless ``--quiet`` (glacierflow.progress)."""
    return progress.enabled()


def _commands(group: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, group
    for name, cmd in getattr(group, "commands", {}).items():
        yield from _commands(cmd, (*path, name))


def _load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise GlacierflowError(f"--config {path}: no such file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml  # deferred: pyyaml is optional (TOML needs nothing)
            except ModuleNotFoundError:
                raise GlacierflowError(f"--config {path}: reading YAML needs pyyaml (pip install pyyaml); or use "
                                       "a .toml file") from None
            data = yaml.safe_load(text) or {}
        else:
            data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, ValueError) as err:
        raise GlacierflowError(f"--config {path}: not valid {path.suffix.lstrip('.') or 'TOML'} "
                               f"({' '.join(str(err).split())})") from None
    except Exception as err:  # yaml.YAMLError, without importing yaml here
        raise GlacierflowError(f"--config {path}: not valid YAML ({' '.join(str(err).split())})") from None
    if not isinstance(data, dict):
        raise GlacierflowError(f"--config {path}: expected a table of options, got {type(data).__name__}")
    return data


def _names(cmd: click.Command) -> dict[str, str]:
    """Config key -> parameter name, for the command's options (``max-cloud`` and ``max_cloud`` both)."""
    names: dict[str, str] = {}
    for p in cmd.params:
        if p.param_type_name == "option" and p.expose_value and p.name:
            names[p.name] = p.name
            names[p.name.replace("_", "-")] = p.name
    return names


def config_defaults(path: Path, root: click.Command, command: tuple[str, ...]) -> dict[str, Any]:
    """The ``default_map`` for ``command`` (a path such as ``("twin", "make")``) from the config file ``path``.

    Parameters
    ----------
    path
        The TOML or YAML file.
    root
        The whole command tree (to check that top-level keys are some command's option).
    command
        The command being run.

    Returns
    -------
    dict
        Parameter name -> value, for click's ``default_map`` (flags typed on the command line win).

    Raises
    ------
    GlacierflowError
        An unreadable file, a key no command knows, or a key the named command lacks.
    """
    data = _load(path)
    tree = dict(_commands(root))
    tables: dict[str, dict[str, Any]] = {}
    for key, value in data.items():  # TOML's [twin.make] arrives nested: {"twin": {"make": {...}}}
        if not isinstance(value, dict):
            continue
        group = tree.get(tuple(key.replace(".", " ").split()))
        if group is not None and hasattr(group, "commands") and all(isinstance(v, dict) for v in value.values()):
            tables.update({f"{key}.{sub}": table for sub, table in value.items()})
        else:
            tables[key] = value
    known_anywhere = set().union(*(_names(c) for c in tree.values()))
    for key, value in data.items():
        if not isinstance(value, dict) and key not in known_anywhere:
            flag = "--" + key.replace("_", "-")
            raise GlacierflowError(f"--config {path}: unknown option {key!r} (no command has {flag})")
    for key, table in tables.items():
        where = tuple(key.replace(".", " ").split())
        if where not in tree:
            raise GlacierflowError(f"--config {path}: [{key}] is not a command")
        unknown = sorted(set(table) - set(_names(tree[where])))
        if unknown:
            raise GlacierflowError(f"--config {path}: [{key}] has no option {unknown[0]!r}; see glacierflow "
                                   f"{' '.join(where)} --help")
    names = _names(tree[command])
    mine = tables.get(".".join(command), tables.get(" ".join(command), {}))
    shared = {names[k]: v for k, v in data.items() if not isinstance(v, dict) and k in names}
    return {**shared, **{names[k]: v for k, v in mine.items()}}


class _Redacting(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def reset() -> None:
    """Undo what the shared options did in this process (a new command line starts plain; tests run many)."""
    _STATE["verbosity"] = 0
    progress.set_quiet(False)
    while _ADDED:
        log, handler = _ADDED.pop()
        log.removeHandler(handler)
        handler.close()
    for name, level in _LEVELS.items():
        logging.getLogger(name).setLevel(level)
    _LEVELS.clear()


def _logging(verbosity: int, log_file: str | None) -> None:
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity > 0 else None
    handlers: list[logging.Handler] = []
    if verbosity > 0:
        handlers.append(logging.StreamHandler(sys.stderr))
    if log_file:
        try:
            handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
        except OSError as err:
            raise GlacierflowError(f"--log-file {log_file}: {err.strerror or err}") from None
    for h in handlers:
        h.setFormatter(_Redacting("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in LOGGERS:
        log = logging.getLogger(name)
        _LEVELS.setdefault(name, log.level)
        if level is not None:
            log.setLevel(level if not log_file or name != "glacierflow" else logging.DEBUG)
        elif log_file and name == "glacierflow":
            log.setLevel(logging.DEBUG)
        for h in handlers:
            log.addHandler(h)
            _ADDED.append((log, h))


SHARED_HELP = (
    "Every command also takes: --config FILE (TOML/YAML of its options; flags override it), -q/--quiet, "
    "-v/--verbose, --log-file FILE."
)

_FLAGS = {"--quiet": -1, "-q": -1, "--verbose": 1, "-v": 1}
_VALUED = ("--config", "--log-file")


def split_shared(argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Take the shared options out of ``argv``, wherever they are typed (before or after the command).

    Parameters
    ----------
    argv
        The command line after the program name.

    Returns
    -------
    tuple
        The rest of the command line, and ``{"verbosity": -1|0|1, "config": path|None, "log_file": path|None}``.

    Raises
    ------
    GlacierflowError
        ``--config``/``--log-file`` without a value.
    """
    rest: list[str] = []
    shared: dict[str, Any] = {"verbosity": 0, "config": None, "log_file": None}
    args = iter(argv)
    for arg in args:
        if arg == "--":
            rest += [arg, *args]
            break
        name, eq, value = arg.partition("=")
        if arg in _FLAGS:
            shared["verbosity"] = _FLAGS[arg]
        elif name in _VALUED:
            value = value if eq else next(args, None)
            if not value or value.startswith("-"):
                raise GlacierflowError(f"{name} needs a FILE")
            shared[name.lstrip("-").replace("-", "_")] = value
        else:
            rest.append(arg)
    return rest, shared


def _command_path(root: click.Command, argv: list[str]) -> tuple[str, ...]:
    """The command named by the first words of ``argv`` (``("twin", "make")``)."""
    path: tuple[str, ...] = ()
    cmd = root
    for word in argv:
        sub = getattr(cmd, "commands", {}).get(word)
        if sub is None:
            break
        path, cmd = (*path, word), sub
    return path


def apply_shared(root: click.Command, argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Apply the shared options typed in ``argv``; the rest of ``argv`` and click's ``default_map``.

    Parameters
    ----------
    root
        The click command tree.
    argv
        The command line after the program name.

    Returns
    -------
    tuple
        ``argv`` without the shared options, and the nested ``default_map`` from ``--config`` (empty without).
    """
    reset()
    rest, shared = split_shared(argv)
    _STATE["verbosity"] = shared["verbosity"]
    progress.set_quiet(shared["verbosity"] < 0)  # every bar of the run, the library's own included
    _logging(shared["verbosity"], shared["log_file"])
    if not shared["config"]:
        return rest, {}
    path = _command_path(root, rest)
    defaults: dict[str, Any] = config_defaults(Path(shared["config"]), root, path)
    for word in reversed(path):
        defaults = {word: defaults}
    return rest, defaults


def with_common_options(root: click.Command) -> click.Command:
    """Name the shared options in every command's help (an epilog line): they are parsed by :func:`apply_shared`.

    Parameters
    ----------
    root
        The click command tree (``typer.main.get_command(app)``).

    Returns
    -------
    click.Command
        ``root``, changed in place.
    """
    for _path, cmd in _commands(root):
        cmd.epilog = SHARED_HELP
        for param in cmd.params:
            _tidy(param)
    return root


_METAVARS = {"int": "N", "float": "NUMBER", "str": "TEXT", "Path": "PATH", "path": "PATH", "bool": "BOOL"}


def _tidy(param: Any) -> None:
    """Metavars users read: ``CUBE_URL``, ``PATH``, ``N`` (not typer's ``{CUBE}``, ``CUBE <str>``, ``<int>``).

    typer >= 0.20 renders a parameter without a metavar by its Python type, and a required argument in braces;
    an option gets a metavar named after its type, an argument shows its name only (the help says what it is).
    """
    desc = getattr(param, "type_descriptor", None)
    if desc is None:  # not a typer parameter (click's own renders plainly)
        return
    if param.param_type_name == "option" and param.metavar is None and not getattr(param, "is_flag", False):
        bare = param.bare_type() if hasattr(param, "bare_type") else ""
        bare = bare.removeprefix("list[").removesuffix("]")
        if desc.is_choice:
            param.metavar = "|".join(str(getattr(c, "value", c)) for c in desc.choices or ())
        else:
            param.metavar = _METAVARS.get(bare, bare.upper() or "VALUE")
    elif param.param_type_name == "argument":
        name = (param.metavar or param.name or "ARG").upper().removesuffix("...")
        param.metavar = name
        many = "..." if param.nargs != 1 else ""
        param.display_type_rich = lambda ctx: None  # the name says it; typer would add "<str>"
        param._usage_display_name = lambda: (name if param.required else f"[{name}]") + many
