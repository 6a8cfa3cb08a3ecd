"""Loss weighting: causal weights over time chunks, and grad-norm balancing of the loss terms.

Causal training (Wang, Sankaran, Perdikaris 2024): sort the residual points by t, split them into M
chunks, L_i = mean of r^2 in chunk i, w_i = exp(-tol * sum_{j<i} L_j) (no gradient through w), and the
residual loss is mean_i(w_i L_i): later times count only once earlier ones are fitted. With several
residual terms (a system), each term's weights are computed and the elementwise minimum is shared by
all terms (as jaxpi's Ginzburg-Landau example).

Grad-norm weighting (jaxpi "grad_norm"): with g_k = d(loss_k)/d(theta),
    w_k_new = mean_j ||g_j|| / (||g_k|| + 1e-5 mean_j ||g_j||),  w_k <- m w_k + (1 - m) w_k_new
(m = momentum 0.9), recomputed every `update_every` steps.

Across ranks (data parallelism) the trainer works with per-chunk sums S_ki = sum_{j in chunk i} r_k(x_j)^2:
each rank sums its own points, one all_reduce gives the global S, and with N points in all and M chunks
    L_ki = S_ki / (N / M),  w_i from the global L,  loss_k = mean_i w_i L_ki = sum_i w_i S_ki / N,
so every rank holds the same weights, and the gradients of the ranks' local sum_i w_i S_ki(local) / N add
up to the gradient of the global loss (`chunk_square_sums`, `residual_losses_from_sums`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["causal_weights", "causal_residual_losses", "chunk_square_sums", "residual_losses_from_sums",
           "grad_norm_weights", "update_weights"]


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


def chunk_square_sums(residuals: Sequence[torch.Tensor], chunk_index: torch.Tensor, chunks: int) -> torch.Tensor:
    """S [K, M]: S_ki = sum of r_k^2 over the rows j with chunk_index[j] == i (differentiable, deterministic).

    residuals: K tensors [n] (or [n, 1]); chunk_index [n] int64 in [0, M). Each row lands in exactly one
    chunk, so a masked row sum needs no atomics and gives the same bits on every run.
    """
    mask = chunk_index.reshape(1, -1) == torch.arange(chunks, device=chunk_index.device).reshape(-1, 1)
    return torch.stack([torch.where(mask, r.reshape(1, -1) ** 2, 0).sum(dim=1) for r in residuals])


def residual_losses_from_sums(
    local_sums: torch.Tensor, global_sums: torch.Tensor, batch_size: int, tol: float | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(local losses [K], global losses [K], causal weights [M] or None) from chunk sums [K, M].

    N = batch_size points in all (every rank's). Causal (tol not None): w_i = min_k exp(-tol sum_{j<i} L_kj)
    with L_ki = global S_ki / (N / M); loss_k = sum_i w_i S_ki / N. Plain: loss_k = sum_i S_ki / N. The local
    losses (this rank's S, with gradient) sum over ranks to the global ones (all-reduced S, detached).
    """
    chunks = global_sums.shape[1]
    if tol is None:
        return local_sums.sum(dim=1) / batch_size, global_sums.sum(dim=1) / batch_size, None
    chunk_losses = global_sums.detach() / (batch_size // chunks)
    weights = torch.stack([causal_weights(loss, tol) for loss in chunk_losses]).amin(dim=0)
    return (local_sums * weights).sum(dim=1) / batch_size, (global_sums * weights).sum(dim=1) / batch_size, weights


def grad_norm_weights(gradients: dict[str, Sequence[torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The new grad-norm weights from per-term gradients (lists of per-parameter tensors)."""
    norms = {name: torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in grads]))
             for name, grads in gradients.items()}
    mean_norm = torch.stack(list(norms.values())).mean()
    return {name: mean_norm / (norm + 1e-5 * mean_norm) for name, norm in norms.items()}


def update_weights(weights: dict[str, torch.Tensor], new: dict[str, torch.Tensor], momentum: float) -> dict:
    """Running average w <- m w + (1 - m) w_new."""
    return {name: momentum * weights[name] + (1.0 - momentum) * new[name].detach() for name in weights}
