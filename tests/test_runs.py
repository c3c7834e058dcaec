"""The run-directory layout: which checkpoint a path means, which one resumes, and clear errors for bad files."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from sqdr.errors import UserError
from sqdr.runs import find_checkpoint, load_run_config, resumable_checkpoint, run_dir_of

CALLBACK_KEY = (
    "ModelCheckpoint{'monitor': 'val/acc', 'mode': 'max', 'every_n_train_steps': 0, 'every_n_epochs': 1, "
    "'train_time_interval': None}"
)


def save_checkpoint(path: Path, best: str | Path | None = None) -> Path:
    """A checkpoint as Lightning writes it: weights, version and ModelCheckpoint's state naming the best file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    callbacks = {CALLBACK_KEY: {"monitor": "val/acc", "best_model_path": str(best or ""),
                                "best_model_score": torch.tensor(0.9), "last_model_path": str(path)}}
    torch.save({"epoch": 3, "pytorch-lightning_version": L.__version__, "state_dict": {"w": torch.zeros(2)},
                "callbacks": callbacks}, path)
    return path


def make_run(run_dir: Path, best_epoch: int | None = 3, last: bool = True) -> Path:
    """``run_dir/checkpoints/`` with ``best-epoch=K.ckpt`` (if any) and ``last.ckpt`` recording it as the best."""
    checkpoints = run_dir / "checkpoints"
    best = checkpoints / f"best-epoch={best_epoch}.ckpt" if best_epoch is not None else None
    if best is not None:
        save_checkpoint(best, best=best)
    if last:
        save_checkpoint(checkpoints / "last.ckpt", best=best)
    return run_dir


def test_a_checkpoint_file_is_taken_as_given(tmp_path):
    checkpoint = save_checkpoint(tmp_path / "model.ckpt")
    assert find_checkpoint(checkpoint) == checkpoint
    assert find_checkpoint(str(checkpoint)) == checkpoint


def test_checkpoint_resolution_prefers_newest_version_then_best_then_last(tmp_path):
    experiment = tmp_path / "quickstart"
    make_run(experiment / "version_0", best_epoch=3)
    make_run(experiment / "version_2", best_epoch=None)
    (experiment / "version_10" / "checkpoints").mkdir(parents=True)
    # version_10 has no checkpoint yet (a run in progress): the newest finished one is version_2
    assert find_checkpoint(experiment) == experiment / "version_2" / "checkpoints" / "last.ckpt"
    assert find_checkpoint(experiment / "version_0") == experiment / "version_0" / "checkpoints" / "best-epoch=3.ckpt"


def test_the_best_checkpoint_is_the_one_recorded_in_last_not_the_newest_file(tmp_path):
    run = make_run(tmp_path / "version_0", best_epoch=3)
    later = save_checkpoint(run / "checkpoints" / "best-epoch=7.ckpt")  # e.g. copied in by hand, newest on disk
    os.utime(later, (2e9, 2e9))
    assert find_checkpoint(run) == run / "checkpoints" / "best-epoch=3.ckpt"


def test_a_moved_run_finds_its_best_checkpoint_by_name(tmp_path):
    run = tmp_path / "moved" / "version_0"
    save_checkpoint(run / "checkpoints" / "best-epoch=2.ckpt")
    save_checkpoint(run / "checkpoints" / "last.ckpt", best="/elsewhere/runs/x/version_0/checkpoints/best-epoch=2.ckpt")
    assert find_checkpoint(run) == run / "checkpoints" / "best-epoch=2.ckpt"


def test_last_is_taken_when_the_recorded_best_is_gone(tmp_path):
    run = make_run(tmp_path / "version_0", best_epoch=3)
    (run / "checkpoints" / "best-epoch=3.ckpt").unlink()
    assert find_checkpoint(run) == run / "checkpoints" / "last.ckpt"


def test_a_single_checkpoint_without_last_is_taken_and_several_are_refused(tmp_path):
    run = make_run(tmp_path / "version_0", best_epoch=1, last=False)
    assert find_checkpoint(run) == run / "checkpoints" / "best-epoch=1.ckpt"
    save_checkpoint(run / "checkpoints" / "best-epoch=4.ckpt")
    with pytest.raises(UserError, match=r"several checkpoints \(best-epoch=1.ckpt, best-epoch=4.ckpt\) and no last"):
        find_checkpoint(run)


