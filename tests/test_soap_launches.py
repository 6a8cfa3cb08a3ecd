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

# Dispatches that launch no kernel: views, metadata and allocations (an empty tensor is not written).
NO_LAUNCH = frozenset({
    "view", "_unsafe_view", "reshape", "_reshape_alias", "expand", "unsqueeze", "squeeze", "select", "slice",
    "t", "transpose", "permute", "alias", "detach", "as_strided", "unbind", "split", "split_with_sizes", "lift_fresh",
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "_record_function_enter_new",
    "_record_function_exit",
})  # fmt: skip
SETTINGS = dict(lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0, precondition_frequency=10**6, precondition_1d=True)
BACKENDS = ["auto"] + (["triton"] if triton_available() else [])
# Dispatches per matrix stack in a step without refresh (measured when this test was written; a rise is the
# regression this test exists for, a fall should lower it):
# triton: stack grads, stack params, rotated_adam_, factor_update_ x 2, copy back, t += ok;
# native: those stacks and copy back, 2 bmm in, adam_moments_, 2 bmm out, step and mask (mul, sub, where),
#         Gram bmm, lerp and masked assign per factor, t += ok.
PER_MATRIX_STACK = {"triton": 7, "auto": 18}


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


def _dispatches_per_step(backend: str, stacks: int) -> collections.Counter[str]:
    """Dispatches of one step without refresh of `stacks` matrix stacks (3 x 4, 3 x 5, ...; two of each shape)."""
    generator = torch.Generator().manual_seed(0)
    shapes = [(3, 4 + k) for k in range(stacks) for _ in range(2)]
    params = [torch.nn.Parameter(torch.randn(s, generator=generator)) for s in shapes]
    optimizer = SOAP(params, backend=backend, **SETTINGS)
    for _ in range(3):  # the initialising step and two ordinary ones
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator)
        optimizer.step()
    with DispatchCount() as mode:
        optimizer.step()
    return mode.counts


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_stack_costs_a_fixed_handful_of_dispatches(backend):
    few, many = _dispatches_per_step(backend, 2), _dispatches_per_step(backend, 6)
    per_stack = (sum(many.values()) - sum(few.values())) / 4
    assert per_stack <= PER_MATRIX_STACK[backend], (per_stack, many - few)


@pytest.mark.parametrize("backend", BACKENDS)
def test_step_sizes_and_the_finite_check_run_once_per_step(backend):
    counts = _dispatches_per_step(backend, 6)
    assert counts["aten.pow"] == 2, counts  # beta1^t and beta2^t over all stacks' step counts at once
    assert counts["aten.sqrt"] == 1, counts
    assert counts["aten._amp_foreach_non_finite_check_and_unscale_"] == 1, counts
    assert counts["aten.sum"] == 0, counts  # no per-stack reduction for the finite check
