"""Live tensor memory of a piece of torch code, followed op by op, and its extrapolation to other sizes.

`AllocationTrace` is a TorchDispatchMode: after every op it adds the bytes of each output storage it has not
seen (views and in-place results share a seen storage) and subtracts a storage's bytes when the storage is
freed (a weakref finalizer), so `timeline[i]` is the bytes live after op i that were allocated inside the
trace, and max(timeline) the peak: what torch.cuda.max_memory_allocated() minus the memory allocated before
reports on a GPU, up to the CUDA caching allocator's rounding to 512 bytes. It sees what goes through the
dispatcher: the tensors ops return, and inside a custom op written in Python (torch.library.custom_op,
triton_op: the jets' Triton launchers) the tensors its own ops make, freed or not before it returns (the
backward's g_z). Not counted: scratch memory of an ATen or C++ op that never becomes a tensor seen from Python
(cuBLAS workspaces), and a storage made before the trace (an op returning a view of it or writing into it in
place). With collect_cycles (the default) it runs the cyclic garbage collector after every op (over the
objects made since the trace began, so it stays cheap) and a storage that only a reference cycle still held is
freed there: Triton's interpreter, which runs the GPU path's kernels on CPU tensors, leaves cycles holding its
arguments' storages, which would otherwise live until Python's collector happens to run (at a different op in
each run) and are not on a GPU.

When a code path allocates the same sequence of tensors at every problem size N, each with a size affine in
N (true of the PINN residuals here: the stacks are [K, N, F], the weights fixed), the live bytes after op i
are a_i N + c_i. `affine_peak` solves a_i, c_i from the timelines at two sizes and gives the peak at any N
(max_i a_i N + c_i): a CPU run at N = 16 and 32 predicts the peak at N = 8192 without running it.
"""

from __future__ import annotations

import gc
import os
import traceback
import weakref
from collections.abc import Callable, Sequence

import torch
from torch._library import custom_ops
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class AllocationTrace(TorchDispatchMode):
    """with AllocationTrace() as trace: ...; then trace.timeline (bytes live after each op) and trace.peak.

    record_live: also keep, per op, which storages are live (`live_after`, indices into `made`: each storage's
    bytes and where it was made, the op and the innermost frame of this repository's code), for
    `peak_breakdown`.
    """

    def __init__(self, collect_cycles: bool = True, record_live: bool = False) -> None:
        super().__init__()
        self.collect_cycles = collect_cycles
        self.record_live = record_live
        self._live: dict[int, int] = {}  # StorageImpl address -> bytes
        self._made_index: dict[int, int] = {}  # StorageImpl address -> index into made (record_live)
        self.current = 0
        self.timeline: list[int] = []
        self.made: list[tuple[int, str]] = []  # (bytes, where) per storage, in the order made (record_live)
        self.live_after: list[tuple[int, ...]] = []  # per op, the indices into made of the live storages
        self._op = ""

    def __enter__(self):
        self._gc_was_enabled = gc.isenabled()
        if self.collect_cycles:
            gc.collect()
            gc.freeze()  # what exists now is out of the collector's sight: each collection scans only new objects
            gc.disable()
        try:
            return super().__enter__()
        except BaseException:
            self._restore_gc()
            raise

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._restore_gc()

    def _restore_gc(self) -> None:
        if self.collect_cycles:
            gc.unfreeze()
            if self._gc_was_enabled:
                gc.enable()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.record_live:
            self._op = str(func)
        implementation = _python_implementation(func, args)
        if implementation is None:
            out = func(*args, **(kwargs or {}))
        else:
            # A custom op written in Python (the jets' Triton launchers): trace the ops it runs, so the tensors it
            # makes and frees before returning (the backward's g_z) count at the peak as they do on a GPU.
            TorchDispatchMode.__enter__(self)
            try:
                out = implementation(*args, **(kwargs or {}))
            finally:
                TorchDispatchMode.__exit__(self, None, None, None)
        inputs = set()  # storages the op was given (Tensor.set_ takes a bare storage)
        for given in tree_leaves((args, kwargs)):
            if isinstance(given, torch.Tensor):
                inputs.add(given.untyped_storage()._cdata)
            elif isinstance(given, torch.UntypedStorage):
                inputs.add(given._cdata)
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                key = tensor.untyped_storage()._cdata
                if key in inputs and key not in self._live:
                    continue  # a view of, or a write into, a storage made before the trace
                self._track(tensor.untyped_storage())
        if self.collect_cycles:
            gc.collect()
        self.timeline.append(self.current)
        if self.record_live:
            self.live_after.append(tuple(sorted(self._made_index[key] for key in self._live)))
        return out

    def _track(self, storage: torch.UntypedStorage) -> None:
        key = storage._cdata  # the StorageImpl's address: one key per storage, whichever wrapper holds it
        if key in self._live:
            return
        self._live[key] = storage.nbytes()
        self.current += self._live[key]
        if self.record_live:
            self._made_index[key] = len(self.made)
            self.made.append((storage.nbytes(), f"{self._op} {_where()}"))
        # torch keeps a storage's Python object alive as long as the storage, so this runs when it is freed
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.current -= self._live.pop(key)
        self._made_index.pop(key, None)

    @property
    def peak(self) -> int:
        return max(self.timeline, default=0)


