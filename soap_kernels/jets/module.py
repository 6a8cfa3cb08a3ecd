"""`JetModule`: the base class of networks whose jets are propagated in forward mode."""

from __future__ import annotations

import torch

from soap_kernels.jets.jet import Jet


class JetModule(torch.nn.Module):
    """A network that maps x [N, in_features] to u [N, out_features] and can do the same on a Jet.

    Subclasses implement `forward_jet(jet) -> Jet` with the same arithmetic as `forward`, so that
    `forward_jet(Jet.seed(x, plan)).value == forward(x)`.
    """

    in_features: int
    out_features: int

    def forward_jet(self, jet: Jet) -> Jet:
        raise NotImplementedError(f"{type(self).__name__} does not implement forward_jet")
