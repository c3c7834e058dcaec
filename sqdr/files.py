"""Result files written whole or not at all: a temporary file in the same folder, then an atomic rename.

A run killed mid-write (or a full disk) thus never leaves a half-written table, figure or JSON file where a
reader, or a later ``sqdr report``, would take it for a finished result.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from sqdr.errors import UserError


def check_writable(folder: str | Path) -> Path:
    """Create ``folder`` if needed and make sure files can be written there, before any long work starts."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise UserError(
            f"cannot write to {folder} ({error.strerror or error}); choose another output folder or fix its permissions."
        ) from None
    return folder


def atomic_write(path: str | Path, write: Callable[[IO[Any]], Any], *, binary: bool = False) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb" if binary else "w", **({} if binary else {"newline": ""})) as file:
            write(file)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes owner-only files; results are for everyone
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """``path.write_text(text)``, atomically."""
    return atomic_write(path, lambda file: file.write(text))


def write_figure(figure: Any, path: str | Path, **savefig_kwargs: Any) -> Path:
    """``figure.savefig(path)`` (a matplotlib ``Figure``), atomically; the format comes from ``path``'s suffix."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    return atomic_write(path, lambda file: figure.savefig(file, format=fmt, **savefig_kwargs), binary=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
