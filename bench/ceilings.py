"""Measured ceilings of the machine a run is on: dense matmul TFLOP/s per dtype and device copy GB/s.

Datasheet peaks are leads; the percentages in bench results are against these numbers, measured in the same
run on random data (never zeros, which run faster on tensor cores). Copy bandwidth counts bytes read plus
bytes written.
"""

from __future__ import annotations

import contextlib

import torch

from bench.harness import benchmark

# (matmul n, copy elements) per size: GPU sizes fill an H100/H200; CPU sizes stay under a second each.
_GPU_SIZES = {"paper": (8192, 2**28), "small": (4096, 2**26), "smoke": (1024, 2**22)}
_CPU_SIZES = {"paper": (1024, 2**25), "small": (512, 2**24), "smoke": (128, 2**18)}
_GPU_DTYPES = ("bf16", "tf32", "fp32", "fp64")
_CPU_DTYPES = ("fp32", "fp64")
_TORCH_DTYPE = {"bf16": torch.bfloat16, "tf32": torch.float32, "fp32": torch.float32, "fp64": torch.float64}


@contextlib.contextmanager
def _tf32(enabled: bool):
    """float32 matmuls on tf32 tensor cores ("high") or in full float32 ("highest"), restored after."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def matmul_ceiling(device: torch.device, dtype_name: str, n: int) -> dict:
    """TFLOP/s of an n x n x n torch.matmul in dtype_name ("bf16", "tf32", "fp32", "fp64")."""
    generator = torch.Generator(device=device).manual_seed(0)
    dtype = _TORCH_DTYPE[dtype_name]
    a = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    out = torch.empty(n, n, device=device, dtype=dtype)
    with _tf32(dtype_name == "tf32"):
        timing = benchmark(lambda: torch.matmul(a, b, out=out), device, repeats=5)
    flops = 2.0 * n**3
    return {"n": n, "flops": flops, "tflops": flops / (timing["median_ms"] * 1e-3) / 1e12, **timing}


def copy_ceiling(device: torch.device, elements: int) -> dict:
    """GB/s of a device-to-device float32 copy of `elements` values (bytes read + bytes written)."""
    source = torch.rand(elements, device=device)
    target = torch.empty_like(source)
    timing = benchmark(lambda: target.copy_(source), device, repeats=10)
    moved = 2.0 * source.numel() * source.element_size()
    return {"elements": elements, "bytes": moved, "gbps": moved / (timing["median_ms"] * 1e-3) / 1e9, **timing}


def measure_ceilings(device: torch.device | str, sizes: str = "paper") -> dict:
    """{"matmul_tflops": {dtype: TFLOP/s}, "copy_gbps": GB/s, "details": {...timings...}} for `device`."""
    device = torch.device(device)
    table = _GPU_SIZES if device.type == "cuda" else _CPU_SIZES
    n, elements = table.get(sizes, table["small"])
    dtypes = _GPU_DTYPES if device.type == "cuda" else _CPU_DTYPES
    details = {f"matmul_{name}": matmul_ceiling(device, name, n) for name in dtypes}
    details["copy"] = copy_ceiling(device, elements)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # give the suites back the ~4 GB these buffers held
    return {
        "matmul_tflops": {name: details[f"matmul_{name}"]["tflops"] for name in dtypes},
        "copy_gbps": details["copy"]["gbps"],
        "details": details,
    }


def percent_of_peak(row: dict, ceilings: dict | None) -> dict:
    """Achieved TFLOP/s and GB/s of a result row (from its flops/bytes and median) and their % of ceiling.

    Returns only the fields it could compute: none without a median, or without flops/bytes.
    """
    median_ms = row.get("median_ms")
    if not median_ms or median_ms <= 0:
        return {}
    seconds = median_ms * 1e-3
    derived: dict = {}
    if row.get("flops"):
        derived["tflops"] = row["flops"] / seconds / 1e12
        peaks = (ceilings or {}).get("matmul_tflops", {})
        dtype = row.get("peak_dtype", "fp32")
        if peaks.get(dtype):
            derived["pct_matmul_peak"] = 100.0 * derived["tflops"] / peaks[dtype]
            derived["peak_dtype"] = dtype
    if row.get("bytes"):
        derived["gbps"] = row["bytes"] / seconds / 1e9
        peak = (ceilings or {}).get("copy_gbps")
        if peak:
            derived["pct_copy_peak"] = 100.0 * derived["gbps"] / peak
    return derived


def ceiling_records(ceilings: dict) -> list[dict]:
    """The ceiling measurements as ordinary result rows (suite "ceilings")."""
    rows = []
    for key, detail in ceilings["details"].items():
        if key == "copy":
            case, extra = f"copy {detail['elements']} fp32", {"bytes": detail["bytes"]}
        else:
            dtype = key.removeprefix("matmul_")
            case, extra = f"matmul {detail['n']}^3 {dtype}", {"flops": detail["flops"], "peak_dtype": dtype}
        timing = {
            k: detail[k] for k in ("median_ms", "p10_ms", "p90_ms", "mean_ms", "repeats", "method") if k in detail
        }
        rows.append({"case": case, "provider": "torch", **timing, **extra})
    return rows
