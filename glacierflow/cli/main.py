"""Command line: parse flags -> build a spec -> call one library function -> print the result.

* :func:`main` ``(argv=None) -> int`` runs in-process (tests call it); the console script and
  ``python -m glacierflow`` exit with its return value.
* User mistakes print one line, ``error: ...``, on stderr and return 2, without a traceback. Specs
  raise :class:`~glacierflow.errors.SpecError` naming their *fields*; :func:`~glacierflow.cli.app.flag_for`
  turns those into the flags a user types (``--start 2020-01-01 must be before --end 2019-01-01``), here only.
* The commands live in one module per stage, in the order the pipeline runs them (:data:`STAGES`); what
  they share (the typer ``app``, option types, storage and cluster flags) is in :mod:`glacierflow.cli.app`.
"""

from __future__ import annotations

import sys

import click
import typer

# isort: off
# Importing a stage module registers its commands on the app; `glacierflow --help` lists them in this order.
import glacierflow.cli.twin as twin
import glacierflow.cli.cube as cube
import glacierflow.cli.motion as motion
import glacierflow.cli.learn as learn
import glacierflow.cli.forecast as forecast
import glacierflow.cli.finetune as finetune
import glacierflow.cli.plots as plots
import glacierflow.cli.demo as demo
import glacierflow.cli.outputs as outputs
import glacierflow.cli.monitor as monitor

# isort: on
from glacierflow.cli.app import app, flag_for
from glacierflow.cli.common import apply_shared, with_common_options
from glacierflow.errors import GlacierflowError, SpecError, missing_extra
from glacierflow.storage.cloud import redact

STAGES = (twin, cube, motion, learn, forecast, finetune, plots, demo, outputs, monitor)
"""The command modules, in pipeline order: twin, cube, flow, train/evaluate, predict, finetune, figures, demo,
outputs, stats/monitor."""

_COMMAND: list[click.Command] = []


def command() -> click.Command:
    """The click command tree of the ``app``, with the shared options on every command (built once)."""
    if not _COMMAND:
        _COMMAND.append(with_common_options(typer.main.get_command(app)))
    return _COMMAND[0]


# typer >= 0.20 vendors click (typer._click); older typer raises click's own exceptions: accept both
_USAGE_ERRORS = (typer.TyperException, click.exceptions.ClickException)
_EXITS = (typer.Exit, click.exceptions.Exit)
_ABORTS = (typer.Abort, click.exceptions.Abort, KeyboardInterrupt)


def _error(message: str) -> int:
    print(f"error: {redact(message)}", file=sys.stderr)  # never a credential seen in this process
    return 2


def _usage_error(e: Exception) -> int:
    """One line for a bad flag or value (click's own output is a usage block); ``no args`` shows the help."""
    if type(e).__name__ == "NoArgsIsHelpError":
        e.show()  # type: ignore[attr-defined]
        return 2
    message = e.format_message() if hasattr(e, "format_message") else str(e)
    message = " ".join(message.replace("Value error, ", "").split()).rstrip(".")
    ctx = getattr(e, "ctx", None)
    where = f"; see {ctx.command_path} --help" if ctx is not None else ""
    code = getattr(e, "exit_code", 2)
    print(f"error: {message}{where}", file=sys.stderr)
    return code if isinstance(code, int) else 2


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      line: str | None = None) -> str:
    """A warning as the user reads it: ``warning: ...`` on one line, redacted (no source file, no code line)."""
    return f"warning: {redact(' '.join(str(message).split()))}\n"


def main(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv`` (default: ``sys.argv[1:]``) and return the exit status.

    User mistakes (:class:`GlacierflowError`, bad flags and values) print one line on stderr and return 2;
    spec errors name the flags (:func:`~glacierflow.cli.app.flag_for`). Ctrl-C returns 130.

    Parameters
    ----------
    argv
        The arguments after the program name; None: ``sys.argv[1:]``.

    Returns
    -------
    int
        The exit status: 0 done, 1 a site of several failed (``build-cube``), 2 a user mistake, 130 interrupted.
    """
    import warnings

    previous, warnings.formatwarning = warnings.formatwarning, _one_line_warning  # type: ignore[assignment]
    try:
        return _run(argv)
    finally:
        warnings.formatwarning = previous  # in-process callers (tests, notebooks) keep their own


def _run(argv: list[str] | None) -> int:
    """:func:`main` without the warning format."""
    try:
        args, defaults = apply_shared(command(), list(sys.argv[1:] if argv is None else argv))
        result = command().main(args=args, prog_name="glacierflow", standalone_mode=False, default_map=defaults)
    except SpecError as e:
        spec = e.spec
        return _error(e.render(lambda name: flag_for(name, spec)))
    except GlacierflowError as e:
        return _error(str(e))
    except _ABORTS:
        print("interrupted", file=sys.stderr)
        return 130
    except _EXITS as e:
        return int(e.exit_code)
    except _USAGE_ERRORS as e:
        return _usage_error(e)
    except ModuleNotFoundError as e:  # an optional role (torch, the twin's server, ...) not installed
        extra = missing_extra(e)
        if extra is None:
            raise
        return _error(str(extra))
    if result == 130:  # typer turns Ctrl-C into Exit(130), which click returns silently
        print("interrupted", file=sys.stderr)
    return int(result) if isinstance(result, int) else 0
