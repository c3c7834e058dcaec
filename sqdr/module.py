"""``SQDRModule``: training, evaluation and bookkeeping of an :class:`~sqdr.SQDRCNN` in Lightning."""

from __future__ import annotations

import warnings
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal

import lightning as L
import torch
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from sqdr.models import SQDRCNN

Optimizer = Literal["adam", "adamw", "sgd"]
Scheduler = Literal["none", "cosine", "step"]
CertifyEngine = Literal["auto", "none", "lightning", "default.qubit", "default.mixed"]

# Under LightningCLI `net` is saved as its config (and reloaded from it); Lightning still warns on reload.
warnings.filterwarnings("ignore", message="Attribute 'net' is an instance of `nn.Module`")

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


class SQDRModule(L.LightningModule):
    """Trains an SQDR-CNN end to end and certifies the trained model on a PennyLane device.

    Args:
        net: the network (its configuration is part of the run's config).
        optimizer: ``adam``, ``adamw`` or ``sgd``.
        lr: learning rate of the classical parts (encoder and head).
        circuit_lr: learning rate of the circuit's angles (defaults to ``lr``); quantum angles often want
            a larger rate than convolution weights.
        weight_decay: applied to the classical parts only (decaying rotation angles towards 0 has no meaning).
        momentum: SGD momentum.
        scheduler: ``none``, ``cosine`` (over ``max_epochs``) or ``step`` (``step_size``, ``gamma``).
        certify_engine: engine that re-scores the trained model on the test set: ``auto`` picks
            ``lightning`` (or ``default.mixed`` for a noisy model); ``none`` turns certification off.
        certify_samples: how many test samples to certify (the first N, or ``all``); ``auto`` takes 128 on a
            state-vector engine and 8 on ``default.mixed``, which needs seconds per sample at 9 qubits.
    """

    def __init__(
        self,
        net: SQDRCNN,
        optimizer: Optimizer = "adam",
        lr: float = 1e-3,
        circuit_lr: float | None = None,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        scheduler: Scheduler = "none",
        step_size: int = 10,
        gamma: float = 0.1,
        certify_engine: CertifyEngine = "auto",
        certify_samples: int | Literal["auto", "all"] = "auto",
    ) -> None:
        super().__init__()
        if net.circuit.spec.noise is not None and certify_engine in ("lightning", "default.qubit"):
            raise ValueError(
                f"A noisy model cannot be certified on the pure-state engine {certify_engine!r}; "
                "use certify_engine 'auto' or 'default.mixed'."
            )
        self.save_hyperparameters()  # under LightningCLI, `net` is saved as its config, so checkpoints reload alone
        self.net = net
        self.criterion = nn.CrossEntropyLoss()
        num_classes = net.num_classes
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.certified_acc = MulticlassAccuracy(num_classes, average="micro")
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.val_acc_best = MaxMetric()
        self.certify_gap = MaxMetric()
        self._certified = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def model_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, labels = batch
        logits = self(images)
        return self.criterion(logits, labels), logits.argmax(1), labels

    # -- bookkeeping -------------------------------------------------------------------------------
    def run_summary(self) -> dict[str, Any]:
        """What every run records beside its metrics: engine, noise, parameter counts and versions."""
        circuit = self.net.circuit
        return {
            "engine": circuit.engine.name,
            "noise": circuit.spec.noise.to_dict() if circuit.spec.noise else None,
            "params": self.net.parameter_counts(),
            "versions": package_versions(),
        }

    def on_fit_start(self) -> None:
        summary = self.run_summary()
        for logger in self.loggers:
            logger.log_hyperparams(summary)
            logger.log_metrics({f"params/{k}": v for k, v in summary["params"].items()}, step=0)

    # -- training ----------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        # Sanity-check validation must not count towards the best accuracy.
        self.val_loss.reset()
        self.val_acc.reset()
        self.val_acc_best.reset()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss, preds, labels = self.model_step(batch)
        self.train_loss(loss)
        self.train_acc(preds, labels)
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
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

    # -- testing and certification -----------------------------------------------------------------
    def _resolved_certify_engine(self) -> str | None:
        engine = self.hparams.certify_engine
        if engine == "none" or engine == self.net.circuit.engine.name:
            return None
        if engine == "auto":
            return "default.mixed" if self.net.circuit.spec.noise else "lightning"
        return engine

    def on_test_epoch_start(self) -> None:
        self._certified = 0

    def test_step(self, batch, batch_idx: int) -> None:
        loss, preds, labels = self.model_step(batch)
        self.test_loss(loss)
        self.test_acc(preds, labels)
        self.log("test/loss", self.test_loss, on_step=False, on_epoch=True)
        self.log("test/acc", self.test_acc, on_step=False, on_epoch=True, prog_bar=True)
        self._certify(batch)

    def _certify(self, batch) -> None:
        """Re-score the first ``certify_samples`` test samples with a PennyLane engine and log the agreement."""
        engine = self._resolved_certify_engine()
        limit = self.hparams.certify_samples
        if limit == "auto":
            limit = 8 if engine == "default.mixed" else 128
        remaining = len(batch[0]) if limit == "all" else limit - self._certified
        if engine is None or remaining <= 0:
            return
        images, labels = batch[0][:remaining], batch[1][:remaining]
        net, circuit = self.net, self.net.circuit
        fast_engine = circuit.engine
        logits = []
        try:
            with torch.no_grad():
                # One set of encoder features for both engines (rate coding is random), and exact expectations
                # on both sides: certification compares the circuits' functions, not spike or shot noise.
                features = net.encode(images)
                for name in (fast_engine.name, engine):
                    circuit.set_engine(name)
                    logits.append(net.classify(features))
        finally:
            circuit.engine = fast_engine
        fast_logits, reference_logits = logits
        self._certified += len(images)
        self.certified_acc(reference_logits.argmax(1), labels)
        self.certify_gap((reference_logits - fast_logits).abs().max())
        self.log(f"test/acc_{engine}", self.certified_acc, on_step=False, on_epoch=True)
        self.log(f"test/max_logit_diff_{engine}", self.certify_gap, on_step=False, on_epoch=True)

    def on_test_epoch_end(self) -> None:
        for name, value in self.net.parameter_counts().items():
            self.log(f"params/{name}", float(value))

    def predict_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        probabilities = self(images).softmax(1)
        return {"probabilities": probabilities, "predictions": probabilities.argmax(1)}

    # -- optimisation ------------------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        circuit_params = list(self.net.circuit.parameters())
        circuit_ids = {id(p) for p in circuit_params}
        classical = [p for p in self.parameters() if id(p) not in circuit_ids]
        groups = [
            {"params": classical, "lr": hp.lr, "weight_decay": hp.weight_decay},
            {"params": circuit_params, "lr": hp.circuit_lr or hp.lr, "weight_decay": 0.0},
        ]
        if hp.optimizer == "adam":
            optimizer = torch.optim.Adam(groups)
        elif hp.optimizer == "adamw":
            optimizer = torch.optim.AdamW(groups)
        else:
            optimizer = torch.optim.SGD(groups, momentum=hp.momentum)
        if hp.scheduler == "none":
            return optimizer
        if hp.scheduler == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, self.trainer.max_epochs))
        else:
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=hp.step_size, gamma=hp.gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
