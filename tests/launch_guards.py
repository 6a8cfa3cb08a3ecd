"""Records every Triton launch of an op module with the device guards open around it (tests of on_device_of)."""

import contextlib

from torch.library import wrap_triton

from soap_kernels.ops import _triton_utils


def record_launch_guards(monkeypatch, module):
    """Patch `module`'s on_device_of and wrap_triton: returns one (kernel name, devices of the guards open at the
    launch) pair per launch, so a test sees every launch and whether it ran inside a guard for the right device."""
    open_guards, launches = [], []

    @contextlib.contextmanager
    def recording_guard(tensor):
        open_guards.append(tensor.device)
        try:
            with _triton_utils.on_device_of(tensor):
                yield
        finally:
            open_guards.pop()

    def recording_wrap_triton(kernel):
        launches.append((kernel.fn.__name__, list(open_guards)))
        return wrap_triton(kernel)

    monkeypatch.setattr(module, "on_device_of", recording_guard)
    monkeypatch.setattr(module, "wrap_triton", recording_wrap_triton)
    return launches
