"""Uniform residual points in a box, drawn in chunks whose random streams depend only on (seed, step, chunk).

The global batch of step s is `chunks` blocks of batch/chunks points; block c comes from a generator seeded
by a hash of (seed, s, c). Nothing is stateful, so a resumed run, and a run on another number of ranks,
draws the same global batch as an uninterrupted single-process one, and checkpoints need no sampler state.
"""

from __future__ import annotations

import hashlib

import torch

__all__ = ["BoxSampler", "chunk_seed"]


def chunk_seed(seed: int, step: int, chunk: int) -> int:
    """A 63-bit generator seed for chunk `chunk` of step `step` (blake2b of the three integers)."""
    digest = hashlib.blake2b(f"{seed}:{step}:{chunk}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class BoxSampler:
    """Draws [batch, d] points uniform in prod_i [low_i, high_i] for step s, sorted by the first column (t).

    `sample(step, ...)` returns the whole global batch; `sample(step, ..., rank=r, world_size=W)` the rows
    of the sampling chunks r, r + W, ... (W must divide `chunks`), still in the order of the global
    t-sort, with each row's causal chunk: its position in the global t-sort // (batch / causal_chunks).
    Every rank draws the whole batch's coordinates (batch x d uniforms on the CPU: microseconds) because
    causal weighting needs each point's rank in time among all points; it evaluates the network only on
    its own rows.
    """

    def __init__(self, bounds: list[tuple[float, float]], batch_size: int, seed: int, chunks: int = 8):
        if chunks <= 0 or batch_size % chunks:
            raise ValueError(f"batch_size {batch_size} must be divisible by the sample chunk count {chunks}")
        self.low = torch.tensor([b[0] for b in bounds], dtype=torch.float64)
        self.width = torch.tensor([b[1] - b[0] for b in bounds], dtype=torch.float64)
        self.batch_size, self.chunks, self.seed = batch_size, chunks, seed

    def _draw(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(points [batch, d] sorted by t, sampling chunk of each row [batch]) in float64 on the CPU."""
        per_chunk = self.batch_size // self.chunks
        blocks = []
        for chunk in range(self.chunks):
            generator = torch.Generator().manual_seed(chunk_seed(self.seed, step, chunk))
            blocks.append(torch.rand(per_chunk, len(self.low), generator=generator, dtype=torch.float64))
        points = self.low + self.width * torch.cat(blocks)
        owner = torch.arange(self.chunks).repeat_interleave(per_chunk)
        # sorting by t makes consecutive rows time chunks for causal weighting
        order = torch.argsort(points[:, 0], stable=True)
        return points[order], owner[order]

    def sample(
        self,
        step: int,
        dtype: torch.dtype,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
        causal_chunks: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(points [n_r, d], causal chunk index [n_r] int64) of this rank's share of step `step`'s batch."""
        if world_size <= 0 or self.chunks % world_size:
            raise ValueError(f"world size {world_size} must divide the sample chunk count {self.chunks}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        if causal_chunks <= 0 or self.batch_size % causal_chunks:
            raise ValueError(f"batch_size {self.batch_size} must be divisible by causal_chunks {causal_chunks}")
        points, owner = self._draw(step)
        causal = torch.arange(self.batch_size) // (self.batch_size // causal_chunks)
        if world_size > 1:
            mine = owner % world_size == rank
            points, causal = points[mine], causal[mine]
        return points.to(dtype=dtype, device=device), causal.to(device=device)
