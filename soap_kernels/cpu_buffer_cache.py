"""Controls of the C++ CPU buffer cache, where the jet kernels' large CPU stacks get their memory.

A PINN step allocates the same big stacks ([K, N, F]: 16 MB at K = 4, N = 4096, F = 256) every step; from fresh
memory each costs a page fault (and a zeroing) per 4 KiB page, about 10% of an MLP 4x256 jet step on a 2-core
CPU. The cache keeps freed blocks of at least 1 MiB, up to a limit (environment variable SOAP_KERNELS_CPU_CACHE_MB,
default 1024), and serves same-sized requests from them. Memory kept there is not returned to the system until
`clear()` (or `set_limit(0)`); tensors in use are not affected by either.
"""

from __future__ import annotations

from soap_kernels._native import has_native_cpu


def _extension():
    if not has_native_cpu():
        raise RuntimeError(
            "soap_kernels.cpu_buffer_cache needs the native extension soap_kernels._C, which is not built here "
            "(reinstall with a C++ compiler: pip install --no-build-isolation -e .)"
        )
    from soap_kernels import _C

    return _C


def stats() -> dict[str, int]:
    """{limit_bytes, cached_bytes, cached_blocks, hits, misses}: the limit, what is kept now, and how many
    requests were served from kept blocks (hits) or fresh memory (misses) since the process started."""
    return dict(_extension().cpu_buffer_cache_stats())


def clear() -> None:
    """Return every kept block to the system."""
    _extension().cpu_buffer_cache_clear()


def set_limit(limit_bytes: int) -> None:
    """Keep at most `limit_bytes` of freed blocks (0 turns caching off); frees kept blocks beyond it."""
    if isinstance(limit_bytes, bool) or not isinstance(limit_bytes, int):
        raise TypeError(f"set_limit: limit_bytes must be an int, got {type(limit_bytes).__name__} {limit_bytes!r}")
    if limit_bytes < 0:
        raise ValueError(f"set_limit: limit_bytes must be >= 0, got {limit_bytes}")
    _extension().cpu_buffer_cache_set_limit(limit_bytes)


def set_debug_fill(enabled: bool) -> None:
    """Debugging: fill every tensor the cache hands out with 0xFF bytes (NaN in float32 and float64), so an
    element a kernel leaves unwritten shows up as NaN instead of a stale value."""
    if not isinstance(enabled, bool):
        raise TypeError(f"set_debug_fill: enabled must be a bool, got {type(enabled).__name__} {enabled!r}")
    _extension().cpu_buffer_cache_set_debug_fill(enabled)
