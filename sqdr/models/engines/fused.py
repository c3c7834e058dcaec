"""``fused``: our batched, differentiable torch simulator of the re-upload circuit.

Written by hand (rather than run through a PennyLane device) because the circuit's structure allows a
much cheaper exact computation than a general-purpose simulator can assume, vectorised over the batch:

* Within one block every gate (and every noise channel) acts on a single qubit, so the block is a tensor
  product of per-qubit maps. We fuse each qubit's data ``Rot``, trainable ``Rot`` and channels into one
  2x2 unitary (pure mode) or one 4x4 superoperator (noisy, density-matrix mode).
* The first block acts on ``|0...0>``, so its output is a product state, built directly by outer products.
* Everything after the last entangler is a product of per-qubit maps, so ``<P_i>`` (``P`` = Z, and X, Y for the
  ``xyz`` readout) only needs qubit ``i``'s reduced density matrix and the Heisenberg-picture observable
  ``Φ_i†(P)``; the last block is never applied to the full state, and extra Paulis cost one 2x2 product each.
* CZ layers are diagonal: one elementwise multiplication by a precomputed ±1 pattern.
* With two blocks (the paper's circuit) even the full state is unnecessary: one CZ layer acting on a product
  state leaves qubit ``i``'s diagonal alone and scales its coherence by ``Π_j <Z_j>`` over its CZ partners
  ``j`` (``CZ = |0><0|_j ⊗ I + |1><1|_j ⊗ Z_i``, and tracing out ``j`` keeps only those two branches).
  The paper's circuit, noisy or not, thus costs O(n) per sample instead of O(2**n) or O(4**n).
* Without noise, one and two blocks run on Bloch vectors: a qubit's state is ``r`` in ``ρ = (I + r·σ)/2``, a
  unitary ``U`` rotates it by the 3x3 real matrix ``R[j, k] = Tr(σ_j U σ_k U†) / 2``, ``<P> = r_P``, and the CZ
  layer scales ``r_x`` and ``r_y`` by the partners' ``r_z``. Real 3x3 products replace complex 2x2 ones and
  their density matrices: a few dozen small operations instead of a few hundred, which is most of the
  circuit's time at these sizes.

Deeper circuits evolve the full state vector (pure) or density matrix (noisy) between the first and the
last block. In pure mode that evolution and the reduced density matrices are two ``autograd.Function`` classes
(:class:`LocalUnitaries`, :class:`ReducedDensityMatrices`) rather than a chain of ``einsum`` calls: autograd
would keep a permuted copy of the whole batch of state vectors for every gate (at 16 qubits x 4 blocks and
batch 128 that is gigabytes), while the gates are unitary, so the backward pass can undo them one by one
from the layer's output and needs no intermediate state at all.
Shots (if given) sample each qubit's outcome from its exact marginal and use a straight-through gradient.
"""

from __future__ import annotations

import torch

from sqdr.models import threads
from sqdr.models.noise import NoiseModel
from sqdr.models.spec import CircuitSpec

PAULIS = {
    "Z": ((1.0, 0.0), (0.0, -1.0)),
    "X": ((0.0, 1.0), (1.0, 0.0)),
    "Y": ((0.0, -1j), (1j, 0.0)),
}


def rot_matrices(angles: torch.Tensor) -> torch.Tensor:
    """PennyLane's ``Rot(φ, θ, ω) = RZ(ω) RY(θ) RZ(φ)`` for angles ``(..., 3)``, as ``(..., 2, 2)`` complex."""
    phi, theta, omega = angles.unbind(-1)
    cos = torch.cos(theta / 2).to(_complex(angles.dtype))
    sin = torch.sin(theta / 2).to(cos.dtype)
    plus = torch.exp(-0.5j * (phi + omega))
    minus = torch.exp(0.5j * (phi - omega))
    top = torch.stack([plus * cos, -minus * sin], -1)
    bottom = torch.stack([minus.conj() * sin, plus.conj() * cos], -1)
    return torch.stack([top, bottom], -2)


