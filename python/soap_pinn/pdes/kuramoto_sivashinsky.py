"""Kuramoto-Sivashinsky (chaotic): u_t + a u u_x + b u_xx + c u_xxxx = 0 with a = 100/16, b = 100/16^2,
c = 100/16^4, x in [0, 2 pi] periodic, t in [0, 1], u(0, x) = cos(x)(1 + sin(x)); 10 time windows."""

from __future__ import annotations

from .base import PDE, Recipe

A, B, C = 100.0 / 16.0, 100.0 / 16.0**2, 100.0 / 16.0**4


class KuramotoSivashinsky(PDE):
    name = "ks"
    summary = "u_t + (100/16) u u_x + (100/16^2) u_xx + (100/16^4) u_xxxx = 0, periodic x in [0,2pi]"
    derivatives = ((0,), (1,), (1, 1), (1, 1, 1, 1))
    spatial_bounds = ((0.0, 6.283185307179586),)
    recipe = Recipe(
        fourier_scale=1.0, periodic_axes={1: 1.0}, initial_weights={"ics": 1000.0, "res": 1.0},
        causal_tol=0.1, causal_chunks=16, batch_size=4096, decay_steps=2000, max_steps=200_000,
        time_windows=10, rwf_mean=0.5,
    )
    reference_settings = {"modes": 512, "steps_per_output": 40, "nt": 251, "nx": 512}

    def residual(self, d):
        u, u_t, u_x = d[()][..., 0], d[(0,)][..., 0], d[(1,)][..., 0]
        u_xx, u_xxxx = d[(1, 1)][..., 0], d[(1, 1, 1, 1)][..., 0]
        return (u_t + A * u * u_x + B * u_xx + C * u_xxxx,)
