"""Shared measuring helpers for the bench/ scripts: timing, machine naming, JSON results, the suite contract.

time_fn: wall time, synchronising CUDA around each repetition. benchmark: the suites' default, which on CUDA
uses triton.testing.do_bench (CUDA events, L2 flushed between runs) and on CPU time_fn. Results are medians
with 10th/90th percentiles, never a single run. SuiteConfig and record() are the contract between
bench/run.py and the suite modules (bench/README.md).
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
        properties = torch.cuda.get_device_properties(device)
        report["capability"] = f"{properties.major}.{properties.minor}"
        report["multiprocessors"] = properties.multi_processor_count
        report["memory_gib"] = round(properties.total_memory / 2**30, 1)
    try:
        import triton

        report["triton"] = triton.__version__
    except ImportError:
        report["triton"] = None
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
    return spread(samples)


def time_interleaved(fns: dict[str, Callable[[], object]], device, rounds: int = 10, warmup: int = 1) -> dict:
    """{name: timing} with one run of every fn per round, so load that comes and goes hits all of them alike
    (the way to compare providers on a shared CPU); timing as time_fn's, method "wall-interleaved"."""
    device = torch.device(device)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            _sync(device)
            begin = time.perf_counter()
            fn()
            _sync(device)
            samples[name].append((time.perf_counter() - begin) * 1e3)
    return {name: {**spread(values), "method": "wall-interleaved"} for name, values in samples.items()}


def quantile(samples: list[float], q: float) -> float:
    """The q-quantile (0 <= q <= 1) by linear interpolation between order statistics (numpy's default), so
    p10 <= median <= p90 for any number of samples."""
    ordered = sorted(samples)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


def spread(samples: list[float]) -> dict:
    """median_ms, p10_ms, p90_ms, mean_ms and repeats of samples in milliseconds."""
    return {
        "median_ms": statistics.median(samples),
        "p10_ms": quantile(samples, 0.1),
        "p90_ms": quantile(samples, 0.9),
        "mean_ms": statistics.fmean(samples),
        "repeats": len(samples),
    }


def results_path(suite: str, device: torch.device | str, suffix: str, results_dir: Path | None = None) -> Path:
    """results_dir/<suite>-<device>-<date><suffix> (results_dir defaults to bench/results)."""
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    return Path(results_dir or RESULTS_DIR) / f"{suite}-{device_name(device)}-{date}{suffix}"


def save_results(
    suite: str, payload: dict, device: torch.device | str = "cpu", results_dir: Path | None = None
) -> Path:
    """Write payload (plus the machine report) to bench/results/<suite>-<device>-<date>.json."""
    path = results_path(suite, device, ".json", results_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"suite": suite, "machine": machine_report(device), **payload}
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
    return path


def _percentiles(samples: list[float], method: str) -> dict:
    return {**spread(samples), "method": method}


@functools.cache
def _do_bench_returns_all() -> bool:
    """Whether this Triton's do_bench accepts return_mode="all" (the raw per-run times)."""
    import inspect

    import triton.testing

    try:
        return '"all"' in inspect.getsource(triton.testing.do_bench)
    except (OSError, TypeError):
        return False


def benchmark(
    fn: Callable[[], object],
    device: torch.device | str = "cpu",
    warmup_ms: float = 25.0,
    rep_ms: float = 100.0,
    repeats: int = 20,
    min_seconds: float = 0.0,
    warmup: int = 3,
) -> dict:
    """Median, p10, p90 and mean time of fn() in ms, and how it was timed ("method").

    On CUDA: triton.testing.do_bench for about rep_ms of runs after warmup_ms (CUDA events, L2 flushed
    before each run, so small kernels are timed cold); without Triton, time_fn. On CPU: time_fn with
    `warmup` untimed runs, then `repeats` timed runs (and at least min_seconds).
    """
    device = torch.device(device)
    if device.type == "cuda":
        try:
            import triton.testing
        except ImportError:
            timing = time_fn(fn, device, warmup=warmup, repeats=repeats, min_seconds=min_seconds)
            return {**timing, "method": "wall+sync"}
        if not _do_bench_returns_all():
            p10, p50, p90 = triton.testing.do_bench(fn, warmup_ms, rep_ms, quantiles=[0.1, 0.5, 0.9])
            return {"median_ms": p50, "p10_ms": p10, "p90_ms": p90, "method": "do_bench-quantiles"}
        samples = triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="all")
        return _percentiles(list(samples), "do_bench")
    return {**time_fn(fn, device, warmup=warmup, repeats=repeats, min_seconds=min_seconds), "method": "wall"}


