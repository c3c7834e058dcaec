"""The fast spiking encoder computes the same function as snnTorch stepped one time step at a time.

Outputs, the input gradient and every parameter gradient are compared against
:class:`~sqdr.models.encoder.ReferenceSpikingEncoder` (snnTorch ``Leaky`` neurons called step by step).
"""

from __future__ import annotations

import copy
import importlib.metadata

import numba
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sqdr.models import encoder as encoder_module
from sqdr.models import stage_kernels
from sqdr.models.coding import CODERS, direct_code, phase_code
from sqdr.models.encoder import (
    EVAL_CHUNK,
    ReferenceSpikingEncoder,
    SeparableConv2d,
    SpikingEncoder,
    make_neuron,
    run_neuron,
)
from sqdr.models.neurons import spiking_neurons
from sqdr.models.stage import conv3x3

SURROGATES = ["atan", "fast_sigmoid", "sigmoid", "triangular", "straight_through"]


@pytest.fixture(params=["serial", "threaded"])
def kernel_loops(request, monkeypatch) -> str:
    """Run the stage kernels on the calling thread or on numba's threads, whatever the size of their arrays."""
    monkeypatch.setattr(stage_kernels, "PARALLEL_MIN_ELEMENTS", 0 if request.param == "threaded" else 2**62)
    return request.param


@pytest.fixture(params=["kernel", "onednn"])
def wide_convolutions(request, monkeypatch) -> str:
    """Run the convolutions with ``NARROW`` or more input channels on the stage kernel or on oneDNN, whatever the
    size of their inputs and their number of channel pairs."""
    for name in ("SMALL", "FEW_PAIRS"):
        monkeypatch.setattr(encoder_module, name, 2**62 if request.param == "kernel" else 0)
    return request.param


def encoder_pair(**kwargs) -> tuple[SpikingEncoder, ReferenceSpikingEncoder]:
    fast = SpikingEncoder(in_channels=1, out_features=6, channels=[3, 4, 6], **kwargs).double()
    with torch.no_grad():  # non-trivial batch-norm affine parameters, so their gradients are tested too
        for norm in fast.norms:
            norm.weight.uniform_(0.5, 2.0)
            norm.bias.uniform_(-0.2, 0.6)
    reference = ReferenceSpikingEncoder(in_channels=1, out_features=6, channels=[3, 4, 6], **kwargs).double()
    reference.load_state_dict(fast.state_dict())
    return fast, reference


def run(encoder: torch.nn.Module, frames: torch.Tensor, weights: torch.Tensor):
    """Rates, input gradient and every parameter gradient of a weighted sum of the rates."""
    encoder.zero_grad()
    frames = frames.clone().requires_grad_(True)
    rates = encoder(frames)
    (rates * weights).sum().backward()
    grads = {name: p.grad.clone() for name, p in encoder.named_parameters()}
    return rates.detach(), frames.grad, grads


def assert_close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    """Equal up to 1e-5 of the largest entry: snnTorch rounds spike gradients to float32 even in float64."""
    scale = max(b.abs().max().item(), 1.0)
    assert torch.allclose(a, b, rtol=0, atol=1e-5 * scale), f"{what} differs by {(a - b).abs().max():.3e}"


@pytest.mark.parametrize("coding", ["phase", "rate", "direct"])
@pytest.mark.parametrize("neuron", ["if", "leaky"])
@pytest.mark.parametrize("surrogate", ["atan", "fast_sigmoid", "sigmoid", "triangular"])
def test_fast_encoder_matches_snntorch_reference_outputs_and_gradients(coding, neuron, surrogate, wide_convolutions):
    torch.manual_seed(7)
    fast, reference = encoder_pair(neuron=neuron, beta=0.8, surrogate=surrogate, threshold=0.7, surrogate_slope=3.0)
    frames = CODERS[coding](torch.rand(5, 1, 8, 8, dtype=torch.float64), 10)
    weights = torch.randn(5, 6, dtype=torch.float64)
    rates, frame_grad, grads = run(fast, frames, weights)
    ref_rates, ref_frame_grad, ref_grads = run(reference, frames, weights)
    assert torch.equal(rates, ref_rates)
    assert 0 < rates.mean() < 1, "the test should exercise both firing and silent neurons"
    assert_close(frame_grad, ref_frame_grad, "input gradient")
    assert frame_grad.abs().sum() > 0
    assert set(grads) == set(ref_grads) == {name for name, _ in fast.named_parameters()}
    for name in grads:
        assert_close(grads[name], ref_grads[name], name)
        assert grads[name].abs().sum() > 0, name


