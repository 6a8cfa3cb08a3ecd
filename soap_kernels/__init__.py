"""soap-kernels: fused kernels for SOAP and forward-mode PINN residuals.

Public API: SOAP (optimizer), jet (network values with input derivatives), nn (PINN architectures),
alignment_score (gradient alignment), profile (NVML sampling), cpu_buffer_cache (where the jets' CPU stacks
get their memory). Submodules import lazily so that `import soap_kernels` stays cheap.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> (module, attribute in it; None for the module itself)
_LAZY = {
    "SOAP": ("soap_kernels.optim.soap", "SOAP"),
    "jet": ("soap_kernels.jets", "jet"),
    "nn": ("soap_kernels.nn", None),
    "alignment_score": ("soap_kernels.align", "alignment_score"),
    "profile": ("soap_kernels.profile", None),
    "cpu_buffer_cache": ("soap_kernels.cpu_buffer_cache", None),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'soap_kernels' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
