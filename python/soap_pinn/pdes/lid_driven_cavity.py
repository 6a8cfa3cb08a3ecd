"""Lid-driven cavity: steady incompressible Navier-Stokes in the unit square, outputs (u, v, p):

    ru = u u_x + v u_y + p_x - nu (u_xx + u_yy) = 0
    rv = u v_x + v v_y + p_y - nu (v_xx + v_yy) = 0
    rc = u_x + v_y = 0,                                   nu = 1 / Re,

no slip (u = v = 0) on the bottom, left and right walls; on the lid y = 1, v = 0 and the smoothed lid
velocity u = 1 - cosh(50 (x - 0.5)) / cosh(25) (it vanishes at the corners, removing the corner
singularity). As in the paper's code (jaxpi, branch pirate, examples/ldc): the boundary losses u_bc, v_bc
are mean squares on 256 equispaced points per side (corners included), the residual points are uniform
in the square, and the error is the relative L2 of the velocity magnitude sqrt(u^2 + v^2) on the
reference grid.

There is no generator: the reference and nu come from a file the user passes (--reference PATH; the
paper's ldc_Re*.mat, see references.read_ldc_file). Reading it sets this PDE's nu, which the residual uses.

The trainer's inputs are (t, x, y): this steady problem uses one "time" t = 0 (the residual points are
drawn with t in [0, 0]), no causal weighting and no physics-informed initialisation (there is no initial
condition; the paper's config has use_pi_init = False).

The paper trains by a Reynolds-number curriculum (Re 100, 400, 1000, 1600, 3200 for 10k, 20k, 50k, 50k,
500k steps, each stage continuing from the previous). A run trains at its file's Re; the stages are chained
by hand with `--init-from` (the next stage starts from the previous run's model, with a fresh optimizer):
    soap-pinn train ldc --preset paper --reference ldc_Re100.mat --out re100
    soap-pinn train ldc --preset paper --reference ldc_Re400.mat --init-from re100 --steps 20000 --out re400
The paper preset has the settings of the first stage (Re = 100, 10k steps); the later stages' step counts and
schedules are the user's --steps (not tuned here, no curriculum command).
"""

from __future__ import annotations

import numpy as np
import torch

from ..references import Reference, read_ldc_file
from .base import PDE, Recipe, Window, window_constant

__all__ = ["LidDrivenCavity", "lid_velocity", "boundary_points"]

BOUNDARY_POINTS_PER_SIDE = 256  # the paper's count


def lid_velocity(x):
    """u on the lid y = 1: 1 - cosh(50 (x - 0.5)) / cosh(25) (numpy or torch)."""
    cosh = torch.cosh if isinstance(x, torch.Tensor) else np.cosh
    return 1.0 - cosh(50.0 * (x - 0.5)) / np.cosh(25.0)


def boundary_points(per_side: int) -> tuple[np.ndarray, np.ndarray]:
    """(points [4 n, 2] as (x, y): lid, bottom, left, right walls, n equispaced per side, corners included;
    target u [4 n]: the lid velocity on the lid, 0 elsewhere). v is 0 on every wall."""
    s = np.linspace(0.0, 1.0, per_side)
    zero, one = np.zeros(per_side), np.ones(per_side)
    points = np.concatenate([np.stack(p, axis=1) for p in ((s, one), (s, zero), (zero, s), (one, s))])
    target = np.concatenate([lid_velocity(s), np.zeros(3 * per_side)])
    return points, target


class LidDrivenCavity(PDE):
    name = "ldc"
    summary = "lid-driven cavity, steady Navier-Stokes (u, v, p) in [0,1]^2; needs --reference ldc_Re*.mat"
    output_dim = 3
    derivatives = ((1,), (2,), (1, 1), (2, 2))
    residual_terms = ("ru", "rv", "rc")
    ic_terms = ()
    spatial_bounds = ((0.0, 1.0), (0.0, 1.0))
    periodic = (False, False)
    recipe = Recipe(
        fourier_scale=15.0, activation="tanh",
        initial_weights={"u_bc": 100.0, "v_bc": 100.0, "ru": 1.0, "rv": 1.0, "rc": 10.0},
        batch_size=4096, decay_steps=10_000, max_steps=10_000, hidden_layers=4, rwf_mean=1.0,
        causal=False, physics_informed_init=False,
    )
    needs_reference_file = True

    def __init__(self):
        self.nu: float | None = None  # set by read_reference_file (the file's nu = 1 / Re)

    def boundary_terms(self) -> tuple[str, ...]:
        return ("u_bc", "v_bc")

    def read_reference_file(self, path) -> Reference:
        reference, self.nu = read_ldc_file(path)
        return reference

    def residual(self, d):
        if self.nu is None:
            raise RuntimeError("ldc: nu is unknown until a reference file is read (PDE.reference(file=PATH))")
        value, first_x, first_y = d[()], d[(1,)], d[(2,)]
        laplacian = d[(1, 1)] + d[(2, 2)]
        u, v = value[..., 0], value[..., 1]
        ru = u * first_x[..., 0] + v * first_y[..., 0] + first_x[..., 2] - self.nu * laplacian[..., 0]
        rv = u * first_x[..., 1] + v * first_y[..., 1] + first_y[..., 2] - self.nu * laplacian[..., 1]
        rc = first_x[..., 0] + first_y[..., 1]
        return ru, rv, rc

    def condition_losses(self, model, window: Window, ic_stride: int = 1) -> dict[str, torch.Tensor]:
        """u_bc, v_bc: mean squared wall misfit on BOUNDARY_POINTS_PER_SIDE // ic_stride points per side."""
        parameter = next(model.parameters())
        points, target = boundary_points(max(2, BOUNDARY_POINTS_PER_SIDE // ic_stride))

        def inputs() -> np.ndarray:
            return np.concatenate([np.zeros((len(points), 1)), points], axis=1)  # (t = 0, x, y)

        out = model(window_constant(window, ("wall inputs", ic_stride), inputs, parameter))
        expected = window_constant(window, ("wall targets", ic_stride), lambda: target, out)
        return {"u_bc": ((out[:, 0] - expected) ** 2).mean(), "v_bc": (out[:, 1] ** 2).mean()}

    def relative_error(self, prediction: np.ndarray, reference: np.ndarray) -> float:
        """||U_pred - U_ref|| / ||U_ref|| with U = sqrt(u^2 + v^2) (the paper's metric; p has no reference)."""
        speed = lambda w: np.sqrt(w[..., 0] ** 2 + w[..., 1] ** 2)  # noqa: E731
        return float(np.linalg.norm(speed(prediction) - speed(reference)) / np.linalg.norm(speed(reference)))
