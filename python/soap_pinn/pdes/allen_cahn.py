"""Allen-Cahn: u_t - 1e-4 u_xx + 5 u^3 - 5 u = 0, x in [-1, 1] periodic, t in [0, 1], u(0, x) = x^2 cos(pi x)."""

from __future__ import annotations

import math

from .base import PDE, Recipe


class AllenCahn(PDE):
    name = "allen_cahn"
    summary = "u_t = 1e-4 u_xx + 5u - 5u^3, periodic x in [-1,1], t in [0,1]"
    derivatives = ((0,), (1, 1))
    recipe = Recipe(
        fourier_scale=2.0, periodic_axes={1: math.pi}, initial_weights={"ics": 1.0, "res": 1.0},
        causal_tol=1.0, causal_chunks=32, batch_size=8192, decay_steps=5000, max_steps=300_000,
    )
    reference_settings = {"modes": 512, "steps_per_output": 10, "nt": 201, "nx": 512}

    def residual(self, d):
        u, u_t, u_xx = d[()][..., 0], d[(0,)][..., 0], d[(1, 1)][..., 0]
        return (u_t - 1e-4 * u_xx + 5.0 * u**3 - 5.0 * u,)