def test_fast_encoder_matches_reference_in_eval_mode_and_keeps_running_statistics_equal(wide_convolutions):
    torch.manual_seed(3)
    fast, reference = encoder_pair()
    frames = phase_code(torch.rand(4, 1, 8, 8, dtype=torch.float64), 10)
    weights = torch.randn(4, 6, dtype=torch.float64)
    run(fast, frames, weights)  # one training step each updates the batch-norm running statistics
    run(reference, frames, weights)
    for a, b in zip(fast.norms, reference.norms):
        assert torch.allclose(a.running_mean, b.running_mean, atol=1e-12)
        assert torch.allclose(a.running_var, b.running_var, atol=1e-12)
        assert a.num_batches_tracked.item() == b.num_batches_tracked.item() == 1
    fast.eval(), reference.eval()
    rates, _, grads = run(fast, frames, weights)
    ref_rates, _, ref_grads = run(reference, frames, weights)
    assert torch.equal(rates, ref_rates)
    for name in grads:
        assert_close(grads[name], ref_grads[name], name)


def test_fast_encoder_in_float32_stays_close_to_reference(wide_convolutions):
    torch.manual_seed(11)
    fast = SpikingEncoder(in_channels=1, out_features=27)
    reference = ReferenceSpikingEncoder(in_channels=1, out_features=27)
    reference.load_state_dict(fast.state_dict())
    frames = phase_code(torch.rand(16, 1, 28, 28), 10)
    weights = torch.randn(16, 27)
    rates, _, grads = run(fast, frames, weights)
    ref_rates, _, ref_grads = run(reference, frames, weights)
    assert (rates - ref_rates).abs().max() <= 0.1  # at most one spike in T=10 may flip on float32 rounding
    assert (rates != ref_rates).float().mean() < 0.01
    for name in grads:
        assert torch.allclose(grads[name], ref_grads[name], rtol=0.05, atol=1e-3 * ref_grads[name].abs().max()), name


@pytest.mark.parametrize(
    "options, channels, features",
    [
        ({"projection": "spatial"}, [3, 4, 3], 12),  # 8x8 images: the last stage is 2x2, one cell per qubit
        ({"projection": "spatial", "convolution": "separable"}, [3, 5, 3], 12),
        ({"project_norm": "bn"}, [3, 4, 6], 6),
        ({"project_norm": "bn_affine"}, [3, 4, 6], 6),
    ],
)
def test_fast_encoder_matches_reference_with_projection_options(options, channels, features):
    torch.manual_seed(13)
    fast = SpikingEncoder(in_channels=1, out_features=features, channels=channels, **options).double()
    reference = ReferenceSpikingEncoder(in_channels=1, out_features=features, channels=channels, **options).double()
    reference.load_state_dict(fast.state_dict())
    frames = direct_code(torch.rand(5, 1, 8, 8, dtype=torch.float64), 6)
    weights = torch.randn(5, features, dtype=torch.float64)
    rates, frame_grad, grads = run(fast, frames, weights)
    ref_rates, ref_frame_grad, ref_grads = run(reference, frames, weights)
    assert torch.equal(rates, ref_rates)
    assert 0 < rates.mean() < 1
    assert_close(frame_grad, ref_frame_grad, "input gradient")
    for name in grads:
        assert_close(grads[name], ref_grads[name], name)


