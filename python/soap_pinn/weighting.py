"""Loss weighting: causal weights over time chunks, and grad-norm balancing of the loss terms.

Causal training (Wang, Sankaran, Perdikaris 2024): sort the residual points by t, split them into M
chunks, L_i = mean of r^2 in chunk i, w_i = exp(-tol * sum_{j<i} L_j) (no gradient through w), and the
residual loss is mean_i(w_i L_i): later times count only once earlier ones are fitted. With several
residual terms (a system), each term's weights are computed and the elementwise minimum is shared by
all terms (as jaxpi's Ginzburg-Landau example).

Grad-norm weighting (jaxpi "grad_norm"): with g_k = d(loss_k)/d(theta),
    w_k_new = mean_j ||g_j|| / (||g_k|| + 1e-5 mean_j ||g_j||),  w_k <- m w_k + (1 - m) w_k_new
(m = momentum 0.9), recomputed every `update_every` steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["causal_weights", "causal_residual_losses", "grad_norm_weights", "update_weights"]


def causal_weights(chunk_losses: torch.Tensor, tol: float) -> torch.Tensor:
    """w_i = exp(-tol * sum_{j<i} L_j), detached; chunk_losses [M]."""
    exclusive = torch.cumsum(chunk_losses.detach(), 0) - chunk_losses.detach()
    return torch.exp(-tol * exclusive)


def causal_residual_losses(
    residuals: Sequence[torch.Tensor], chunks: int, tol: float | None
) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """Residual losses for residual terms [N] whose points are sorted by t.

    tol None: plain mean squares. Otherwise causal: one weight vector shared by all terms, the elementwise
    minimum of the terms' own causal weights. Returns (losses, weights [M] or None).
    """
    if tol is None:
        return [(r**2).mean() for r in residuals], None
    n = residuals[0].shape[0]
    if n % chunks:
        raise ValueError(f"batch size {n} is not divisible by the number of causal chunks {chunks}")
    chunk_losses = [(r.reshape(chunks, -1) ** 2).mean(dim=1) for r in residuals]
    weights = torch.stack([causal_weights(loss, tol) for loss in chunk_losses]).amin(dim=0)
    return [(weights * loss).mean() for loss in chunk_losses], weights


def grad_norm_weights(gradients: dict[str, Sequence[torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The new grad-norm weights from per-term gradients (lists of per-parameter tensors)."""
    norms = {name: torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in grads]))
             for name, grads in gradients.items()}
    mean_norm = torch.stack(list(norms.values())).mean()
    return {name: mean_norm / (norm + 1e-5 * mean_norm) for name, norm in norms.items()}


def update_weights(weights: dict[str, torch.Tensor], new: dict[str, torch.Tensor], momentum: float) -> dict:
    """Running average w <- m w + (1 - m) w_new."""
    return {name: momentum * weights[name] + (1.0 - momentum) * new[name].detach() for name in weights}
