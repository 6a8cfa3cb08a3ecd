"""Fourth-order central finite differences on a reference grid: an independent check of a PDE residual.

`grid_jet(reference, derivatives, periodic)` returns the same kind of dict as soap_kernels.jet, but
evaluated on the reference's tensor grid with numpy: () -> u and each index tuple -> derivative, where
axis 0 of a tuple is t and axes 1.. are the spatial coordinates (x, y). Stencils (spacing h):

    d1 f_i = (-f_{i+2} + 8 f_{i+1} - 8 f_{i-1} + f_{i-2}) / (12 h)
    d2 f_i = (-f_{i+2} + 16 f_{i+1} - 30 f_i + 16 f_{i-1} - f_{i-2}) / (12 h^2)

Higher orders compose them (d3 = d1 d2, d4 = d2 d2), which stays fourth-order accurate. Periodic axes
wrap around (the duplicated endpoint of a closed grid is dropped first); other axes are cropped by 4
points at each end, where the stencils would need points outside the grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .references import Reference

__all__ = ["grid_jet"]

_MARGIN = 4


def _d1(f: np.ndarray, axis: int, h: float) -> np.ndarray:
    r = lambda s: np.roll(f, -s, axis=axis)  # noqa: E731  (r(s)_i = f_{i+s})
    return (-r(2) + 8 * r(1) - 8 * r(-1) + r(-2)) / (12 * h)


def _d2(f: np.ndarray, axis: int, h: float) -> np.ndarray:
    r = lambda s: np.roll(f, -s, axis=axis)  # noqa: E731
    return (-r(2) + 16 * r(1) - 30 * f + 16 * r(-1) - r(-2)) / (12 * h * h)


def _derivative(f: np.ndarray, axis: int, order: int, h: float) -> np.ndarray:
    while order >= 2:
        f = _d2(f, axis, h)
        order -= 2
    if order == 1:
        f = _d1(f, axis, h)
    return f


def grid_jet(
    reference: Reference, derivatives: Sequence[tuple[int, ...]], periodic: Sequence[bool]
) -> dict[tuple[int, ...], np.ndarray]:
    """u and the requested derivatives on the grid (see module docstring); periodic: one flag per spatial axis.

    Arrays are [nt', *space', out] after cropping. The grid axis of input index i is 0 for t, and for
    spatial index s (1-based) it is the array axis holding that coordinate: x is the last spatial axis,
    y (2-D) the one before, as in Reference.
    """
    if len(periodic) != reference.spatial_dims:
        raise ValueError(f"periodic needs {reference.spatial_dims} flags, got {len(periodic)}")
    u = reference.solution
    spacings = [float(reference.t[1] - reference.t[0])]
    array_axis = {0: 0}
    for s, coordinate in enumerate(reference.coordinates):
        spacings.append(float(coordinate[1] - coordinate[0]))
        # input index s+1 -> array axis: x (s=0) is the last spatial axis, y (s=1) the one before it
        array_axis[s + 1] = reference.spatial_dims - s
    for s, is_periodic in enumerate(periodic):
        if is_periodic:
            axis = array_axis[s + 1]
            u = np.take(u, np.arange(u.shape[axis] - 1), axis=axis)  # drop the duplicated endpoint
    out = {(): u}
    for index in derivatives:
        value = u
        for input_axis in sorted(set(index)):
            value = _derivative(value, array_axis[input_axis], index.count(input_axis), spacings[input_axis])
        out[tuple(index)] = value
    crop = [slice(_MARGIN, -_MARGIN)] + [slice(None)] * reference.spatial_dims + [slice(None)]
    for s, is_periodic in enumerate(periodic):
        if not is_periodic:
            crop[array_axis[s + 1]] = slice(_MARGIN, -_MARGIN)
    return {key: value[tuple(crop)] for key, value in out.items()}
