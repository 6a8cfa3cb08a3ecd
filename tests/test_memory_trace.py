"""bench/memory_trace.py: live tensor bytes op by op, and the affine extrapolation in N."""

from __future__ import annotations

import pytest
import torch

from bench.memory_trace import AllocationTrace, affine_peak, peak_breakdown, trace_timeline


def test_trace_counts_new_storages_and_their_release():
    with AllocationTrace() as trace:
        a = torch.empty(1000)  # 4000 bytes
        b = a * 2  # 4000 more
        view = a.view(10, 100)  # shares a's storage: nothing new
        a.add_(1)  # in place: nothing new
        del a, view  # a's storage dies here
        c = b + 1  # 4000 more
    assert trace.timeline == [4000, 8000, 8000, 8000, 8000]
    assert trace.peak == 8000
    assert trace.current == 8000  # b and c are alive
    del b, c
    assert trace.current == 0


def test_storage_held_by_a_reference_cycle_is_freed_at_the_next_op():
    class Holder:
        pass

    with AllocationTrace() as trace:
        holder = Holder()
        holder.tensor = torch.empty(250)  # 1000 bytes
        holder.me = holder  # a cycle: only the collector frees it
        del holder
        torch.empty(0)
    assert trace.timeline == [1000, 0]

    with AllocationTrace(collect_cycles=False) as trace:
        holder = Holder()
        holder.tensor = torch.empty(250)
        holder.me = holder
        del holder
        torch.empty(0)
    assert trace.timeline == [1000, 1000]  # still held until Python's collector runs


def test_affine_peak_predicts_a_size_it_did_not_run():
    def run(n):
        def body():
            x = torch.empty(n, 8)
            y = torch.cat([x, x])  # 2 n x 8
            del x
            z = y.sum(0)  # fixed size
            del y, z

        return trace_timeline(body)

    timelines = [run(16), run(32)]
    assert affine_peak((16, 32), timelines, 100) == max(run(100))
    assert affine_peak((16, 32), timelines, 100) == 3 * 100 * 8 * 4  # x and y live together


def test_affine_peak_refuses_different_op_sequences():
    with pytest.raises(ValueError, match="not one code path"):
        affine_peak((16, 32), ([1, 2, 3], [1, 2]), 64)
    with pytest.raises(ValueError, match="not one code path"):
        affine_peak((16, 16), ([1], [1]), 64)


def test_storages_made_before_the_trace_are_not_counted():
    weight = torch.empty(1000)
    with AllocationTrace() as trace:
        part = weight[:10]  # a view of it
        weight.add_(1)  # a write into it
        doubled = part * 2  # 40 new bytes
        alias = torch.empty(0).set_(weight.untyped_storage())  # as Triton's interpreter re-wraps arguments
    assert trace.timeline == [0, 0, 40, 40, 40]  # only the product: the alias is not a new 4000 bytes
    del doubled, alias


def test_the_collector_is_left_as_it_was():
    import gc

    gc.disable()
    try:
        with AllocationTrace():
            torch.empty(1)
        assert not gc.isenabled()
    finally:
        gc.enable()
    with AllocationTrace():
        torch.empty(1)
    assert gc.isenabled()


@torch.library.custom_op("soap_kernels_test::scratch_then_small", mutates_args=())
def _scratch_then_small(x: torch.Tensor) -> torch.Tensor:
    scratch = torch.empty(1000)  # 4000 bytes made and freed inside the op, as a launcher's workspace
    scratch.fill_(1.0)
    return x[:10] + scratch[:10]  # 40 bytes returned


def test_a_python_custom_op_is_traced_inside():
    """A custom op written in Python (the jets' Triton launchers) allocates tensors it frees before returning;
    on a GPU they count in max_memory_allocated, so the trace must see them too."""
    x = torch.zeros(10)
    with AllocationTrace() as trace:
        out = _scratch_then_small(x)
    assert trace.peak == 4040  # the scratch and the output, both alive at the op's add
    assert trace.current == 40
    del out


@torch.library.custom_op("soap_kernels_test::cuda_only", mutates_args=(), device_types="cuda")
def _cuda_only(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


def test_a_custom_op_without_a_kernel_for_the_device_fails_as_without_the_trace():
    with AllocationTrace(), pytest.raises(NotImplementedError):
        _cuda_only(torch.zeros(3))


def test_peak_breakdown_names_what_is_live_at_the_extrapolated_peak():
    def step(n):
        with AllocationTrace(record_live=True) as trace:
            kept = torch.empty(3 * n)  # 12 n bytes, live to the end
            scratch = torch.empty(n + 100)  # 4 n + 400 bytes: the peak is here, for every n
            del scratch
            torch.empty(1)  # 4 bytes
            del kept
        return trace

    traces = [step(16), step(32)]
    peak_op, live = peak_breakdown([16, 32], traces, 1000)
    assert peak_op == 1
    assert [(place["count"], place["bytes"]) for place in live] == [(1, 12000), (1, 4400)]
    assert all("test_memory_trace.py" in place["where"] and "aten.empty" in place["where"] for place in live)
    assert traces[0].live_after == [(0,), (0, 1), (0, 2)]
