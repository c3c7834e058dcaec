"""``SQDRModule``: training, evaluation and bookkeeping of an :class:`~sqdr.SQDRCNN` in Lightning."""

from __future__ import annotations

import math
import random
import warnings
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from jsonargparse.typing import NonNegativeFloat
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from sqdr.certify import Certification, CertifyEngine
from sqdr.errors import UserError
from sqdr.models import SQDRCNN, threads
from sqdr.runs import find_checkpoint, read_checkpoint

RECORDED_PACKAGES = ("sqdr", "torch", "lightning", "snntorch", "pennylane", "pennylane_lightning", "torchmetrics")


def package_versions() -> dict[str, str]:
    """Versions of the packages that determine a run's numbers, recorded with every run."""
    versions = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def rng_states() -> dict[str, Any]:
    """Every random generator a training step draws from (shuffling, rate coding, flips, shots).

    As tensors and plain numbers only, so checkpoints still load with ``torch.load(weights_only=True)``.
    """
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss),
        "python": random.getstate(),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    kind, keys, position, has_gauss, gauss = states["numpy"]
    torch.set_rng_state(states["torch"])
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    random.setstate(states["python"])


def batches_done_within_epoch(checkpoint: dict[str, Any]) -> int:
    """For a checkpoint taken mid-epoch, the training batches that epoch had done (0 for an end-of-epoch one).

    Checkpoints are written in ``on_train_batch_end``, when the batch counts as processed but not yet completed;
    Lightning resumes after it, so ``processed`` is the number of batches to leave out.
    """
    loop = checkpoint.get("loops", {}).get("fit_loop", {})
    epoch = loop.get("epoch_progress", {}).get("current", {})
    if epoch.get("processed", 0) >= epoch.get("ready", 0):
        return 0
    return int(loop.get("epoch_loop.batch_progress", {}).get("current", {}).get("processed", 0))


