"""Network factory: the paper's PirateNet from soap_kernels.nn (issue 5), or a local fallback.

The fallback (`EmbeddedMLP`) is a deliberately minimal stand-in, not the paper's architecture:
periodic embedding (x -> cos(w x), sin(w x) on periodic axes) -> random Fourier features
(z -> [cos(z B), sin(z B)], B ~ N(0, scale^2), trainable as in jaxpi) -> tanh/swish MLP -> linear head.
No random weight factorisation and no gated residual blocks. `describe_model` says which one ran.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["ModelSpec", "build_model", "EmbeddedMLP", "PeriodicEmbedding", "FourierFeatures"]


@dataclass(frozen=True)
class ModelSpec:
    """What the recipe asks for; the factory maps it to a concrete network."""

    input_dim: int
    output_dim: int
    hidden_features: int = 256
    hidden_layers: int = 3
    activation: str = "tanh"
    periodic_axes: dict[int, float] = field(default_factory=dict)  # input axis -> angular frequency
    fourier_features: int = 256  # total embedding width (cos and sin halves)
    fourier_scale: float = 1.0
    rwf: tuple[float, float] | None = (1.0, 0.1)  # random weight factorisation (mean, std); PirateNet only


_ACTIVATIONS = {"tanh": torch.tanh, "sin": torch.sin, "swish": nn.functional.silu, "silu": nn.functional.silu}


class PeriodicEmbedding(nn.Module):
    """Replace each periodic input x_a by (cos(w_a x_a), sin(w_a x_a)); other inputs pass through."""

    def __init__(self, input_dim: int, periodic_axes: dict[int, float]):
        super().__init__()
        for axis in periodic_axes:
            if not 0 <= axis < input_dim:
                raise ValueError(f"periodic axis {axis} out of range for {input_dim} inputs")
        self.input_dim = input_dim
        self.periodic_axes = dict(periodic_axes)
        self.output_dim = input_dim + len(periodic_axes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = []
        for axis in range(self.input_dim):
            column = x[:, axis : axis + 1]
            if axis in self.periodic_axes:
                w = self.periodic_axes[axis]
                parts.extend([torch.cos(w * column), torch.sin(w * column)])
            else:
                parts.append(column)
        return torch.cat(parts, dim=1)


class FourierFeatures(nn.Module):
    """z -> [cos(z B), sin(z B)] with a trainable B [in, features/2] ~ N(0, scale^2)."""

    def __init__(self, input_dim: int, features: int, scale: float, generator: torch.Generator):
        super().__init__()
        if features % 2:
            raise ValueError(f"fourier_features must be even, got {features}")
        self.kernel = nn.Parameter(scale * torch.randn(input_dim, features // 2, generator=generator))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        projected = z @ self.kernel
        return torch.cat([torch.cos(projected), torch.sin(projected)], dim=1)


class EmbeddedMLP(nn.Module):
    """Periodic embedding -> Fourier features -> MLP -> linear head (see module docstring)."""

    def __init__(self, spec: ModelSpec, seed: int = 0):
        super().__init__()
        if spec.activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {spec.activation!r}; known: {sorted(_ACTIVATIONS)}")
        generator = torch.Generator().manual_seed(seed)
        self.spec = spec
        self.periodic = PeriodicEmbedding(spec.input_dim, spec.periodic_axes)
        width = self.periodic.output_dim
        self.fourier = None
        if spec.fourier_features > 0:
            self.fourier = FourierFeatures(width, spec.fourier_features, spec.fourier_scale, generator)
            width = spec.fourier_features
        self.hidden = nn.ModuleList()
        for _ in range(spec.hidden_layers):
            layer = nn.Linear(width, spec.hidden_features)
            _glorot_normal_(layer, generator)
            self.hidden.append(layer)
            width = spec.hidden_features
        self.head = nn.Linear(width, spec.output_dim)
        _glorot_normal_(self.head, generator)
        self._activation = _ACTIVATIONS[spec.activation]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden layer's output (what the head combines linearly)."""
        z = self.periodic(x)
        if self.fourier is not None:
            z = self.fourier(z)
        for layer in self.hidden:
            z = self._activation(layer(z))
        return z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    @torch.no_grad()
    def physics_informed_init(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Set the head to the least-squares fit of y [N, out] from features(x), bias 0 (as PirateNet)."""
        features = self.features(x).double()
        solution = torch.linalg.lstsq(features, y.double()).solution
        self.head.weight.copy_(solution.t().to(self.head.weight.dtype))
        self.head.bias.zero_()


def _glorot_normal_(layer: nn.Linear, generator: torch.Generator) -> None:
    """Glorot-normal weights and zero bias (the jaxpi Dense default), from our own generator."""
    fan_out, fan_in = layer.weight.shape
    std = math.sqrt(2.0 / (fan_in + fan_out))
    with torch.no_grad():
        layer.weight.copy_(std * torch.randn(fan_out, fan_in, generator=generator))
        layer.bias.zero_()


def _soap_kernels_nn():
    try:
        return importlib.import_module("soap_kernels.nn")
    except ImportError:
        return None


def build_model(spec: ModelSpec, seed: int = 0, architecture: str = "auto") -> nn.Module:
    """The network for `spec`. architecture: 'auto' (PirateNet from soap_kernels.nn when available,
    else the local EmbeddedMLP), 'pirate' (PirateNet or an error), or 'local' (EmbeddedMLP).

    PirateNet needs spec.fourier_features == spec.hidden_features (its residual blocks add the embedding).
    """
    if architecture not in ("auto", "pirate", "local"):
        raise ValueError(f"unknown architecture {architecture!r}; choose auto, pirate or local")
    library = _soap_kernels_nn() if architecture != "local" else None
    if library is not None and hasattr(library, "PirateNet") and _PIRATE_CONSTRUCTOR_MAPPED:
        return _build_pirate(library, spec, seed)
    if architecture == "pirate":
        raise NotImplementedError(
            "architecture 'pirate' needs soap_kernels.nn.PirateNet mapped by soap_pinn.models._build_pirate, "
            "which this version does not have yet"
        )
    return EmbeddedMLP(spec, seed)


# _build_pirate maps ModelSpec onto soap_kernels.nn.PirateNet's constructor (issue 5)
_PIRATE_CONSTRUCTOR_MAPPED = True


def _build_pirate(library, spec: ModelSpec, seed: int) -> nn.Module:
    """soap_kernels.nn.PirateNet: spec.hidden_layers gated residual blocks, alpha initialised to 0 (the
    paper's "nonlinearity 0": each block starts as the identity), RWF, periodic + Fourier embeddings.

    PirateNet draws its initial weights from torch's global generator; we fork it so that building a
    model neither depends on nor disturbs the caller's random state.
    """
    periodic = sorted(spec.periodic_axes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = library.PirateNet(
            spec.input_dim,
            spec.output_dim,
            spec.hidden_features,
            spec.hidden_layers,
            spec.activation,
            rwf=spec.rwf,
            alpha_init=0.0,
            periodic_axes=periodic or None,
            periodic_frequencies=[spec.periodic_axes[a] for a in periodic] or None,
            fourier_features=spec.fourier_features,
            fourier_scale=spec.fourier_scale,
        )
    model._soap_pinn_spec = spec  # for describe_model
    return model


def describe_model(model: nn.Module) -> str:
    """A one-line name of the network that actually runs (for config.json and reports)."""
    count = sum(p.numel() for p in model.parameters())
    if isinstance(model, EmbeddedMLP):
        s = model.spec
        return (f"local EmbeddedMLP {s.hidden_layers}x{s.hidden_features} {s.activation}, fourier "
                f"{s.fourier_features} (scale {s.fourier_scale}), periodic axes {s.periodic_axes}; {count} params")
    spec = getattr(model, "_soap_pinn_spec", None)
    detail = ""
    if spec is not None:
        detail = (f" {spec.hidden_layers} blocks x {spec.hidden_features} {spec.activation}, fourier "
                  f"{spec.fourier_features} (scale {spec.fourier_scale}), periodic axes {spec.periodic_axes}, "
                  f"rwf {spec.rwf}")
    return f"{type(model).__module__}.{type(model).__name__}{detail}; {count} params"