def test_separable_convolution_is_the_full_convolution_of_its_composed_kernel():
    torch.manual_seed(3)
    separable = SeparableConv2d(4, 6).double()
    depthwise, pointwise = separable[0].weight, separable[1].weight  # (4, 1, 3, 3), (6, 4, 1, 1)
    kernel = pointwise * depthwise.transpose(0, 1)  # (6, 4, 3, 3): output o mixes input i's own 3x3 filter
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    assert torch.allclose(separable(x), F.conv2d(x, kernel, padding=1), atol=1e-12)
    assert sum(p.numel() for p in separable.parameters()) == 9 * 4 + 4 * 6


def test_separable_encoder_keeps_its_first_stage_full_and_spends_fewer_weights():
    full = SpikingEncoder(channels=[8, 16, 3], out_features=27, projection="spatial")
    separable = SpikingEncoder(channels=[8, 16, 3], out_features=27, projection="spatial", convolution="separable")
    assert separable.convs[0].weight.shape == full.convs[0].weight.shape == (8, 1, 3, 3)
    assert [sum(p.numel() for p in conv.parameters()) for conv in separable.convs] == [72, 8 * 9 + 8 * 16, 16 * 9 + 16 * 3]
    with pytest.raises(ValueError, match="Unknown convolution 'sparse'; choose 'full' or 'separable'"):
        SpikingEncoder(convolution="sparse")


def test_project_norm_bn_adds_statistics_but_no_parameters():
    plain, normed = SpikingEncoder(), SpikingEncoder(project_norm="bn")
    assert sum(p.numel() for p in normed.parameters()) == sum(p.numel() for p in plain.parameters())
    assert set(normed.state_dict()) - set(plain.state_dict()) == {
        f"project_norm.{key}" for key in ("running_mean", "running_var", "num_batches_tracked")
    }


def test_fast_and_reference_encoders_share_state_dict_keys():
    assert list(SpikingEncoder().state_dict()) == list(ReferenceSpikingEncoder().state_dict())


@pytest.mark.parametrize("neuron, beta", [("if", 1.0), ("leaky", 0.6)])
@pytest.mark.parametrize("surrogate", SURROGATES)
def test_fused_neuron_equals_snntorch_leaky_step_by_step(neuron, beta, surrogate):
    torch.manual_seed(5)
    currents = (0.6 * torch.randn(12, 40, dtype=torch.float64) + 0.4).requires_grad_(True)
    upstream = torch.randn(12, 40, dtype=torch.float64)
    reference = run_neuron(make_neuron(neuron, beta, 1.0, surrogate, 2.0), currents)
    (reference * upstream).sum().backward()
    expected = currents.grad.clone()
    currents.grad = None
    spikes = spiking_neurons(currents, beta=beta, threshold=1.0, surrogate=surrogate, slope=2.0)
    (spikes * upstream).sum().backward()
    assert torch.equal(spikes, reference)
    # snnTorch carries spike gradients in float32, hence a relative 1e-6 rather than float64 precision.
    assert torch.allclose(currents.grad, expected, rtol=1e-6, atol=1e-6 * expected.abs().max())


def test_membrane_exactly_at_threshold_does_not_fire_and_is_kept():
    currents = torch.tensor([0.5, 0.5, 0.25, 0.0]).view(4, 1)
    spikes = spiking_neurons(currents, beta=1.0, threshold=1.0, surrogate="atan", slope=2.0)
    reference = run_neuron(make_neuron("if", 1.0, 1.0, "atan", 2.0), currents)
    assert spikes.flatten().tolist() == reference.flatten().tolist() == [0.0, 0.0, 1.0, 0.0]


