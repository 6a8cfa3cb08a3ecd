"""Wave: u_tt - c^2 u_xx = 0, c = 2, x in [0, 1], t in [0, 1]; u(t, 0) = u(t, 1) = 0,
u(0, x) = sin(pi x) + 0.5 sin(4 pi x), u_t(0, x) = 0 (closed-form reference)."""

from __future__ import annotations

import numpy as np

from ..references import WAVE_SPEED
from .base import PDE, Recipe, Window, grid_points, window_constant
from .burgers import dirichlet_zero_loss


class Wave(PDE):
    name = "wave"
    summary = "u_tt = 4 u_xx, x in [0,1] with u(0)=u(1)=0, t in [0,1] (closed form)"
    derivatives = ((0, 0), (1, 1))
    ic_terms = ("u0",)
    spatial_bounds = ((0.0, 1.0),)
    periodic = (False,)
    recipe = Recipe(
        fourier_scale=10.0, initial_weights={"u0": 1.0, "u_t0": 1.0, "bcs": 1.0, "res": 1.0},
        causal_tol=1e-2, causal_chunks=32, batch_size=8192, decay_steps=2000, max_steps=200_000,
    )
    reference_settings = {"nt": 200, "nx": 128}

    def boundary_terms(self):
        return ("u_t0", "bcs")

    def residual(self, d):
        return (d[(0, 0)][..., 0] - WAVE_SPEED**2 * d[(1, 1)][..., 0],)

    def condition_losses(self, model, window: Window, ic_stride: int = 1):
        from ..derivatives import evaluate

        losses = super().condition_losses(model, window, ic_stride)
        parameter = next(model.parameters())
        x = window.reference.coordinates[0][::ic_stride]
        inputs = window_constant(window, ("u_t0 inputs", ic_stride), lambda: grid_points(np.zeros(1), (x,)), parameter)
        # the initial velocity u_t(0, x) = 0 (jaxpi's "u_t0" term)
        losses["u_t0"] = (evaluate(model, inputs, [(0,)])[(0,)][:, 0] ** 2).mean()
        losses["bcs"] = dirichlet_zero_loss(model, window, ic_stride)
        return losses
