"""SQDRCNN as a whole: parameter counts, coding, neurons, end-to-end gradients, and learning on real data."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from sklearn.datasets import load_digits

from sqdr import SQDRCNN
from sqdr.models.coding import phase_code
from sqdr.models.encoder import make_neuron, run_neuron


def test_paper_configuration_has_803_parameters():
    counts = SQDRCNN().parameter_counts()
    assert counts == {"encoder": 649, "circuit": 54, "head": 100, "total": 803}


# The paper model's first two logits for seed 0 and images torch.rand(4, 1, 28, 28), training mode, as computed
# before the projection, readout and angle options existed: options at their defaults change no number.
PAPER_LOGITS_SEED_0 = [
    [0.25844336, 0.51808673, 0.13262966, 0.16219951, -0.06748381, 0.00335455, -0.09064690, -0.49712175, -0.58876824,
     -0.46886691],
    [0.25640523, 0.51413369, 0.13696289, 0.15576345, -0.06793526, 0.00566836, -0.08956339, -0.49511915, -0.58542889,
     -0.47111025],
]

#: A spatial-projection, xyz-readout model with learned angle scales and offsets: the options of the small tuned
#: configs, in their smallest combination.
SPATIAL_XYZ = dict(
    coding="direct", time_steps=4, encoder_channels=[4, 8, 3], projection="spatial", n_qubits=9, n_blocks=2,
    readout="xyz", feature_scale=3.14159, learn_angle_scale=True, learn_angle_offset=True,
)


def test_defaults_keep_the_paper_model_state_and_outputs():
    torch.manual_seed(0)
    model = SQDRCNN()
    logits = model(torch.rand(4, 1, 28, 28))
    assert torch.allclose(logits[:2], torch.tensor(PAPER_LOGITS_SEED_0), atol=1e-6)
    neuron_state = ["threshold", "graded_spikes_factor", "reset_mechanism_val", "beta"]
    norm_state = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    expected = (
        [f"encoder.convs.{i}.weight" for i in range(3)]
        + [f"encoder.norms.{i}.{key}" for i in range(3) for key in norm_state]
        + [f"encoder.conv_neurons.{i}.{key}" for i in range(3) for key in neuron_state]
        + ["encoder.project.weight", "encoder.project.bias"]
        + [f"encoder.out_neuron.{key}" for key in neuron_state]
        + ["circuit.weights", "head.0.weight", "head.0.bias"]
    )
    assert list(model.state_dict()) == expected


def test_parameter_counts_of_a_spatial_xyz_model_split_encoder_circuit_and_head():
    counts = SQDRCNN(**SPATIAL_XYZ).parameter_counts()
    # convs 1*4*9 + 4*8*9 + 8*3*9 = 540 and BN 2*(4+8+3) = 30; circuit: 2*9*3 angles + 27 scales + 27 offsets;
    # head Linear(27 -> 10): the xyz readout gives 3 values per qubit.
    assert counts == {"encoder": 570, "circuit": 108, "head": 280, "total": 958}


def test_spatial_projection_gives_each_qubit_one_cell_of_the_last_stage():
    torch.manual_seed(1)
    model = SQDRCNN(**SPATIAL_XYZ).eval()
    images = torch.rand(2, 1, 28, 28)
    features = model.encode(images)
    assert features.shape == (2, 27)
    assert not hasattr(model.encoder, "project") and not hasattr(model.encoder, "out_neuron")
    # The last stage's spike map (7 x 7, not pooled), recomputed by hand and averaged over the 3 x 3 grid and T.
    encoder, frames = model.encoder, model.coder(images)
    x = frames.flatten(0, 1)
    for stage, (conv, norm, neuron) in enumerate(zip(encoder.convs, encoder.norms, encoder.conv_neurons)):
        spikes = run_neuron(neuron, norm(conv(x)).view(4, 2, conv.out_channels, *x.shape[-2:])).flatten(0, 1)
        x = spikes if stage == 2 else torch.nn.functional.max_pool2d(spikes, 2)
    grid = torch.nn.functional.adaptive_avg_pool2d(x, 3).view(4, 2, 3, 3, 3).mean(0)  # (B, channel, row, col)
    for qubit in range(9):
        row, col = divmod(qubit, 3)
        assert torch.allclose(features[:, 3 * qubit : 3 * qubit + 3], grid[:, :, row, col], atol=1e-6)


def test_xyz_readout_feeds_three_values_per_qubit_to_the_head():
    model = SQDRCNN(image_size=8, n_qubits=4, readout="xyz")
    assert model.head[0].in_features == 12
    assert model(torch.rand(3, 1, 8, 8)).shape == (3, 10)


@pytest.mark.parametrize("engine", ["lightning", "default.qubit"])
def test_spatial_xyz_logits_and_gradients_agree_across_engines(engine):
    torch.manual_seed(2)
    images = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    labels = torch.tensor([3, 7])
    state = SQDRCNN(**SPATIAL_XYZ).double().state_dict()

    def logits_and_gradients(name: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model = SQDRCNN(**SPATIAL_XYZ, engine=name).double()
        model.load_state_dict(state)
        logits = model(images)
        torch.nn.functional.cross_entropy(logits, labels).backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    fused_logits, fused_grads = logits_and_gradients("fused")
    logits, grads = logits_and_gradients(engine)
    assert torch.allclose(logits, fused_logits, atol=1e-5)
    for name, grad in grads.items():
        assert torch.allclose(grad, fused_grads[name], atol=1e-5), name


def test_parameter_counts_follow_the_configuration():
    counts = SQDRCNN(in_channels=3, image_size=32, n_qubits=4, n_blocks=3, head="mlp", head_hidden=8).parameter_counts()
    # convs 3->6->12->24 (162 + 648 + 2592), BN 2*(6+12+24), linear 24->12 (300), circuit 3*4*3, mlp 4*8+8 + 8*10+10
    assert counts == {"encoder": 162 + 648 + 2592 + 84 + 300, "circuit": 36, "head": 130, "total": 3952}


def test_phase_coding_reconstructs_the_8_bit_pixel():
    images = torch.tensor([0.0, 1.0, 128 / 255, 37 / 255, 200 / 255])
    frames = phase_code(images, time_steps=10)
    assert frames.shape == (10, 5)
    # The first 8 steps carry all bits with weights 1/2 ... 1/256: their sum is the pixel scaled by 255/256.
    assert torch.allclose(frames[:8].sum(0), images * 255 / 256, atol=1e-6)
    # Steps 8 and 9 repeat the two most significant bits.
    assert torch.equal(frames[8:], frames[:2])


def test_integrate_and_fire_neuron_resets_to_zero_when_it_fires():
    neuron = make_neuron("if", beta=0.5, threshold=1.0, surrogate="atan", slope=2.0)
    currents = torch.tensor([0.6, 0.6, 0.6, 0.6, 1.5, 0.2]).view(6, 1)
    spikes = run_neuron(neuron, currents)
    assert spikes.flatten().tolist() == [0.0, 1.0, 0.0, 1.0, 1.0, 0.0]


def test_leaky_neuron_forgets_input():
    neuron = make_neuron("leaky", beta=0.5, threshold=1.0, surrogate="atan", slope=2.0)
    # 0.6, then 0.3 + 0.6 = 0.9, then 0.45 + 0.6 = 1.05 fires.
    spikes = run_neuron(neuron, torch.full((3, 1), 0.6))
    assert spikes.flatten().tolist() == [0.0, 0.0, 1.0]


@pytest.mark.parametrize("engine", ["fused", "lightning", "default.qubit"])
def test_gradients_reach_the_first_convolution(engine):
    torch.manual_seed(0)
    model = SQDRCNN(image_size=16, n_qubits=3, engine=engine)
    images = torch.rand(4, 1, 16, 16)
    loss = torch.nn.functional.cross_entropy(model(images), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert model.encoder.convs[0].weight.grad.abs().sum() > 0


def test_model_state_dict_loads_into_every_engine_with_equal_logits():
    torch.manual_seed(0)
    fused = SQDRCNN(image_size=16, n_qubits=4, n_blocks=2).double().eval()
    images = torch.rand(3, 1, 16, 16, dtype=torch.float64)
    expected = fused(images)
    for engine in ("lightning", "default.qubit"):
        other = SQDRCNN(image_size=16, n_qubits=4, n_blocks=2, engine=engine).double().eval()
        other.load_state_dict(fused.state_dict())
        assert torch.allclose(other(images), expected, atol=1e-5)


def test_model_with_lightning_engine_can_be_copied_and_pickled():
    model = SQDRCNN(image_size=16, n_qubits=2, engine="lightning").eval()
    images = torch.rand(2, 1, 16, 16)
    logits = model(images)
    assert torch.allclose(copy.deepcopy(model)(images), logits)
    assert torch.allclose(pickle.loads(pickle.dumps(model))(images), logits)


def test_head_none_reads_expectations_as_logits():
    model = SQDRCNN(num_classes=3, image_size=8, n_qubits=4, head="none")
    assert model.parameter_counts()["head"] == 0
    logits = model(torch.rand(2, 1, 8, 8))
    assert logits.shape == (2, 3) and logits.abs().max() <= 1.0


def test_reference_head_ends_in_relu():
    model = SQDRCNN(image_size=8, n_qubits=3, head_relu=True)
    assert (model(torch.rand(5, 1, 8, 8)) >= 0).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"head": "none", "num_classes": 10, "n_qubits": 4}, "one qubit per class"),
        ({"image_size": 4}, "too small for 3 pooling stages"),
        ({"projection": "spatial"}, "3 channels in the last encoder stage"),
        ({"projection": "spatial", "n_qubits": 8, "encoder_channels": [4, 8, 3]}, "square number of qubits"),
        ({"projection": "spatial", "encoder_channels": [4, 8, 3], "project_norm": "bn"}, "project_norm applies"),
        ({"projection": "conv"}, "Unknown projection 'conv'"),
        ({"readout": "x"}, "Unknown readout 'x'"),
        ({"coding": "latency"}, "Unknown spike coding 'latency'"),
        ({"neuron": "izhikevich"}, "Unknown neuron"),
        ({"surrogate": "erf"}, "Unknown surrogate"),
        ({"noise": {"bitflip": 0.1}}, r"Unknown noise channel\(s\) \['bitflip'\]"),
    ],
)
def test_bad_configuration_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SQDRCNN(**kwargs)


def test_wrong_image_channels_is_a_clear_error():
    with pytest.raises(ValueError, match=r"Expected images of shape \(batch, 1, H, W\)"):
        SQDRCNN(image_size=8)(torch.rand(2, 3, 8, 8))


def test_sqdrcnn_learns_sklearn_digits():
    """A short plain-PyTorch training on real handwritten digits: loss falls, accuracy far above chance (10 %).

    The accuracy of so short a run moves by several points with the seed, and with the float rounding of two
    formulations of the same function, so the bound is set well below what it reaches."""
    torch.manual_seed(20200626)
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target)
    order = torch.randperm(len(labels))
    train, test = order[:1400], order[1400:]
    model = SQDRCNN(image_size=8, time_steps=8, n_qubits=6, encoder_channels=[8, 16, 32])
    optimiser = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for epoch in range(6):
        model.train()
        for batch in train[torch.randperm(len(train))].split(32):
            loss = torch.nn.functional.cross_entropy(model(images[batch]), labels[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        accuracy = (model(images[test]).argmax(1) == labels[test]).float().mean().item()
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.6 * first, (first, last)
    assert accuracy > 0.5, accuracy


@pytest.mark.parametrize("n_qubits, n_blocks, entangler", [(3, 3, "ring"), (9, 2, "chain")])
def test_model_logits_and_every_gradient_agree_across_engines(n_qubits, n_blocks, entangler):
    """The whole network, input included (direct coding lets gradients reach the pixels)."""
    torch.manual_seed(n_qubits)
    config = dict(image_size=8, n_qubits=n_qubits, n_blocks=n_blocks, entangler=entangler, coding="direct", time_steps=3)
    images = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    labels = torch.tensor([0, 4, 9])
    reference_state = SQDRCNN(**config).double().state_dict()
    results = {}
    for engine in ("fused", "lightning", "default.qubit"):
        model = SQDRCNN(**config, engine=engine).double()
        model.load_state_dict(reference_state)
        pixels = images.clone().requires_grad_(True)
        logits = model(pixels)
        torch.nn.functional.cross_entropy(logits, labels).backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        results[engine] = (logits.detach(), pixels.grad.clone(), grads)
    fused_logits, fused_pixels, fused_grads = results["fused"]
    assert fused_pixels.abs().sum() > 0
    for engine in ("lightning", "default.qubit"):
        logits, pixels, grads = results[engine]
        assert torch.allclose(logits, fused_logits, atol=1e-5)
        assert torch.allclose(pixels, fused_pixels, atol=1e-5)
        for name, grad in grads.items():
            assert torch.allclose(grad, fused_grads[name], atol=1e-5), name
