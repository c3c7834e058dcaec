"""Certification: the model trained with a fast engine, re-scored with the circuit on a PennyLane device.

Every test run compares the trained model's logits with those of the same model (the same parameters, shared,
not copied) whose circuit runs on PennyLane's ``lightning.qubit`` (or ``default.mixed`` for a noisy model), so a
reported accuracy is the accuracy of the PennyLane model too. The trained model is never modified.
"""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch

from sqdr.models.noise import NoiseModel

CertifyEngine = Literal["auto", "none", "lightning", "default.qubit", "default.mixed"]


def resolve_engine(engine: CertifyEngine, noise: NoiseModel | None) -> str | None:
    """The engine to certify on: ``auto`` is ``lightning`` for pure models and ``default.mixed`` for noisy ones."""
    if engine == "none":
        return None
    if engine == "auto":
        return "default.mixed" if noise is not None else "lightning"
    if noise is not None and engine in ("lightning", "default.qubit"):
        raise ValueError(
            f"A noisy model cannot be certified on the pure-state engine {engine!r}; "
            "use certify_engine 'auto' or 'default.mixed'."
        )
    return engine


class Certification(L.Callback):
    """Logs ``test/acc_<engine>`` and ``test/max_logit_diff_<engine>`` over the first ``samples`` test images, and
    ``test/acc_certified_subset``, the trained engine's accuracy on those same images, so the two compare.

    ``samples='auto'`` takes 128 on a state-vector engine and 8 on ``default.mixed``, which needs seconds per
    sample at 9 qubits.
    """

    def __init__(self, engine: CertifyEngine, samples: int | Literal["auto", "all"], noise: NoiseModel | None) -> None:
        self.engine = resolve_engine(engine, noise)
        if samples == "auto":
            samples = 8 if self.engine == "default.mixed" else 128
        self.samples = samples
        self._seen = self._correct = self._fast_correct = 0
        self._max_gap = 0.0

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._seen = self._correct = self._fast_correct = 0
        self._max_gap = 0.0

    @torch.no_grad()
    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        remaining = len(batch[0]) if self.samples == "all" else self.samples - self._seen
        if self.engine is None or remaining <= 0:
            return
        images, labels = batch[0][:remaining], batch[1][:remaining]
        net, noise = pl_module.net, pl_module.net.circuit.spec.noise
        if net.circuit.engine.name == self.engine:
            return
        # One set of encoder features for both (rate coding is random), and exact expectations on both sides
        # (no shots): certification compares the circuits' functions, not spike or shot noise.
        features = net.encode(images)
        fast_logits = net.with_engine(net.circuit.engine.name, noise=noise).classify(features)
        reference_logits = net.with_engine(self.engine, noise=noise).classify(features)
        self._seen += len(images)
        self._correct += int((reference_logits.argmax(1) == labels).sum())
        self._fast_correct += int((fast_logits.argmax(1) == labels).sum())
        self._max_gap = max(self._max_gap, float((reference_logits - fast_logits).abs().max()))

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._seen:
            pl_module.log(f"test/acc_{self.engine}", self._correct / self._seen)
            pl_module.log(f"test/max_logit_diff_{self.engine}", self._max_gap)
            pl_module.log("test/acc_certified_subset", self._fast_correct / self._seen)
