"""The PDE registry: name -> PDE instance (see each module for the equation and the paper's recipe)."""

from __future__ import annotations

from .allen_cahn import AllenCahn
from .base import PDE, Recipe, Window, grid_points
from .burgers import Burgers
from .ginzburg_landau import GinzburgLandau
from .gray_scott import GrayScott
from .kdv import KdV
from .kuramoto_sivashinsky import KuramotoSivashinsky
from .lid_driven_cavity import LidDrivenCavity
from .wave import Wave

__all__ = ["PDE", "Recipe", "Window", "grid_points", "PDES", "NOT_IMPLEMENTED", "get_pde"]

PDES: dict[str, PDE] = {pde.name: pde for pde in
                        (AllenCahn(), Burgers(), KdV(), KuramotoSivashinsky(), Wave(), GinzburgLandau(),
                         GrayScott(), LidDrivenCavity())}

# named in the issue but not built yet: get_pde raises NotImplementedError with this reason (none left)
NOT_IMPLEMENTED: dict[str, str] = {}


def get_pde(name: str) -> PDE:
    """The PDE called `name`; ValueError naming it if unknown, NotImplementedError if planned but not built."""
    if name in PDES:
        return PDES[name]
    if name in NOT_IMPLEMENTED:
        raise NotImplementedError(f"PDE {name!r}: {NOT_IMPLEMENTED[name]}")
    raise ValueError(f"unknown PDE {name!r}; known: {', '.join(sorted(PDES))}")
