"""Run-directory files written atomically: JSON documents, checkpoints (through a writer callback), hashes.

A file is written to a hidden temporary sibling, flushed to disk and moved into place with ``os.replace``, so a
kill at any moment leaves the previous file whole; a failed write (disk full) removes the temporary file and
raises one :class:`~glacierflow.errors.GlacierflowError` line naming the file and the way out.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from glacierflow.errors import GlacierflowError
from glacierflow.errors import first_line as first_line  # the one helper, re-exported (learn.checkpoint)


def atomic_write(path: Path, write: Callable[[IO[bytes]], None], *, what: str = "file",
                 way_out: str = "free space or write elsewhere") -> None:
    """Write ``path`` through ``write(binary_file)`` into a temporary sibling, fsync it, then replace ``path``.

    Parameters
    ----------
    path
        The file to write; its previous content stays whole until the new one is complete.
    write
        Writes the content into the open binary file it is given.
    what, way_out
        Words of the one-line error on failure (``cannot write {what} {path} (...); ...; {way_out}``).
    """
    for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a run killed while writing
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        # torch reports a full disk as RuntimeError "unexpected pos ...": look at the free space, then clean up
        full = getattr(err, "errno", None) == errno.ENOSPC or shutil.disk_usage(path.parent).free < (1 << 20)
        tmp.unlink(missing_ok=True)
        why = "no space left on the device" if full else " ".join(str(err).split())[:120]
        raise GlacierflowError(f"cannot write {what} {path} ({why}); the previous {path.name}, if any, is "
                               f"kept; {way_out}") from None


def write_json(path: Path, obj: dict[str, Any]) -> None:
    """Write ``obj`` as indented, key-sorted JSON, atomically (values JSON cannot hold are written as strings)."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=str)
    atomic_write(path, lambda f: f.write(text.encode()), what="run file")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
