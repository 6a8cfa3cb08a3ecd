"""Loads the native extension soap_kernels._C once and says, once, what is unavailable without it."""

from __future__ import annotations

import functools
import warnings

import torch


@functools.cache
def native_build_info() -> dict | None:
    """The build report of soap_kernels._C (CUDA on/off, architectures, versions), or None if absent.

    Importing _C registers the C++/CUDA kernels under torch.ops.soap_kernels.
    """
    try:
        from soap_kernels import _C
    except ImportError as error:
        warnings.warn(
            f"soap_kernels: the native extension soap_kernels._C is unavailable ({error}); the C++ and CUDA "
            "kernels are off and every op runs on its torch or Triton path. Reinstall with a C++ compiler "
            "(pip install --no-build-isolation -e .) to build it.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    info = dict(_C.build_info)
    if info["torch_version"] != torch.__version__:
        warnings.warn(
            f"soap_kernels._C was built against torch {info['torch_version']} but torch "
            f"{torch.__version__} is imported; rebuild it if ops fail to load.",
            RuntimeWarning,
            stacklevel=2,
        )
    return info


def has_native_cpu() -> bool:
    """True when the C++ CPU kernels are registered."""
    return native_build_info() is not None


def has_native_cuda() -> bool:
    """True when the CUDA C++ kernels were compiled in (a GPU is needed to run them)."""
    info = native_build_info()
    return bool(info and info["cuda"])
