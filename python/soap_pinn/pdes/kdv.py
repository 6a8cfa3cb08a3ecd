"""Korteweg-de Vries: u_t + u u_x + 0.022^2 u_xxx = 0, x in [-1, 1] periodic, t in [0, 1], u(0, x) = cos(pi x)."""

from __future__ import annotations

import math

from .base import PDE, Recipe


class KdV(PDE):
    name = "kdv"
    summary = "u_t + u u_x + 0.022^2 u_xxx = 0, periodic x in [-1,1], t in [0,1]"
    derivatives = ((0,), (1,), (1, 1, 1))
    recipe = Recipe(
        fourier_scale=1.0, periodic_axes={1: math.pi}, initial_weights={"ics": 1.0, "res": 1.0},
        causal_tol=0.1, causal_chunks=16, batch_size=4096, decay_steps=2000, max_steps=200_000,
    )
    reference_settings = {"modes": 512, "steps_per_output": 50, "nt": 201, "nx": 512}

    def residual(self, d):
        u, u_t, u_x, u_xxx = d[()][..., 0], d[(0,)][..., 0], d[(1,)][..., 0], d[(1, 1, 1)][..., 0]
        return (u_t + u * u_x + 0.022**2 * u_xxx,)