def test_non_positive_threshold_is_a_clear_error():
    with pytest.raises(ValueError, match="threshold must be positive"):
        spiking_neurons(torch.zeros(2, 3), beta=1.0, threshold=0.0, surrogate="atan", slope=2.0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("in_channels, out_channels, height, width", [(1, 2, 28, 28), (2, 4, 14, 14), (3, 5, 9, 7)])
def test_kernel_convolution_matches_pytorch_outputs_and_gradients(dtype, in_channels, out_channels, height, width,
                                                                  kernel_loops):
    torch.manual_seed(in_channels)
    x = torch.randn(6, in_channels, height, width, dtype=dtype, requires_grad=True)
    weight = torch.randn(out_channels, in_channels, 3, 3, dtype=dtype, requires_grad=True)
    upstream = torch.randn(6, out_channels, height, width, dtype=dtype)
    expected_out = F.conv2d(x, weight, padding=1)
    expected = torch.autograd.grad((expected_out * upstream).sum(), (x, weight))
    out = conv3x3(x, weight)
    got = torch.autograd.grad((out * upstream).sum(), (x, weight))
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    assert out.dtype == dtype
    assert torch.allclose(out, expected_out, rtol=0, atol=tolerance * expected_out.abs().max().item())
    for a, b in zip(got, expected):
        assert torch.allclose(a, b, rtol=0, atol=tolerance * b.abs().max().item())


def test_kernel_convolution_without_input_gradient_gives_the_weight_gradient():
    x = torch.rand(4, 1, 8, 8)
    weight = torch.randn(2, 1, 3, 3, requires_grad=True)
    (got,) = torch.autograd.grad(conv3x3(x, weight).square().sum(), weight)
    (want,) = torch.autograd.grad(F.conv2d(x, weight, padding=1).square().sum(), weight)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)


def test_phase_coding_matches_the_bitwise_definition_for_every_8_bit_level():
    images = torch.arange(256, dtype=torch.float64) / 255
    frames = phase_code(images, 10)
    levels = torch.arange(256)
    for step in range(10):
        bit = step % 8
        expected = ((levels >> (7 - bit)) & 1).double() * 2.0 ** -(bit + 1)
        assert torch.equal(frames[step], expected)


def test_large_evaluation_batch_in_chunks_equals_one_pass_and_each_sample_alone():
    torch.manual_seed(13)
    encoder = SpikingEncoder(in_channels=1, out_features=6, channels=[3, 4, 6]).double().eval()
    with torch.no_grad():
        for norm in encoder.norms:  # running statistics that are not the identity
            norm.running_mean.uniform_(-0.2, 0.2)
            norm.running_var.uniform_(0.5, 1.5)
    batch = EVAL_CHUNK * 2 + 5
    frames = phase_code(torch.rand(batch, 1, 8, 8, dtype=torch.float64), 10)
    with torch.no_grad():
        chunked = encoder(frames)
        whole = encoder._encode(frames)
        alone = torch.cat([encoder._encode(frames[:, i : i + 1]) for i in (0, EVAL_CHUNK, batch - 1)])
    assert chunked.shape == (batch, 6)
    assert torch.equal(chunked, whole)
    assert torch.equal(chunked[[0, EVAL_CHUNK, batch - 1]], alone)
    assert 0 < chunked.mean() < 1


def stage_by_modules(encoder: SpikingEncoder, frames: torch.Tensor, pool: bool) -> torch.Tensor:
    """The first stage as PyTorch modules and snnTorch stepped one step at a time."""
    steps, batch = frames.shape[:2]
    currents = encoder.norms[0](encoder.convs[0](frames.flatten(0, 1)))
    spikes = run_neuron(encoder.conv_neurons[0], currents.view(steps, batch, *currents.shape[1:])).flatten(0, 1)
    spikes = encoder.pool(spikes) if pool else spikes
    return spikes.view(steps, batch, *spikes.shape[1:])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("pool", [True, False])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("surrogate", SURROGATES)
