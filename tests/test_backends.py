"""The encoder's compute backends: numba kernels on the CPU, plain torch anywhere, and ``auto`` choosing by device."""

from __future__ import annotations

import pytest
import torch

from sqdr import SQDRCNN
from sqdr.models.circuit import ReuploadCircuit
from sqdr.models.encoder import SpikingEncoder

PAPER = {}
BEST_1K = dict(
    coding="direct", time_steps=4, threshold=0.63, surrogate_slope=3.14, encoder_channels=[8, 18, 3],
    convolution="separable", projection="spatial", n_blocks=5, readout="xyz", feature_scale=1.5708,
)


def set_backend(model: torch.nn.Module, backend: str) -> None:
    for module in model.modules():
        if isinstance(module, SpikingEncoder):
            module.backend = backend


@pytest.mark.parametrize("options", [PAPER, BEST_1K], ids=["paper", "best_1k"])
def test_torch_backend_matches_kernels_outputs_and_gradients(options):
    torch.manual_seed(0)
    model = SQDRCNN(**options).double().train()
    images = torch.rand(6, 1, 28, 28, dtype=torch.float64)
    results = {}
    for backend in ("kernels", "torch"):
        set_backend(model, backend)
        model.zero_grad()
        logits = model(images)
        logits.square().sum().backward()
        results[backend] = logits.detach(), [p.grad.clone() for p in model.parameters()]
    (kernel_logits, kernel_grads), (torch_logits, torch_grads) = results["kernels"], results["torch"]
    torch.testing.assert_close(torch_logits, kernel_logits, rtol=0, atol=1e-10)
    for kernel_grad, torch_grad in zip(kernel_grads, torch_grads):
        torch.testing.assert_close(torch_grad, kernel_grad, rtol=1e-6, atol=1e-7)
    assert any(grad.abs().sum() > 0 for grad in torch_grads)


def test_auto_backend_picks_kernels_on_the_cpu_and_torch_elsewhere():
    encoder = SpikingEncoder()
    assert encoder.backend == "auto"
    assert encoder.uses_kernels(torch.zeros(2, 1, 1, 28, 28))
    assert not encoder.uses_kernels(torch.zeros(2, 1, 1, 28, 28, device="meta"))
    assert not SpikingEncoder(backend="torch").uses_kernels(torch.zeros(2, 1, 1, 28, 28))
    with pytest.raises(ValueError, match="backend='kernels' runs on the CPU only, but the images are on meta"):
        SpikingEncoder(backend="kernels").uses_kernels(torch.zeros(2, 1, 1, 28, 28, device="meta"))


@pytest.mark.parametrize(("n_blocks", "readout", "noise"), [(2, "z", None), (5, "xyz", None), (2, "z", "paper"),
                                                           (3, "xyz", "hardware")])
def test_fused_engine_keeps_every_tensor_on_the_inputs_device(n_blocks, readout, noise):
    """PyTorch's ``meta`` device computes shapes only, and fails on any operation that would need a CPU tensor:
    every path of the circuit (Bloch vectors, state vectors, density matrices) runs there, forward and backward."""
    circuit = ReuploadCircuit(4, n_blocks, readout=readout, noise=noise).to("meta")
    features = torch.rand(3, 12, device="meta", requires_grad=True)
    expectations = circuit(features)
    expectations.sum().backward()
    assert expectations.shape == (3, circuit.n_outputs) and expectations.device.type == "meta"
    assert features.grad.device.type == "meta" and circuit.weights.grad.device.type == "meta"


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown backend 'gpu'; choose 'auto', 'kernels' or 'torch'"):
        SQDRCNN(backend="gpu")
