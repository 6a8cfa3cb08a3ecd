"""The launch budget of a SOAP step: work shared by every stack (step sizes, the finite check) is done once per
step, not once per stack, and each stack costs a fixed handful of dispatched operations.

A small network's SOAP step on a GPU is launch-bound (bench/results/gpu-check-*: about 880 kernels per training
step for SOAP against 221 for the rest of the step), so a new per-stack operation is a regression even when it
is correct. Counted here at the dispatcher (aten and soap_kernels ops; views and allocations launch nothing),
which runs the same on a CPU as on a GPU; a custom op counts once, whatever it launches.
"""

from __future__ import annotations

import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from soap_kernels import SOAP
from soap_kernels._backend import triton_available
from soap_kernels._native import has_native_cpu

# Dispatches that launch no kernel: views, metadata and allocations (an empty tensor is not written).
NO_LAUNCH = frozenset({
    "view", "_unsafe_view", "reshape", "_reshape_alias", "expand", "unsqueeze", "squeeze", "select", "slice",
    "t", "transpose", "permute", "alias", "detach", "as_strided", "unbind", "split", "split_with_sizes", "lift_fresh",
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "_record_function_enter_new",
    "_record_function_exit",
})  # fmt: skip
SETTINGS = dict(lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0, precondition_frequency=10**6, precondition_1d=True)
# "auto" is the native path where the C++ extension is built (its budget below); without it, the torch path
BACKENDS = (["auto"] if has_native_cpu() else []) + (["triton"] if triton_available() else [])
# Dispatches per matrix stack in a step without refresh (measured when this test was written; a rise is the
# regression this test exists for, a fall should lower it). Gradients in and values out are one multi-tensor
# copy each for all stacks.
# triton: rotated_adam_, factor_update_ per factor, t += ok;
# native: 2 bmm in, adam_moments_, 2 bmm out, step and mask (mul, sub, where), per factor a Gram bmm, lerp and
#         masked assign, t += ok.
PER_MATRIX_STACK = {"triton": 4, "auto": 15}


class DispatchCount(TorchDispatchMode):
    """Counts dispatched operations that launch work, by name."""

    def __init__(self):
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in NO_LAUNCH:
            self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def _dispatches_of_fourth_step(backend: str, shapes: list[tuple], frequency: int = 10**6) -> collections.Counter[str]:
    """Dispatches of the fourth step (after the initialising step and two ordinary ones) on random gradients."""
    generator = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=generator)) for s in shapes]
    optimizer = SOAP(params, backend=backend, **{**SETTINGS, "precondition_frequency": frequency})
    for _ in range(3):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator)
        optimizer.step()
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator)
    with DispatchCount() as mode:
        optimizer.step()
    return mode.counts


def _dispatches_per_step(backend: str, stacks: int) -> collections.Counter[str]:
    """Dispatches of one step without refresh of `stacks` matrix stacks (3 x 4, 3 x 5, ...; two of each shape)."""
    return _dispatches_of_fourth_step(backend, [(3, 4 + k) for k in range(stacks) for _ in range(2)])


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_stack_costs_a_fixed_handful_of_dispatches(backend):
    few, many = _dispatches_per_step(backend, 2), _dispatches_per_step(backend, 6)
    per_stack = (sum(many.values()) - sum(few.values())) / 4
    assert per_stack <= PER_MATRIX_STACK[backend], (per_stack, many - few)


@pytest.mark.parametrize("backend", BACKENDS)
def test_shared_work_runs_once_per_step(backend):
    counts = _dispatches_per_step(backend, 6)
    assert counts["aten.pow"] == 2, counts  # beta1^t and beta2^t over all stacks' step counts at once
    assert counts["aten.sqrt"] == 1, counts
    assert counts["aten._amp_foreach_non_finite_check_and_unscale_"] == 1, counts
    assert counts["aten.sum"] == 0, counts  # no per-stack reduction for the finite check
    assert counts["aten._foreach_copy_"] == 2, counts  # gradients and values into the stacks, new values out
    assert counts["aten.stack"] == 0, counts


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_refresh_step_refreshes_each_factor_size_once(backend):
    """Factors of one size from all stacks go through the refresh op together (step 3 of frequency 3 refreshes):
    sizes 3, 4 and 5 from five stacks of three shapes' factors."""
    shapes = [(3, 4), (3, 4), (4, 5), (3,), (5,), (4,)]
    counts = _dispatches_of_fourth_step(backend, shapes, frequency=3)
    assert counts["soap_kernels.refresh_eigenbasis"] == 3, counts
