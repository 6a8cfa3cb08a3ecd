"""bench/: timing helpers, ceilings and % of peak, the suite registry and runner, and gpu_check.sh's dry run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from bench import harness
from bench import run as bench_run
from bench.ceilings import ceiling_records, measure_ceilings, percent_of_peak

REPO = Path(__file__).resolve().parents[1]
GPU_CHECK = REPO / "bench" / "gpu_check.sh"


# ---------------------------------------------------------------------------------------------------------
# harness


def test_time_fn_reports_ordered_percentiles_and_honours_repeats():
    calls = []
    timing = harness.time_fn(lambda: calls.append(1), warmup=2, repeats=7)
    assert timing["repeats"] == 7 and len(calls) == 9
    assert timing["p10_ms"] <= timing["median_ms"] <= timing["p90_ms"]


def test_benchmark_on_cpu_says_how_it_timed():
    timing = harness.benchmark(lambda: torch.ones(16).sum(), "cpu", repeats=5)
    assert timing["method"] == "wall" and timing["repeats"] == 5
    assert timing["p10_ms"] <= timing["median_ms"] <= timing["p90_ms"]


def test_quantiles_bracket_the_median_for_any_sample_count():
    for samples in ([2.0], [1.0, 2.0], [3.0, 1.0, 2.0], [float(i) for i in range(11)]):
        timing = harness.spread(samples)
        assert timing["p10_ms"] <= timing["median_ms"] <= timing["p90_ms"]
    assert harness.quantile([float(i) for i in range(11)], 0.9) == pytest.approx(9.0)


def test_benchmark_on_cuda_takes_do_bench_samples(monkeypatch):
    import triton.testing

    calls = []

    def fake_do_bench(fn, warmup=25, rep=100, grad_to_none=None, quantiles=None, return_mode="mean"):
        calls.append((warmup, rep, quantiles, return_mode))
        if quantiles is not None:
            return [1.0, 2.0, 3.0]
        return [5.0, 1.0, 4.0, 2.0, 3.0]

    monkeypatch.setattr(triton.testing, "do_bench", fake_do_bench)
    monkeypatch.setattr(harness, "_do_bench_returns_all", lambda: True)
    timing = harness.benchmark(lambda: None, "cuda", warmup_ms=7, rep_ms=70)
    assert calls == [(7, 70, None, "all")]
    assert timing["method"] == "do_bench" and timing["repeats"] == 5
    # linear interpolation between order statistics (numpy.percentile's default): 1 + 0.4, 3, 4 + 0.6
    assert (timing["p10_ms"], timing["median_ms"], timing["p90_ms"]) == pytest.approx((1.4, 3.0, 4.6))
    # a Triton whose do_bench cannot return every sample: ask for the quantiles instead
    monkeypatch.setattr(harness, "_do_bench_returns_all", lambda: False)
    timing = harness.benchmark(lambda: None, "cuda")
    assert timing == {"median_ms": 2.0, "p10_ms": 1.0, "p90_ms": 3.0, "method": "do_bench-quantiles"}


def test_record_keeps_timing_work_and_errors():
    row = harness.record("case", "prov", {"median_ms": 2.0}, flops=4e9, bytes_moved=8e6, peak_dtype="tf32", n=3)
    assert row == {
        "case": "case",
        "provider": "prov",
        "median_ms": 2.0,
        "flops": 4e9,
        "bytes": 8e6,
        "peak_dtype": "tf32",
        "n": 3,
    }
    failed = harness.record("case", "heavyball", None, error="heavyball is not installed")
    assert "median_ms" not in failed and failed["error"] == "heavyball is not installed"


def test_suite_config_selects_providers():
    assert harness.SuiteConfig().wants("anything")
    config = harness.SuiteConfig(providers=("a", "b"))
    assert config.wants("a") and not config.wants("c")


def test_suite_config_is_out_of_time_only_once_its_budget_has_passed():
    assert not harness.SuiteConfig().out_of_time()  # no budget: never
    assert not harness.SuiteConfig(time_budget_s=3600).out_of_time()
    assert harness.SuiteConfig(time_budget_s=0.0, started=time.monotonic() - 1.0).out_of_time()


def test_a_suite_past_its_budget_records_every_provider_as_not_run():
    from bench import soap_step

    config = harness.SuiteConfig(sizes="smoke", time_budget_s=0.0, started=time.monotonic() - 1.0)
    records = soap_step.run(config)["records"]
    assert records and all(r.get("error") == harness.OUT_OF_TIME and "median_ms" not in r for r in records)
    assert {r["provider"] for r in records} == set(soap_step.PROVIDERS)


def test_save_results_names_files_by_suite_device_and_date(tmp_path):
    path = harness.save_results("demo", {"records": []}, "cpu", results_dir=tmp_path)
    assert path.parent == tmp_path and path.name.startswith(f"demo-{harness.device_name('cpu')}-")
    document = json.loads(path.read_text())
    assert document["suite"] == "demo" and document["machine"]["device"] == harness.device_name("cpu")


# ---------------------------------------------------------------------------------------------------------
# ceilings and % of peak


def test_percent_of_peak_arithmetic():
    ceilings = {"matmul_tflops": {"fp32": 4.0, "bf16": 8.0}, "copy_gbps": 4.0}
    row = {"median_ms": 1000.0, "flops": 2e12, "bytes": 1e9}
    assert percent_of_peak(row, ceilings) == {
        "tflops": pytest.approx(2.0),
        "pct_matmul_peak": pytest.approx(50.0),
        "peak_dtype": "fp32",
        "gbps": pytest.approx(1.0),
        "pct_copy_peak": pytest.approx(25.0),
    }
    assert percent_of_peak({**row, "peak_dtype": "bf16"}, ceilings)["pct_matmul_peak"] == pytest.approx(25.0)
    assert "pct_matmul_peak" not in percent_of_peak({**row, "peak_dtype": "fp64"}, ceilings)
    assert percent_of_peak({"error": "x", "flops": 1.0}, ceilings) == {}
    assert percent_of_peak({"median_ms": 1.0}, None) == {}


def test_ceilings_are_measured_and_each_is_its_own_100_percent():
    ceilings = measure_ceilings("cpu", "smoke")
    assert set(ceilings["matmul_tflops"]) == {"fp32", "fp64"}
    assert all(value > 0 for value in ceilings["matmul_tflops"].values()) and ceilings["copy_gbps"] > 0
    rows = ceiling_records(ceilings)
    assert len(rows) == 3
    for row in rows:
        derived = percent_of_peak(row, ceilings)
        assert derived.get("pct_matmul_peak", derived.get("pct_copy_peak")) == pytest.approx(100.0)


# ---------------------------------------------------------------------------------------------------------
# the registry and the runner


@pytest.fixture
def suites(tmp_path, monkeypatch):
    """Register suites written on the fly: suites(name=source) -> the names, importable as test modules."""
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = {}
    monkeypatch.setattr(bench_run, "SUITES", registry)

    def make(**sources):
        for name, source in sources.items():
            module = f"bench_suite_{name}_{abs(hash(str(tmp_path))) % 10**8}"
            if source is not None:
                (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
            registry[name] = bench_run.SuiteSpec(module, f"test suite {name}")
        return list(sources)

    return make


GOOD_SUITE = """
    PROVIDERS = ("slow", "fast")

    def run(config):
        rows = [{"case": "n=8", "provider": "slow", "median_ms": 4.0, "p10_ms": 3.0, "p90_ms": 5.0,
                 "flops": 4e6, "bytes": 8e6},
                {"case": "n=8", "provider": "fast", "median_ms": 2.0, "p10_ms": 1.5, "p90_ms": 2.5,
                 "flops": 4e6, "bytes": 8e6},
                {"case": "n=8", "provider": "missing", "error": "not installed"}]
        return {"records": [r for r in rows if config.wants(r["provider"])], "baseline_provider": "slow",
                "sizes_seen": config.sizes}
