"""Gray-Scott: coefficients and initial condition of the paper's script, and a residual check.

The paper's reference file is not published beside the others (shared/ has no grey_scott.mat), so the
generator is checked against the equation: rms(residual) / rms(u_t) by fourth-order finite differences
on the first window t in [0, 0.2], where the solution changes fastest. Measured at 128 modes, nt = 81,
n_out = 129: ru 7.6e-3, rv 9.5e-3 (64 modes give ~0.2: the Laplacian of an under-resolved solution;
96 modes 1e-2). Tolerance 2e-2; a 10% error in c1 gives 0.5 (negative control). The time step of the
default settings (dt = 1e-3, as the paper's spin2) is converged: halving it changes the 64-mode solution
by 8e-7 (relative L2, measured, not tested: it takes a minute).
"""

import numpy as np
import pytest
from soap_pinn.finite_differences import grid_jet
from soap_pinn.pdes import get_pde
from soap_pinn.references import GRAY_SCOTT, generate_reference, gray_scott_initial

SETTINGS = dict(modes=128, steps_per_output=3, nt=81, n_out=129, t_end=0.2)


@pytest.fixture(scope="module")
def first_window():
    return generate_reference("gray_scott", **SETTINGS)


def relative_residuals(reference, residual):
    pde = get_pde("gray_scott")
    d = grid_jet(reference, pde.derivatives, pde.periodic)
    return [float(np.sqrt(np.mean(r**2)) / np.sqrt(np.mean(d[(0,)][..., k] ** 2))) for k, r in enumerate(residual(d))]


def test_residual_near_zero_on_reference(first_window):
    for name, value in zip(("ru", "rv"), relative_residuals(first_window, get_pde("gray_scott").residual)):
        assert value < 2e-2, f"{name}: relative residual {value:.2e}"


def test_wrong_coefficient_fails(first_window):
    pde = get_pde("gray_scott")

    def wrong_c1(d):  # c1 = 900 instead of 1000
        ru, rv = pde.residual(d)
        u, v = d[()][..., 0], d[()][..., 1]
        return ru - 100.0 * u * v**2, rv

    assert relative_residuals(first_window, wrong_c1)[0] > 0.1


def test_coefficients_and_initial_condition_of_the_paper(first_window):
    # data/gen_grey_scott.m: k = 1000; ep1 = 0.0002 k, ep2 = 0.0001 k, b1 = 0.04 k, c1 = k, b2 = 0.1 k, c2 = k
    assert GRAY_SCOTT == {"eps1": 0.2, "eps2": 0.1, "b1": 40.0, "c1": 1000.0, "b2": 100.0, "c2": 1000.0}
    x = first_window.coordinates[0]
    assert x[0] == -1.0 and x[-1] == 1.0 and first_window.t[-1] == pytest.approx(0.2)
    y_grid, x_grid = np.meshgrid(first_window.coordinates[1], x, indexing="ij")
    expected = np.stack(gray_scott_initial(x_grid, y_grid), axis=-1)
    # the initial Gaussians are periodic only up to exp(-10 * 0.9) ~ 1e-4 at the edges of the box
    np.testing.assert_allclose(first_window.solution[0], expected, atol=3e-4)
    assert expected[64, 64, 0] == pytest.approx(1.0 - np.exp(-10.0 * (0.05**2 + 0.02**2)))


def test_default_grid_and_windows():
    pde = get_pde("gray_scott")
    assert pde.reference_settings == {"modes": 200, "steps_per_output": 20, "nt": 101, "n_out": 200}
    assert (pde.reference_settings["nt"] - 1) % pde.recipe.time_windows == 0  # 10 windows of 0.2
