"""The run-directory layout, in one place: where runs, their configs and their checkpoints live.

``sqdr fit`` writes ``<runs_dir>/<experiment>/version_N/`` holding ``config.yaml``, ``metrics.csv``,
``hparams.yaml`` and ``checkpoints/`` (``best-epoch=K.ckpt`` by ``val/acc`` and ``last.ckpt``); a new run creates
its ``version_N`` as it starts (:func:`claim_run_dir`), so no two runs ever share one. Commands that
read runs back (``sqdr noise``, resuming with ``--ckpt_path last``) ask this module instead of guessing from
file names or modification times: which checkpoint is the best one is recorded by Lightning's
``ModelCheckpoint`` inside every checkpoint it writes, and copies or ``touch`` change times but not that record.

A checkpoint path handed out here has been read and found to be a Lightning checkpoint, so a damaged or foreign
file fails with a :class:`~sqdr.errors.UserError` naming it, not with a traceback deep inside Lightning.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import yaml

from sqdr.errors import UserError

CHECKPOINTS = "checkpoints"
LAST = "last.ckpt"
CONFIG = "config.yaml"
VERSION_PREFIX = "version_"


def run_dirs(experiment_dir: str | Path) -> list[Path]:
    """The ``version_N`` run directories of an experiment, oldest first (by ``N``, so ``version_10`` is newest)."""
    runs = [
        path for path in Path(experiment_dir).glob(f"{VERSION_PREFIX}*")
        if path.is_dir() and path.name.removeprefix(VERSION_PREFIX).isdigit()
    ]
    return sorted(runs, key=lambda path: int(path.name.removeprefix(VERSION_PREFIX)))


def claim_run_dir(experiment_dir: str | Path) -> Path:
    """Create and return the next ``version_N`` of an experiment, never one another process has taken.

    The folder is created with ``os.mkdir``, which fails when it exists, so runs started at the same moment each
    get their own directory instead of sharing one ``version_N`` (and one interleaved ``metrics.csv``).
    """
    experiment_dir = Path(experiment_dir)
    experiment_dir.mkdir(parents=True, exist_ok=True)
    existing = run_dirs(experiment_dir)
    number = int(existing[-1].name.removeprefix(VERSION_PREFIX)) + 1 if existing else 0
    while True:
        path = experiment_dir / f"{VERSION_PREFIX}{number}"
        try:
            os.mkdir(path)
        except FileExistsError:
            number += 1  # taken since we looked (or a file of that name): the next one
            continue
        return path


def is_run_dir(path: Path) -> bool:
    """A directory ``sqdr fit`` (or ``sqdr test``) wrote, as opposed to an experiment folder holding several."""
    return (path / CHECKPOINTS).is_dir() or (path / CONFIG).is_file()


def has_checkpoint(run_dir: Path) -> bool:
    """Whether the run saved at least one checkpoint (a run still in its first epoch, or a test run, has none)."""
    return any((run_dir / CHECKPOINTS).glob("*.ckpt"))


def run_dir_of(checkpoint: str | Path) -> Path:
    """The run directory a checkpoint belongs to: the parent of its ``checkpoints/`` folder, else its own folder."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINTS else checkpoint.parent


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The contents of a Lightning checkpoint file, loaded as plain tensors and values only (no code runs).

    Raises :class:`UserError` for a missing, unreadable or non-Lightning file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"checkpoint {path} does not exist; pass a .ckpt file, a run directory or an experiment directory "
            "written by `sqdr fit`."
        )
    try:
        contents = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch raises many types for bad files (zip, pickle, EOF, I/O); all mean "not usable"
        raise UserError(
            f"checkpoint {path} cannot be read (it is damaged, truncated or not a PyTorch checkpoint); "
            "pass a .ckpt file written by `sqdr fit`."
        ) from None
    if not isinstance(contents, dict) or not isinstance(contents.get("state_dict"), dict):
        raise UserError(
            f"{path} is not a Lightning checkpoint (it holds no state_dict); pass a .ckpt file written by `sqdr fit`."
        )
    return contents