"""


def _out_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def test_runner_writes_json_and_png_and_prints_the_table_last(suites, tmp_path, capsys):
    suites(good=GOOD_SUITE)
    out = tmp_path / "results"
    rc = bench_run.main(["good", "--device", "cpu", "--sizes", "smoke", "--out", str(out)])
    assert rc == 0
    names = _out_files(out)
    assert [n.rsplit(".", 1)[1] for n in names] == ["json", "png"]
    document = json.loads((out / names[0]).read_text())
    assert document["status"] == "ok" and document["sizes_seen"] == "smoke"
    assert document["nvml"]["available"] is False  # a CPU run says why it has no NVML samples
    fast = next(r for r in document["records"] if r["provider"] == "fast")
    assert fast["tflops"] == pytest.approx(4e6 / 2e-3 / 1e12)
    assert fast["pct_matmul_peak"] > 0 and fast["pct_copy_peak"] > 0  # against ceilings measured in this run
    assert document["ceilings"]["matmul_tflops"]["fp32"] > 0
    lines = capsys.readouterr().out.rstrip().splitlines()
    table = lines[lines.index(next(line for line in lines if line.startswith("machine:"))) :]
    notes = [line for line in table if line.startswith("good: ")]
    assert "good: speedup = median of slow / median of the row" in notes
    table = [line for line in table if line not in notes]
    assert table[-3].split()[:3] == ["good", "n=8", "slow"]
    assert "2.00x" in table[-2].split()
    assert "error: not installed" in table[-1]


def test_runner_passes_provider_selection(suites, tmp_path):
    suites(good=GOOD_SUITE)
    out = tmp_path / "results"
    argv = ["good", "--device", "cpu", "--out", str(out), "--no-ceilings", "--providers", "fast", "--plots", "none"]
    assert bench_run.main(argv) == 0
    (path,) = out.glob("*.json")
    assert [r["provider"] for r in json.loads(path.read_text())["records"]] == ["fast"]


def test_missing_suite_is_skipped_with_a_message(suites, tmp_path, capsys):
    suites(absent=None)
    out = tmp_path / "results"
    common = ["absent", "--device", "cpu", "--out", str(out), "--no-ceilings"]
    assert bench_run.main(common) == 0
    assert "SKIPPED" in capsys.readouterr().out and not out.exists()
    assert bench_run.main([*common, "--strict"]) == 1


@pytest.mark.parametrize(
    ("source", "status", "message"),
    [
        ("def run(config):\n    raise RuntimeError('kernel exploded')\n", "failed", "kernel exploded"),
        ("def run(config):\n    raise NotImplementedError('fused refresh')\n", "not implemented", "fused refresh"),
        ("def run(config):\n    return {'records': [{'case': 'a', 'provider': 'b'}]}\n", "failed", "neither"),
        ("def run(config):\n    return [1, 2]\n", "failed", "list under 'records'"),
        ("import no_such_module_for_bench\n", "failed", "import of"),
        ("VALUE = 1\n", "failed", "neither run(config) nor main(argv)"),
    ],
)
def test_broken_suites_are_reported_not_hidden(suites, tmp_path, source, status, message):
    (name,) = suites(broken=source)
    document = bench_run.run_suite(name, harness.SuiteConfig(results_dir=tmp_path), None, nvml=False)
    assert document["status"] == status and message in document["message"]
    rc = bench_run.main([name, "--device", "cpu", "--out", str(tmp_path / "r"), "--no-ceilings"])
    assert rc == (0 if status == "not implemented" else 1)


def test_run_without_config_gets_device_and_nested_timings_become_records(suites, tmp_path):
    (name,) = suites(
        legacy="""
        def run(device="cuda", blocks=10):
            timing = {"median_ms": 3.0, "p10_ms": 2.0, "p90_ms": 4.0}
            return {"device": device, "sets": {"pirate": {"step_ms": {"adam": timing, "soap": timing}}}}
        """
    )
    document = bench_run.run_suite(name, harness.SuiteConfig(results_dir=tmp_path), None, nvml=False)
    assert document["status"] == "ok" and document["device"] == "cpu" and document["records_derived"]
    assert [(r["case"], r["provider"]) for r in document["records"]] == [
        ("sets/pirate/step_ms", "adam"),
        ("sets/pirate/step_ms", "soap"),
    ]


def test_main_only_suite_gets_the_arguments_after_double_dash(suites, tmp_path):
    marker = tmp_path / "argv.json"
    suites(mainonly=f"import json\n\ndef main(argv):\n    open({str(marker)!r}, 'w').write(json.dumps(argv))\n")
    rc = bench_run.main(
        ["mainonly", "--device", "cpu", "--out", str(tmp_path / "r"), "--no-ceilings", "--", "--blocks", "2"]
    )
    assert rc == 0 and json.loads(marker.read_text()) == ["--blocks", "2"]
    assert not (tmp_path / "r").exists()  # its own results are not overwritten by an empty document


def test_summarize_reads_saved_results_and_plots_them(suites, tmp_path, capsys):
    suites(good=GOOD_SUITE)
    out = tmp_path / "results"
    bench_run.main(["good", "--device", "cpu", "--out", str(out), "--no-ceilings", "--plots", "none"])
    capsys.readouterr()
    png = tmp_path / "all.png"
    assert bench_run.main(["--summarize", *map(str, out.glob("*.json")), "--plot", str(png)]) == 0
    printed = capsys.readouterr().out
    assert "2.00x" in printed and png.stat().st_size > 1000


def test_table_notes_carry_the_nvml_and_gpm_readings():
    nvml = {
        "available": True,
        "metrics": {"sm_clock_mhz": {"median": 1755.0}, "power_w": {"max": 512.0}},
        "throttle_reasons": {"gpu_idle": 0.5, "sw_power_cap": 0.25},
        "gpm": {"available": True, "whole_region": {"sm_occupancy_pct": 41.5, "dram_bw_util_pct": 73.0}},
    }
    table = bench_run.summary_table([{"suite": "s", "machine": {"device": "H100"}, "records": [], "nvml": nvml}])
    assert "s: NVML: SM clock median 1755 MHz, power max 512 W, throttle reasons seen: sw_power_cap" in table
    assert "SM occupancy 41.5%, DRAM bandwidth 73%" in table


def test_list_shows_each_suite_and_whether_it_is_present(suites, capsys):
    suites(good=GOOD_SUITE, absent=None)
    assert bench_run.main(["--list", "good", "absent"]) == 0
    printed = capsys.readouterr().out
    assert "providers: slow, fast" in printed and "not present" in printed


def test_train_step_suite_compares_like_with_like():
    config = harness.SuiteConfig(sizes="smoke", providers=("autograd+soap_kernels", "jets+soap_kernels"))
    document = bench_run.run_suite("train_step", config, None, nvml=False)
    assert document["status"] == "ok", document.get("traceback", document["message"])
    assert [row["provider"] for row in document["records"]] == list(config.providers)
    assert all(row["median_ms"] > 0 for row in document["records"])
    # jets and nested autograd compute the same loss at the same parameters
    assert document["loss_relative_difference_jets_vs_autograd"] < 1e-5


def test_train_step_graph_and_triton_providers_need_cuda_and_say_so_in_their_row():
    config = harness.SuiteConfig(
        sizes="smoke", providers=("jets+soap_kernels_triton", "jets+soap_kernels_graph", "jets+adam_graph")
    )
    document = bench_run.run_suite("train_step", config, None, nvml=False)
    assert document["status"] == "ok", document.get("traceback", document["message"])
    rows = {row["provider"]: row for row in document["records"]}
    assert set(rows) == set(config.providers)
    assert all("median_ms" not in row and "runs on CUDA only" in row["error"] for row in rows.values())


def test_trace_prints_a_profile_table_and_operator_counts(capsys):
    from bench import trace

    assert trace.main(["--device", "cpu", "--sizes", "smoke", "--rows", "3", "--providers", "jets+adam"]) == 0
    printed = capsys.readouterr().out
    assert "Self CPU time total" in printed
    count_line = printed.rstrip().splitlines()[-1]
    assert count_line.startswith("jets+adam") and int(count_line.split()[1]) > 0


def test_the_real_registry_names_the_issue_suites():
    assert set(bench_run.DEFAULT_SUITES) == {"soap_step", "refresh", "residual", "train_step"}
    assert all(name in bench_run.SUITES for name in bench_run.DEFAULT_SUITES)


# ---------------------------------------------------------------------------------------------------------
# gpu_check.sh


def _gpu_check(tmp_path: Path, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, **env}
    environment.pop("SOAP_KERNELS_RESULTS_DIR", None)
    return subprocess.run(
        ["bash", str(GPU_CHECK), "--dry-run"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )


@pytest.mark.slow
def test_gpu_check_dry_run_starts_and_every_step_resolves(tmp_path):
    result = _gpu_check(tmp_path)
    out = tmp_path / "out"
    summary = (out / "summary.txt").read_text()
    assert result.returncode == 0, summary + result.stdout[-3000:]
    assert "GPU CHECK PASSED" in summary and result.stdout.rstrip().endswith("GPU CHECK PASSED")
    for step in ("env", "build", "info", "tests", "suites", "ceilings", "results", "files"):
        assert any(line.split()[:2] == [step, "ok"] for line in summary.splitlines()), step
    files = _out_files(out)
    assert len(files) <= 8 and {"gpu_check.log", "summary.txt", "info.json"} <= set(files)
    assert any(name.startswith("bench-") and name.endswith(".png") for name in files)
    assert "torch" in json.loads((out / "info.json").read_text())


def test_gpu_check_fails_loudly_when_python_is_missing(tmp_path):
    result = _gpu_check(tmp_path, PYTHON=str(tmp_path / "no-python"))
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert result.returncode != 0
    assert "GPU CHECK FAILED" in summary and "env        FAIL" in summary
    assert "GPU CHECK FAILED" in (tmp_path / "out" / "gpu_check.log").read_text()


def test_gpu_check_packs_surplus_files_to_stay_within_eight(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for index in range(9):
        (out / f"suite{index}.json").write_text("{}")
    (out / "info.json").write_text("{}")
    script = f"source {GPU_CHECK} && keep_file_budget"
    result = subprocess.run(
        ["bash", "-c", script], env={**os.environ, "OUT": str(out)}, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert _out_files(out) == ["info.json", "suites-json.tar.gz"]


# ---------------------------------------------------------------------------------------------------------
# gpu_train_report.sh


@pytest.mark.slow
def test_gpu_train_report_dry_run_times_and_trains(tmp_path):
    """The dry run (CPU, small preset, torch paths) goes through both halves and leaves the report's files."""
    out = tmp_path / "out"
    environment = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    result = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_train_report.sh"), "--dry-run"],
        env=environment, capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.rstrip().endswith("GPU REPORT DONE")
    files = _out_files(out)
    assert len(files) <= 8 and {"report.log", "time-step-torch.json", "summary.json", "metrics.jsonl"} <= set(files)
    timing = json.loads((out / "time-step-torch.json").read_text())
    assert timing and "wall_s_per_step" in json.dumps(timing)
    assert json.loads((out / "summary.json").read_text())["steps"] == 3


