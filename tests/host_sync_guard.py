"""forbid_host_reads(): fail on anything that would read device memory back to the host, even on CPU tensors.

On a CPU there is no device-to-host copy to catch, so the guard flags the operations that perform one on CUDA:
- at the aten level (a TorchDispatchMode): scalar reads (item, bool, int, float, tolist go through
  _local_scalar_dense), ops whose output size depends on the data (nonzero, masked_select, unique, ...), status
  checks (_linalg_check_errors), boolean-mask indexing and the cuSOLVER/MAGMA decompositions that check their
  status on the host;
- at the Python level: Tensor.item/tolist/numpy/cpu/__bool__/__int__/__float__/__index__, also inside custom
  ops' Python bodies, which a dispatch mode does not see.
Ops inside a C++ kernel are invisible to both, so a native kernel's own host reads must be checked on a GPU
(torch.cuda.set_sync_debug_mode("error"), graph capture).
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SYNCING_ATEN_OPS = frozenset({
    "_local_scalar_dense", "is_nonzero", "equal", "nonzero", "nonzero_static_fallback", "masked_select",
    "_unique", "_unique2", "unique_dim", "unique_consecutive", "repeat_interleave", "_linalg_check_errors",
    "_linalg_eigh", "linalg_eigh", "linalg_eigvalsh", "linalg_qr", "geqrf", "linalg_svd", "_linalg_svd",
})  # fmt: skip
SYNCING_TENSOR_METHODS = ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__")


class HostReadError(AssertionError):
    """Raised inside forbid_host_reads() by an operation that reads device memory on the host."""


def _raise(message: str) -> None:
    raise HostReadError(message)


class _FlagSyncingOps(TorchDispatchMode):
    """Calls `flag(message)` for every syncing operation."""

    def __init__(self, flag):
        super().__init__()
        self.flag = flag

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        if name in SYNCING_ATEN_OPS:
            self.flag(f"host read: aten::{name}")
        if name == "_to_copy" and str((kwargs or {}).get("device", "")) == "cpu":
            self.flag("host read: a copy to the CPU")
        if name in ("index", "index_put", "index_put_", "_index_put_impl_") and _has_bool_index(args):
            self.flag(f"host read: aten::{name} with a boolean mask (nonzero on CUDA)")
        return func(*args, **(kwargs or {}))


def _has_bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())


@contextlib.contextmanager
def _watching_host_reads(flag):
    """Call flag(message) on every host read inside the block, at the dispatcher and in the Tensor methods (whose
    originals run after flag returns); the methods are restored on exit."""
    originals = {name: getattr(torch.Tensor, name) for name in SYNCING_TENSOR_METHODS}

    def watched(name: str):
        def method(self, *args, **kwargs):
            flag(f"host read: Tensor.{name}")
            return originals[name](self, *args, **kwargs)

        return method

    try:
        for name in SYNCING_TENSOR_METHODS:
            setattr(torch.Tensor, name, watched(name))
        with _FlagSyncingOps(flag):
            yield
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


@contextlib.contextmanager
def record_host_reads():
    """Yield a list that receives one message per host read inside the block, which runs on (a Tensor method's
    read also reaches the dispatcher: one read can give two messages, e.g. Tensor.item and _local_scalar_dense)."""
    reads: list[str] = []
    with _watching_host_reads(reads.append):
        yield reads


def forbid_host_reads():
    """Raise HostReadError on any host read of tensor data inside the block (see module docstring)."""
    return _watching_host_reads(_raise)