def test_fused_stage_matches_modules_outputs_gradients_and_running_statistics(dtype, pool, training, surrogate,
                                                                             kernel_loops):
    torch.manual_seed(3)
    kernel = SpikingEncoder(in_channels=2, channels=[3], out_features=6, neuron="leaky", beta=0.8, threshold=0.7,
                            surrogate=surrogate, surrogate_slope=3.0).to(dtype)
    with torch.no_grad():
        kernel.norms[0].weight.uniform_(0.5, 2.0)
        kernel.norms[0].bias.uniform_(-0.2, 0.6)
        kernel.norms[0].running_mean.uniform_(-0.3, 0.3)
        kernel.norms[0].running_var.uniform_(0.5, 2.0)
    modules = copy.deepcopy(kernel)
    kernel.train(training)
    modules.train(training)
    frames = torch.rand(6, 5, 2, 9, 9, dtype=dtype)  # odd sides: the pool drops the last row and column
    out_side = 4 if pool else 9
    weights = torch.randn(6, 5, 3, out_side, out_side, dtype=dtype)
    results = []
    for encoder, stage in ((kernel, lambda x: stage_by_kernels(kernel, x, pool)),
                           (modules, lambda x: stage_by_modules(modules, x, pool))):
        x = frames.clone().requires_grad_(True)
        spikes = stage(x)
        (spikes * weights).sum().backward()
        results.append((spikes.detach(), x.grad, {n: p.grad for n, p in encoder.named_parameters() if p.grad is not None}))
    (spikes, frame_grad, grads), (ref_spikes, ref_frame_grad, ref_grads) = results
    assert spikes.dtype == dtype and torch.equal(spikes, ref_spikes)
    assert 0 < spikes.mean() < 1
    tolerance = 1e-5 if dtype == torch.float64 else 1e-4
    for got, want, what in [(frame_grad, ref_frame_grad, "input"), *((grads[n], ref_grads[n], n) for n in ref_grads)]:
        assert want.abs().sum() > 0, what
        assert torch.allclose(got, want, rtol=0, atol=tolerance * want.abs().max()), f"{what}: {(got - want).abs().max()}"
    assert set(grads) == set(ref_grads) == {"convs.0.weight", "norms.0.weight", "norms.0.bias"}
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        got, want = getattr(kernel.norms[0], name), getattr(modules.norms[0], name)
        assert torch.allclose(got.double(), want.double(), rtol=1e-6, atol=1e-7), name


def stage_by_kernels(encoder: SpikingEncoder, frames: torch.Tensor, pool: bool) -> torch.Tensor:
    """The first stage as the fast encoder runs it: the kernel convolution, then batch norm, neurons and pool."""
    steps, batch = frames.shape[:2]
    conv, norm, neuron = encoder.convs[0], encoder.norms[0], encoder.conv_neurons[0]
    spikes = encoder._kernel_stage(frames.flatten(0, 1), steps, conv, norm, neuron, pool)
    return spikes.view(steps, batch, *spikes.shape[1:])


def test_fast_encoder_gives_the_same_bits_on_one_thread_and_on_numba_threads(monkeypatch):
    fast, _ = encoder_pair()
    frames = phase_code(torch.rand(6, 1, 12, 12, dtype=torch.float64), 10)
    weights = torch.randn(6, 6, dtype=torch.float64)
    runs = []
    for threshold in (2**62, 0):
        monkeypatch.setattr(stage_kernels, "PARALLEL_MIN_ELEMENTS", threshold)
        runs.append(run(copy.deepcopy(fast), frames, weights))
    (rates, frame_grad, grads), (threaded_rates, threaded_frame_grad, threaded_grads) = runs
    assert 0 < rates.mean() < 1 and frame_grad.abs().sum() > 0
    assert torch.equal(rates, threaded_rates) and torch.equal(frame_grad, threaded_frame_grad)
    assert all(torch.equal(grads[name], threaded_grads[name]) for name in grads)


def test_threaded_kernels_run_on_tbb_when_the_tbb_package_is_installed():
    try:
        importlib.metadata.version("tbb")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the tbb package is not installed (it ships for x86-64 Linux); kernels use numba's workqueue")
    assert stage_kernels.TBB and stage_kernels.PARALLEL_MIN_ELEMENTS == stage_kernels.TBB_MIN_ELEMENTS
    stage_kernels.channel_moments.threaded(np.ones((4, 2, 3, 3), np.float32))
    assert numba.threading_layer() == "tbb"


def test_fused_stage_saves_nothing_for_backward_without_gradients():
    encoder = SpikingEncoder(in_channels=1, channels=[2], out_features=6)
    with torch.no_grad():
        spikes = stage_by_kernels(encoder, torch.rand(4, 3, 1, 8, 8), True)
    assert spikes.shape == (4, 3, 2, 4, 4) and not spikes.requires_grad
