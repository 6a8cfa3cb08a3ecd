"""What every PDE brings: its residual, initial/boundary losses, domain, reference and the paper's recipe.

Model inputs are (t, x) or (t, x, y), with t measured from the start of the current time window (as
in jaxpi's time-marching). A PDE's `residual` uses only arithmetic on the derivative dict, so the same
code runs on torch tensors from soap_kernels.jet and on numpy arrays from finite differences (tests).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..cache import load_reference
from ..references import Reference

__all__ = ["Recipe", "Window", "PDE", "grid_points"]


@dataclass(frozen=True)
class Recipe:
    """The paper's per-PDE settings (jaxpi, branch pirate, examples/<pde>/configs/pirate.py)."""

    fourier_scale: float
    periodic_axes: dict[int, float] = field(default_factory=dict)  # model input axis -> angular frequency
    activation: str = "tanh"
    initial_weights: dict[str, float] = field(default_factory=dict)
    causal_tol: float = 1.0
    causal_chunks: int = 32
    batch_size: int = 8192
    decay_steps: int = 2000
    max_steps: int = 200_000  # per time window in the paper
    time_windows: int = 1
    rwf_mean: float = 1.0  # random weight factorisation: log-scales ~ N(rwf_mean, 0.1^2)
    hidden_layers: int = 3  # PirateNet blocks of the paper preset
    causal: bool = True  # causal residual weighting (meaningless for a steady problem)
    physics_informed_init: bool = True  # fit the output layer to the initial condition (needs one)


@dataclass
class Window:
    """One time-marching window: global times [t_start, t_end] and the reference restricted to it.

    initial_state [*space, out] is the initial condition the window is trained to match: the reference
    at t = 0 for the first window, the previous window's prediction at its end time afterwards.
    """

    index: int
    reference: Reference
    initial_state: np.ndarray
    # the condition losses' fixed inputs and targets on the device, made once per window (window_constant)
    device_constants: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def t_start(self) -> float:
        return float(self.reference.t[0])

    @property
    def duration(self) -> float:
        return float(self.reference.t[-1] - self.reference.t[0])


def window_constant(window: Window, key: tuple, make, like: torch.Tensor) -> torch.Tensor:
    """make() (a numpy array) as a tensor of like's dtype on like's device, made once per window and key.

    The condition losses' grids and targets are fixed within a window; copying them to a GPU at every step would
    also synchronise with it at every step (a blocking host-to-device copy waits for the stream's queued work).
    """
    key = (*key, like.dtype, like.device)
    tensor = window.device_constants.get(key)
    if tensor is None:
        tensor = torch.as_tensor(make(), dtype=like.dtype, device=like.device)
        window.device_constants[key] = tensor
    return tensor


def grid_points(t: np.ndarray, coordinates: tuple[np.ndarray, ...]) -> np.ndarray:
    """Inputs [nt * n_space, 1 + d] in the order of a Reference's solution (t, then y, then x fastest)."""
    axes = [t] + list(reversed(coordinates))  # solution layout: [t, (y,) x]
    mesh = np.meshgrid(*axes, indexing="ij")
    columns = [mesh[0]] + list(reversed(mesh[1:]))  # input layout: (t, x, y)
    return np.stack([c.reshape(-1) for c in columns], axis=1)


