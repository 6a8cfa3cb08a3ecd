"""Shared fixtures: the devices a test runs on (CPU always, CUDA when present)."""

from __future__ import annotations

import os

import pytest
import torch

from soap_kernels._backend import triton_available

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.hookimpl(tryfirst=True)  # before pytest's -k/-m deselection, which then sees the markers added here
def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if torch.cuda.is_available() and "triton_device" in getattr(item, "fixturenames", ()):
            # the Triton kernels' tests run on the GPU there: bench/gpu_check.sh's triton step selects them
            item.add_marker(pytest.mark.triton_kernel)
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_cuda)


@pytest.fixture
def triton_device():
    """Where Triton kernels run here: CUDA when present, else CPU under TRITON_INTERPRET=1; skip otherwise."""
    if not triton_available():
        pytest.skip("needs Triton with a CUDA device or TRITON_INTERPRET=1")
    if torch.cuda.is_available():  # with its index, as a tensor's device has (cuda != cuda:0 in comparisons)
        return torch.device("cuda", torch.cuda.current_device())
    if os.environ.get("TRITON_INTERPRET") == "1":
        return torch.device("cpu")
    pytest.skip("needs CUDA or TRITON_INTERPRET=1")
