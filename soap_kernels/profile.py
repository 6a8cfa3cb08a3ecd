"""GPU profiling helpers: an NVML sampler thread, and named ranges for torch.profiler and Nsight (NVTX).

NVML sampling (needs nvidia-ml-py and an NVIDIA driver):

    from soap_kernels import profile
    with profile.NvmlSampler(interval_s=0.05) as sampler:
        train(...)
    report = sampler.report()   # JSON-able dict; report["available"] is False without a GPU or NVML

The report holds per-metric median/mean/min/max of GPU utilisation, memory used, power, SM and memory
clocks and temperature, the fraction of samples each clock-event ("throttle") reason was active, and on
GPUs with GPM (Hopper and later) the SM occupancy and DRAM bandwidth utilisation over the region. Without
a GPU, NVML or nvidia-ml-py it returns a record saying why, and never raises.

Named ranges (cheap when off): `with profile.range("soap/refresh"): ...` records a torch.profiler event and
an NVTX range, but only while a torch profiler is running or ranges are switched on (`enable_ranges()` or
SOAP_KERNELS_PROFILE_RANGES=1), so library code can leave them in its hot paths.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = [
    "NvmlSampler",
    "enable_ranges",
    "nvml_status",
    "range",
    "ranges_enabled",
    "sample_region",
    "torch_trace",
]

# NVML clock-event ("throttle") reason bits, from nvml.h; named here so reports do not depend on the
# pynvml version's constant names.
THROTTLE_REASONS = {
    0x001: "gpu_idle",
    0x002: "applications_clocks_setting",
    0x004: "sw_power_cap",
    0x008: "hw_slowdown",
    0x010: "sync_boost",
    0x020: "sw_thermal_slowdown",
    0x040: "hw_thermal_slowdown",
    0x080: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}

# GPM metric ids (nvml.h, NVML_GPM_METRIC_*) that the report carries.
GPM_METRICS = {
    "sm_occupancy_pct": 3,
    "sm_util_pct": 2,
    "dram_bw_util_pct": 10,
    "any_tensor_util_pct": 5,
}


# ----------------------------------------------------------------------------------------------------------
# NVML


def _import_pynvml():
    """pynvml (from nvidia-ml-py), or an exception saying why it cannot be used."""
    import pynvml  # noqa: PLC0415  (optional dependency, imported on use)

    return pynvml


def nvml_status() -> dict:
    """Whether NVML can be used here: {"available", "reason" (None when usable), "driver", "devices"}."""
    try:
        pynvml = _import_pynvml()
    except ImportError as error:
        return {"available": False, "reason": f"nvidia-ml-py is not installed ({error})"}
    try:
        pynvml.nvmlInit()
    except Exception as error:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...: no usable driver here
        return {"available": False, "reason": f"NVML did not initialise: {error}"}
    try:
        count = pynvml.nvmlDeviceGetCount()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in builtins.range(count)]
        devices = [_text(pynvml.nvmlDeviceGetName(handle)) for handle in handles]
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
    except Exception as error:
        return {"available": False, "reason": f"NVML query failed: {error}"}
    finally:
        _shutdown(pynvml)
    if not devices:
        return {"available": False, "reason": "NVML found no GPU", "driver": driver, "devices": []}
    return {"available": True, "reason": None, "driver": driver, "devices": devices}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _shutdown(pynvml) -> None:
    with contextlib.suppress(Exception):
        pynvml.nvmlShutdown()


def _nvml_handle(pynvml, device: int | str | torch.device):
    """The NVML handle of a CUDA device, matched by UUID so that CUDA_VISIBLE_DEVICES renumbering holds."""
    if isinstance(device, (str, torch.device)):
        device = torch.device(device)
        index = device.index or 0
    else:
        index = int(device)
    try:
        if torch.cuda.is_available() and index < torch.cuda.device_count():
            uuid = str(torch.cuda.get_device_properties(index).uuid)
            if uuid:
                uuid = uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
                return pynvml.nvmlDeviceGetHandleByUUID(uuid.encode())
    except Exception:  # older torch without .uuid, or a MIG slice: fall back to the index
        pass
    return pynvml.nvmlDeviceGetHandleByIndex(index)


def _stats(values: list[float]) -> dict:
    return {
        "median": statistics.median(values),
        "mean": statistics.fmean(values),
        "min": min(values),
        "max": max(values),
    }


class _Gpm:
    """GPM (GPU performance monitoring, Hopper and later) samples and metrics between two of them."""

    def __init__(self, pynvml, handle):
        self.pynvml = pynvml
        self.handle = handle
        self.first = None
        self.previous = None
        self.current = None
        self.per_interval: dict[str, list[float]] = {name: [] for name in GPM_METRICS}
        self.whole_region: dict[str, float] = {}
        support = pynvml.nvmlGpmQueryDeviceSupport(handle)
        if not support.isSupportedDevice:
            raise RuntimeError("GPM is not supported on this GPU (needs Hopper or later)")
        self.first = pynvml.nvmlGpmSampleAlloc()
        self.previous = pynvml.nvmlGpmSampleAlloc()
        self.current = pynvml.nvmlGpmSampleAlloc()
        pynvml.nvmlGpmSampleGet(handle, self.first)
        pynvml.nvmlGpmSampleGet(handle, self.previous)

    def _metrics(self, sample1, sample2) -> dict[str, float]:
        pynvml = self.pynvml
        request = pynvml.c_nvmlGpmMetricsGet_t()
        request.version = pynvml.NVML_GPM_METRICS_GET_VERSION
        request.numMetrics = len(GPM_METRICS)
        request.sample1 = sample1
        request.sample2 = sample2
        for slot, metric_id in enumerate(GPM_METRICS.values()):
            request.metrics[slot].metricId = metric_id
        pynvml.nvmlGpmMetricsGet(request)
        values = {}
        for slot, name in enumerate(GPM_METRICS):
            metric = request.metrics[slot]
            if metric.nvmlReturn == 0:  # NVML_SUCCESS for this metric
                values[name] = float(metric.value)
        return values

    def tick(self) -> None:
        """Take a sample and record the metrics since the previous one."""
        self.pynvml.nvmlGpmSampleGet(self.handle, self.current)
        for name, value in self._metrics(self.previous, self.current).items():
            self.per_interval[name].append(value)
        self.previous, self.current = self.current, self.previous

    def finish(self) -> None:
        """Metrics over the whole region: first sample to the last one taken."""
        self.whole_region = self._metrics(self.first, self.previous)

    def free(self) -> None:
        for sample in (self.first, self.previous, self.current):
            if sample is not None:
                with contextlib.suppress(Exception):
                    self.pynvml.nvmlGpmSampleFree(sample)


class NvmlSampler:
    """Samples one GPU through NVML in a background thread between start() and stop() (or a with block).

    interval_s: seconds between samples (NVML's utilisation counters update every ~1/6 s on most GPUs,
    so shorter intervals repeat values). gpm: also read GPM metrics where the GPU supports them.
    """

    def __init__(self, device: int | str | torch.device = 0, interval_s: float = 0.05, gpm: bool = True):
        self.device = device
        self.interval_s = float(interval_s)
        self.want_gpm = gpm
        self.samples: list[dict[str, float | int]] = []
        self.unsupported: dict[str, str] = {}
        self.reason: str | None = None
        self.device_name: str | None = None
        self.gpm_reason: str | None = None if gpm else "not requested"
        self._pynvml = None
        self._handle = None
        self._gpm: _Gpm | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._started_at = 0.0
        self._duration_s = 0.0
        self._report: dict | None = None

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> NvmlSampler:
        """Begin sampling; never raises (an unusable NVML is recorded in the report's "reason")."""
        self._started_at = time.perf_counter()
        try:
            pynvml = _import_pynvml()
        except ImportError as error:
            self.reason = f"nvidia-ml-py is not installed ({error})"
            return self
        try:
            pynvml.nvmlInit()
        except Exception as error:
            self.reason = f"NVML did not initialise: {error}"
            return self
        self._pynvml = pynvml
        try:
            self._handle = _nvml_handle(pynvml, self.device)
            self.device_name = _text(pynvml.nvmlDeviceGetName(self._handle))
        except Exception as error:
            self.reason = f"no NVML device {self.device!r}: {error}"
            _shutdown(pynvml)
            self._pynvml = None
            return self
        if self.want_gpm:
            try:
                self._gpm = _Gpm(pynvml, self._handle)
            except Exception as error:  # not Hopper, an old driver, or a sandbox that hides the counters
                self.gpm_reason = f"GPM unavailable: {error}"
                self._gpm = None
        self._take_sample()
        self._thread = threading.Thread(target=self._loop, name="soap_kernels-nvml-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict:
        """Stop sampling and return the report (later calls return the same report)."""
        if self._report is not None:
            return self._report
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self._duration_s = time.perf_counter() - self._started_at
        if self._pynvml is not None:
            self._take_sample()
            if self._gpm is not None:
                try:
                    self._gpm.tick()
                    self._gpm.finish()
                except Exception as error:
                    self.gpm_reason = f"GPM read failed: {error}"
                self._gpm.free()
            _shutdown(self._pynvml)
            self._pynvml = None
        self._report = self._build_report()
        return self._report

    def __enter__(self) -> NvmlSampler:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- sampling --------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._take_sample()
            if self._gpm is not None:
                try:
                    self._gpm.tick()
                except Exception as error:
                    self.gpm_reason = f"GPM read failed: {error}"
                    self._gpm.free()
                    self._gpm = None

    def _read(self, name: str, getter: Callable[[], float | int], sample: dict) -> None:
        if name in self.unsupported:
            return
        try:
            sample[name] = getter()
        except Exception as error:  # NotSupported on this GPU/driver: stop asking, say so in the report
            self.unsupported[name] = str(error) or type(error).__name__

    def _take_sample(self) -> None:
        pynvml, handle = self._pynvml, self._handle
        sample: dict[str, float | int] = {"t_s": time.perf_counter() - self._started_at}
        for name, getter in _sample_getters(pynvml, handle).items():
            self._read(name, getter, sample)
        self.samples.append(sample)

    # -- report ----------------------------------------------------------------------------------------
    def report(self) -> dict:
        """The JSON-able report (stops the sampler first if it is still running)."""
        if self._report is None:
            return self.stop()
        return self._report

    def _build_report(self) -> dict:
        report: dict[str, Any] = {
            "available": self.reason is None,
            "reason": self.reason,
            "device": self.device_name,
            "interval_s": self.interval_s,
            "duration_s": self._duration_s,
            "num_samples": len(self.samples),
        }
        if self.reason is not None:
            return report
        metrics = {}
        for name in _sample_getters(None, None):
            if name == "throttle_bits":
                continue
            values = [float(s[name]) for s in self.samples if name in s]
            if values:
                metrics[name] = _stats(values)
        report["metrics"] = metrics
        bits = [int(s["throttle_bits"]) for s in self.samples if "throttle_bits" in s]
        if bits:
            report["throttle_reasons"] = {
                label: sum(1 for b in bits if b & bit) / len(bits)
                for bit, label in THROTTLE_REASONS.items()
                if any(b & bit for b in bits)
            }
        report["unsupported"] = dict(self.unsupported)
        gpm: dict[str, Any] = {"available": False, "reason": self.gpm_reason}
        if self._gpm is not None and self.gpm_reason is None:
            gpm = {"available": True, "reason": None, "whole_region": self._gpm.whole_region}
            gpm["per_interval"] = {k: _stats(v) for k, v in self._gpm.per_interval.items() if v}
        report["gpm"] = gpm
        return report


def _sample_getters(pynvml, handle) -> dict[str, Callable[[], float | int]]:
    """Metric name -> NVML reading, in the order the report lists them."""
    return {
        "gpu_util_pct": lambda: pynvml.nvmlDeviceGetUtilizationRates(handle).gpu,
        "mem_util_pct": lambda: pynvml.nvmlDeviceGetUtilizationRates(handle).memory,
        "memory_used_mib": lambda: pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20,
        "power_w": lambda: pynvml.nvmlDeviceGetPowerUsage(handle) / 1e3,
        "sm_clock_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
        "mem_clock_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM),
        "temperature_c": lambda: pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU),
        "throttle_bits": lambda: _throttle_bits(pynvml, handle),
    }


def _throttle_bits(pynvml, handle) -> int:
    getter = getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
    if getter is None:  # nvidia-ml-py < 12.535 names it after throttling
        getter = pynvml.nvmlDeviceGetCurrentClocksThrottleReasons
    return int(getter(handle))


def sample_region(fn: Callable[[], Any], device: int | str | torch.device = 0, interval_s: float = 0.05):
    """Run fn() under an NvmlSampler; returns (fn's result, report). Synchronises CUDA before stopping."""
    with NvmlSampler(device, interval_s) as sampler:
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    return result, sampler.report()


# ----------------------------------------------------------------------------------------------------------
# Named ranges (torch.profiler events and NVTX)

_ranges_forced = os.environ.get("SOAP_KERNELS_PROFILE_RANGES", "0") == "1"


def enable_ranges(enabled: bool = True) -> None:
    """Switch named ranges on (or off) regardless of whether a torch profiler is running (e.g. for nsys)."""
    global _ranges_forced
    _ranges_forced = bool(enabled)


def ranges_enabled() -> bool:
    """True when `range()` records: ranges switched on, or a torch (autograd) profiler is running."""
    return _ranges_forced or torch.autograd._profiler_enabled()


@contextlib.contextmanager
def range(name: str) -> Iterator[None]:  # noqa: A001  (profile.range reads naturally at call sites)
    """A named region for torch.profiler (record_function) and Nsight (NVTX); a no-op when ranges are off."""
    if not ranges_enabled():
        yield
        return
    nvtx = torch.cuda.is_available()
    if nvtx:
        torch.cuda.nvtx.range_push(name)
    try:
        with torch.profiler.record_function(name):
            yield
    finally:
        if nvtx:
            torch.cuda.nvtx.range_pop()


@contextlib.contextmanager
def torch_trace(path: str | os.PathLike | None = None, cuda: bool | None = None) -> Iterator[Any]:
    """torch.profiler over a block (CPU, plus CUDA when available); writes a Chrome trace to `path` if given.

    Yields the profiler; `prof.key_averages().table(sort_by="self_cuda_time_total")` summarises it.
    """
    activities = [torch.profiler.ProfilerActivity.CPU]
    if cuda if cuda is not None else torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        yield prof
    if path is not None:
        prof.export_chrome_trace(os.fspath(path))
