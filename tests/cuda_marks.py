"""Skip marks for the CUDA tests that need more than one GPU or a lot of GPU memory (always marked cuda too)."""

from __future__ import annotations

import pytest
import torch

needs_two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")


def needs_gpu_memory(gib: int):
    """Skip unless GPU 0 has at least `gib` GiB of memory, and mark the test gpu_memory_heavy: bench/gpu_check.sh
    runs those one at a time after the others, which share the GPU among several pytest workers."""
    enough = torch.cuda.is_available() and torch.cuda.get_device_properties(0).total_memory >= gib * 2**30
    skip = pytest.mark.skipif(not enough, reason=f"needs a GPU with {gib} GiB")

    def mark(test):
        return pytest.mark.gpu_memory_heavy(skip(test))

    return mark
