"""Building blocks of the PINN architectures: dense layers (optionally weight-factorised) and input embeddings.

Each block computes the same function on a tensor (`forward`) and on a Jet (`forward_jet`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from soap_kernels.jets.activations import activation_function, check_activation
from soap_kernels.jets.jet import Jet
from soap_kernels.jets.module import JetModule


def _check_positive_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class Dense(JetModule):
    """y = s(x W^T + b), W [out, in] Glorot-normal, b = 0; s = None for an affine layer.

    rwf=(mean, std) turns on random weight factorisation (Wang et al. 2022): W = diag(g) V with trainable
    g = exp(N(mean, std)) per output feature and V = W_0 / g, so training moves scale and direction apart.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        activation: str | None = None,
        rwf: tuple[float, float] | None = None,
    ):
        super().__init__()
        self.in_features = _check_positive_int("in_features", in_features)
        self.out_features = _check_positive_int("out_features", out_features)
        self.activation = None if activation is None else check_activation(activation)
        initial = nn.init.xavier_normal_(torch.empty(out_features, in_features))
        if rwf is None:
            self.weight = nn.Parameter(initial)
        else:
            if len(rwf) != 2 or not rwf[1] >= 0:
                raise ValueError(f"rwf must be (mean, std) with std >= 0, got {rwf!r}")
            scale = torch.exp(rwf[0] + rwf[1] * torch.randn(out_features))
            self.scale = nn.Parameter(scale)
            self.direction = nn.Parameter(initial / scale[:, None])
        self.bias = nn.Parameter(torch.zeros(out_features))

    def effective_weight(self) -> torch.Tensor:
        """W, or diag(g) V under weight factorisation."""
        if hasattr(self, "weight"):
            return self.weight
        return self.scale[:, None] * self.direction

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = nn.functional.linear(x, self.effective_weight(), self.bias)
        return z if self.activation is None else activation_function(self.activation)(z)

    def forward_jet(self, jet: Jet) -> Jet:
        return jet.dense(self.effective_weight(), self.bias, self.activation)


class FourierFeatures(JetModule):
    """y = [cos(x B), sin(x B)], B [in, features/2] ~ N(0, scale^2); trainable or a fixed buffer."""

    def __init__(self, in_features: int, features: int, scale: float = 1.0, trainable: bool = True):
        super().__init__()
        self.in_features = _check_positive_int("in_features", in_features)
        if _check_positive_int("fourier features", features) % 2:
            raise ValueError(f"fourier features must be even (cos and sin halves), got {features}")
        if not scale > 0:
            raise ValueError(f"fourier scale must be positive, got {scale!r}")
        self.out_features = features
        frequencies = scale * torch.randn(in_features, features // 2)
        if trainable:
            self.frequencies = nn.Parameter(frequencies)
        else:
            self.register_buffer("frequencies", frequencies)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x @ self.frequencies
        return torch.cat([torch.cos(z), torch.sin(z)], dim=-1)

    def forward_jet(self, jet: Jet) -> Jet:
        # two fused layers sharing the (cheap, in_features-wide) GEMM rather than a GEMM + two activations
        frequencies_t = self.frequencies.t()
        return Jet.cat([jet.dense(frequencies_t, None, "cos"), jet.dense(frequencies_t, None, "sin")])


class PeriodicEmbedding(JetModule):
    """Each listed axis i becomes [cos(w_i x_i), sin(w_i x_i)] in place; other axes pass through.

    For a domain of period L along axis i use w_i = 2 pi / L; the output is exactly L-periodic in x_i.
    """

    def __init__(
        self, in_features: int, axes: Sequence[int], frequencies: Sequence[float], trainable: bool = False
    ):
        super().__init__()
        self.in_features = _check_positive_int("in_features", in_features)
        axes, frequencies = tuple(axes), tuple(frequencies)
        if len(axes) != len(frequencies) or not axes:
            raise ValueError(f"periodic axes {axes!r} and frequencies {frequencies!r} must be non-empty, same length")
        for axis in axes:
            if not isinstance(axis, int) or not 0 <= axis < in_features or axes.count(axis) > 1:
                raise ValueError(f"periodic axis {axis!r} is invalid or repeated for {in_features} input features")
        self.axes = axes
        self.out_features = in_features + len(axes)
        values = torch.tensor(frequencies, dtype=torch.get_default_dtype())
        if trainable:
            self.frequencies = nn.Parameter(values)
        else:
            self.register_buffer("frequencies", values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        columns = []
        for i in range(self.in_features):
            if i in self.axes:
                z = x[:, i : i + 1] * self.frequencies[self.axes.index(i)]
                columns += [torch.cos(z), torch.sin(z)]
            else:
                columns.append(x[:, i : i + 1])
        return torch.cat(columns, dim=-1)

    def forward_jet(self, jet: Jet) -> Jet:
        columns = []
        for i in range(self.in_features):
            column = jet.select(slice(i, i + 1))
            if i in self.axes:
                frequency = self.frequencies[self.axes.index(i)].reshape(1, 1)
                columns += [column.dense(frequency, None, "cos"), column.dense(frequency, None, "sin")]
            else:
                columns.append(column)
        return Jet.cat(columns)


class InputEmbedding(JetModule):
    """Periodic embedding (if periodic_axes) followed by Fourier features (if fourier_features)."""

    def __init__(
        self,
        in_features: int,
        *,
        periodic_axes: Sequence[int] | None = None,
        periodic_frequencies: Sequence[float] | None = None,
        periodic_trainable: bool = False,
        fourier_features: int | None = None,
        fourier_scale: float = 1.0,
        fourier_trainable: bool = True,
    ):
        super().__init__()
        self.in_features = _check_positive_int("in_features", in_features)
        layers: list[JetModule] = []
        width = in_features
        if periodic_axes is not None:
            if periodic_frequencies is None:
                periodic_frequencies = [math.pi] * len(periodic_axes)
            layers.append(PeriodicEmbedding(width, periodic_axes, periodic_frequencies, periodic_trainable))
            width = layers[-1].out_features
        if fourier_features is not None:
            layers.append(FourierFeatures(width, fourier_features, fourier_scale, fourier_trainable))
            width = layers[-1].out_features
        self.layers = nn.ModuleList(layers)
        self.out_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def forward_jet(self, jet: Jet) -> Jet:
        for layer in self.layers:
            jet = layer.forward_jet(jet)
        return jet
