"""Callbacks every ``sqdr fit`` run gets: numerical health, throughput, one line per epoch, predictions as CSV."""

from __future__ import annotations

import math
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from sqdr.errors import UserError
from sqdr.files import atomic_write


class DivergenceError(UserError):
    """Training produced a non-finite loss or gradient."""


class NumericalHealth(L.Callback):
    """Stops a run at the first non-finite loss or gradient, before the optimiser applies it.

    Nothing is saved from the bad state: the exception ends the fit before any checkpoint hook runs. Also
    logs each part's gradient norm (``grad_norm/encoder`` ...) every ``log_every_n_steps``, so vanishing
    circuit gradients (barren plateaus) or exploding encoder gradients are visible in the metrics.
    """

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            raise DivergenceError(
                f"the training loss became {float(loss)} at step {trainer.global_step} (epoch {trainer.current_epoch}); "
                "the learning rate is probably too large: lower --model.lr / --model.circuit_lr. "
                "No checkpoint was written from this state."
            )

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        norms = {part: _gradient_norm(getattr(pl_module.net, part)) for part in pl_module.net.PARTS}
        bad = [part for part, norm in norms.items() if not math.isfinite(norm)]
        if bad:
            raise DivergenceError(
                f"the {' and '.join(bad)} gradients became non-finite at step {trainer.global_step} "
                f"(epoch {trainer.current_epoch}); the learning rate is probably too large: lower --model.lr / "
                "--model.circuit_lr. No checkpoint was written from this state."
            )
        if trainer.global_step % max(1, trainer.log_every_n_steps) == 0:
            pl_module.log_dict({f"grad_norm/{part}": norm for part, norm in norms.items()}, on_step=True, on_epoch=False)


def _gradient_norm(module: torch.nn.Module) -> float:
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0


class Throughput(L.Callback):
    """Training images per second over the last ``log_every_n_steps`` batches, in the progress bar and the logs.

    Lightning's ``ThroughputMonitor`` reports to loggers only (and is built around FLOP counts); a user
    watching a run wants the figure live in the progress bar, which needs ``pl_module.log(prog_bar=True)``.
    """

    def __init__(self) -> None:
        self._images = 0
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._images, self._start = 0, time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._images += len(batch[0])
        elapsed = time.perf_counter() - self._start
        if (batch_idx + 1) % max(1, trainer.log_every_n_steps) == 0 and elapsed > 0:
            pl_module.log("train/images_per_s", self._images / elapsed, on_step=True, on_epoch=False, prog_bar=True)
            self._images, self._start = 0, time.perf_counter()


class EpochLine(L.Callback):
    """One line per epoch for non-interactive runs (CI logs, batch jobs), where a progress bar is noise."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith(("train/", "val/")) and not k.endswith("_running")
        }
        shown = "  ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
        print(f"epoch {trainer.current_epoch}: {shown}", flush=True)


class PredictionCSV(BasePredictionWriter):
    """``sqdr predict`` writes ``predictions.csv`` in the run directory: index, label, prediction, probabilities."""

    def __init__(self) -> None:
        super().__init__(write_interval="epoch")
        self.path: Path | None = None

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        import pandas as pd

        dataset = trainer.predict_dataloaders.dataset
        probabilities = torch.cat([p["probabilities"] for p in predictions]).float()
        table = pd.DataFrame(probabilities.numpy(), columns=[f"p_{k}" for k in range(probabilities.shape[1])])
        table.insert(0, "prediction", torch.cat([p["predictions"] for p in predictions]).numpy())
        table.insert(0, "label", [int(dataset[i][1]) for i in range(len(dataset))])
        table.insert(0, "index", range(len(table)))
        self.path = Path(trainer.log_dir or ".") / "predictions.csv"
        atomic_write(self.path, lambda file: table.to_csv(file, index=False, float_format="%.6g"))


def default_callbacks(interactive: bool) -> list[L.Callback]:
    """What every run gets besides its checkpoint callback."""
    callbacks: list[L.Callback] = [NumericalHealth(), Throughput(), PredictionCSV()]
    return callbacks if interactive else [*callbacks, EpochLine()]