def bloch_rotations(angles: torch.Tensor) -> torch.Tensor:
    """The rotation ``R`` of Bloch vectors by ``Rot(φ, θ, ω) = RZ(ω) RY(θ) RZ(φ)`` (``U (r·σ) U† = (R r)·σ``) for
    angles ``(..., 3)``, as ``(..., 3, 3)`` real: ``R_z(ω) R_y(θ) R_z(φ)`` written out (:class:`BlochRotation`)."""
    return BlochRotation.apply(angles)


class BlochRotation(torch.autograd.Function):
    """:func:`bloch_rotations` as one autograd node. Autograd would record each of its two dozen small
    operations and run as many backward nodes, which at training batch sizes cost more than the arithmetic.

    Backward uses ``∂R/∂φ = R K`` and ``∂R/∂ω = K R`` with ``K`` the generator of rotations about z
    (``K e_x = e_y``, ``K e_y = -e_x``), and ``∂R/∂θ = R_z(ω) R_y'(θ) R_z(φ)`` written out.
    """

    @staticmethod
    def forward(ctx, angles: torch.Tensor) -> torch.Tensor:
        cos, sin = angles.cos(), angles.sin()
        c1, c2, c3 = cos.unbind(-1)
        s1, s2, s3 = sin.unbind(-1)
        c2c1, c2s1 = c2 * c1, c2 * s1
        rows = (
            (c3 * c2c1 - s3 * s1, -c3 * c2s1 - s3 * c1, c3 * s2),
            (s3 * c2c1 + c3 * s1, c3 * c1 - s3 * c2s1, s3 * s2),
            (-s2 * c1, s2 * s1, c2),
        )
        rotation = torch.stack([torch.stack(row, -1) for row in rows], -2)
        ctx.save_for_backward(cos, sin, rotation)
        return rotation

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        cos, sin, rotation = ctx.saved_tensors
        c1, c2, c3 = cos.unbind(-1)
        s1, s2, s3 = sin.unbind(-1)
        d_phi = (grad[..., 0] * rotation[..., 1] - grad[..., 1] * rotation[..., 0]).sum(-1)
        d_omega = (grad[..., 1, :] * rotation[..., 0, :] - grad[..., 0, :] * rotation[..., 1, :]).sum(-1)
        # rows 0 and 1 of ∂R/∂θ are c3 and s3 times (-s2 c1, s2 s1, c2); row 2 is (-c2 c1, c2 s1, -s2)
        tilt = torch.stack([-s2 * c1, s2 * s1, c2], -1)
        bottom = torch.stack([-c2 * c1, c2 * s1, -s2], -1)
        top = grad[..., 0, :] * c3.unsqueeze(-1) + grad[..., 1, :] * s3.unsqueeze(-1)
        d_theta = (top * tilt + grad[..., 2, :] * bottom).sum(-1)
        return torch.stack([d_phi, d_theta, d_omega], -1)


#: The Bloch-vector component of each readout Pauli.
BLOCH_AXIS = {"X": 0, "Y": 1, "Z": 2}


