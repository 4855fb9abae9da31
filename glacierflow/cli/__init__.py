"""The command line: ``glacierflow COMMAND``; :func:`main` runs it and returns the exit status."""

from glacierflow.cli.main import main

__all__ = ["main"]
