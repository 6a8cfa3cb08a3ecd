"""Reference solutions, generated locally: Fourier pseudo-spectral ETDRK4 (see spectral.py) or closed form.

Each generator reproduces the setup of the paper authors' MATLAB/chebfun scripts (jaxpi, branch pirate,
examples/*/data/gen_*.m: spin/spin2 with the same operators, initial conditions and output grids), so
the result can be compared with their published .mat files. The spatial grids of the published files
include both ends of the periodic interval (x = linspace(a, b, n)); we solve on `modes` equispaced
periodic points and evaluate the trigonometric interpolant on the output grid.

A Reference holds t [nt], coordinates (x,) or (x, y), and solution [nt, nx, out] or [nt, ny, nx, out]
(for 2-D, axis 1 is y and axis 2 is x, as the published meshgrid(X, Y) files).

The lid-driven cavity has no generator: read_ldc_file reads the paper authors' published files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .spectral import fourier_interpolate, integrate_etdrk4, wavenumbers

__all__ = ["Reference", "GENERATORS", "generate_reference", "read_ldc_file"]


@dataclass
class Reference:
    """A solution on a tensor grid: t [nt], coordinates (x,) or (x, y), solution [nt, *space, out]."""

    t: np.ndarray
    coordinates: tuple[np.ndarray, ...]
    solution: np.ndarray

    @property
    def spatial_dims(self) -> int:
        return len(self.coordinates)


def _periodic_1d(
    start: float,
    length: float,
    initial,
    linear_fn,
    nonlinear_fn,
    t_out: np.ndarray,
    x_out: np.ndarray,
    modes: int,
    steps_per_output: int,
) -> Reference:
    """Solve a scalar periodic 1-D problem u_t = L u + N(u) and sample it on (t_out, x_out)."""
    x = start + length * np.arange(modes) / modes
    k = wavenumbers(modes, length)
    v0 = np.fft.fft(initial(x))
    snapshots = integrate_etdrk4(v0, linear_fn(k), lambda v: nonlinear_fn(v, k), t_out, steps_per_output)
    values = fourier_interpolate(np.stack(snapshots), x_out, start, length).real
    return Reference(t=t_out, coordinates=(x_out,), solution=values[..., None])


def _conservative_advection(scale: float):
    """N(v) = -scale * d/dx (u^2 / 2) in Fourier space (the form spin uses for u u_x)."""

    def nonlinear(v, k):
        u = np.fft.ifft(v).real
        return -scale * 0.5j * k * np.fft.fft(u * u)

    return nonlinear


def allen_cahn(modes: int = 512, steps_per_output: int = 10, nt: int = 201, nx: int = 512) -> Reference:
    """u_t = 1e-4 u_xx + 5 u - 5 u^3 on x in [-1, 1) periodic, t in [0, 1], u(0, x) = x^2 cos(pi x)."""

    def nonlinear(v, k):
        u = np.fft.ifft(v).real
        return np.fft.fft(-5.0 * u**3)

    return _periodic_1d(
        -1.0, 2.0, lambda x: x**2 * np.cos(np.pi * x), lambda k: 5.0 - 1e-4 * k**2, nonlinear,
        np.linspace(0.0, 1.0, nt), np.linspace(-1.0, 1.0, nx), modes, steps_per_output,
    )


def burgers(modes: int = 1024, steps_per_output: int = 50, nt: int = 201, nx: int = 512) -> Reference:
    """u_t + u u_x = (0.01/pi) u_xx on x in [-1, 1) periodic, t in [0, 1], u(0, x) = -sin(pi x).

    The steep front at x = 0 (width ~ nu) needs more modes than the output grid to be resolved.
    """
    nu = 0.01 / np.pi
    return _periodic_1d(
        -1.0, 2.0, lambda x: -np.sin(np.pi * x), lambda k: -nu * k**2, _conservative_advection(1.0),
        np.linspace(0.0, 1.0, nt), np.linspace(-1.0, 1.0, nx), modes, steps_per_output,
    )


def kdv(modes: int = 512, steps_per_output: int = 50, nt: int = 201, nx: int = 512) -> Reference:
    """u_t + u u_x + 0.022^2 u_xxx = 0 on x in [-1, 1) periodic, t in [0, 1], u(0, x) = cos(pi x)."""
    # L = -0.022^2 (i k)^3 = i 0.022^2 k^3 (purely imaginary: dispersive)
    return _periodic_1d(
        -1.0, 2.0, lambda x: np.cos(np.pi * x), lambda k: 1j * 0.022**2 * k**3, _conservative_advection(1.0),
        np.linspace(0.0, 1.0, nt), np.linspace(-1.0, 1.0, nx), modes, steps_per_output,
    )


def kuramoto_sivashinsky(
    modes: int = 512, steps_per_output: int = 40, nt: int = 251, nx: int = 512
) -> Reference:
    """u_t + (100/16) u u_x + (100/16^2) u_xx + (100/16^4) u_xxxx = 0, x in [0, 2 pi) periodic, t in [0, 1].

    u(0, x) = cos(x) (1 + sin(x)); the chaotic setup of the paper (a rescaled KS on [0, 32 pi]).
    """
    a, b, c = 100.0 / 16.0, 100.0 / 16.0**2, 100.0 / 16.0**4
    return _periodic_1d(
        0.0, 2.0 * np.pi, lambda x: np.cos(x) * (1.0 + np.sin(x)), lambda k: b * k**2 - c * k**4,
        _conservative_advection(a), np.linspace(0.0, 1.0, nt), np.linspace(0.0, 2.0 * np.pi, nx),
        modes, steps_per_output,
    )


GINZBURG_LANDAU_K = 10.0
GINZBURG_LANDAU_EPS = GINZBURG_LANDAU_K / 50.0**2


def ginzburg_landau(
    modes: int = 128, steps_per_output: int = 20, nt: int = 101, n_out: int = 200
) -> Reference:
    """Complex Ginzburg-Landau on [-1, 1)^2 periodic, t in [0, 1], for w = u + i v:

        w_t = eps (w_xx + w_yy) + k w - k (1 + 1.5 i) w |w|^2,   k = 10, eps = k / 2500,
        w(0) = (10 i x + 10 y) exp(-25 (x^2 + y^2)).

    Output: solution[..., 0] = u = Re w, solution[..., 1] = v = Im w on a meshgrid(x, y) of n_out points
    per axis (axis 1 is y, axis 2 is x).
    """
    k_gl, eps = GINZBURG_LANDAU_K, GINZBURG_LANDAU_EPS
    grid = -1.0 + 2.0 * np.arange(modes) / modes
    y, x = np.meshgrid(grid, grid, indexing="ij")
    w0 = (10j * x + 10.0 * y) * np.exp(-25.0 * (x**2 + y**2))
    k = wavenumbers(modes, 2.0)
    ky, kx = np.meshgrid(k, k, indexing="ij")
    linear = -eps * (kx**2 + ky**2)

    def nonlinear(v):
        w = np.fft.ifft2(v)
        return np.fft.fft2(k_gl * w - k_gl * (1.0 + 1.5j) * w * np.abs(w) ** 2)

    t_out = np.linspace(0.0, 1.0, nt)
    snapshots = np.stack(integrate_etdrk4(np.fft.fft2(w0), linear, nonlinear, t_out, steps_per_output))
    out = np.linspace(-1.0, 1.0, n_out)
    values = fourier_interpolate(snapshots, out, -1.0, 2.0, axis=2)  # along x
    values = fourier_interpolate(values, out, -1.0, 2.0, axis=1)  # along y
    solution = np.stack([values.real, values.imag], axis=-1)
    return Reference(t=t_out, coordinates=(out, out), solution=solution)


# Gray-Scott coefficients of the paper's script (jaxpi examples/grey_scott/data/gen_grey_scott.m: k = 1000)
GRAY_SCOTT = {"eps1": 0.2, "eps2": 0.1, "b1": 40.0, "c1": 1000.0, "b2": 100.0, "c2": 1000.0}


def gray_scott_initial(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """u0 = 1 - exp(-10 ((x + 0.05)^2 + (y + 0.02)^2)),  v0 = exp(-10 ((x - 0.05)^2 + (y - 0.02)^2))."""
    u0 = 1.0 - np.exp(-10.0 * ((x + 0.05) ** 2 + (y + 0.02) ** 2))
    return u0, np.exp(-10.0 * ((x - 0.05) ** 2 + (y - 0.02) ** 2))


def gray_scott(
    modes: int = 200, steps_per_output: int = 20, nt: int = 101, n_out: int = 200, t_end: float = 2.0
) -> Reference:
    """Gray-Scott on [-1, 1)^2 periodic, t in [0, t_end = 2] (GRAY_SCOTT coefficients, gray_scott_initial):

        u_t = eps1 lap u + b1 (1 - u) - c1 u v^2
        v_t = eps2 lap v - b2 v + c2 u v^2.

    As spin2 in the paper's script: diffusion in the linear part, reactions in the nonlinear part, 200
    modes, dt = 1e-3 (t_end / (nt - 1) / steps_per_output). Output: solution[..., 0] = u, [..., 1] = v on a
    meshgrid(x, y) of n_out points per axis (axis 1 is y, axis 2 is x).
    """
    g = GRAY_SCOTT
    grid = -1.0 + 2.0 * np.arange(modes) / modes
    y, x = np.meshgrid(grid, grid, indexing="ij")
    k = wavenumbers(modes, 2.0)
    ky, kx = np.meshgrid(k, k, indexing="ij")
    laplacian = -(kx**2 + ky**2)
    linear = np.stack([g["eps1"] * laplacian, g["eps2"] * laplacian])  # [2, modes, modes]: (u, v)

    def nonlinear(coefficients):
        u, v = np.fft.ifft2(coefficients).real  # over the last two axes
        uv2 = u * v * v
        return np.fft.fft2(np.stack([g["b1"] * (1.0 - u) - g["c1"] * uv2, -g["b2"] * v + g["c2"] * uv2]))

    t_out = np.linspace(0.0, t_end, nt)
    snapshots = np.stack(integrate_etdrk4(np.fft.fft2(np.stack(gray_scott_initial(x, y))), linear, nonlinear,
                                          t_out, steps_per_output))  # [nt, 2, modes, modes]
    out = np.linspace(-1.0, 1.0, n_out)
    values = fourier_interpolate(snapshots, out, -1.0, 2.0, axis=3)  # along x
    values = fourier_interpolate(values, out, -1.0, 2.0, axis=2).real  # along y
    return Reference(t=t_out, coordinates=(out, out), solution=np.moveaxis(values, 1, -1))


WAVE_SPEED = 2.0


def wave_exact(t: np.ndarray, x: np.ndarray) -> np.ndarray:
    """u(t, x) = sin(pi x) cos(c pi t) + 0.5 sin(2 c pi x) cos(4 c pi t), c = 2 (exact wave solution)."""
    c = WAVE_SPEED
    return np.sin(np.pi * x) * np.cos(c * np.pi * t) + 0.5 * np.sin(2 * c * np.pi * x) * np.cos(4 * c * np.pi * t)


def wave(nt: int = 200, nx: int = 128) -> Reference:
    """u_tt = c^2 u_xx, c = 2, x in [0, 1], t in [0, 1]; u = 0 at x = 0, 1; closed form (wave_exact)."""
    t = np.linspace(0.0, 1.0, nt)
    x = np.linspace(0.0, 1.0, nx)
    tt, xx = np.meshgrid(t, x, indexing="ij")
    return Reference(t=t, coordinates=(x,), solution=wave_exact(tt, xx)[..., None])


LDC_KEYS = ("x", "y", "u", "v", "nu")


def read_ldc_file(path) -> tuple[Reference, float]:
    """A lid-driven cavity reference from a MATLAB file as the paper authors publish (jaxpi examples/ldc/data):

    x [nx], y [ny] on [0, 1], u[x, y] and v[x, y] of shape [nx, ny] (axis 0 is x), nu = 1 / Re.
    Returns (Reference with t = [0], coordinates (x, y), solution [1, ny, nx, 2] = (u, v)), nu.
    ValueError naming the first missing key or bad value.
    """
    from scipy.io import loadmat

    try:
        data = loadmat(str(path))
    except (OSError, ValueError) as error:  # not a MATLAB file
        raise ValueError(f"{path}: cannot read as a MATLAB .mat file ({error})") from error
    for key in LDC_KEYS:
        if key not in data:
            raise ValueError(f"{path}: missing key {key!r} (a lid-driven cavity file has x, y, u[x, y], v[x, y], nu)")
    x = np.asarray(data["x"], dtype=np.float64).ravel()
    y = np.asarray(data["y"], dtype=np.float64).ravel()
    for key, axis in (("x", x), ("y", y)):
        if len(axis) < 2 or np.any(np.diff(axis) <= 0) or abs(axis[0]) > 1e-9 or abs(axis[-1] - 1.0) > 1e-9:
            span = f"{axis[0]} .. {axis[-1]}" if len(axis) else "nothing"
            raise ValueError(f"{path}: {key} must increase from 0 to 1 (unit square), got {len(axis)} values {span}")
    fields = []
    for key in ("u", "v"):
        value = np.asarray(data[key], dtype=np.float64)
        if value.shape != (len(x), len(y)):
            raise ValueError(f"{path}: {key} has shape {value.shape}, expected (len(x), len(y)) = {(len(x), len(y))}")
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{path}: {key} has non-finite values")
        fields.append(value.T)  # [ny, nx]: axis 1 of the solution is y, axis 2 is x
    nu = np.asarray(data["nu"], dtype=np.float64).ravel()
    if nu.size != 1 or not np.isfinite(nu[0]) or nu[0] <= 0:
        raise ValueError(f"{path}: nu must be one positive number (1 / Re), got {nu.tolist()}")
    solution = np.stack(fields, axis=-1)[None]
    return Reference(t=np.zeros(1), coordinates=(x, y), solution=solution), float(nu[0])


GENERATORS = {
    "allen_cahn": allen_cahn,
    "burgers": burgers,
    "kdv": kdv,
    "ks": kuramoto_sivashinsky,
    "ginzburg_landau": ginzburg_landau,
    "gray_scott": gray_scott,
    "wave": wave,
}


def generate_reference(name: str, **resolution) -> Reference:
    """Run the generator of PDE `name` (keyword arguments: its resolution settings)."""
    if name not in GENERATORS:
        raise ValueError(f"no reference generator for PDE {name!r}; known: {sorted(GENERATORS)}")
    return GENERATORS[name](**resolution)
