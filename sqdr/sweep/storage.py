"""Where a study lives: SQLite, a journal file or PostgreSQL, and the lock that keeps N workers within budget.

Optuna's own storages do the work; this module only picks one from a URL, gives SQL databases heartbeats, turns
connection failures into one sentence, never shows a password (:func:`masked`), and checks a journal file before
Optuna reads or appends to it (:func:`check_journal`).
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import shutil
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from sqdr.errors import UserError

StorageKind = Literal["sqlite", "journal", "postgresql"]
#: Called with ``(study, trial)`` when a trial's worker stopped sending heartbeats (see ``RDBStorage``).
StaleTrialCallback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


def storage_kind(url: str) -> StorageKind:
    if url.startswith("journal:"):
        return "journal"
    if url.startswith("sqlite:///"):
        return "sqlite"
    if url.startswith(("postgresql://", "postgresql+")):
        return "postgresql"
    raise UserError(
        f"storage {masked(url)!r} is not supported; use sqlite:///FILE, journal:FILE or postgresql://USER@HOST/DB."
    )


def masked(url: str) -> str:
    """``url`` with its password shown as ``***``: safe for status lines, error messages and stored attributes."""
    if "://" not in url:
        return url  # journal:FILE has no credentials
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        # Not parseable as a URL, so its parts are unknown: keep only the scheme.
        return url.split("://", 1)[0] + "://***"


def scrubbed(text: str, url: str) -> str:
    """``text`` (a driver's error message, say) with the password of ``url`` replaced by ``***``."""
    try:
        password = make_url(url).password if "://" in url else None
    except ArgumentError:
        password = None
    return text.replace(str(password), "***") if password else text


def local_file(url: str) -> Path:
    """The file behind a SQLite URL or a ``journal:`` path."""
    return Path(url.removeprefix("journal:") if url.startswith("journal:") else url.removeprefix("sqlite:///"))


def sql_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 to SQLAlchemy 2.1; use psycopg2 (our dependency) when psycopg is absent."""
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def open_storage(
    url: str,
    *,
    heartbeat_interval: int = 10,
    grace_period: int = 60,
    stale_trial_callback: StaleTrialCallback | None = None,
) -> optuna.storages.BaseStorage:
    """Journal files get a plain ``JournalStorage`` (Optuna has no heartbeat for them); SQL databases get
    heartbeats, so a trial whose worker died is failed after ``grace_period`` seconds and handed to
    ``stale_trial_callback``."""
    kind = storage_kind(url)
    if kind != "postgresql":
        local_file(url).parent.mkdir(parents=True, exist_ok=True)
    if kind == "journal":
        path = local_file(url)
        check_journal(path)
        return JournalStorage(JournalFileBackend(str(path)))
    try:
        return RDBStorage(
            sql_url(url),
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=stale_trial_callback,
        )
    except (ImportError, SQLAlchemyError) as exc:
        reason = str(exc.__cause__ or exc).strip().splitlines()[0]
        raise UserError(f"cannot open storage {masked(url)}: {scrubbed(reason, url)}") from None


def check_journal(path: Path) -> None:
    """Make a journal file safe to read and append to, or refuse it with the way to fix it.

    A process killed while appending leaves its last record cut short. Optuna skips such a last line when
    reading, but the next append would be written onto it, and from then on no one could read the study. So a
    damaged last line is cut off (a copy of the file is kept beside it as ``<file>.torn-<time>``); it holds
    nothing any reader has seen. A damaged line with records after it cannot come from an interrupted append,
    and dropping it might lose trials, so that is a :class:`UserError` naming the line.
    """
    if _journal_damage(path) is None:
        return
    # Optuna's appends hold this lock (its default) from the first byte to the fsync: with it held, a cut-short
    # last line was left by a dead writer, not one still writing.
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        damage = _journal_damage(path)
        if damage is None:
            return
        keep, size = damage
        stamp, number = time.strftime("%Y%m%d-%H%M%S"), 0
        backup = path.with_name(f"{path.name}.torn-{stamp}")
        while backup.exists():
            number += 1
            backup = path.with_name(f"{path.name}.torn-{stamp}.{number}")
        shutil.copy2(path, backup)
        with open(path, "r+b") as file:
            file.truncate(keep)
            file.flush()
            os.fsync(file.fileno())
    finally:
        lock.release()
    print(
        f"{path}: removed a last record cut short by an interrupted write ({size - keep} bytes); "
        f"the original file is kept as {backup}",
        flush=True,
    )


def _journal_damage(path: Path) -> tuple[int, int] | None:
    """``(bytes to keep, file size)`` when the last line of ``path`` is damaged, None when the file is sound.

    Raises :class:`UserError` for a damaged line that has records after it.
    """
    if not path.is_file():
        return None
    data = path.read_bytes()
    *lines, tail = data.split(b"\n")  # tail: whatever follows the last newline, nothing in a sound file
    keep = 0
    for number, line in enumerate(lines, start=1):
        if not _is_record(line):
            if number < len(lines) or tail:
                raise UserError(
                    f"journal {path}: line {number} is damaged (not a complete JSON record) and records follow it, "
                    f"so the study cannot be read; restore the file from a backup, or delete line {number} (losing "
                    "that one record) and run again."
                )
            return keep, len(data)
        keep += len(line) + 1
    return (keep, len(data)) if tail else None


def _is_record(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return False


class BudgetLock:
    """A study-wide mutex around "count the trials, then ask for one", so N workers never overshoot ``n_trials``.

    File lock (``fcntl``) beside SQLite and journal files, session advisory lock in PostgreSQL; both vanish with
    a killed process, so a dead worker never blocks the others.
    """

    def __init__(self, url: str, study_name: str) -> None:
        self.url = url
        self.key = zlib.crc32(study_name.encode())
        self._held: Any = None
        self._engine: Any = None

    def acquire(self) -> None:
        if storage_kind(self.url) == "postgresql":
            import sqlalchemy

            if self._engine is None:
                self._engine = sqlalchemy.create_engine(sql_url(self.url), poolclass=sqlalchemy.pool.NullPool)
            connection = self._engine.connect()
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": self.key})
            self._held = connection
        else:
            handle = open(f"{local_file(self.url)}.sweep-lock", "a")
            fcntl.flock(handle, fcntl.LOCK_EX)
            self._held = handle

    def release(self) -> None:
        """Idempotent: a trial releases the lock once it has its parameters; the worker loop releases it again."""
        held, self._held = self._held, None
        if held is None:
            return
        if storage_kind(self.url) == "postgresql":
            import sqlalchemy

            held.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
            held.close()
        else:
            fcntl.flock(held, fcntl.LOCK_UN)
            held.close()
