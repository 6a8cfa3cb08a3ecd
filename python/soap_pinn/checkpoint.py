"""Checkpoints: one file DIR/checkpoint.pt, replaced atomically (write a temporary file, then rename),
so an interrupted save never destroys the last good checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["save_checkpoint", "load_checkpoint", "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(directory: str | Path, state: dict) -> Path:
    path = Path(directory) / CHECKPOINT_NAME
    temporary = path.with_suffix(".pt.tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)
    return path


def load_checkpoint(directory: str | Path, device: torch.device) -> dict:
    path = Path(directory) / CHECKPOINT_NAME
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint to resume from: {path} does not exist")
    # weights_only=False: the checkpoint holds numpy arrays and RNG states we wrote ourselves
    return torch.load(path, map_location=device, weights_only=False)
