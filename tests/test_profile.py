"""soap_kernels.profile: the NVML sampler against a fake NVML, its "not available" records, and named ranges."""

from __future__ import annotations

import itertools
import json
import time
import types

import pytest
import torch

from soap_kernels import profile


class _NotSupported(Exception):
    pass


def fake_pynvml(gpm_supported: bool = True, throttle_bits=None, init_error=None):
    """A stand-in for pynvml with fixed readings: 40% util, 1 GiB used, 350 W, 1980/2619 MHz clocks."""
    module = types.ModuleType("pynvml")
    module.NVML_CLOCK_SM, module.NVML_CLOCK_MEM, module.NVML_TEMPERATURE_GPU = 1, 2, 0
    module.NVML_GPM_METRICS_GET_VERSION = 1
    module.calls = {"init": 0, "shutdown": 0, "gpm_free": 0}
    throttle_bits = iter(throttle_bits if throttle_bits is not None else itertools.repeat(0x4))

    def nvml_init():
        if init_error is not None:
            raise init_error
        module.calls["init"] += 1

    module.nvmlInit = nvml_init
    module.nvmlShutdown = lambda: module.calls.__setitem__("shutdown", module.calls["shutdown"] + 1)
    module.nvmlDeviceGetCount = lambda: 1
    module.nvmlDeviceGetHandleByIndex = lambda index: f"handle{index}"
    module.nvmlDeviceGetHandleByUUID = lambda uuid: "handle0"
    module.nvmlDeviceGetName = lambda handle: b"Fake H100"
    module.nvmlSystemGetDriverVersion = lambda: "580.00"
    module.nvmlDeviceGetUtilizationRates = lambda handle: types.SimpleNamespace(gpu=40, memory=25)
    module.nvmlDeviceGetMemoryInfo = lambda handle: types.SimpleNamespace(used=2**30)
    module.nvmlDeviceGetPowerUsage = lambda handle: 350_000  # milliwatts
    module.nvmlDeviceGetClockInfo = lambda handle, kind: {1: 1980, 2: 2619}[kind]

    def temperature(handle, sensor):
        raise _NotSupported("Not Supported")

    module.nvmlDeviceGetTemperature = temperature
    module.nvmlDeviceGetCurrentClocksEventReasons = lambda handle: next(throttle_bits)

    # GPM: each sample holds a tick count; a metric's value is 10 * metric id, so tests can tell them apart.
    ticks = itertools.count()
    module.nvmlGpmQueryDeviceSupport = lambda handle: types.SimpleNamespace(isSupportedDevice=int(gpm_supported))
    module.nvmlGpmSampleAlloc = lambda: types.SimpleNamespace(tick=None)
    module.nvmlGpmSampleFree = lambda sample: module.calls.__setitem__("gpm_free", module.calls["gpm_free"] + 1)

    def sample_get(handle, sample):
        sample.tick = next(ticks)
        return sample

    module.nvmlGpmSampleGet = sample_get

    class MetricsGet:
        def __init__(self):
            self.metrics = [types.SimpleNamespace(metricId=0, nvmlReturn=0, value=0.0) for _ in range(8)]

    module.c_nvmlGpmMetricsGet_t = MetricsGet

    def metrics_get(request):
        assert request.sample2.tick > request.sample1.tick, "GPM samples must be taken in order"
        for metric in request.metrics[: request.numMetrics]:
            metric.value = 10.0 * metric.metricId
        return request

    module.nvmlGpmMetricsGet = metrics_get
    return module


def use_fake(monkeypatch, module):
    monkeypatch.setattr(profile, "_import_pynvml", lambda: module)


def test_without_nvidia_ml_py_the_report_says_so(monkeypatch):
    def missing():
        raise ImportError("No module named 'pynvml'")

    monkeypatch.setattr(profile, "_import_pynvml", missing)
    with profile.NvmlSampler() as sampler:
        ran = True
    report = sampler.report()
    assert ran and report["available"] is False
    assert "nvidia-ml-py" in report["reason"]
    assert profile.nvml_status()["available"] is False
    json.dumps(report)


def test_nvml_that_fails_to_initialise_is_a_record_not_an_exception(monkeypatch):
    use_fake(monkeypatch, fake_pynvml(init_error=RuntimeError("Driver Not Loaded")))
    result, report = profile.sample_region(lambda: 42, interval_s=0.01)
    assert result == 42
    assert report["available"] is False and "Driver Not Loaded" in report["reason"]
    status = profile.nvml_status()
    assert status["available"] is False and "Driver Not Loaded" in status["reason"]