@pytest.mark.parametrize("isolation", ["process", "shared"])
def test_residual_bench_isolates_providers_in_processes_of_their_own(tmp_path, isolation):
    """--isolation process prepares and times each provider in a spawned process (not this one, not another's);
    shared does all here. Both give each provider its samples and the same gradients as nested autograd."""
    from bench import residual

    residual.main(
        ["--device", "cpu", "--sizes", "16", "--rounds", "2", "--providers", "nested_autograd", "jets_torch"]
        + ["--isolation", isolation, "--suite", str(tmp_path / isolation)]
    )
    (path,) = tmp_path.glob(f"{isolation}-*.json")
    document = json.loads(path.read_text())
    assert document["isolation"] == isolation
    providers = document["cases"][0]["providers"]
    process_ids = {name: result["process_id"] for name, result in providers.items()}
    if isolation == "process":
        assert os.getpid() not in process_ids.values() and len(set(process_ids.values())) == 2
    else:
        assert set(process_ids.values()) == {os.getpid()}
    for result in providers.values():
        assert len(result["samples_ms"]) == 2 and result["grad_rel_diff_vs_nested_autograd"] < 1e-5


def test_residual_bench_reports_a_provider_that_fails_in_its_process():
    """An error inside a provider's process comes back as a RuntimeError naming the provider and the cause."""
    from bench import residual

    with pytest.raises(RuntimeError, match="(?s)provider nested_autograd failed in its process:.*unknown model"):
        residual.measure_case("no_such_model", "allen_cahn", 8, ["nested_autograd"], torch.device("cpu"), 1,
                              torch.float32, isolation="process")  # fmt: skip


