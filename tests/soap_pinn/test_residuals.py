"""Each PDE's residual is near zero on its own generated reference, measured by finite differences.

Measure: rms(residual) / rms(u_t) over the grid (fourth-order central differences, soap_pinn.finite_
differences). It is not zero because of the finite-difference error (which falls ~16x per grid halving:
checked below for KdV and KS) and the spectral truncation of the reference. Measured values at these
settings: AC 9.8e-4, Burgers 9.8e-3, KdV 2.3e-3, KS 2.8e-3, wave ~1e-6 (closed form), Ginzburg-Landau
4.8e-3. Tolerances are ~3x those; a wrong coefficient or sign gives O(0.1-1) (negative control below).
"""

import numpy as np
import pytest
from soap_pinn.finite_differences import grid_jet
from soap_pinn.pdes import get_pde
from soap_pinn.references import generate_reference

CASES = [
    ("allen_cahn", dict(modes=512, steps_per_output=5, nt=401, nx=257), 3e-3),
    ("burgers", dict(modes=1024, steps_per_output=5, nt=1601, nx=1025), 3e-2),
    ("kdv", dict(modes=256, steps_per_output=5, nt=801, nx=513), 1e-2),
    ("ks", dict(modes=256, steps_per_output=5, nt=801, nx=513), 1e-2),
    ("wave", dict(nt=401, nx=257), 1e-5),
    ("ginzburg_landau", dict(modes=64, steps_per_output=4, nt=101, n_out=65), 2e-2),
]


def relative_residuals(name, settings, residual=None):
    pde = get_pde(name)
    reference = generate_reference(name, **settings)
    jet = grid_jet(reference, pde.derivatives + ((0,),), pde.periodic)
    time_derivative = jet[(0,)]
    terms = (residual or pde.residual)(jet)
    return [float(np.sqrt(np.mean(r**2)) / np.sqrt(np.mean(time_derivative**2))) for r in terms]


@pytest.mark.parametrize("name, settings, tolerance", CASES)
def test_residual_near_zero_on_reference(name, settings, tolerance):
    for value in relative_residuals(name, settings):
        assert value < tolerance, f"{name}: relative residual {value:.2e} >= {tolerance:.0e}"


@pytest.mark.parametrize("name", ["kdv", "ks"])
def test_residual_is_discretisation_error(name):
    # halving the finite-difference spacing must cut the residual by ~16 (fourth order); > 8 required
    coarse = relative_residuals(name, dict(modes=256, steps_per_output=5, nt=401, nx=257))[0]
    fine = relative_residuals(name, dict(modes=256, steps_per_output=5, nt=801, nx=513))[0]
    assert fine < coarse / 8, f"{name}: {coarse:.2e} -> {fine:.2e}"


def test_wrong_coefficient_fails():
    # negative control: Allen-Cahn with 4 u instead of 5 u is far from zero on the true solution
    def wrong(d):
        u, u_t, u_xx = d[()][..., 0], d[(0,)][..., 0], d[(1, 1)][..., 0]
        return (u_t - 1e-4 * u_xx + 5.0 * u**3 - 4.0 * u,)

    value = relative_residuals("allen_cahn", CASES[0][1], residual=wrong)[0]
    assert value > 0.1
