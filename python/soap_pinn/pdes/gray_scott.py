"""Gray-Scott reaction-diffusion in 2-D, real fields (u, v):

    u_t - eps1 lap u - b1 (1 - u) + c1 u v^2 = 0
    v_t - eps2 lap v + b2 v - c2 u v^2 = 0,     eps1 = 0.2, eps2 = 0.1, b1 = 40, b2 = 100, c1 = c2 = 1000,

on (x, y) in [-1, 1]^2 periodic, t in [0, 2], u(0) = 1 - exp(-10 ((x + 0.05)^2 + (y + 0.02)^2)),
v(0) = exp(-10 ((x - 0.05)^2 + (y - 0.02)^2)); 10 time windows (jaxpi, branch pirate, examples/grey_scott:
the coefficients of data/gen_grey_scott.m, the settings of configs/pirate.py). The reference is generated
by ETDRK4 as the paper's spin2 script does (references.gray_scott).

As for Ginzburg-Landau, the network sees the window's local time t itself; the paper's code divides it
by the window length first (an input scaling this trainer does not apply to any PDE).
"""

from __future__ import annotations

import math

from ..references import GRAY_SCOTT
from .base import PeriodicSquareSystem, Recipe


class GrayScott(PeriodicSquareSystem):
    name = "gray_scott"
    summary = "Gray-Scott u_t = 0.2 lap u + 40(1-u) - 1000uv^2, v_t = 0.1 lap v - 100v + 1000uv^2, periodic [-1,1]^2"
    recipe = Recipe(
        fourier_scale=1.0, periodic_axes={1: math.pi, 2: math.pi}, activation="swish",
        initial_weights={"u_ic": 1.0, "v_ic": 1.0, "ru": 1.0, "rv": 1.0},
        causal_tol=1.0, causal_chunks=32, batch_size=4096, decay_steps=2000, max_steps=100_000,
        time_windows=10, rwf_mean=0.5,
    )
    reference_settings = {"modes": 200, "steps_per_output": 20, "nt": 101, "n_out": 200}

    def residual(self, d):
        g = GRAY_SCOTT
        u, v, w_t, laplacian = self.fields(d)
        uv2 = u * v**2
        ru = w_t[..., 0] - g["eps1"] * laplacian[..., 0] - g["b1"] * (1.0 - u) + g["c1"] * uv2
        rv = w_t[..., 1] - g["eps2"] * laplacian[..., 1] + g["b2"] * v - g["c2"] * uv2
        return ru, rv