def record(
    case: str,
    provider: str,
    timing: dict | None,
    flops: float | None = None,
    bytes_moved: float | None = None,
    peak_dtype: str | None = None,
    error: str | None = None,
    **extra,
) -> dict:
    """One result row of a suite: a case (e.g. "piratenet-3x256 f=2") timed for one provider.

    flops / bytes_moved (the fewest the work needs) let bench/run.py report TFLOP/s and GB/s as a percentage
    of the measured ceilings; peak_dtype names the matmul ceiling to compare with ("fp32", "tf32", "bf16",
    "fp64"). A provider that could not run gives timing=None and error="why" instead of being left out.
    """
    row: dict = {"case": case, "provider": provider}
    if timing is not None:
        row.update(timing)
    if flops is not None:
        row["flops"] = float(flops)
    if bytes_moved is not None:
        row["bytes"] = float(bytes_moved)
    if peak_dtype is not None:
        row["peak_dtype"] = peak_dtype
    if error is not None:
        row["error"] = error
    row.update(extra)
    return row


def captured(fn: Callable[[], object], warmup: int = 1) -> Callable[[], None]:
    """fn captured in a CUDA graph; returns the graph's replay. As torch.cuda.graphs' examples: `warmup` eager
    calls on a side stream first (libraries, Triton compilation and anything a capture cannot hold, such as
    SOAP's initialising eigh step), then the capture on the current device."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


SIZES = ("paper", "small", "smoke")
OUT_OF_TIME = "not run: the suite's time budget (--time-budget-s) was spent"


@dataclass
class SuiteConfig:
    """What bench/run.py passes to a suite's run(config).

    sizes: "paper" (the paper's problem sizes; the GPU default), "small" (minutes on a 2-core CPU; the CPU
    default) or "smoke" (seconds; CI checks that the suite runs, numbers mean nothing). providers: names to
    run, or None for all the suite offers. time_budget_s: how long the whole suite may take; past it, a suite
    starts no new case (out_of_time) and saves what it measured, since a suite killed at a time limit saves nothing.
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    sizes: str = "small"
    providers: tuple[str, ...] | None = None
    time_budget_s: float | None = None
    results_dir: Path = field(default_factory=lambda: RESULTS_DIR)
    extra: dict = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def out_of_time(self) -> bool:
        """True once time_budget_s has passed since this config was made."""
        return self.time_budget_s is not None and time.monotonic() - self.started > self.time_budget_s

    def wants(self, provider: str) -> bool:
        """True when `provider` was asked for (all are, when no list was given)."""
        return self.providers is None or provider in self.providers

    def time_many(self, fns: dict[str, Callable[[], object]], repeats: int) -> dict:
        """{name: timing}: interleaved rounds on a CPU (time_interleaved), benchmark() one by one on a GPU."""
        if self.device.type != "cuda":
            return time_interleaved(fns, self.device, rounds=3 if self.sizes == "smoke" else repeats)
        return {name: self.time(fn) for name, fn in fns.items()}

    def time(self, fn: Callable[[], object], **kwargs) -> dict:
        """benchmark(fn) on this config's device, fewer repeats at "smoke" size."""
        if self.sizes == "smoke":
            kwargs.setdefault("repeats", 3)
            kwargs.setdefault("warmup", 1)
            kwargs.setdefault("warmup_ms", 5.0)
            kwargs.setdefault("rep_ms", 20.0)
        return benchmark(fn, self.device, **kwargs)
