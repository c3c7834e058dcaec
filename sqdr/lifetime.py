"""Worker processes that end with the command that started them, configured as it is.

``sqdr reproduce`` and ``sqdr sweep --workers N`` train in child processes. A parent stopped by a signal it cannot
catch (SIGKILL, the out-of-memory killer) runs no cleanup, and its children would go on training unseen, holding
the cores. Each child therefore watches its parent and exits when the parent is gone: Linux hands an orphan to
another process, so the parent pid a child sees changes. What the child had written stays: finished runs and
study trials are kept, and a trial cut short is failed by the study's heartbeat and retried when the sweep resumes.

:func:`exit_with_parent` is the initializer of the worker pools: it runs in a spawned worker before its first task
imports torch, so it also configures the worker as the command is configured (:func:`sqdr.runtime.configure`).
"""

from __future__ import annotations

import os
import threading
import time

from sqdr.runtime import configure


def exit_with_parent(parent: int, poll_seconds: float = 1.0) -> None:
    """Start a daemon thread that ends this process (``os._exit(1)``) once process ``parent`` is no longer its parent.

    The parent passes its pid: a child that read ``os.getppid()`` only after a slow start (imports take seconds)
    could already see the process it was handed to, and would then never exit. The process is configured first
    (a no-op where it already was).
    """
    configure()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()
