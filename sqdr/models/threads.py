"""Which work gets the CPU threads during a training step: the heavy operations, not PyTorch's small ones.

PyTorch runs an operation on its OpenMP threads once the operation passes a small size (a log-softmax of a batch,
a small matrix product, a rounding of one batch of images all do), and those threads sleep between operations
(``OMP_WAIT_POLICY=PASSIVE``, see :mod:`sqdr`, so that they leave the cores to the encoder's kernels). On the
2-core virtual machines sqdr is measured on, waking them took many times longer than such an operation takes on one
thread, and a training step of the paper model at batch 16 has a dozen of them.

Within :func:`small_operations_serial` PyTorch runs on one thread, and the work that has enough to share takes
the threads PyTorch had (:func:`budget`): the encoder's numba kernels, and through :func:`run_parallel` oneDNN's
convolutions of wide stages and the circuit's state vectors and density matrices of more than two blocks.
Training steps run in it (``SQDRModule`` and ``sqdr bench``): measured on 2 cores, steps were as fast or faster in
it for every batch size and model tried, most of all at small batches.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import torch

_scope = threading.local()


def budget() -> int:
    """The threads heavy work may use: PyTorch's thread count, or inside :func:`small_operations_serial` the count
    PyTorch had when it was entered."""
    return getattr(_scope, "budget", None) or torch.get_num_threads()


@contextlib.contextmanager
def small_operations_serial() -> Iterator[None]:
    """PyTorch's own operations on one thread; :func:`budget` keeps the thread count for the heavy ones. Nested
    scopes keep the outermost budget; the thread count is restored on exit, errors included."""
    if getattr(_scope, "budget", None) is not None:
        yield
        return
    threads = torch.get_num_threads()
    _scope.budget = threads
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        _scope.budget = None


@contextlib.contextmanager
def parallel() -> Iterator[None]:
    """PyTorch on :func:`budget` threads for one heavy operation (a no-op outside :func:`small_operations_serial`)."""
    threads = torch.get_num_threads()
    wanted = budget()
    if wanted == threads:
        yield
        return
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_parallel(function: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> torch.Tensor:
    """``function(*inputs)``, its forward and its backward pass on :func:`budget`'s threads.

    Every tensor the result depends on with a gradient must be among ``inputs``. Recorded as one autograd node whose
    backward differentiates ``function``'s own graph, so the operations inside (and their gradients, which autograd
    would otherwise run on the thread count of the moment) all take the threads.
    """
    if not torch.is_grad_enabled() or not any(tensor.requires_grad for tensor in inputs):
        with parallel():
            return function(*inputs)
    return _ParallelGraph.apply(function, *inputs)


class _ParallelGraph(torch.autograd.Function):
    @staticmethod
    def forward(ctx, function, *inputs):
        leaves = [tensor.detach().requires_grad_(tensor.requires_grad) for tensor in inputs]
        with torch.enable_grad(), parallel():
            output = function(*leaves)
        ctx.graph = leaves, output
        return output.detach()

    @staticmethod
    def backward(ctx, grad):
        leaves, output = ctx.graph
        wanted = [leaf for leaf in leaves if leaf.requires_grad]
        with parallel():
            grads = iter(torch.autograd.grad(output, wanted, grad, allow_unused=True))
        return None, *(next(grads) if leaf.requires_grad else None for leaf in leaves)
