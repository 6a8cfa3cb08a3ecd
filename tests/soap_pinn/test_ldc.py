"""Lid-driven cavity: the published reference satisfies our residuals; file reading, CLI and errors.

Residual check (finite differences, soap_pinn.finite_differences, fourth order, on the published 256^2
grid; the file has no pressure): continuity rc = u_x + v_y directly, and the momentum residual through
its curl with p = 0, d/dx rv - d/dy ru, which removes the pressure gradient exactly (p_xy = p_yx) and
leaves u w_x + v w_y - nu lap w (w the vorticity). Measured relative values (rms over the square without
the band y > 0.9 next to the lid, whose corner singularities the grid does not resolve):
    continuity rms(rc) / rms(u_x):              Re 100 1.3e-3, Re 400 1.9e-3
    momentum   rms(curl r) / rms(curl of u.grad u): Re 100 2.4e-3, Re 400 6.0e-3
They come from the published data, not from the differencing: on every 2nd or 4th grid point the
continuity value falls (8.8e-4, 4.4e-4) instead of rising 16x. Tolerances are ~3x the measured values;
doubling nu (negative control) gives ~1.0.
"""

import json
import math

import numpy as np
import pytest
from scipy.io import savemat
from soap_pinn.cli import main
from soap_pinn.finite_differences import grid_jet
from soap_pinn.pdes import get_pde
from soap_pinn.pdes.lid_driven_cavity import boundary_points, lid_velocity
from soap_pinn.references import Reference, read_ldc_file

LID_BAND = 0.9  # rows with y >= LID_BAND are left out of the residual check


def reference_file(published, re):
    path = published / f"ldc_Re{re}.mat"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


def relative_residuals(path, residual=None):
    """(continuity, momentum curl) relative residuals of the published solution (see module docstring)."""
    pde = get_pde("ldc")
    reference = pde.reference(file=str(path))
    solution = reference.solution[0]
    with_pressure = np.concatenate([solution, np.zeros(solution.shape[:-1] + (1,))], axis=-1)  # p = 0
    # grid_jet differentiates in t too: 9 identical "times" leave exactly one row after its 4-point crop
    steady = Reference(np.linspace(0.0, 1.0, 9), reference.coordinates, np.repeat(with_pressure[None], 9, axis=0))
    d = {key: value[0] for key, value in grid_jet(steady, pde.derivatives, pde.periodic).items()}
    x, y = reference.coordinates[0][4:-4], reference.coordinates[1][4:-4]
    h = float(x[1] - x[0])
    ru, rv, rc = (residual or pde.residual)(d)
    u, v = d[()][..., 0], d[()][..., 1]
    convection_u = u * d[(1,)][..., 0] + v * d[(2,)][..., 0]
    convection_v = u * d[(1,)][..., 1] + v * d[(2,)][..., 1]

    def curl(a, b):  # d/dx b - d/dy a; axis 0 is y, axis 1 is x
        return np.gradient(b, h, axis=1) - np.gradient(a, h, axis=0)

    rms = lambda a: float(np.sqrt(np.mean(a**2)))  # noqa: E731
    away = np.broadcast_to((y < LID_BAND)[:, None], rc.shape)
    inner = away.copy()
    inner[:2], inner[-2:], inner[:, :2], inner[:, -2:] = False, False, False, False  # one-sided np.gradient
    continuity = rms(rc[away]) / rms(d[(1,)][..., 0][away])
    momentum = rms(curl(ru, rv)[inner]) / rms(curl(convection_u, convection_v)[inner])
    return continuity, momentum


@pytest.mark.parametrize("re, continuity_tol, momentum_tol", [(100, 4e-3, 8e-3), (400, 6e-3, 2e-2)])
def test_published_solution_satisfies_residual(published, re, continuity_tol, momentum_tol):
    continuity, momentum = relative_residuals(reference_file(published, re))
    assert get_pde("ldc").nu == pytest.approx(1.0 / re)
    assert continuity < continuity_tol, f"Re {re}: continuity {continuity:.2e}"
    assert momentum < momentum_tol, f"Re {re}: momentum (curl) {momentum:.2e}"


def test_wrong_viscosity_fails(published):
    # negative control: the residual with 2 nu is far from zero on the Re = 100 solution
    pde = get_pde("ldc")
    path = reference_file(published, 100)

    def doubled_nu(d):
        ru, rv, rc = pde.residual(d)
        laplacian = d[(1, 1)] + d[(2, 2)]
        return ru - pde.nu * laplacian[..., 0], rv - pde.nu * laplacian[..., 1], rc

    assert relative_residuals(path, doubled_nu)[1] > 0.5