def _complex(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def kraus_operators(name: str, p: torch.Tensor) -> list[torch.Tensor]:
    """Kraus operators of PennyLane's single-qubit channel ``name`` with strength ``p`` (any batch shape)."""
    one = torch.ones_like(p)
    zero = torch.zeros_like(p)

    def mat(a, b, c, d):
        return torch.stack([torch.stack([a, b], -1), torch.stack([c, d], -1)], -2).to(_complex(p.dtype))

    keep = torch.sqrt(1 - p)
    if name == "bit_flip":
        return [mat(keep, zero, zero, keep), mat(zero, p.sqrt(), p.sqrt(), zero)]
    if name == "phase_flip":
        return [mat(keep, zero, zero, keep), mat(p.sqrt(), zero, zero, -p.sqrt())]
    if name == "depolarizing":
        s = torch.sqrt(p / 3)
        x = mat(zero, s, s, zero)
        y = mat(zero, -s, s, zero) * 1j
        z = mat(s, zero, zero, -s)
        return [mat(keep, zero, zero, keep), x, y, z]
    if name == "amplitude_damping":
        return [mat(one, zero, zero, keep), mat(zero, p.sqrt(), zero, zero)]
    if name == "phase_damping":
        return [mat(one, zero, zero, keep), mat(zero, zero, zero, p.sqrt())]
    raise ValueError(f"Unknown noise channel {name!r}.")


def superoperator(kraus: list[torch.Tensor]) -> torch.Tensor:
    """``S[..., r, c, r', c'] = Σ_k K[r, r'] conj(K[c, c'])``, so ``ρ' = S : ρ``; returns ``(..., 4, 4)``."""
    total = sum(torch.einsum("...ab,...cd->...acbd", k, k.conj()) for k in kraus)
    return total.reshape(*total.shape[:-4], 4, 4)


def channel_strength(noise: NoiseModel, name: str, value, data: torch.Tensor) -> torch.Tensor:
    """Strength of a channel for every (sample, qubit): a constant or ``sigmoid`` of a data angle."""
    if value == "feature":
        return torch.sigmoid(data[..., noise.amplitude_damping_feature])
    return torch.full(data.shape[:-1], float(value), dtype=data.dtype, device=data.device)


#: Below this many amplitudes to the right of the gate's qubit, gates act from the right on ``(left, 2 * right)``
#: rows (measured faster: one matrix product instead of ``B * left`` tiny ones).
NARROW_RIGHT = 16


def apply_gate(state: torch.Tensor, gate: torch.Tensor, qubit: int, n_qubits: int) -> torch.Tensor:
    """``gate`` ``(B, 2, 2)`` applied to ``qubit`` of every state ``(B, 2**n)`` (qubit 0 most significant).

    One batched matrix product on a view of the state, never a permuted copy (which ``einsum`` makes):
    ``gate @ (2, right)`` blocks when ``right`` is wide, else ``(2 * right)``-rows times ``gate ⊗ I_right``.
    """
    batch, left, right = state.shape[0], 2**qubit, 2 ** (n_qubits - qubit - 1)
    if right >= NARROW_RIGHT:
        return torch.matmul(gate[:, None], state.view(batch, left, 2, right)).view(state.shape)
    rows = state.view(batch, left, 2 * right)
    return torch.matmul(rows, _expand_gate(gate, right).transpose(-1, -2)).view(state.shape)


def _expand_gate(gate: torch.Tensor, right: int) -> torch.Tensor:
    """``gate ⊗ I_right`` for a batch of gates: ``(B, 2 * right, 2 * right)``."""
    identity = torch.eye(right, dtype=gate.dtype, device=gate.device)
    return (gate[:, :, None, :, None] * identity[:, None, :]).reshape(gate.shape[0], 2 * right, 2 * right)


def gate_gradient(grad: torch.Tensor, state: torch.Tensor, qubit: int, n_qubits: int) -> torch.Tensor:
    """``Σ_rest grad[a] conj(state[c])`` on ``qubit``: the gradient ``(B, 2, 2)`` of a gate whose input was
    ``state`` and whose output received ``grad`` (torch's convention for ``y = U x``: ``dU = dy x^H``).
    Matrix products on views, as in :func:`apply_gate`."""
    batch, left, right = state.shape[0], 2**qubit, 2 ** (n_qubits - qubit - 1)
    if right >= NARROW_RIGHT:
        blocks = grad.view(batch, left, 2, right), state.view(batch, left, 2, right)
        return torch.matmul(blocks[0], blocks[1].conj().transpose(-1, -2)).sum(1)
    rows = grad.view(batch, left, 2 * right), state.view(batch, left, 2 * right)
    outer = torch.matmul(rows[0].transpose(-1, -2), rows[1].conj()).view(batch, 2, right, 2, right)
    return outer.diagonal(dim1=2, dim2=4).sum(-1)


class LocalUnitaries(torch.autograd.Function):
    """``state`` ``(B, 2**n)`` after the unitaries ``maps`` ``(B, n, 2, 2)``, one per qubit, in qubit order.

    Backward recovers the state before each gate by applying the gate's adjoint to the state after it
    (the gates are unitary), so only the output is saved, whatever the number of qubits.
    """

    @staticmethod
    def forward(ctx, state: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        n = maps.shape[1]
        for qubit in range(n):
            state = apply_gate(state, maps[:, qubit], qubit, n)
        ctx.save_for_backward(state, maps)
        return state

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        state, maps = ctx.saved_tensors
        n = maps.shape[1]
        adjoints = maps.conj().transpose(-1, -2)
        grad_maps = torch.empty_like(maps)
        for qubit in range(n - 1, -1, -1):
            state = apply_gate(state, adjoints[:, qubit], qubit, n)
            grad_maps[:, qubit] = gate_gradient(grad, state, qubit, n)
            grad = apply_gate(grad, adjoints[:, qubit], qubit, n)
        return grad, grad_maps


class ReducedDensityMatrices(torch.autograd.Function):
    """Every qubit's reduced density matrix ``ρ_i = M_i M_i^H`` (``M_i`` the state as a ``2 x rest`` matrix
    per qubit), ``(B, n, 2, 2)``. Backward is ``Σ_i (G_i + G_i^H) M_i``: n gate applications to the one
    saved state instead of n saved copies of it."""

    @staticmethod
    def forward(ctx, state: torch.Tensor, n_qubits: int) -> torch.Tensor:
        ctx.save_for_backward(state)
        ctx.n_qubits = n_qubits
        return torch.stack([gate_gradient(state, state, i, n_qubits) for i in range(n_qubits)], 1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (state,) = ctx.saved_tensors
        hermitian = grad + grad.conj().transpose(-1, -2)
        total = torch.zeros_like(state)
        for qubit in range(ctx.n_qubits):
            total += apply_gate(state, hermitian[:, qubit], qubit, ctx.n_qubits)
        return total, None


class FusedEngine:
    """Exact batched simulation; pure state vectors without noise, density matrices with it."""

    name = "fused"

    def __init__(self, spec: CircuitSpec, shots: int | None = None) -> None:
        self.spec = spec
        self.shots = shots
        self.mixed = spec.noise is not None
        self._tables: dict[tuple, torch.Tensor] = {}
        self._partners = self._partner_table(spec)

    # -- constants -------------------------------------------------------------------------------
    def _cz_signs(self, device, dtype) -> torch.Tensor:
        """±1 per basis state: the diagonal of one entangler layer."""
        key = (device, dtype)
        if key not in self._tables:
            n = self.spec.n_qubits
            index = torch.arange(2**n, device=device)
            bits = (index.unsqueeze(-1) >> torch.arange(n - 1, -1, -1, device=device)) & 1
            parity = sum(bits[:, a] * bits[:, b] for a, b in self.spec.cz_pairs) if self.spec.cz_pairs else 0 * index
            self._tables[key] = (1 - 2 * (parity % 2)).to(dtype)
        return self._tables[key]

    # -- per-qubit maps --------------------------------------------------------------------------
    def _local_maps(self, data: torch.Tensor, weights: torch.Tensor) -> list[torch.Tensor]:
        """Per block, the fused per-qubit map: ``(B, n, 2, 2)`` unitaries or ``(B, n, 4, 4)`` superoperators."""
        data_rot = rot_matrices(data)
        unitaries = [weights_rot @ data_rot for weights_rot in rot_matrices(weights).unsqueeze(1)]
        if not self.mixed:
            return unitaries
        noise = self.spec.noise
        after_rotation = self._channels_superop(noise.channels(), noise, data)
        after_entangler = self._channels_superop(noise.entangler_channels(), noise, data)
        maps = []
        for block, unitary in enumerate(unitaries):
            superop = superoperator([unitary])
            if after_rotation is not None:
                superop = after_rotation @ superop
            if block > 0 and after_entangler is not None:
                superop = superop @ after_entangler
            maps.append(superop)
        return maps

    @staticmethod
    def _channels_superop(channels, noise: NoiseModel, data: torch.Tensor) -> torch.Tensor | None:
        total = None
        for name, value in channels:
            superop = superoperator(kraus_operators(name, channel_strength(noise, name, value, data)))
            total = superop if total is None else superop @ total
        return total

    # -- states ----------------------------------------------------------------------------------
    def _product_state(self, first: torch.Tensor) -> torch.Tensor:
        """The state after the first block: ``(B, 2**n)`` vector or ``(B, 2**n, 2**n)`` matrix."""
        batch, n = first.shape[:2]
        if self.mixed:
            factors = first[..., 0].reshape(batch, n, 2, 2)  # S[r, c, 0, 0] = ρ_i[r, c]
            state = factors[:, 0]
            for i in range(1, n):
                size = state.shape[-1]
                state = (state[:, :, None, :, None] * factors[:, i, None, :, None, :]).reshape(batch, 2 * size, 2 * size)
            return state
        factors = first[..., 0]  # U |0>
        state = factors[:, 0]
        for i in range(1, n):
            state = (state[:, :, None] * factors[:, i, None, :]).reshape(batch, -1)
        return state

    def _entangled_product_marginals(self, first: torch.Tensor) -> torch.Tensor:
        """Single-qubit density matrices after the first block's superoperators ``first`` and one entangler layer,
        in O(n) (pure circuits of two blocks take :meth:`_bloch_expectations`)."""
        batch, n = first.shape[:2]
        marginals = first[..., 0].reshape(batch, n, 2, 2)  # S[r, c, 0, 0] = ρ_i[r, c]
        z = (marginals[..., 0, 0] - marginals[..., 1, 1]).real
        coherence = self._cz_coherence(z)
        diagonal = torch.eye(2, dtype=torch.bool, device=z.device)
        scale = torch.where(diagonal, torch.ones_like(coherence)[..., None, None], coherence[..., None, None])
        return marginals * scale

    def _cz_coherence(self, z: torch.Tensor) -> torch.Tensor:
        """``Π_j <Z_j>`` over each qubit's CZ partners ``j``, for ``<Z>`` ``(B, n)`` before one entangler layer: the
        factor that layer puts on every qubit's coherence (its Bloch ``x`` and ``y``)."""
        partners = self._partners.to(z.device)
        return torch.where(partners, z.unsqueeze(1), torch.ones_like(z).unsqueeze(1)).prod(-1)

    @staticmethod
    def _partner_table(spec: CircuitSpec) -> torch.Tensor:
        """``partners[i, j]``: qubits ``i`` and ``j`` share a CZ gate."""
        n = spec.n_qubits
        partners = torch.zeros(n, n, dtype=torch.bool)
        for a, b in spec.cz_pairs:
            partners[a, b] = partners[b, a] = True
        return partners

    def _entangle(self, state: torch.Tensor) -> torch.Tensor:
        signs = self._cz_signs(state.device, state.real.dtype)
        if self.mixed:
            return state * (signs[:, None] * signs[None, :])
        return state * signs

    def _apply_local(self, state: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        if not self.mixed:
            return LocalUnitaries.apply(state, maps)
        batch, n = maps.shape[:2]
        for i in range(n):
            left, right = 2**i, 2 ** (n - i - 1)
            superop = maps[:, i].reshape(batch, 2, 2, 2, 2)
            view = state.reshape(batch, left, 2, right, left, 2, right)
            state = torch.einsum("bijkl,bxkyzlw->bxiyzjw", superop, view).reshape(state.shape)
        return state

    def _reduced_density_matrices(self, state: torch.Tensor) -> torch.Tensor:
        """Single-qubit reduced density matrices ``(B, n, 2, 2)``."""
        batch, n = state.shape[0], self.spec.n_qubits
        if not self.mixed:
            return ReducedDensityMatrices.apply(state, n)
        reduced = []
        for i in range(n):
            left, right = 2**i, 2 ** (n - i - 1)
            view = state.reshape(batch, left, 2, right, left, 2, right)
            reduced.append(torch.einsum("bxiyxjy->bij", view))
        return torch.stack(reduced, 1)

    def _evolved_marginals(self, *maps: torch.Tensor) -> torch.Tensor:
        """Single-qubit density matrices ``(B, n, 2, 2)`` after the blocks ``maps`` (all but the last), an entangler
        layer after each, by evolving the full state vector or density matrix."""
        state = self._product_state(maps[0])
        for block_map in maps[1:]:
            state = self._apply_local(self._entangle(state), block_map)
        return self._reduced_density_matrices(self._entangle(state))

    def _heisenberg(self, last: torch.Tensor) -> torch.Tensor:
        """``Φ_i†(P)`` for every Pauli ``P`` of the readout and the last per-qubit maps: ``(B, k, n, 2, 2)``."""
        paulis = torch.tensor([PAULIS[name] for name in self.spec.paulis], dtype=last.dtype, device=last.device)
        if self.mixed:
            superop = last.reshape(*last.shape[:2], 2, 2, 2, 2)
            return torch.einsum("kcr,bnrcRC->bknCR", paulis, superop)
        unitary = last.unsqueeze(1)
        return unitary.conj().transpose(-1, -2) @ paulis[:, None] @ unitary

    # -- entry point -----------------------------------------------------------------------------
    def __call__(self, data: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``<P_i>`` for data angles ``(B, n, 3)`` and trainable angles ``(L, n, 3)``: ``(B, k * n)`` for the
        readout's ``k`` Paulis, all qubits of the first Pauli first (``(B, n)`` ``<Z_i>`` for readout ``z``)."""
        if not self.mixed and weights.shape[0] <= 2:
            return self._measured(self._bloch_expectations(data, weights))
        maps = self._local_maps(data, weights)
        if len(maps) == 1:
            zero = torch.zeros(2, 2, dtype=maps[0].dtype, device=data.device)
            zero[0, 0] = 1
            reduced = zero.expand(*maps[0].shape[:2], 2, 2)
        elif len(maps) == 2:
            reduced = self._entangled_product_marginals(maps[0])
        else:  # the circuit's heavy work: on all the threads a training step has (sqdr.models.threads)
            reduced = threads.run_parallel(self._evolved_marginals, *maps[:-1])
        observables = self._heisenberg(maps[-1])
        return self._measured(torch.einsum("bkncr,bnrc->bkn", observables, reduced).real.flatten(1))

    def _measured(self, expectations: torch.Tensor) -> torch.Tensor:
        """What measuring reports: the readout error, then (if shots are given) the shots' estimate."""
        if self.spec.noise is not None:
            expectations = self.spec.noise.read(expectations)
        return self._sample_shots(expectations) if self.shots else expectations

    def _bloch_expectations(self, data: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``<P_i>`` of a pure circuit of one or two blocks, on every qubit's Bloch vector (see the module doc)."""
        data_rotation = bloch_rotations(data)  # (B, n, 3, 3), the same data angles in every block
        block_rotations = bloch_rotations(weights)  # (L, n, 3, 3)
        bloch = block_rotations[0] @ data_rotation[..., 2:]  # R_W R_D e_z: the first block acts on |0>, (B, n, 3, 1)
        if weights.shape[0] == 2:
            coherence = self._cz_coherence(bloch[..., 2, 0])
            scale = torch.stack([coherence, coherence, torch.ones_like(coherence)], -1).unsqueeze(-1)
            bloch = block_rotations[1] @ (data_rotation @ (bloch * scale))
        axes = [BLOCH_AXIS[name] for name in self.spec.paulis]
        return bloch[..., axes, 0].transpose(1, 2).flatten(1)

    def _sample_shots(self, expectations: torch.Tensor) -> torch.Tensor:
        """Estimate each ``<P_i>`` from ``shots`` samples of its exact marginal (every Pauli measured in its own
        basis); straight-through gradient."""
        p_zero = ((1 + expectations.detach()) / 2).clamp(0, 1)
        zeros = torch.distributions.Binomial(self.shots, probs=p_zero).sample()
        estimate = 2 * zeros / self.shots - 1
        return expectations + (estimate - expectations).detach()