def test_this_machine_gives_a_report_either_way():
    report = profile.NvmlSampler(interval_s=0.01).start().stop()
    assert isinstance(report["available"], bool)
    if report["available"]:
        assert report["num_samples"] >= 2 and report["metrics"]
    else:
        assert isinstance(report["reason"], str) and report["reason"]
    json.dumps(report)


def test_sampler_summarises_fake_nvml_readings(monkeypatch):
    fake = fake_pynvml()
    use_fake(monkeypatch, fake)
    with profile.NvmlSampler(interval_s=0.005) as sampler:
        time.sleep(0.06)
    report = sampler.report()
    assert report["available"] is True and report["device"] == "Fake H100"
    assert report["num_samples"] >= 3  # one at start, one at stop, and the thread's in between
    metrics = report["metrics"]
    assert metrics["power_w"]["median"] == pytest.approx(350.0)
    assert metrics["memory_used_mib"]["max"] == pytest.approx(1024.0)
    assert metrics["gpu_util_pct"]["mean"] == pytest.approx(40.0)
    assert metrics["sm_clock_mhz"]["min"] == 1980 and metrics["mem_clock_mhz"]["min"] == 2619
    # a reading the GPU does not support is named, not fatal, and asked for only once
    assert "temperature_c" not in metrics and "temperature_c" in report["unsupported"]
    assert report["throttle_reasons"] == {"sw_power_cap": 1.0}
    gpm = report["gpm"]
    assert gpm["available"] is True
    assert gpm["whole_region"]["sm_occupancy_pct"] == pytest.approx(30.0)  # metric id 3
    assert gpm["whole_region"]["dram_bw_util_pct"] == pytest.approx(100.0)  # metric id 10
    assert gpm["per_interval"]["sm_occupancy_pct"]["median"] == pytest.approx(30.0)
    assert fake.calls["init"] == fake.calls["shutdown"] == 1
    assert fake.calls["gpm_free"] == 3
    assert sampler.stop() is report  # stopping again changes nothing
    json.dumps(report)


def test_throttle_fractions_count_samples(monkeypatch):
    use_fake(monkeypatch, fake_pynvml(throttle_bits=itertools.cycle([0x1, 0x1 | 0x40])))
    with profile.NvmlSampler(interval_s=0.005, gpm=False) as sampler:
        time.sleep(0.05)
    report = sampler.report()
    bits = [s["throttle_bits"] for s in sampler.samples]
    assert report["throttle_reasons"]["gpu_idle"] == 1.0
    assert report["throttle_reasons"]["hw_thermal_slowdown"] == pytest.approx(bits.count(0x41) / len(bits))
    assert 0 < report["throttle_reasons"]["hw_thermal_slowdown"] < 1
    assert report["gpm"] == {"available": False, "reason": "not requested"}


def test_gpu_without_gpm_still_reports_the_rest(monkeypatch):
    use_fake(monkeypatch, fake_pynvml(gpm_supported=False))
    with profile.NvmlSampler(interval_s=0.005) as sampler:
        time.sleep(0.02)
    report = sampler.report()
    assert report["available"] is True and "power_w" in report["metrics"]
    assert report["gpm"]["available"] is False and "Hopper" in report["gpm"]["reason"]


def test_nvml_status_lists_devices(monkeypatch):
    use_fake(monkeypatch, fake_pynvml())
    assert profile.nvml_status() == {
        "available": True,
        "reason": None,
        "driver": "580.00",
        "devices": ["Fake H100"],
    }


def test_ranges_are_off_unless_profiling_or_enabled(monkeypatch):
    monkeypatch.setattr(profile, "_ranges_forced", False)
    assert not profile.ranges_enabled()
    with profile.range("soap/idle"):
        pass
    profile.enable_ranges(True)
    assert profile.ranges_enabled()
    profile.enable_ranges(False)
    assert not profile.ranges_enabled()


def test_ranges_show_up_in_a_torch_trace(tmp_path, monkeypatch):
    monkeypatch.setattr(profile, "_ranges_forced", False)
    trace = tmp_path / "trace.json"
    with profile.torch_trace(trace, cuda=False) as prof:
        with profile.range("soap/refresh"):
            torch.ones(8).sum()
    names = [event.name for event in prof.events()]
    assert "soap/refresh" in names
    assert "soap/refresh" in trace.read_text()
