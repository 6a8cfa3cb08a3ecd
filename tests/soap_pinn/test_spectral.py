"""ETDRK4 and Fourier interpolation against closed-form solutions."""

import numpy as np
import pytest
from soap_pinn.spectral import etdrk4_coefficients, fourier_interpolate, integrate_etdrk4, wavenumbers


def test_linear_heat_equation_is_exact():
    # u_t = u_xx on [0, 2 pi): each mode decays as exp(-k^2 t); ETDRK4 integrates L exactly.
    n = 32
    x = 2 * np.pi * np.arange(n) / n
    k = wavenumbers(n, 2 * np.pi)
    u0 = np.sin(x) + 0.3 * np.cos(3 * x)
    t = np.linspace(0, 0.5, 6)
    snapshots = integrate_etdrk4(np.fft.fft(u0), -(k**2), lambda v: 0 * v, t, steps_per_output=3)
    u_end = np.fft.ifft(snapshots[-1]).real
    exact = np.exp(-0.5) * np.sin(x) + 0.3 * np.exp(-9 * 0.5) * np.cos(3 * x)
    assert np.abs(u_end - exact).max() < 1e-13


def test_logistic_nonlinearity_fourth_order():
    # u_t = u - u^2 for a constant field: u(t) = 1 / (1 + (1/u0 - 1) e^{-t}); error must fall ~16x per halving.
    u0, t_end = 0.2, 2.0
    exact = 1 / (1 + (1 / u0 - 1) * np.exp(-t_end))
    errors = []
    for steps in (4, 8):
        v0 = np.array([u0 * 4.0, 0, 0, 0], dtype=complex)  # fft of a constant field of 4 points

        def nonlinear(v):
            u = np.fft.ifft(v).real
            return np.fft.fft(-(u**2))

        v = integrate_etdrk4(v0, np.ones(4), nonlinear, np.array([0.0, t_end]), steps)[-1]
        errors.append(abs(np.fft.ifft(v).real[0] - exact))
    assert errors[1] < errors[0] / 10  # fourth order: ratio 16 asymptotically


def test_coefficients_for_small_operator_match_taylor_limit():
    # as L -> 0: Q -> h/2, f1 -> h/6, f2 -> h/6, f3 -> h/6 (Kassam-Trefethen)
    _, _, q, f1, f2, f3 = etdrk4_coefficients(np.array([1e-12]), h=0.1)
    assert q[0] == pytest.approx(0.05, rel=1e-10)
    for f in (f1, f2, f3):
        assert f[0] == pytest.approx(0.1 / 6, rel=1e-10)


@pytest.mark.parametrize("n", [16, 17])
def test_fourier_interpolation_is_exact_for_band_limited_fields(n):
    x = -1 + 2 * np.arange(n) / n
    field = np.cos(np.pi * x) + 0.5 * np.sin(3 * np.pi * x)
    x_out = np.linspace(-1, 1, 23)
    values = fourier_interpolate(np.fft.fft(field), x_out, -1.0, 2.0)
    expected = np.cos(np.pi * x_out) + 0.5 * np.sin(3 * np.pi * x_out)
    assert np.abs(values - expected).max() < 1e-12


def test_non_uniform_output_times_rejected():
    with pytest.raises(ValueError, match="uniformly"):
        integrate_etdrk4(np.zeros(4), np.zeros(4), lambda v: v, np.array([0.0, 0.1, 0.3]), 1)
