"""``sqdr fit --help`` (and validate/test/predict) in well under a second, with the model's options listed.

Building the LightningCLI parser imports Lightning, torch, snnTorch and PennyLane: seconds before the first
line of help. The help text only changes when sqdr's code or those packages change, so it is rendered once
and kept in ``$XDG_CACHE_HOME/sqdr/help/`` under a fingerprint of both (no library offers this cache).
LightningCLI lists the network's options only behind ``--model.net.help``; they are appended here, because
they are the options a user of this model looks for first.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import sqdr

HELP_FLAGS = ("-h", "--help")
FINGERPRINT_PACKAGES = ("lightning", "jsonargparse", "torch", "snntorch", "pennylane", "docstring-parser")


def is_plain_help(args: list[str]) -> bool:
    """``sqdr fit --help``: the sub-command and a help flag only (other options may change the help text)."""
    return len(args) == 2 and args[1] in HELP_FLAGS


def fingerprint(subcommand: str) -> str:
    """Changes whenever sqdr's code or a package the help text comes from changes."""
    digest = hashlib.sha256(subcommand.encode())
    for path in sorted(Path(sqdr.__file__).parent.rglob("*.py")):
        stat = path.stat()
        digest.update(f"{path}:{stat.st_mtime_ns}:{stat.st_size}".encode())
    for package in FINGERPRINT_PACKAGES:
        with contextlib.suppress(PackageNotFoundError):
            digest.update(f"{package}={version(package)}".encode())
    return digest.hexdigest()[:20]


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sqdr" / "help"


def render(subcommand: str) -> str:
    """LightningCLI's help for ``subcommand``, then the options of :class:`sqdr.SQDRCNN` under ``model.net``."""
    from jsonargparse import ArgumentParser

    from sqdr.cli import make_cli
    from sqdr.models import SQDRCNN

    text = io.StringIO()
    with contextlib.redirect_stdout(text), contextlib.suppress(SystemExit):
        make_cli([subcommand, "--help"])
    model = ArgumentParser(prog=f"sqdr {subcommand}", add_help=False)
    model.add_class_arguments(SQDRCNN, "model.net.init_args")
    section = model.format_help().split("\n\n", 1)[-1]  # drop the usage block
    return f"{text.getvalue()}\nThe network (with --model.net.class_path sqdr.SQDRCNN, the default in conf/):\n{section}"


def show_help(subcommand: str) -> None:
    """Print the help text, from the cache when it is current; a cache that cannot be written is only slower."""
    path = cache_dir() / f"{subcommand}-{fingerprint(subcommand)}.txt"
    if path.is_file():
        print(path.read_text(), end="")
        return
    text = render(subcommand)
    with contextlib.suppress(OSError):
        from sqdr.files import write_text

        for stale in path.parent.glob(f"{subcommand}-*.txt"):
            stale.unlink()
        write_text(path, text)
    print(text, end="")
