"""PINN architectures whose jets `soap_kernels.jet` propagates in forward mode.

MLP, ModifiedMLP (U/V gates), PirateNet (gated residual blocks), with optional random Fourier features,
periodic embeddings and random weight factorisation (rwf). Activations: tanh, sin, silu (swish), gelu
(tanh approximation), sigmoid, cos.
"""

from soap_kernels.jets.activations import ACTIVATIONS
from soap_kernels.jets.module import JetModule
from soap_kernels.nn.layers import Dense, FourierFeatures, InputEmbedding, PeriodicEmbedding
from soap_kernels.nn.mlp import MLP, ModifiedMLP
from soap_kernels.nn.piratenet import PirateBlock, PirateNet

__all__ = [
    "ACTIVATIONS",
    "MLP",
    "Dense",
    "FourierFeatures",
    "InputEmbedding",
    "JetModule",
    "ModifiedMLP",
    "PeriodicEmbedding",
    "PirateBlock",
    "PirateNet",
]
