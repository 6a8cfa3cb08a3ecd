"""Fourier pseudo-spectral ETDRK4 (Cox-Matthews scheme, Kassam-Trefethen 2005 coefficients) in numpy.

Solves u_t = L u + N(u) on a periodic box, with L diagonal in Fourier space:

    v = fft(u),  E = exp(h L),  E2 = exp(h L / 2)
    a = E2 v + Q N(v);  b = E2 v + Q N(a);  c = E2 a + Q (2 N(b) - N(v))
    v <- E v + f1 N(v) + 2 f2 (N(a) + N(b)) + f3 N(c)

Q, f1, f2, f3 are phi-functions of h L evaluated by a contour mean over M points on a unit circle around
each h L (Kassam and Trefethen, SIAM J. Sci. Comput. 26, 2005), which avoids the cancellation of the
closed forms near L = 0. The full circle is used (not the upper half with real()), so complex L
(KdV's dispersive i k^3) is handled too. N here maps Fourier coefficients to Fourier coefficients.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["etdrk4_coefficients", "integrate_etdrk4", "wavenumbers", "fourier_interpolate"]


def wavenumbers(n: int, length: float) -> np.ndarray:
    """Angular wavenumbers 2 pi m / length in numpy fft order; the Nyquist mode (even n) is set to 0.

    Zeroing the Nyquist mode keeps odd derivatives real (their Nyquist coefficient is ambiguous).
    """
    m = np.fft.fftfreq(n, d=1.0 / n)
    if n % 2 == 0:
        m[n // 2] = 0.0
    return 2.0 * np.pi * m / length


def etdrk4_coefficients(linear: np.ndarray, h: float, contour_points: int = 64):
    """E, E2, Q, f1, f2, f3 for the diagonal operator `linear` (any shape, real or complex) and step h."""
    hl = h * np.asarray(linear, dtype=np.complex128)
    roots = np.exp(2j * np.pi * (np.arange(contour_points) + 0.5) / contour_points)
    lr = hl[..., None] + roots  # contour points around each h L
    exp_lr = np.exp(lr)
    q = h * np.mean((np.exp(lr / 2) - 1) / lr, axis=-1)
    f1 = h * np.mean((-4 - lr + exp_lr * (4 - 3 * lr + lr**2)) / lr**3, axis=-1)
    f2 = h * np.mean((2 + lr + exp_lr * (-2 + lr)) / lr**3, axis=-1)
    f3 = h * np.mean((-4 - 3 * lr - lr**2 + exp_lr * (4 - lr)) / lr**3, axis=-1)
    if np.isrealobj(linear):
        # for real L the exact coefficients are real: drop the rounding-level imaginary parts
        q, f1, f2, f3 = q.real, f1.real, f2.real, f3.real
    return np.exp(hl), np.exp(hl / 2), q, f1, f2, f3


def integrate_etdrk4(
    v0: np.ndarray,
    linear: np.ndarray,
    nonlinear: Callable[[np.ndarray], np.ndarray],
    t_out: np.ndarray,
    steps_per_output: int,
) -> list[np.ndarray]:
    """Fourier coefficients at each time in t_out (uniformly spaced, t_out[0] is the initial time).

    h = (t_out[1] - t_out[0]) / steps_per_output. Returns a list with v(t_out[0]) = v0 first.
    """
    t_out = np.asarray(t_out, dtype=np.float64)
    spacing = np.diff(t_out)
    if len(t_out) < 2 or not np.allclose(spacing, spacing[0], rtol=1e-9, atol=1e-12):
        raise ValueError("integrate_etdrk4: t_out must hold at least 2 uniformly spaced times")
    h = float(spacing[0]) / steps_per_output
    e, e2, q, f1, f2, f3 = etdrk4_coefficients(linear, h)
    v = np.array(v0, dtype=np.complex128)
    snapshots = [v.copy()]
    for _ in range(len(t_out) - 1):
        for _ in range(steps_per_output):
            nv = nonlinear(v)
            a = e2 * v + q * nv
            na = nonlinear(a)
            b = e2 * v + q * na
            nb = nonlinear(b)
            c = e2 * a + q * (2 * nb - nv)
            nc = nonlinear(c)
            v = e * v + nv * f1 + 2 * (na + nb) * f2 + nc * f3
        if not np.all(np.isfinite(v)):
            raise FloatingPointError("integrate_etdrk4: the solution became non-finite; reduce the step")
        snapshots.append(v.copy())
    return snapshots


def fourier_interpolate(
    coefficients: np.ndarray, x_out: np.ndarray, start: float, length: float, axis: int = -1
) -> np.ndarray:
    """Evaluate trigonometric interpolants (fft coefficients along `axis`) at the points x_out.

    u(x) = (1/n) sum_m v_m exp(i k_m (x - start)); the Nyquist mode (even n) contributes
    v_nyq cos(k_nyq (x - start)) so that the interpolant of a real field is real. Returns a complex array
    with `axis` replaced by len(x_out).
    """
    coefficients = np.moveaxis(np.asarray(coefficients), axis, -1)
    n = coefficients.shape[-1]
    k = 2.0 * np.pi * np.fft.fftfreq(n, d=1.0 / n) / length
    shifted = np.asarray(x_out, dtype=np.float64) - start
    phase = np.exp(1j * np.outer(shifted, k))  # [n_out, n]
    if n % 2 == 0:
        phase[:, n // 2] = np.cos(k[n // 2] * shifted)
    # one contiguous 2-D product (batched complex matmul on strided views is far slower)
    flat = np.ascontiguousarray(coefficients).reshape(-1, n)
    values = (flat @ phase.T / n).reshape(coefficients.shape[:-1] + (len(shifted),))
    return np.moveaxis(values, -1, axis)