class PDE:
    """Base class: subclasses set the class attributes and implement residual (and maybe conditions)."""

    name: str = ""
    summary: str = ""
    output_dim: int = 1
    derivatives: tuple[tuple[int, ...], ...] = ()
    residual_terms: tuple[str, ...] = ("res",)
    ic_terms: tuple[str, ...] = ("ics",)
    spatial_bounds: tuple[tuple[float, float], ...] = ((-1.0, 1.0),)
    periodic: tuple[bool, ...] = (True,)  # per spatial axis, for finite-difference checks
    recipe: Recipe = Recipe(fourier_scale=1.0)
    reference_settings: dict = {}  # generator settings of the training reference (the published grids)
    needs_reference_file: bool = False  # no generator: the user passes reference_settings={"file": PATH}

    @property
    def input_dim(self) -> int:
        return 1 + len(self.spatial_bounds)

    @property
    def loss_terms(self) -> tuple[str, ...]:
        return self.ic_terms + self.boundary_terms() + self.residual_terms

    def boundary_terms(self) -> tuple[str, ...]:
        return ()

    def reference(self, use_cache: bool = True, **overrides) -> Reference:
        """The reference solution (generated once, then cached; overrides change the generator settings).

        overrides["file"] = PATH reads the reference from that file instead (read_reference_file).
        """
        settings = {**self.reference_settings, **overrides}
        if settings.get("file") is not None:
            return self.read_reference_file(settings["file"])
        if self.needs_reference_file:
            raise ValueError(self._missing_file_message())
        settings.pop("file", None)
        return load_reference(self.name, use_cache=use_cache, **settings)

    def read_reference_file(self, path) -> Reference:
        """A reference from a file: for 1-D PDEs the paper authors' MATLAB format (keys t, x, usol[t, x])."""
        if len(self.spatial_bounds) != 1:
            raise ValueError(f"PDE {self.name!r} cannot read a reference file (only 1-D files t, x, usol)")
        from ..cache import load_mat_reference

        return load_mat_reference(path)

    def check_reference_settings(self, settings: dict) -> None:
        """ValueError when the reference file is required but not given, absent, or unreadable (bad keys)."""
        path = settings.get("file")
        if path is None:
            if self.needs_reference_file:
                raise ValueError(self._missing_file_message())
            return
        if not Path(path).is_file():
            raise ValueError(f"reference file {path} does not exist")
        self.read_reference_file(path)  # small files: reading them here reports bad contents before training

    def _missing_file_message(self) -> str:
        return (f"PDE {self.name!r} needs a reference file: pass --reference PATH "
                f"(Python: reference_settings={{'file': PATH}})")

    def relative_error(self, prediction: np.ndarray, reference: np.ndarray) -> float:
        """||prediction - reference|| / ||reference|| over the grid and all outputs (the rel L2 metric)."""
        return float(np.linalg.norm(prediction - reference) / np.linalg.norm(reference))

    def residual(self, d: dict) -> tuple:
        """The residual terms, one per name in residual_terms, from a jet dict (torch or numpy)."""
        raise NotImplementedError

    def condition_losses(self, model, window: Window, ic_stride: int = 1) -> dict[str, torch.Tensor]:
        """Mean squared initial-condition misfit on the window's spatial grid (every ic_stride-th point).

        Subclasses add boundary or velocity conditions.
        """
        parameter = next(model.parameters())
        coordinates = tuple(c[::ic_stride] for c in window.reference.coordinates)

        def target() -> np.ndarray:
            state = window.initial_state
            for axis in range(len(coordinates)):
                state = np.take(state, np.arange(0, state.shape[axis], ic_stride), axis=axis)
            return state.reshape(-1, self.output_dim)

        x = window_constant(window, ("ic inputs", ic_stride), lambda: grid_points(np.zeros(1), coordinates), parameter)
        u = model(x)
        expected = window_constant(window, ("ic targets", ic_stride), target, u)
        return {name: ((u[:, k] - expected[:, k]) ** 2).mean() for k, name in enumerate(self.ic_terms)}


class PeriodicSquareSystem(PDE):
    """The layout Gray-Scott and Ginzburg-Landau share: two fields w = (u, v) on the periodic square [-1, 1]^2,
    residuals from w_t and the Laplacian lap w = w_xx + w_yy, one initial-condition term per field."""

    output_dim = 2
    derivatives = ((0,), (1, 1), (2, 2))
    residual_terms = ("ru", "rv")
    ic_terms = ("u_ic", "v_ic")
    spatial_bounds = ((-1.0, 1.0), (-1.0, 1.0))
    periodic = (True, True)

    @staticmethod
    def fields(d: dict) -> tuple:
        """(u, v, w_t, lap w) from a jet dict; w_t and lap w keep the field axis last."""
        value = d[()]
        return value[..., 0], value[..., 1], d[(0,)], d[(1, 1)] + d[(2, 2)]