class SQDRModule(L.LightningModule):
    """Trains an SQDR-CNN end to end and certifies the trained model on a PennyLane device.

    Args:
        net: the network (its configuration is part of the run's config).
        optimizer: the optimiser class and its options (``torch.optim.Adam`` by default); the learning rates
            come from ``lr`` and ``circuit_lr``, which set its two parameter groups.
        lr: learning rate of the classical parts (encoder and head).
        circuit_lr: learning rate of the circuit's angles (defaults to ``lr``); quantum angles often want
            a larger rate than convolution weights.
        weight_decay: applied to the classical parts only (decaying rotation angles towards 0 has no meaning).
        scheduler: a learning-rate scheduler class and its options (none by default), stepped as
            ``scheduler_interval`` says, e.g. ``{class_path: torch.optim.lr_scheduler.CosineAnnealingLR,
            init_args: {T_max: 15}}``.
        scheduler_interval: ``epoch`` steps the scheduler once per epoch, ``step`` after every optimiser step
            (what schedules counted in steps need, e.g. ``torch.optim.lr_scheduler.OneCycleLR`` with ``max_lr``
            ``[lr, circuit_lr]``). A ``total_steps`` left out is the run's length (optimiser steps, or epochs
            for ``epoch``), as the trainer estimates it.
        certify_engine: engine that re-scores the trained model on the test set: ``auto`` picks
            ``lightning`` (or ``default.mixed`` for a noisy model); ``none`` turns certification off.
        certify_samples: how many test samples to certify (the first N, or ``all``); ``auto`` takes 128 on a
            state-vector engine and 8 on ``default.mixed``, which needs seconds per sample at 9 qubits.
            A network without a quantum circuit (``quantum: false``, the classical baselines) is not certified.
        freeze_encoder: keep the encoder's weights and batch-norm statistics fixed and train only what follows
            it: the two-stage training of earlier spiking-quantum networks (SQNN), where the circuit learns on
            the features of a pretrained encoder. Frozen parameters are not counted in ``params/*``.
        freeze_circuit: keep the circuit's angles at their random initial values and train everything else: does
            training the circuit matter, or would any fixed random circuit do as well? Refused for a network
            without a circuit. Frozen angles are not counted in ``params/*``.
        encoder_from: a checkpoint (.ckpt, run directory or experiment directory) whose ``net.encoder`` weights
            initialise this encoder when a new fit starts (a resumed fit keeps its own), e.g. the run of the
            same spiking encoder trained with a classical layer.
    """

    def __init__(
        self,
        net: SQDRCNN,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr: float = 1e-3,
        circuit_lr: float | None = None,
        weight_decay: NonNegativeFloat = 0.0,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        certify_engine: CertifyEngine = "auto",
        certify_samples: int | Literal["auto", "all"] = "auto",
        freeze_encoder: bool = False,
        freeze_circuit: bool = False,
        encoder_from: str | None = None,
    ) -> None:
        super().__init__()
        for name, rate in (("lr", lr), ("circuit_lr", circuit_lr)):
            if rate is not None and not (math.isfinite(rate) and rate > 0):
                raise ValueError(f"{name} must be a positive, finite learning rate, got {rate}.")
        circuit = net.quantum_circuit
        if circuit is None:
            self.certification = Certification("none", certify_samples, None)
        else:
            self.certification = Certification(certify_engine, certify_samples, circuit.spec.noise)
        with warnings.catch_warnings():
            # Under LightningCLI `net` is saved as its config and rebuilt from it; Lightning still warns on reload.
            warnings.filterwarnings("ignore", message="Attribute 'net' is an instance of `nn.Module`")
            self.save_hyperparameters(ignore=["optimizer", "scheduler"])  # callables: LightningCLI saves their config
        self.net = net
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.criterion = nn.CrossEntropyLoss()
        num_classes = net.num_classes
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.val_acc_best = MaxMetric()
        # In checkpoints: a resumed run keeps its best accuracy so far, and an epoch resumed from within averages
        # its training metrics over all of its batches, those before the interruption included.
        for metric in (self.val_acc_best, self.train_acc, self.train_loss):
            metric.persistent(True)
        self._resumed_within_epoch = False
        self._resumed_rng: dict[str, Any] | None = None
        self._epoch_metrics_logged = False
        if freeze_encoder:
            net.encoder.requires_grad_(False)
        if freeze_circuit:
            if circuit is None:
                raise ValueError("freeze_circuit needs a quantum circuit, but this network has a classical map.")
            circuit.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def model_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, labels = batch
        logits = self(images)
        return self.criterion(logits, labels), logits.argmax(1), labels

    def configure_callbacks(self) -> list[L.Callback]:
        """Certification belongs to the model's configuration, so the model brings its callback along."""
        return [self.certification] if self.certification.engine is not None else []

    # -- bookkeeping -------------------------------------------------------------------------------
    def run_summary(self) -> dict[str, Any]:
        """What every run records beside its metrics: engine, noise, parameter counts and versions."""
        circuit = self.net.quantum_circuit
        noise = circuit.spec.noise if circuit is not None else None
        return {
            "engine": circuit.engine.name if circuit is not None else None,
            "noise": noise.to_dict() if noise else None,
            "params": self.net.parameter_counts(),
            "versions": package_versions(),
        }

    def load_encoder(self, source: str) -> None:
        """Copy the ``net.encoder`` weights of the checkpoint ``source`` points to into this encoder."""
        checkpoint = find_checkpoint(source)
        prefix = "net.encoder."
        weights = read_checkpoint(checkpoint)["state_dict"]
        state = {key.removeprefix(prefix): value for key, value in weights.items() if key.startswith(prefix)}
        try:
            self.net.encoder.load_state_dict(state)
        except RuntimeError as error:
            raise ValueError(
                f"encoder_from={source!r}: the encoder in {checkpoint} does not fit this model's encoder "
                f"(give both the same encoder options): {str(error).splitlines()[0]}"
            ) from None

    def on_fit_start(self) -> None:
        if self.hparams.encoder_from and self.trainer.ckpt_path is None:
            self.load_encoder(self.hparams.encoder_from)
        summary = self.run_summary()
        for logger in self.loggers:
            logger.log_hyperparams(summary)
            if self.trainer.ckpt_path is None:  # a resumed run has this row already
                logger.log_metrics({f"params/{k}": v for k, v in summary["params"].items()}, step=0)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Random states too: a resumed run then draws the same shuffles, spikes and flips as an uninterrupted one.
        The loggers write out what they hold, so the history on disk reaches the checkpoint's step."""
        checkpoint["rng_states"] = rng_states()
        for logger in self.loggers:
            logger.save()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._resumed_rng = checkpoint.get("rng_states")
        batches_done = batches_done_within_epoch(checkpoint)
        self._resumed_within_epoch = batches_done > 0
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if batches_done and hasattr(datamodule, "resume_within_epoch"):
            datamodule.resume_within_epoch(batches_done)

    # -- training ----------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        # Sanity-check validation must not count towards the best accuracy, nor consume random numbers of a
        # resumed run (rate coding draws spikes in validation too): restore them only now.
        self.val_loss.reset()
        self.val_acc.reset()
        if self._resumed_rng is not None:
            set_rng_states(self._resumed_rng)
            self._resumed_rng = None
        else:
            self.val_acc_best.reset()

    def on_train_epoch_start(self) -> None:
        """A frozen encoder runs in evaluation mode, so its batch-norm statistics stay those it was trained with
        (Lightning puts every module in training mode before this hook and restores modes after validation)."""
        self._epoch_metrics_logged = False
        if not self._resumed_within_epoch:  # a checkpoint from an epoch's end holds that epoch's sums
            self.train_acc.reset()
            self.train_loss.reset()
        self._resumed_within_epoch = False
        if self.hparams.freeze_encoder:
            self.net.encoder.eval()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss, preds, labels = self.model_step(batch)
        self.train_loss.update(loss)
        self.train_acc.update(preds, labels)
        if not self._epoch_metrics_logged:
            # Once an epoch, as metric objects: Lightning computes and resets them at the epoch's end from what
            # every step added. Logged at every step, they made Lightning's bookkeeping a sizeable share of a step.
            self.log("train/loss", self.train_loss, on_step=False, on_epoch=True)
            self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
            self._epoch_metrics_logged = True
        every = self.trainer.log_every_n_steps
        if every and (self.trainer.global_step + 1) % every == 0:
            # The epoch so far: a user sees within seconds whether a run is learning. Only at the steps loggers
            # write (every log_every_n_steps), for the cost of `self.log`.
            self.log("train/loss_running", self.train_loss.compute(), on_step=True, on_epoch=False, prog_bar=True)
            self.log("train/acc_running", self.train_acc.compute(), on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        loss, preds, labels = self.model_step(batch)
        self.val_loss(loss)
        self.val_acc(preds, labels)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)

    # -- testing -----------------------------------------------------------------------------------
    def test_step(self, batch, batch_idx: int) -> None:
        loss, preds, labels = self.model_step(batch)
        self.test_loss(loss)
        self.test_acc(preds, labels)
        self.log("test/loss", self.test_loss, on_step=False, on_epoch=True)
        self.log("test/acc", self.test_acc, on_step=False, on_epoch=True, prog_bar=True)

    def on_test_epoch_end(self) -> None:
        for name, value in self.net.parameter_counts().items():
            self.log(f"params/{name}", float(value))

    def predict_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        probabilities = self(images).softmax(1)
        return {"probabilities": probabilities, "predictions": probabilities.argmax(1)}

    # -- optimisation ------------------------------------------------------------------------------
    def optimizer_step(self, *args, **kwargs) -> None:
        """Lightning's step (its closure runs ``training_step`` and the backward pass) with PyTorch's small operations
        on one thread and the threads given to the heavy ones (:mod:`sqdr.models.threads`). With gradient
        accumulation, the batches between two steps run their closures outside it, on PyTorch's threads as set."""
        with threads.small_operations_serial():
            super().optimizer_step(*args, **kwargs)

    def configure_optimizers(self):
        hp = self.hparams
        circuit = self.net.quantum_circuit
        circuit_params = [p for p in circuit.parameters() if p.requires_grad] if circuit is not None else []
        circuit_ids = {id(p) for p in circuit_params}
        classical = [p for p in self.parameters() if p.requires_grad and id(p) not in circuit_ids]
        optimizer = self.optimizer(
            [
                {"params": classical, "lr": hp.lr, "weight_decay": hp.weight_decay},
                {"params": circuit_params, "lr": hp.circuit_lr or hp.lr, "weight_decay": 0.0},
            ]
        )
        if self.scheduler is None:
            return optimizer
        scheduler = self.scheduler(optimizer, **self._schedule_length())
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": hp.scheduler_interval}}

    def _schedule_length(self) -> dict[str, int]:
        """``total_steps`` for a schedule that takes one (``OneCycleLR``) and was given neither it nor ``epochs``:
        the run's own length, so the schedule ends with the run whatever the data set, its size, the batch, the
        epochs or gradient accumulation. A length given explicitly is kept, and refused before any training if the
        run is longer (the schedule would fail at its last step, after hours of training)."""
        options = getattr(self.scheduler, "keywords", {})
        if "total_steps" not in options or options.get("epochs") is not None:
            return {}
        steps = (
            self.trainer.estimated_stepping_batches if self.hparams.scheduler_interval == "step"
            else self.trainer.max_epochs
        )
        if not (isinstance(steps, (int, float)) and math.isfinite(steps) and steps > 0):
            raise UserError(
                "the learning-rate schedule takes its length from the run, but the run has no fixed length "
                "(max_epochs -1 or max_steps unset); set trainer.max_epochs or the scheduler's total_steps."
            )
        given = options["total_steps"]
        if given is None:
            return {"total_steps": int(steps)}
        if given < steps:
            raise UserError(
                f"model.scheduler.init_args.total_steps is {given}, but the run takes {int(steps)} "
                f"{'optimiser steps' if self.hparams.scheduler_interval == 'step' else 'epochs'}; leave total_steps "
                "out and it follows the run."
            )
        return {}