def recorded_best(last: dict[str, Any], run_dir: Path) -> Path | None:
    """The best checkpoint as ``ModelCheckpoint`` recorded it in ``last``, looked up by name in ``run_dir``.

    Only the file name is used: the recorded path is the one at training time, which is stale once a run
    directory is moved or read from another working directory.
    """
    for key, state in (last.get("callbacks") or {}).items():
        if str(key).startswith("ModelCheckpoint") and isinstance(state, dict) and state.get("best_model_path"):
            best = run_dir / CHECKPOINTS / Path(state["best_model_path"]).name
            if best.is_file():
                return best
    return None


def best_checkpoint(run_dir: str | Path) -> Path:
    """The best checkpoint of one run as recorded in its ``last.ckpt``, else ``last.ckpt`` itself.

    Without ``last.ckpt`` a single checkpoint file is taken as it is; several leave the choice to the user.
    """
    run_dir = Path(run_dir)
    last = run_dir / CHECKPOINTS / LAST
    if last.is_file():
        best = recorded_best(read_checkpoint(last), run_dir)
        if best is None:
            return last
        read_checkpoint(best)
        return best
    checkpoints = sorted((run_dir / CHECKPOINTS).glob("*.ckpt"))
    if not checkpoints:
        raise UserError(
            f"run directory {run_dir} has no checkpoints/*.ckpt; train it with `sqdr fit` or pass a .ckpt file."
        )
    if len(checkpoints) > 1:
        names = ", ".join(path.name for path in checkpoints)
        raise UserError(
            f"run directory {run_dir} has several checkpoints ({names}) and no {LAST} recording the best one; "
            "pass one of them as a file."
        )
    read_checkpoint(checkpoints[0])
    return checkpoints[0]


def find_checkpoint(path: str | Path) -> Path:
    """The checkpoint a user means by ``path``, checked to be a readable Lightning checkpoint.

    ``path`` may be a ``.ckpt`` file; a run directory (its best checkpoint, see :func:`best_checkpoint`); or an
    experiment directory (the best checkpoint of its newest ``version_*`` that has any checkpoint, so a run
    still in progress or a ``sqdr test`` run without checkpoints does not hide the finished ones).
    """
    path = Path(path)
    if not path.is_dir():
        read_checkpoint(path)
        return path
    if is_run_dir(path):
        return best_checkpoint(path)
    for run_dir in reversed(run_dirs(path)):
        if has_checkpoint(run_dir):
            return best_checkpoint(run_dir)
    raise UserError(
        f"no checkpoint under {path} (looked for checkpoints/*.ckpt and version_*/checkpoints/*.ckpt); "
        "train first with `sqdr fit` or pass a .ckpt file."
    )


def resumable_checkpoint(experiment_dir: str | Path) -> Path | None:
    """The ``last.ckpt`` to resume an experiment from: that of its newest ``version_*`` having one, or None.

    Versions without ``last.ckpt`` (a ``sqdr test`` run, a run that failed before its first epoch ended) are
    skipped, so resuming continues the newest run that actually trained.
    """
    for run_dir in reversed(run_dirs(experiment_dir)):
        last = run_dir / CHECKPOINTS / LAST
        if last.is_file():
            read_checkpoint(last)
            return last
    return None


def load_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The ``config.yaml`` ``sqdr fit`` saved in ``run_dir``: the exact model, data and trainer of that run."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise UserError(
            f"{path} not found; pass a checkpoint inside a run directory written by `sqdr fit` "
            f"(<run>/{CHECKPOINTS}/*.ckpt beside <run>/{CONFIG})."
        )
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise UserError(
            f"{path} is not valid YAML ({type(error).__name__}); restore the file `sqdr fit` wrote."
        ) from None
    if not isinstance(config, dict):
        raise UserError(f"{path} is not a mapping of options; restore the file `sqdr fit` wrote.")
    return config