def test_residual_bench_provider_process_that_dies_is_reported_and_every_process_stopped():
    """A provider's process killed between samples: the next sample raises a RuntimeError naming the provider
    (not a bare pipe error), and close() stops it and the other providers' processes alike."""
    from bench import residual

    cpu = torch.device("cpu")
    workers = [
        residual.ProviderProcess(p, "mlp", "allen_cahn", 8, cpu, torch.float32)
        for p in ("nested_autograd", "jets_torch")
    ]
    try:
        assert len(workers[1].sample()) == 3
        workers[0].process.kill()
        workers[0].process.join()
        with pytest.raises(RuntimeError, match="provider nested_autograd's process ended without an answer"):
            workers[0].sample()
    finally:
        for worker in workers:
            worker.close()
    assert not any(worker.process.is_alive() for worker in workers)


def test_residual_bench_repeats_in_fresh_processes_and_summarises(tmp_path):
    """--processes 2 runs the case twice, each in a new process, and saves both runs and the per-run medians."""
    from bench import residual

    residual.main(
        ["--device", "cpu", "--sizes", "16", "--rounds", "1", "--providers", "nested_autograd", "jets_torch"]
        + ["--processes", "2", "--suite", str(tmp_path / "twice")]
    )
    (path,) = tmp_path.glob("twice-*.json")
    document = json.loads(path.read_text())
    assert len(document["runs"]) == 2
    summary = document["summary"]["mlp allen_cahn N=16"]
    assert set(summary) == {"nested_autograd", "jets_torch"}
    for fields in summary.values():
        assert len(fields["median_ms"]) == 2 and all(v > 0 for v in fields["median_ms"])
        assert len(fields["minor_page_faults_median"]) == 2
    assert summary["nested_autograd"]["speedup_vs_nested_autograd"] == [1.0, 1.0]


