"""PirateNet (Wang, Li, Chen, Perdikaris 2024): gated residual blocks that start as the identity.

e = embedding(x) (Fourier features of width hidden_features by default), U = s(W_u e + b_u),
V = s(W_v e + b_v). Each block, from x:
    f = s(W_1 x + b_1),  z_1 = V + f (U - V);  g = s(W_2 z_1 + b_2),  z_2 = V + g (U - V);
    h = s(W_3 z_2 + b_3);  x <- alpha h + (1 - alpha) x,   alpha trainable, initially 0.
u = W_L x + b_L. `physics_informed_init(x, y)` sets the last layer by least squares (the paper's
physics-informed initialisation).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from soap_kernels.jets.jet import Jet
from soap_kernels.jets.module import JetModule
from soap_kernels.nn.layers import Dense, InputEmbedding, _check_positive_int


class PirateBlock(JetModule):
    """One gated residual block; forward takes (x, u, v) and returns alpha h + (1 - alpha) x."""

    def __init__(
        self, features: int, activation: str, rwf: tuple[float, float] | None, alpha_init: float = 0.0
    ):
        super().__init__()
        self.in_features = self.out_features = features
        self.layers = nn.ModuleList(Dense(features, features, activation, rwf) for _ in range(3))
        self.alpha = nn.Parameter(torch.full((1,), float(alpha_init)))

    def forward(self, x: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        h = x
        for layer in self.layers[:2]:
            h = v + layer(h) * (u - v)
        h = self.layers[2](h)
        return self.alpha * h + (1 - self.alpha) * x

    def forward_jet(self, jet: Jet, u: Jet, u_minus_v: Jet, v: Jet) -> Jet:  # type: ignore[override]
        h = jet
        for layer in self.layers[:2]:
            h = v + layer.forward_jet(h) * u_minus_v
        h = self.layers[2].forward_jet(h)
        return jet.mix(h, self.alpha)  # alpha h + (1 - alpha) x in one pass over the stacks (three as written)


class PirateNet(JetModule):
    """PirateNet with `blocks` residual blocks of width hidden_features (the embedding must match it).

    fourier_features defaults (-1) to hidden_features; None turns the Fourier embedding off (then the
    periodic embedding, or the raw input, must already be hidden_features wide). rwf=(mean, std) as in
    `Dense`; alpha_init is the blocks' initial mixing weight (0: each block starts as the identity).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_features: int = 256,
        blocks: int = 3,
        activation: str = "tanh",
        *,
        rwf: tuple[float, float] | None = None,
        alpha_init: float = 0.0,
        periodic_axes: Sequence[int] | None = None,
        periodic_frequencies: Sequence[float] | None = None,
        periodic_trainable: bool = False,
        fourier_features: int | None = -1,
        fourier_scale: float = 1.0,
        fourier_trainable: bool = True,
    ):
        super().__init__()
        self.in_features = _check_positive_int("in_features", in_features)
        self.out_features = _check_positive_int("out_features", out_features)
        _check_positive_int("hidden_features", hidden_features)
        _check_positive_int("blocks", blocks)
        self.embedding = InputEmbedding(
            in_features,
            periodic_axes=periodic_axes,
            periodic_frequencies=periodic_frequencies,
            periodic_trainable=periodic_trainable,
            fourier_features=hidden_features if fourier_features == -1 else fourier_features,
            fourier_scale=fourier_scale,
            fourier_trainable=fourier_trainable,
        )
        if self.embedding.out_features != hidden_features:
            raise ValueError(
                f"PirateNet's residual blocks need the embedding width ({self.embedding.out_features}) to equal "
                f"hidden_features ({hidden_features}); set fourier_features={hidden_features}"
            )
        self.gate_u = Dense(hidden_features, hidden_features, activation, rwf)
        self.gate_v = Dense(hidden_features, hidden_features, activation, rwf)
        self.blocks = nn.ModuleList(PirateBlock(hidden_features, activation, rwf, alpha_init) for _ in range(blocks))
        self.output = Dense(hidden_features, out_features, None, rwf)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden representation, before the output layer."""
        x = self.embedding(x)
        u, v = self.gate_u(x), self.gate_v(x)
        for block in self.blocks:
            x = block(x, u, v)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.features(x))

    def forward_jet(self, jet: Jet) -> Jet:
        jet = self.embedding.forward_jet(jet)
        u, v = self.gate_u.forward_jet(jet), self.gate_v.forward_jet(jet)
        u_minus_v = u - v
        for block in self.blocks:
            jet = block.forward_jet(jet, u, u_minus_v, v)
        return self.output.forward_jet(jet)

    @torch.no_grad()
    def physics_informed_init(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Set the output layer to the least-squares fit of y [N, out] from features(x), bias 0.

        The paper fits the last layer to an available solution (e.g. the initial condition) so training
        starts from it.
        """
        if y.dim() != 2 or y.shape != (x.shape[0], self.out_features):
            raise ValueError(f"y has shape {tuple(y.shape)}, expected [{x.shape[0]}, {self.out_features}]")
        features = self.features(x)
        # On the CPU, whose default driver (gelsy) is rank-revealing: the features are numerically rank-deficient
        # (tanh saturates), and CUDA's only driver (gels) assumes full rank and refuses fewer points than features.
        solution = torch.linalg.lstsq(features.double().cpu(), y.double().cpu()).solution  # [hidden, out]
        weight = solution.t().to(device=features.device, dtype=features.dtype)
        if hasattr(self.output, "weight"):
            self.output.weight.copy_(weight)
        else:
            self.output.direction.copy_(weight / self.output.scale[:, None])
        self.output.bias.zero_()
