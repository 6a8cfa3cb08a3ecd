"""Burgers: u_t + u u_x - (0.01/pi) u_xx = 0, x in [-1, 1], t in [0, 1], u(0, x) = -sin(pi x), u(t, +-1) = 0."""

from __future__ import annotations

import math

import numpy as np
import torch

from .base import PDE, Recipe, Window, window_constant

NU = 0.01 / math.pi


class Burgers(PDE):
    name = "burgers"
    summary = "u_t + u u_x = (0.01/pi) u_xx, x in [-1,1] with u(+-1)=0, t in [0,1]"
    derivatives = ((0,), (1,), (1, 1))
    recipe = Recipe(
        fourier_scale=1.0, initial_weights={"ics": 1.0, "bcs": 1.0, "res": 1.0},
        causal_tol=1.0, causal_chunks=32, batch_size=8192, decay_steps=1000, max_steps=100_000,
    )
    reference_settings = {"modes": 1024, "steps_per_output": 50, "nt": 201, "nx": 512}

    def boundary_terms(self):
        return ("bcs",)

    def residual(self, d):
        u, u_t, u_x, u_xx = d[()][..., 0], d[(0,)][..., 0], d[(1,)][..., 0], d[(1, 1)][..., 0]
        return (u_t + u * u_x - NU * u_xx,)

    def condition_losses(self, model, window: Window, ic_stride: int = 1):
        losses = super().condition_losses(model, window, ic_stride)
        losses["bcs"] = dirichlet_zero_loss(model, window, ic_stride)
        return losses


def dirichlet_zero_loss(model, window: Window, stride: int = 1) -> torch.Tensor:
    """mean u(t, x_left)^2 + mean u(t, x_right)^2 over the window's time grid (local time)."""
    parameter = next(model.parameters())
    t_local = window.reference.t[::stride] - window.t_start
    x = window.reference.coordinates[0]

    def boundary_inputs() -> np.ndarray:
        left = np.stack([t_local, np.full_like(t_local, x[0])], axis=1)
        right = np.stack([t_local, np.full_like(t_local, x[-1])], axis=1)
        return np.concatenate([left, right])

    u = model(window_constant(window, ("dirichlet inputs", stride), boundary_inputs, parameter))[:, 0]
    n = len(t_local)
    return (u[:n] ** 2).mean() + (u[n:] ** 2).mean()