def _python_implementation(func, args) -> Callable | None:
    """The Python function behind a torch.library custom op (triton_op, custom_op) for the device of its first
    tensor argument (the op's kernel for that device, else its default), or None for any other op (ATen, or a
    C++ kernel, whose scratch tensors the dispatcher never sees from Python). Reads torch's private registry."""
    schema = getattr(func, "_schema", None)
    definition = None if schema is None else custom_ops.OPDEFS.get(schema.name)
    if definition is None:
        return None
    device = next((t.device.type for t in tree_leaves(args) if isinstance(t, torch.Tensor)), None)
    kernels = definition._backend_fns
    return kernels.get(device) or kernels.get(None)


_REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OWN_CODE = tuple(os.path.join(_REPOSITORY, part) + os.sep for part in ("soap_kernels", "python", "bench", "tests"))


def _where() -> str:
    """The innermost frame of this repository's code (not this file) that is running, "file:line function",
    marked when autograd's engine runs between it and the op (an ATen op's backward formula)."""
    engine = False
    for frame in reversed(traceback.extract_stack()):
        engine = engine or frame.name == "_engine_run_backward"
        if frame.filename.startswith(_OWN_CODE) and frame.filename != __file__:
            where = f"{os.path.relpath(frame.filename, _REPOSITORY)}:{frame.lineno} {frame.name}"
            return f"autograd backward under {where}" if engine else where
    return "outside this repository's code"


def trace_timeline(run: Callable[[], None]) -> list[int]:
    """The live-bytes timeline of run() (see AllocationTrace)."""
    with AllocationTrace() as trace:
        run()
    return trace.timeline


def affine_peak(sizes: Sequence[int], timelines: Sequence[Sequence[int]], target: int) -> int:
    """The peak at N = target from the timelines at two sizes: max_i (a_i target + c_i), with a_i, c_i fitted to
    each op's live bytes. ValueError when the two runs did not run the same number of ops (the code path
    depends on N, and the model does not hold)."""
    (n1, n2), (t1, t2) = sizes, timelines
    if len(t1) != len(t2) or n1 == n2:
        raise ValueError(f"timelines at N={n1} and N={n2} have {len(t1)} and {len(t2)} ops: not one code path")
    return max(round(b1 + (b2 - b1) * (target - n1) / (n2 - n1)) for b1, b2 in zip(t1, t2, strict=True))


def peak_breakdown(sizes: Sequence[int], traces: Sequence[AllocationTrace], target: int) -> tuple[int, list[dict]]:
    """What is live at the peak at N = target, from two record_live traces at `sizes` (as affine_peak): the op
    index of the peak and, per place a storage was made, how many are live there and their bytes at N = target
    (each storage's bytes fitted as a N + c; the runs make the same storages in the same order)."""
    (n1, n2), (first, second) = sizes, traces
    if len(first.made) != len(second.made):
        raise ValueError(f"the traces at N={n1} and N={n2} made {len(first.made)} and {len(second.made)} storages")
    timeline = [b1 + (b2 - b1) * (target - n1) / (n2 - n1) for b1, b2 in zip(first.timeline, second.timeline)]
    peak_op = max(range(len(timeline)), key=timeline.__getitem__)
    places: dict[str, dict] = {}
    for index in second.live_after[peak_op]:
        (b1, _), (b2, where) = first.made[index], second.made[index]
        place = places.setdefault(where, {"where": where, "count": 0, "bytes": 0})
        place["count"] += 1
        place["bytes"] += round(b1 + (b2 - b1) * (target - n1) / (n2 - n1))
    return peak_op, sorted(places.values(), key=lambda place: -place["bytes"])
