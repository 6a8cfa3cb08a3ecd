"""Shared measuring helpers for the bench/ scripts: timing, machine naming, JSON results.

Timing on CUDA synchronises around each repetition; on CPU it is wall time. Results are medians with
10th/90th percentiles, never a single run.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS_DIR = Path(os.environ.get("SOAP_KERNELS_RESULTS_DIR", Path(__file__).resolve().parent / "results"))


def device_name(device: torch.device | str = "cpu") -> str:
    """A short machine label for file names and reports, e.g. 'cpu-2cores' or 'NVIDIA-H100-80GB-HBM3'."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).replace(" ", "-")
    return f"cpu-{os.cpu_count()}cores"


def machine_report(device: torch.device | str = "cpu") -> dict:
    """What the numbers were measured on."""
    device = torch.device(device)
    report = {
        "device": device_name(device),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if device.type == "cuda":
        report["cuda"] = torch.version.cuda
    return report


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(
    fn: Callable[[], object],
    device: torch.device | str = "cpu",
    warmup: int = 3,
    repeats: int = 20,
    min_seconds: float = 0.0,
) -> dict:
    """Median, 10th and 90th percentile wall time of fn() in milliseconds (synchronised on CUDA).

    Runs at least `repeats` times and, when min_seconds > 0, until that much time has passed.
    """
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    _sync(device)
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < repeats or time.perf_counter() - started < min_seconds:
        begin = time.perf_counter()
        fn()
        _sync(device)
        samples.append((time.perf_counter() - begin) * 1e3)
    samples.sort()
    return {
        "median_ms": statistics.median(samples),
        "p10_ms": samples[int(0.1 * (len(samples) - 1))],
        "p90_ms": samples[int(0.9 * (len(samples) - 1))],
        "mean_ms": statistics.fmean(samples),
        "repeats": len(samples),
    }


def save_results(suite: str, payload: dict, device: torch.device | str = "cpu") -> Path:
    """Write payload (plus the machine report) to bench/results/<suite>-<device>-<date>.json."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    path = RESULTS_DIR / f"{suite}-{device_name(device)}-{date}.json"
    document = {"suite": suite, "machine": machine_report(device), **payload}
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
    return path
