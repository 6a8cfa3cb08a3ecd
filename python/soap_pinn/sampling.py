"""Uniform residual points in a box, from a private generator (its state goes into checkpoints)."""

from __future__ import annotations

import torch

__all__ = ["BoxSampler"]


class BoxSampler:
    """Draws [batch, d] points uniform in prod_i [low_i, high_i], sorted by the first column (time).

    Points are drawn on the CPU from a seeded torch.Generator, so a run is reproducible on any device
    and a resumed run draws the same points as an uninterrupted one.
    """

    def __init__(self, bounds: list[tuple[float, float]], batch_size: int, seed: int):
        self.low = torch.tensor([b[0] for b in bounds], dtype=torch.float64)
        self.width = torch.tensor([b[1] - b[0] for b in bounds], dtype=torch.float64)
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        points = self.low + self.width * torch.rand(
            self.batch_size, len(self.low), generator=self.generator, dtype=torch.float64
        )
        # sorting by t makes consecutive rows time chunks for causal weighting
        points = points[torch.argsort(points[:, 0], stable=True)]
        return points.to(dtype=dtype, device=device)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
