"""Classical stand-ins for the re-upload circuit: what a model would be without it, at the same size.

A hybrid's accuracy says nothing about its circuit unless the same network with a classical map in the
circuit's place, trained the same way, is measured beside it. ``SQDRCNN(quantum=False, classical_map=...)``
builds those twins:

* ``tanh_layer``: :class:`ClassicalLayer`, ``tanh(Linear(3n -> n))`` (the paper-recipe baseline);
* ``matched``: :class:`ParameterMatchedMLP` with the circuit's input and output widths and exactly its number of
  trainable parameters, ending in ``tanh`` like the expectations it replaces;
* ``none``: no map at all; the encoder's features go straight into a head widened (a
  :class:`ParameterMatchedMLP`) to the parameters the circuit and the hybrid's head had together.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

ClassicalMap = Literal["tanh_layer", "matched", "none"]


class ClassicalLayer(nn.Module):
    """``Linear(3n -> n)`` and ``tanh`` in place of the circuit: a classical layer of comparable size.

    It reads the same ``3 * n_qubits`` encoder features and, like ``<Z_i>``, emits ``n_qubits`` values in
    [-1, 1], so the head and the parameter split (encoder / circuit / head) stay as they are.
    """

    def __init__(self, n_qubits: int) -> None:
        super().__init__()
        self.layer = nn.Linear(3 * n_qubits, n_qubits)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.layer(features))


class ParameterMatchedMLP(nn.Module):
    """``in_features -> hidden -> out_features`` with exactly ``budget`` trainable parameters.

    The layers are ``tanh(W1 x)`` (no hidden bias) and ``W2 h + b2``, then ``tanh`` if ``output_tanh``. Such a
    network has ``hidden * (in_features + out_features) + out_features`` parameters; ``hidden`` is the smallest
    width that holds the budget, and the last hidden unit keeps only the weights the budget has left (its first
    input weights, then its first output weights; the rest are fixed zeros). The weights live in one flat
    parameter of ``budget - out_features`` values and the bias ``b2``, so ``parameters()`` counts exactly
    ``budget``. For the 1k and 5k models' circuit (27 features in, 27 expectations out, 135 angles) that is
    ``hidden = 2`` with nothing cut: ``2 * (27 + 27) + 27 = 135``.

    Initialised as ``nn.Linear`` initialises its layers: uniform on ``±1/sqrt(fan_in)``.
    """

    def __init__(self, in_features: int, out_features: int, budget: int, output_tanh: bool) -> None:
        super().__init__()
        weights = budget - out_features
        if weights < 1:
            raise ValueError(
                f"a classical map of {in_features} -> {out_features} values needs more than {out_features} "
                f"parameters (its output biases alone), but the budget is {budget}."
            )
        per_unit = in_features + out_features
        self.in_features, self.out_features = in_features, out_features
        self.hidden = math.ceil(weights / per_unit)
        self.output_tanh = output_tanh
        first = torch.empty(self.hidden, in_features).uniform_(-1, 1) / math.sqrt(in_features)
        second = torch.empty(out_features, self.hidden).uniform_(-1, 1) / math.sqrt(self.hidden)
        # Flattened unit by unit (a unit's input weights, then its output weights), so the cut falls on the last.
        units = torch.cat([first, second.T], dim=1).flatten()
        self.weights = nn.Parameter(units[:weights].clone())
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-1, 1) / math.sqrt(self.hidden))
        self.register_buffer("cut", torch.zeros(self.hidden * per_unit - weights), persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        units = torch.cat([self.weights, self.cut.to(self.weights.dtype)]).view(self.hidden, -1)
        first, second = units[:, : self.in_features], units[:, self.in_features :]
        out = torch.tanh(features @ first.T) @ second + self.bias
        return torch.tanh(out) if self.output_tanh else out

    def extra_repr(self) -> str:
        return (
            f"{self.in_features} -> {self.hidden} -> {self.out_features}, "
            f"{self.weights.numel() + self.bias.numel()} parameters, output_tanh={self.output_tanh}"
        )


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
