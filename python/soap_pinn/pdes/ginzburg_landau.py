"""Complex Ginzburg-Landau in 2-D, written for w = u + i v (real fields u, v):

    u_t - eps lap u - k (u - u |w|^2 + 1.5 v |w|^2) = 0
    v_t - eps lap v - k (v - v |w|^2 - 1.5 u |w|^2) = 0,   |w|^2 = u^2 + v^2,  k = 10, eps = k / 2500,

on (x, y) in [-1, 1]^2 periodic, t in [0, 1], w(0) = (10 i x + 10 y) exp(-25 (x^2 + y^2)); 5 time windows.
"""

from __future__ import annotations

import math

from ..references import GINZBURG_LANDAU_EPS, GINZBURG_LANDAU_K
from .base import PeriodicSquareSystem, Recipe


class GinzburgLandau(PeriodicSquareSystem):
    name = "ginzburg_landau"
    summary = "complex Ginzburg-Landau w_t = eps lap w + k w - k(1+1.5i) w|w|^2, periodic [-1,1]^2"
    recipe = Recipe(
        fourier_scale=1.0, periodic_axes={1: math.pi, 2: math.pi}, activation="swish",
        initial_weights={"u_ic": 100.0, "v_ic": 100.0, "ru": 1.0, "rv": 1.0},
        causal_tol=5.0, causal_chunks=16, batch_size=8192, decay_steps=2000, max_steps=100_000,
        time_windows=5, rwf_mean=0.5,
    )
    reference_settings = {"modes": 128, "steps_per_output": 20, "nt": 101, "n_out": 200}

    def residual(self, d):
        u, v, w_t, laplacian = self.fields(d)
        modulus = u**2 + v**2
        k, eps = GINZBURG_LANDAU_K, GINZBURG_LANDAU_EPS
        ru = w_t[..., 0] - eps * laplacian[..., 0] - k * (u - u * modulus + 1.5 * v * modulus)
        rv = w_t[..., 1] - eps * laplacian[..., 1] - k * (v - v * modulus - 1.5 * u * modulus)
        return ru, rv