@pytest.mark.filterwarnings("ignore:.*LeafSpec")
def test_the_best_checkpoint_of_a_real_lightning_run(tmp_path):
    """Lightning's own files, so the recorded state is read where Lightning really puts it."""

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(1, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).pow(2).mean()

        def validation_step(self, batch, batch_idx):
            self.log("val/acc", [0.2, 0.9, 0.5][self.current_epoch])  # best in epoch 1 of 3

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    run = tmp_path / "quickstart" / "version_0"
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 1)), batch_size=2)
    checkpoint = ModelCheckpoint(run / "checkpoints", monitor="val/acc", mode="max", save_last=True,
                                 filename="best-{epoch}")
    trainer = L.Trainer(max_epochs=3, callbacks=[checkpoint], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(Tiny(), loader, loader)
    assert find_checkpoint(tmp_path / "quickstart") == run / "checkpoints" / "best-epoch=1.ckpt"
    assert resumable_checkpoint(tmp_path / "quickstart") == run / "checkpoints" / "last.ckpt"


def test_resuming_skips_newer_versions_without_last_checkpoint(tmp_path):
    experiment = tmp_path / "quickstart"
    assert resumable_checkpoint(experiment) is None  # nothing trained yet
    make_run(experiment / "version_0")
    (experiment / "version_1").mkdir()  # what `sqdr test` leaves: a config and metrics, no checkpoints
    (experiment / "version_1" / "config.yaml").write_text("data: {}\n")
    make_run(experiment / "version_2", best_epoch=0, last=False)  # stopped before last.ckpt was written
    assert resumable_checkpoint(experiment) == experiment / "version_0" / "checkpoints" / "last.ckpt"


def test_run_dir_of_a_checkpoint():
    assert run_dir_of(Path("runs/q/version_3/checkpoints/last.ckpt")) == Path("runs/q/version_3")
    assert run_dir_of(Path("exported/model.ckpt")) == Path("exported")


class Foreign:
    """An object torch pickles by reference: a file holding it is not plain tensors and values."""


@pytest.mark.parametrize("write, problem", [
    (lambda path: path.write_bytes(b""), "cannot be read"),
    (lambda path: path.write_text("epoch: 3\n"), "cannot be read"),
    (lambda path: path.write_bytes(save_checkpoint(path).read_bytes()[:200]), "cannot be read"),
    (lambda path: torch.save(Foreign(), path), "cannot be read"),
    (lambda path: torch.save(torch.zeros(3), path), "is not a Lightning checkpoint (it holds no state_dict)"),
    (lambda path: torch.save({"model": {"w": torch.zeros(2)}}, path), "is not a Lightning checkpoint"),
], ids=["empty", "text", "truncated", "pickled-object", "tensor", "plain-dict"])
def test_a_bad_checkpoint_file_is_one_sentence_naming_it(write, problem, tmp_path):
    path = tmp_path / "bad.ckpt"
    write(path)
    with pytest.raises(UserError) as error:
        find_checkpoint(path)
    message = str(error.value)
    assert str(path) in message and problem in message and "sqdr fit" in message
    assert "weights_only" not in message and "\n" not in message


def test_a_bad_last_checkpoint_is_reported_for_a_run_and_for_resuming(tmp_path):
    run = make_run(tmp_path / "quickstart" / "version_0")
    (run / "checkpoints" / "last.ckpt").write_bytes(b"\x00" * 64)
    for find in (lambda: find_checkpoint(run), lambda: resumable_checkpoint(tmp_path / "quickstart")):
        with pytest.raises(UserError, match=r"last\.ckpt cannot be read"):
            find()


@pytest.mark.parametrize("path, message", [
    ("nowhere.ckpt", "does not exist; pass a .ckpt file"),
    ("empty_run", "has no checkpoints/*.ckpt; train it with `sqdr fit`"),
    ("no_runs", "no checkpoint under"),
])
def test_paths_without_a_checkpoint_say_what_to_do(path, message, tmp_path):
    (tmp_path / "empty_run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "no_runs").mkdir()
    with pytest.raises(UserError) as error:
        find_checkpoint(tmp_path / path)
    assert message in str(error.value) and str(tmp_path / path) in str(error.value)


def test_run_config_is_read_or_clearly_missing(tmp_path):
    (tmp_path / "config.yaml").write_text("experiment: quickstart\ndata: {class_path: sqdr.data.DigitsDataModule}\n")
    assert load_run_config(tmp_path)["experiment"] == "quickstart"
    with pytest.raises(UserError, match="config.yaml not found"):
        load_run_config(tmp_path / "elsewhere")
    (tmp_path / "config.yaml").write_text("data: [unclosed\n")
    with pytest.raises(UserError, match="is not valid YAML"):
        load_run_config(tmp_path)
