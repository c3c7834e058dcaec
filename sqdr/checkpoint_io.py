"""Checkpoints are complete or absent: each is written to ``<path>.tmp`` beside its final name, then renamed.

Lightning's own save stages a local file in the system's temporary folder and moves it into place, which is a
copy when that folder is on another file system: a disk that fills up during the copy leaves a cut-off
``best-epoch=K.ckpt`` that a later ``--ckpt_path`` or report takes for a checkpoint. A rename within one folder
is atomic, so here the final name only ever holds a whole file.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO
from typing_extensions import override


class AtomicCheckpointIO(TorchCheckpointIO):
    """:class:`TorchCheckpointIO` that writes local checkpoints atomically (remote ones as Lightning does)."""

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        get_filesystem(path).makedirs(os.path.dirname(path) or ".", exist_ok=True)
        temporary = f"{path}.tmp"
        try:
            # A Python file object: a full disk raises OSError(ENOSPC), where torch's own writer gives a RuntimeError.
            with open(temporary, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())  # the data is on disk before the name points at it
            os.replace(temporary, path)
        except BaseException as error:
            with contextlib.suppress(OSError):
                os.remove(temporary)
            if isinstance(error, OSError) and error.filename is None:  # a failed write names no file: name it
                raise OSError(error.errno, error.strerror, str(path)) from error
            raise
