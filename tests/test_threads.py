"""The threads of a training step (sqdr.models.threads): PyTorch's small operations on one thread, the heavy work
(kernels, wide convolutions, deep circuits) on the threads PyTorch had."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from sqdr.data import SyntheticDataModule
from sqdr.models import SQDRCNN, threads
from sqdr.module import SQDRModule


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_small_operations_serial_puts_pytorch_on_one_thread_and_keeps_the_budget(two_threads):
    with threads.small_operations_serial():
        assert (torch.get_num_threads(), threads.budget()) == (1, 2)
        with threads.parallel():
            assert torch.get_num_threads() == 2
        with threads.small_operations_serial():  # nested: the outer budget stands
            assert (torch.get_num_threads(), threads.budget()) == (1, 2)
        assert (torch.get_num_threads(), threads.budget()) == (1, 2)
    assert (torch.get_num_threads(), threads.budget()) == (2, 2)


def test_thread_count_is_restored_when_a_step_fails(two_threads):
    with pytest.raises(RuntimeError, match="step failed"), threads.small_operations_serial():
        raise RuntimeError("step failed")
    assert (torch.get_num_threads(), threads.budget()) == (2, 2)


def test_run_parallel_gives_the_values_and_gradients_of_the_function_computed_on_the_budget_threads(two_threads):
    seen = []

    def function(x, weight):
        seen.append(("forward", torch.get_num_threads()))
        y = F.conv2d(x, weight, padding=1)
        y.register_hook(lambda grad: seen.append(("backward", torch.get_num_threads())))
        return y.tanh()

    torch.manual_seed(0)
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    expected = function(x, weight)
    expected_grads = torch.autograd.grad(expected.square().sum(), (x, weight))
    seen.clear()
    with threads.small_operations_serial():
        out = threads.run_parallel(function, x, weight)
        grads = torch.autograd.grad(out.square().sum(), (x, weight))
    assert seen == [("forward", 2), ("backward", 2)]
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    for grad, expected_grad in zip(grads, expected_grads):
        assert grad.abs().sum() > 0
        torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-12)


def test_run_parallel_returns_gradients_only_for_inputs_that_need_them():
    x = torch.randn(2, 3, dtype=torch.float64)
    weight = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    out = threads.run_parallel(lambda a, b: (a @ b).sin(), x, weight)
    (grad,) = torch.autograd.grad(out.sum(), weight)
    torch.testing.assert_close(grad, x.T @ (x @ weight).cos(), rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        assert not threads.run_parallel(lambda a, b: a @ b, x, weight).requires_grad


class ThreadsSeen(L.Callback):
    def __init__(self) -> None:
        self.seen: set[tuple[int, int]] = set()

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self.seen.add((torch.get_num_threads(), threads.budget()))


def test_sqdr_fit_runs_training_steps_with_small_operations_serial_and_restores_the_threads(two_threads, tmp_path):
    net = SQDRCNN(in_channels=1, num_classes=4, image_size=8, time_steps=2, n_qubits=2, encoder_channels=[2, 4])
    callback = ThreadsSeen()
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=3, limit_val_batches=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback], default_root_dir=tmp_path,
    )
    trainer.fit(SQDRModule(net, certify_engine="none"), datamodule=SyntheticDataModule(n_train=96, batch_size=16))
    assert callback.seen == {(1, 2)}
    assert torch.get_num_threads() == 2
