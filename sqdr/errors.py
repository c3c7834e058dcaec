"""The one way a failure the user can fix ends: ``error: <what is wrong and how to fix it>`` on stderr.

Every sub-command raises :class:`UserError` (or a subclass) for problems the user can fix; the dispatcher in
:mod:`sqdr.__main__` turns it into that message. Exceptions that libraries raise for the same kind of problem
(a malformed YAML file, a trainer option this machine cannot honour, a full disk, a missing permission, a path
that is a file where a folder is needed, memory running out) are translated by :func:`explain`; anything else
is a bug and keeps its traceback. ``SQDR_DEBUG=1`` shows the traceback of every error.

Exit codes: 2 (:data:`USAGE_EXIT_CODE`) for a mistake in the command, its options or its files; 3
(:data:`RESOURCE_EXIT_CODE`) when the command is right but the machine cannot carry it out (no space left,
no permission, out of memory), so a script can tell "fix the command" from "fix the machine, then retry".
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from pathlib import Path

#: The exit code of a user mistake (argparse and jsonargparse use the same for bad options).
USAGE_EXIT_CODE = 2
#: The exit code of a correct command the machine could not carry out: disk full, permission denied, out of memory.
RESOURCE_EXIT_CODE = 3


class UserError(Exception):
    """A problem the user can fix: the message names what is wrong and how to fix it, in one or two sentences."""

    exit_code = USAGE_EXIT_CODE


class ResourceError(UserError):
    """The machine ran out of something the command needs (disk space, permission, memory): exit code 3."""

    exit_code = RESOURCE_EXIT_CODE


def debug_enabled() -> bool:
    return bool(os.environ.get("SQDR_DEBUG"))


def exit_with(error: BaseException) -> None:
    """Print ``error`` as one short message and exit with its code (or re-raise it in debug mode)."""
    if debug_enabled():
        raise error
    explained = explain(error) or error
    print(f"error: {explained}\n(set SQDR_DEBUG=1 to see the traceback)", file=sys.stderr)
    raise SystemExit(getattr(explained, "exit_code", USAGE_EXIT_CODE)) from None


def explain(error: BaseException) -> UserError | None:
    """``error`` as the :class:`UserError` a user can act on, or ``None`` when it is not one (a bug)."""
    if isinstance(error, UserError):
        return error
    if _is(error, "yaml", "YAMLError"):
        return UserError(_yaml_message(error))
    if _is(error, "lightning.fabric.utilities.exceptions", "MisconfigurationException"):
        return UserError(_trainer_message(error))
    if isinstance(error, MemoryError) or _is(error, "torch", "OutOfMemoryError") or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error)  # torch's CPU allocator
    ):
        return ResourceError(
            "out of memory: the circuit or the batch is too large for the engine on this machine; reduce "
            "--data.init_args.batch_size, --model.net.init_args.n_qubits or time_steps (default.mixed, the noisy "
            "engine, needs 4^n_qubits numbers per sample), or certify fewer samples (--model.certify_samples)."
        )
    if isinstance(error, OSError) and error.errno in _OS_MESSAGES:
        code, message = _OS_MESSAGES[error.errno]
        name = error.filename2 or error.filename
        if error.errno == errno.EEXIST and (name is None or not Path(name).is_file()):
            return None  # only a file standing where a folder is to be made is the user's to move
        return (ResourceError if code == RESOURCE_EXIT_CODE else UserError)(
            message.format(path=name if name is not None else "a file it writes")
        )
    if isinstance(error, ValueError):  # model and data options raise ValueError for impossible values
        return UserError(str(error))
    return None


_NO_SPACE = "no space left on the disk while writing {path}; free space there (or write elsewhere) and run again."
_NO_PERMISSION = "permission denied for {path}; make it accessible to this user, or pass another path."
_OS_MESSAGES = {
    errno.ENOSPC: (RESOURCE_EXIT_CODE, _NO_SPACE),
    errno.EDQUOT: (RESOURCE_EXIT_CODE, _NO_SPACE.replace("no space left on the disk", "disk quota exceeded")),
    errno.EACCES: (RESOURCE_EXIT_CODE, _NO_PERMISSION),
    errno.EPERM: (RESOURCE_EXIT_CODE, _NO_PERMISSION),
    errno.EROFS: (RESOURCE_EXIT_CODE, "{path} is on a read-only file system; pass a path on a writable one."),
    errno.EISDIR: (USAGE_EXIT_CODE, "{path} is a folder where a file is needed; pass a file path or move the folder."),
    errno.EEXIST: (USAGE_EXIT_CODE, "{path} is a file where a folder is needed; pass another path or move the file."),
    errno.ENOTDIR: (
        USAGE_EXIT_CODE,
        "{path}: a part of this path is a file where a folder is needed; pass another path (e.g. --out, "
        "--runs_dir, the storage) or move that file away.",
    ),
}


def _is(error: BaseException, module: str, name: str) -> bool:
    """``isinstance(error, module.name)`` without importing ``module`` (only a loaded module can have raised it)."""
    cls = getattr(sys.modules.get(module), name, None)
    return isinstance(cls, type) and isinstance(error, cls)


def _yaml_message(error: BaseException) -> str:
    mark = getattr(error, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    problem = getattr(error, "problem", None) or str(error).strip().splitlines()[0]
    name = mark.name if mark is not None and Path(str(mark.name)).is_file() else _path_being_read(error)
    file = f"{name} is not valid YAML" if name else "a YAML file is not valid"
    return f"{file}: {problem}{where}; fix the file (or restore it) and run again."


def _path_being_read(error: BaseException) -> str | None:
    """The ``path`` the innermost sqdr function was reading when ``error`` arose (sqdr names file paths so).

    PyYAML parses the text it is given and cannot name the file; the function that read it can.
    """
    package = str(Path(__file__).parent)
    for frame, _ in reversed(list(traceback.walk_tb(error.__traceback__))):
        path = frame.f_locals.get("path")
        if frame.f_code.co_filename.startswith(package) and isinstance(path, (str, Path)):
            return str(path)
    return None


def _trainer_message(error: BaseException) -> str:
    reason = str(error).strip().splitlines()[0].rstrip(".!")
    if any(word in reason.lower() for word in ("gpu", "cuda", "mps", "tpu", "accelerator", "backend")):
        fix = "run on the CPU with --trainer.accelerator cpu (or auto), or on a machine that has that accelerator"
    else:
        fix = "change the --trainer options it names (`sqdr fit --help` lists them)"
    return f"the trainer cannot run as configured here: {reason}; {fix}."