def test_reference_file_layout(published):
    reference, nu = read_ldc_file(reference_file(published, 100))
    assert nu == 0.01 and reference.solution.shape == (1, 256, 256, 2)
    u = reference.solution[0, ..., 0]  # [y, x]
    np.testing.assert_array_equal(u[-1, 1:-1], 1.0)  # the file's lid (y = 1) moves with u = 1
    np.testing.assert_array_equal(u[0], 0.0)  # bottom wall
    assert u[128, 128] < 0  # return flow below the lid, near the centre


def test_boundary_points_and_lid_profile():
    points, target = boundary_points(5)
    assert points.shape == (20, 2) and target.shape == (20,)
    np.testing.assert_allclose(points[:5, 1], 1.0)  # lid first
    np.testing.assert_allclose(target[[0, 4]], 0.0, atol=1e-12)  # the smoothed lid vanishes at the corners
    assert target[2] == pytest.approx(1.0 - 1.0 / np.cosh(25.0))
    assert np.all(target[5:] == 0.0)
    assert lid_velocity(np.array([0.45]))[0] == pytest.approx(1.0 - np.cosh(2.5) / np.cosh(25.0))


def test_cli_smoke_run_writes_metrics(published, tmp_path):
    path = reference_file(published, 100)
    out = tmp_path / "run"
    argv = ["train", "ldc", "--reference", str(path), "--steps", "3", "--batch-size", "64", "--log-every", "1",
            "--optimizer", "adam", "--no-plots", "--out", str(out)]
    assert main(argv) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2]
    for record in records:
        assert set(record["losses"]) == {"u_bc", "v_bc", "ru", "rv", "rc"}
        assert all(math.isfinite(v) for v in record["losses"].values()) and math.isfinite(record["rel_l2"])
    config = json.loads((out / "config.json").read_text())
    assert config["reference_settings"] == {"file": str(path.resolve())}
    assert not config["causal"] and not config["physics_informed_init"]
    # the summary's error is the relative L2 of the speed sqrt(u^2 + v^2), with no pressure reference
    data = np.load(out / "prediction.npz")
    speed = lambda w: np.hypot(w[..., 0], w[..., 1])  # noqa: E731
    expected = np.linalg.norm(speed(data["prediction"]) - speed(data["reference"])) / np.linalg.norm(
        speed(data["reference"]))
    summary = json.loads((out / "summary.json").read_text())
    assert data["prediction"].shape[-1] == 3 and data["reference"].shape[-1] == 2
    assert summary["rel_l2"] == pytest.approx(expected, rel=1e-9)


def test_missing_reference_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "ldc", "--steps", "3", "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    assert "PDE 'ldc' needs a reference file: pass --reference PATH" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit):
        main(["time-step", "ldc", "--rounds", "1"])  # time-step takes --reference too
    assert "needs a reference file: pass --reference PATH" in capsys.readouterr().err


def test_reference_file_that_does_not_exist(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "ldc", "--reference", str(tmp_path / "nope.mat"), "--out", str(tmp_path / "run")])
    assert "nope.mat does not exist" in capsys.readouterr().err


def _write(path, **arrays):
    grid = np.linspace(0.0, 1.0, 5)[None]
    data = dict(x=grid, y=grid, u=np.zeros((5, 5)), v=np.zeros((5, 5)), nu=np.array([[0.01]]))
    data.update(arrays)
    savemat(str(path), {k: v for k, v in data.items() if v is not None})
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(nu=None), "missing key 'nu'"),
        (dict(v=None), "missing key 'v'"),
        (dict(u=np.zeros((5, 4))), r"u has shape \(5, 4\), expected"),
        (dict(nu=np.array([[-1.0]])), "nu must be one positive number"),
        (dict(x=np.linspace(0.0, 2.0, 5)[None]), "x must increase from 0 to 1"),
    ],
)
def test_bad_file_is_a_value_error_naming_the_problem(tmp_path, change, message):
    path = _write(tmp_path / "bad.mat", **change)
    with pytest.raises(ValueError, match=message):
        get_pde("ldc").reference(file=str(path))


def test_bad_file_on_the_command_line(tmp_path, capsys):
    path = _write(tmp_path / "bad.mat", nu=None)
    with pytest.raises(SystemExit):
        main(["train", "ldc", "--reference", str(path), "--out", str(tmp_path / "run")])
    assert "missing key 'nu'" in capsys.readouterr().err


def test_generated_pde_rejects_a_2d_file_request(tmp_path):
    # --reference is generic: 1-D PDEs read the paper's t, x, usol files; Ginzburg-Landau reads none
    with pytest.raises(ValueError, match="cannot read a reference file"):
        get_pde("ginzburg_landau").reference(file=str(_write(tmp_path / "any.mat")))


def test_one_dimensional_pde_reads_the_published_file(published):
    reference = get_pde("allen_cahn").reference(file=str(published / "allen_cahn.mat"))
    assert reference.solution.shape == (201, 512, 1)
