"""The one way a user mistake ends: ``error: <what is wrong and how to fix it>`` on stderr and exit code 2.

Every sub-command raises :class:`UserError` (or a subclass) for problems the user can fix; the dispatcher in
:mod:`sqdr.__main__` turns it into that message. ``SQDR_DEBUG=1`` (or ``sqdr --debug ...``) shows the traceback.
"""

from __future__ import annotations

import os
import sys

#: The exit code of a user mistake (argparse and jsonargparse use the same for bad options).
USAGE_EXIT_CODE = 2


class UserError(Exception):
    """A problem the user can fix: the message names what is wrong and how to fix it, in one or two sentences."""


def debug_enabled() -> bool:
    return bool(os.environ.get("SQDR_DEBUG"))


def exit_with(error: BaseException) -> None:
    """Print ``error`` as one short message and exit with :data:`USAGE_EXIT_CODE` (or re-raise in debug mode)."""
    if debug_enabled():
        raise error
    print(f"error: {error}\n(set SQDR_DEBUG=1 to see the traceback)", file=sys.stderr)
    raise SystemExit(USAGE_EXIT_CODE) from None
