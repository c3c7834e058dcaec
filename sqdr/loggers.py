"""Where a run's metrics go: a CSV file always (``metrics.csv`` in the run directory), W&B when asked."""

from __future__ import annotations

import contextlib
import csv
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only

from sqdr.runs import VERSION_PREFIX, claim_run_dir


def wandb_mode() -> str:
    """``WANDB_MODE`` if set, else ``offline``: runs never need an account or a network, and
    ``make wandb-sync`` uploads them later (set ``WANDB_MODE=online`` after ``wandb login`` to stream live)."""
    return os.environ.get("WANDB_MODE") or "offline"


class RunCSVLogger(CSVLogger):
    """``CSVLogger`` that claims a run directory of its own and keeps a resumed run's history in its ``metrics.csv``.

    Without a ``version``, the next ``version_N`` is created on the spot (:func:`~sqdr.runs.claim_run_dir`):
    Lightning only lists the folders, so runs started together would all pick the same one.

    Lightning's CSV writer starts a fresh file. When a run resumes from a checkpoint taken at global step
    ``resume_step``, the rows logged before that step are carried over and the rows after it (logged by the
    interrupted attempt, and about to be logged again) are dropped, so the file has no duplicated rows. The
    history is never only in memory: ``metrics.csv`` is renamed to ``metrics.csv.resumed`` before the writer
    starts, and removed once the new file holds its rows; a run killed in between reads the renamed file again.
    """

    def __init__(self, *args: Any, resume_step: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._resume_step = resume_step
        self._claimed: Path | None = None

    def _get_next_version(self) -> int:
        # Only rank zero writes the run; other processes of a multi-process run must not claim directories.
        if rank_zero_only.rank != 0:
            return super()._get_next_version()
        self._claimed = claim_run_dir(self.root_dir)
        return int(self._claimed.name.removeprefix(VERSION_PREFIX))

    def finalize(self, status: str) -> None:
        """A run that failed before writing anything (missing data, say) leaves no empty ``version_N`` behind."""
        super().finalize(status)
        if status == "failed" and self._claimed is not None:
            with contextlib.suppress(OSError):  # not empty: the run wrote something, which stays
                self._claimed.rmdir()

    @property
    def experiment(self):
        if self._experiment is None:
            kept = self._keep_history()  # moved aside before the writer starts a fresh file
            experiment = CSVLogger.experiment.fget(self)
            if kept is not None:
                for row in self._history(kept):
                    step = int(float(row.pop("step")))
                    experiment.log_metrics({k: _number(v) for k, v in row.items() if v != ""}, step)
                experiment.save()
                kept.unlink()
            return experiment
        return self._experiment

    def _keep_history(self) -> Path | None:
        """The resumed run's history, renamed so that no writer deletes it (None for a new run)."""
        current = Path(self.log_dir) / "metrics.csv"
        kept = current.with_name("metrics.csv.resumed")
        if self._resume_step is None:
            return None
        if current.is_file():  # newer than a kept file left by an attempt killed after writing it
            os.replace(current, kept)
        return kept if kept.is_file() else None

    def _history(self, path: Path) -> list[dict[str, str]]:
        with path.open(newline="") as file:
            rows = list(csv.DictReader(file))
        return [row for row in rows if int(float(row["step"])) < self._resume_step]


def _number(text: str) -> int | float:
    """A CSV cell as it was logged: ``epoch`` stays ``3``, not ``3.0``."""
    return int(text) if text.lstrip("-").isdigit() else float(text)
