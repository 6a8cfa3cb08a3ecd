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
    of the sampling chunks r, r + W, ... (W must divide `chunks`), ordered by t, with each row's causal
    chunk: its position among all batch points sorted by t, // (batch / causal_chunks). Each chunk's
    generator gives its times first, then its spatial coordinates, so a rank draws the times of every chunk
    (batch uniforms, sorted on `device`) but the spatial coordinates of its own chunks only.
    """

    def __init__(self, bounds: list[tuple[float, float]], batch_size: int, seed: int, chunks: int = 8):
        if chunks <= 0 or batch_size % chunks:
            raise ValueError(f"batch_size {batch_size} must be divisible by the sample chunk count {chunks}")
        self.low = torch.tensor([b[0] for b in bounds], dtype=torch.float64)
        self.width = torch.tensor([b[1] - b[0] for b in bounds], dtype=torch.float64)
        self.batch_size, self.chunks, self.seed = batch_size, chunks, seed

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
        per_chunk, dims = self.batch_size // self.chunks, len(self.low)
        own = range(rank, self.chunks, world_size)
        times, spaces = [], []
        for chunk in range(self.chunks):
            generator = torch.Generator().manual_seed(chunk_seed(self.seed, step, chunk))
            times.append(torch.rand(per_chunk, generator=generator, dtype=torch.float64))
            if chunk % world_size == rank:
                spaces.append(torch.rand(per_chunk, dims - 1, generator=generator, dtype=torch.float64))
        all_times = _to_device(self.low[0] + self.width[0] * torch.cat(times), device)
        # position of every point in the global t-order (sorting by t makes consecutive rows time chunks)
        position = torch.empty(self.batch_size, dtype=torch.int64, device=device)
        position[torch.argsort(all_times, stable=True)] = torch.arange(self.batch_size, device=device)
        rows = _to_device(torch.cat([torch.arange(c * per_chunk, (c + 1) * per_chunk) for c in own]), device)
        space = _to_device(self.low[1:] + self.width[1:] * torch.cat(spaces), device)
        points = torch.cat([all_times[rows].unsqueeze(1), space], dim=1)
        mine = position[rows]
        order = torch.argsort(mine)
        return points[order].to(dtype=dtype), mine[order] // (self.batch_size // causal_chunks)


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on `device`: to a GPU from pinned memory without blocking, since torch synchronises the stream
    after a blocking copy from pageable memory, which would stall every step until the last one's kernels ran
    (the pinned block is not reused before the copy is done: torch's host allocator records it)."""
    if torch.device(device).type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
