"""Gradient alignment score (Wang, Bhartari, Li, Perdikaris 2025, arXiv 2502.00604, eq. for A).

For vectors v_1..v_n (any shapes; each is flattened):

    A(v_1, ..., v_n) = 2 * || (1/n) * sum_i v_i / ||v_i|| ||^2 - 1

A lies in [-1, 1]; A = 1 when all directions agree, and for n = 2 it is the cosine of the angle between
v_1 and v_2 (because ||(a + b)/2||^2 = (1 + cos)/2 for unit a, b). It is used between the gradients of
the loss terms at one step (intra-step) and between consecutive parameter updates (inter-step).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["alignment_score"]


def _flatten(vector: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """One flat tensor from a tensor or a sequence of tensors (e.g. one gradient per parameter)."""
    if isinstance(vector, torch.Tensor):
        return vector.reshape(-1)
    parts = [part.reshape(-1) for part in vector]
    if not parts:
        raise ValueError("alignment_score: a vector given as a sequence of tensors must not be empty")
    return torch.cat(parts)


def alignment_score(vectors: Sequence[torch.Tensor | Sequence[torch.Tensor]]) -> torch.Tensor:
    """The alignment score A of n >= 2 vectors, as a 0-d tensor in their (promoted) dtype.

    Each vector is a tensor of any shape or a sequence of tensors (concatenated after flattening, so a
    list of per-parameter gradients is one vector). All vectors must have the same number of elements
    and be nonzero. The computation stays on the device (no host synchronisation).
    """
    if isinstance(vectors, torch.Tensor):
        raise ValueError(
            "alignment_score expects a sequence of vectors (e.g. [g1, g2]); got a single tensor of shape "
            f"{tuple(vectors.shape)}"
        )
    flat = [_flatten(v) for v in vectors]
    if len(flat) < 2:
        raise ValueError(f"alignment_score needs at least 2 vectors, got {len(flat)}")
    sizes = {v.numel() for v in flat}
    if len(sizes) != 1:
        raise ValueError(f"alignment_score: vectors differ in number of elements: {sorted(sizes)}")
    dtype = torch.promote_types(flat[0].dtype, torch.float32)
    for v in flat[1:]:
        dtype = torch.promote_types(dtype, v.dtype)
    stacked = torch.stack([v.to(dtype) for v in flat])  # [n, d]
    norms = torch.linalg.vector_norm(stacked, dim=1, keepdim=True)
    mean_direction = (stacked / norms).mean(dim=0)
    return 2.0 * mean_direction.dot(mean_direction) - 1.0
