"""Which dimensions of a parameter SOAP preconditions, and the shape it is viewed as.

Follows the reference (nikhilvyas/SOAP a1e5535):
- 0-D parameters have no factor (plain Adam);
- 1-D parameters have one factor only with precondition_1d and length <= max_precond_dim;
- otherwise the tensor is (with merge_dims) reshaped by merging consecutive dims while their product stays
  <= max_precond_dim, and every (merged) dim of size <= max_precond_dim gets an n x n Kronecker factor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def merged_shape(shape: tuple[int, ...], max_precond_dim: int) -> tuple[int, ...]:
    """Merge consecutive dims left to right while the running product stays <= max_precond_dim.

    A dim that would push the product over the limit closes the current block; a dim that is over the
    limit by itself stays alone. [128, 64, 3, 3] with a limit of 10000 gives [128, 576].
    """
    merged: list[int] = []
    block = 1
    for size in shape:
        if block * size > max_precond_dim:
            if block > 1:
                merged.append(block)
                block = size
            else:
                merged.append(size)
                block = 1
        else:
            block *= size
    if block > 1 or not merged:
        merged.append(block)
    return tuple(merged)


@dataclass(frozen=True)
class PreconditionPlan:
    """How one parameter shape is preconditioned.

    view_shape: the shape the gradient and moments are viewed as (merged dims, or the original shape);
    factored: per dim of view_shape, whether it has a Kronecker factor (and an eigenbasis).
    """

    view_shape: tuple[int, ...]
    factored: tuple[bool, ...]

    @property
    def factor_sizes(self) -> tuple[int, ...]:
        return tuple(size for size, has in zip(self.view_shape, self.factored) if has)

    @property
    def numel(self) -> int:
        return math.prod(self.view_shape)


def precondition_plan(
    shape: tuple[int, ...], max_precond_dim: int, merge_dims: bool, precondition_1d: bool
) -> PreconditionPlan:
    """The PreconditionPlan of a parameter of this shape under the given SOAP settings."""
    shape = tuple(shape)
    if len(shape) == 0:
        return PreconditionPlan(view_shape=(), factored=())
    if len(shape) == 1:
        return PreconditionPlan(view_shape=shape, factored=(precondition_1d and shape[0] <= max_precond_dim,))
    view = merged_shape(shape, max_precond_dim) if merge_dims else shape
    return PreconditionPlan(view_shape=view, factored=tuple(size <= max_precond_dim for size in view))
