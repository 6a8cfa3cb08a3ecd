"""Multilayer perceptrons: the plain MLP and the modified MLP with U/V gates (Wang, Teng, Perdikaris 2021)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from soap_kernels.jets.jet import Jet
from soap_kernels.jets.module import JetModule
from soap_kernels.nn.layers import Dense, InputEmbedding, _check_positive_int


class MLP(JetModule):
    """u = W_L h_{L-1} + b_L, h_l = s(W_l h_{l-1} + b_l), h_0 = embedding(x); `hidden_layers` activated layers.

    Embedding keywords (periodic_*, fourier_*) and rwf=(mean, std) as in `InputEmbedding` and `Dense`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_features: int = 256,
        hidden_layers: int = 4,
        activation: str = "tanh",
        *,
        rwf: tuple[float, float] | None = None,
        periodic_axes: Sequence[int] | None = None,
        periodic_frequencies: Sequence[float] | None = None,
        periodic_trainable: bool = False,
        fourier_features: int | None = None,
        fourier_scale: float = 1.0,
        fourier_trainable: bool = True,
    ):
        super().__init__()
        self.in_features = _check_positive_int("in_features", in_features)
        self.out_features = _check_positive_int("out_features", out_features)
        _check_positive_int("hidden_features", hidden_features)
        _check_positive_int("hidden_layers", hidden_layers)
        self.embedding = InputEmbedding(
            in_features,
            periodic_axes=periodic_axes,
            periodic_frequencies=periodic_frequencies,
            periodic_trainable=periodic_trainable,
            fourier_features=fourier_features,
            fourier_scale=fourier_scale,
            fourier_trainable=fourier_trainable,
        )
        widths = [self.embedding.out_features] + [hidden_features] * hidden_layers
        self.hidden = nn.ModuleList(
            Dense(a, b, activation, rwf) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.output = Dense(hidden_features, out_features, None, rwf)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embedding(x)
        for layer in self.hidden:
            x = layer(x)
        return self.output(x)

    def forward_jet(self, jet: Jet) -> Jet:
        jet = self.embedding.forward_jet(jet)
        for layer in self.hidden:
            jet = layer.forward_jet(jet)
        return self.output.forward_jet(jet)


class ModifiedMLP(JetModule):
    """Gated MLP: U = s(W_u e + b_u), V = s(W_v e + b_v), e = embedding(x); per hidden layer
    h = s(W_l h + b_l) then h = h * U + (1 - h) * V (computed as V + h * (U - V)); u = W_L h + b_L.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_features: int = 256,
        hidden_layers: int = 4,
        activation: str = "tanh",
        *,
        rwf: tuple[float, float] | None = None,
        periodic_axes: Sequence[int] | None = None,
        periodic_frequencies: Sequence[float] | None = None,
        periodic_trainable: bool = False,
        fourier_features: int | None = None,
        fourier_scale: float = 1.0,
        fourier_trainable: bool = True,
    ):
        super().__init__()
        self.in_features = _check_positive_int("in_features", in_features)
        self.out_features = _check_positive_int("out_features", out_features)
        _check_positive_int("hidden_features", hidden_features)
        _check_positive_int("hidden_layers", hidden_layers)
        self.embedding = InputEmbedding(
            in_features,
            periodic_axes=periodic_axes,
            periodic_frequencies=periodic_frequencies,
            periodic_trainable=periodic_trainable,
            fourier_features=fourier_features,
            fourier_scale=fourier_scale,
            fourier_trainable=fourier_trainable,
        )
        width = self.embedding.out_features
        self.gate_u = Dense(width, hidden_features, activation, rwf)
        self.gate_v = Dense(width, hidden_features, activation, rwf)
        widths = [width] + [hidden_features] * hidden_layers
        self.hidden = nn.ModuleList(
            Dense(a, b, activation, rwf) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.output = Dense(hidden_features, out_features, None, rwf)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embedding(x)
        u, v = self.gate_u(x), self.gate_v(x)
        for layer in self.hidden:
            x = v + layer(x) * (u - v)
        return self.output(x)

    def forward_jet(self, jet: Jet) -> Jet:
        jet = self.embedding.forward_jet(jet)
        u, v = self.gate_u.forward_jet(jet), self.gate_v.forward_jet(jet)
        u_minus_v = u - v
        for layer in self.hidden:
            jet = v + layer.forward_jet(jet) * u_minus_v
        return self.output.forward_jet(jet)