def test_refresh_bench_times_captured_graphs_on_cuda_only():
    from bench import refresh

    graph_providers = [p for p in refresh.PROVIDERS if p.endswith(refresh.GRAPH_SUFFIX)]
    assert graph_providers == ["soap_kernels_qr_graph", "soap_kernels_exact_graph"]
    for provider in graph_providers:
        assert not refresh.applies(provider, 256, torch.device("cpu"))
        assert refresh.applies(provider, 256, torch.device("cuda"))


def test_jet_kernel_sweep_times_todays_setting_beside_a_plain_matmul(monkeypatch):
    from bench import jet_kernels
    from soap_kernels._backend import triton_available
    from soap_kernels.ops import jet_dense_triton

    if not (triton_available() and os.environ.get("TRITON_INTERPRET") == "1"):
        pytest.skip("needs Triton's interpreter on the CPU")
    default = jet_dense_triton.launch_config
    records = jet_kernels.run(harness.SuiteConfig(sizes="smoke"))["records"]
    assert jet_dense_triton.launch_config is default  # restored after the sweep
    assert not {"SOAP_KERNELS_JET_FORWARD", "SOAP_KERNELS_JET_BACKWARD"} & set(os.environ)  # undone after
    providers = [(r["case"].split()[-1], r["provider"]) for r in records]
    assert providers[0] == ("gemm", "torch_matmul")
    assert [kind for kind, _ in providers[1:]] == ["forward", "backward"] * 2
    assert all(p.startswith("current M16 N32 K32") for _, p in providers[1:3])
    assert all(p.startswith("split") for _, p in providers[3:5])
    assert [r.get("way") for r in records[1:]] == ["fused", "fused", "split", "split"]
    assert all(r["median_ms"] > 0 and r["flops"] > 0 for r in records)
