"""PINN residual loss + backward: nested autograd vs torch.func vs soap_kernels jets (torch / C++ / Triton).

Residuals on N random points of [0, 1]^2 (inputs (t, x) or (x, y)):
    allen_cahn: r = u_t - 1e-4 u_xx + 5 u^3 - 5 u
    laplacian:  r = u_xx + u_yy - sin(pi x) sin(pi y)
loss = mean(r^2); one measurement = loss + loss.backward() (parameter gradients). jets_torch runs the torch
reference of the jet rules, jets_native their C++ CPU kernels (what backend "auto" picks on a CPU), jets_triton
the Triton kernels (CUDA), and jets_triton_recompute the same with jet(..., recompute=True), which remakes the
elementwise stacks in the backward instead of keeping them (less memory, more elementwise passes);
jets_triton_recompute_all with recompute="all" remakes the dense layers' z too (one more GEMM per layer);
jets_native_recompute(_all) are the same on the C++ kernels (CPU).
jets_torch_compiled is jets_torch under torch.compile (inductor; its compile time is reported as first_call_s).
Providers are timed interleaved, one repetition each per round, so background load hits them alike; medians and
ratios are of those samples. Peak memory is measured on CUDA only (torch.cuda.max_memory_allocated;
bench/residual_memory.py estimates it for the CUDA path on a CPU).
By default a CPU runs the CPU goal case (MLP 4x256, N=4096) and a GPU the GPU goal case (PirateNet 3x256, then
MLP 4x256, N=8192; all providers but jets_torch_compiled and the jets_native ones), Allen-Cahn.
matmul_gflop is the GEMM work of one step (profiler flop counts): jets and nested autograd do the same GEMMs at
second order (24 N F^2 flops per hidden layer each), so on a CPU, where GEMMs dominate, jets can gain only on
the elementwise work and on memory: jets_native takes its large stacks from the C++ buffer cache
(soap_kernels.cpu_buffer_cache), while every other provider's fresh tensors page-fault in again each step
(minor_page_faults_median counts them). Providers in the same rounds share glibc's heap, so one that grows it
(torch_func does) spares the next ones some faults: compare the goal case with the two providers alone.

    python bench/residual.py --providers nested_autograd jets_native   # the CPU goal case: MLP 4x256, N=4096
    python bench/residual.py --providers nested_autograd jets_native --rounds 20 --processes 6   # as recorded
    python bench/residual.py --sizes 2048 8192 32768 --models mlp piratenet --problems allen_cahn laplacian
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import soap_kernels  # noqa: E402
from bench.harness import device_name, quantile, save_results, time_fn  # noqa: E402
from soap_kernels import nn as snn  # noqa: E402
from soap_kernels._backend import native_kernels_for  # noqa: E402
from soap_kernels.jets import jet_autograd  # noqa: E402

PROVIDERS = (
    "nested_autograd",
    "torch_func",
    "jets_torch",
    "jets_native",
    "jets_torch_compiled",
    "jets_triton",
    "jets_triton_recompute",
    "jets_triton_recompute_all",
    "jets_native_recompute",
    "jets_native_recompute_all",
)
# inductor's compile of the PirateNet jets could take much of bench/gpu_check.sh's 150 s for this suite, and on a
# GPU the native providers run the Triton kernels ("auto"), which the jets_triton ones measure already
_NOT_BY_DEFAULT_ON_GPU = ("jets_torch_compiled", "jets_native", "jets_native_recompute", "jets_native_recompute_all")
_JET_OPTIONS = {  # provider -> (jet backend, jet recompute)
    "jets_torch": ("torch", False),
    "jets_native": ("auto", False),
    "jets_triton": ("triton", False),
    "jets_triton_recompute": ("triton", True),
    "jets_triton_recompute_all": ("triton", "all"),
    "jets_native_recompute": ("auto", True),
    "jets_native_recompute_all": ("auto", "all"),
}


def build_model(name: str, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "mlp":
        return snn.MLP(2, 1, 256, 4, "tanh").to(device)
    if name == "piratenet":
        return snn.PirateNet(2, 1, 256, 3, "tanh", rwf=(1.0, 0.1), alpha_init=0.5).to(device)
    raise ValueError(f"unknown model {name!r}; expected mlp or piratenet")


def _residual(problem: str, x: torch.Tensor, u, u_t_or_xx, u_xx_or_yy) -> torch.Tensor:
    if problem == "allen_cahn":
        return u_t_or_xx - 1e-4 * u_xx_or_yy + 5 * u**3 - 5 * u
    return u_t_or_xx + u_xx_or_yy - torch.sin(math.pi * x[:, :1]) * torch.sin(math.pi * x[:, 1:])


def loss_function(provider: str, problem: str, model: torch.nn.Module, x: torch.Tensor):
    """A closure computing the mean squared residual with `provider`'s derivatives."""
    if provider == "jets_torch_compiled":
        # inductor sees through the triton_op bodies and fuses the jet rules' elementwise passes
        return torch.compile(loss_function("jets_torch", problem, model, x))
    if provider == "nested_autograd" or provider in _JET_OPTIONS:
        if problem == "allen_cahn":
            requests, laplacian = [(0,), (1, 1)], None
        else:
            requests, laplacian = [], [0, 1]

        def derivatives():
            if provider == "nested_autograd":
                ders = [(0, 0), (1, 1)] if laplacian else requests
                return jet_autograd(model, x, ders)
            backend, recompute = _JET_OPTIONS[provider]
            return soap_kernels.jet(model, x, requests, laplacian_axes=laplacian, backend=backend, recompute=recompute)

        def loss():
            d = derivatives()
            if problem == "allen_cahn":
                r = _residual(problem, x, d[()], d[(0,)], d[(1, 1)])
            elif "laplacian" in d:
                r = _residual(problem, x, d[()], d["laplacian"], 0.0)
            else:
                r = _residual(problem, x, d[()], d[(0, 0)], d[(1, 1)])
            return (r**2).mean()

        return loss

    if provider == "torch_func":

        def scalar(point):
            return model(point[None])[0, 0]

        gradient = torch.func.vmap(torch.func.jacrev(scalar))
        hessian = torch.func.vmap(torch.func.hessian(scalar))

        def loss():
            u = model(x)
            h = hessian(x)
            if problem == "allen_cahn":
                r = _residual(problem, x, u, gradient(x)[:, :1], h[:, 1, 1, None])
            else:
                r = _residual(problem, x, u, h[:, 0, 0, None], h[:, 1, 1, None])
            return (r**2).mean()

        return loss
    raise ValueError(f"unknown provider {provider!r}")


def available(provider: str, device: torch.device) -> str | None:
    """None when the provider can run here, else why not."""
    if provider.startswith("jets_triton") and device.type != "cuda":
        return "not measured: needs a CUDA GPU (the Triton interpreter on CPU is not a timing target)"
    if provider == "jets_native" and (device.type != "cpu" or not native_kernels_for(device)):
        return "not measured: the C++ jet kernels run on CPU tensors, with soap_kernels._C built"
    return None


def matmul_gflop(step) -> float | None:
    """GFLOP of the matmuls (mm, addmm, bmm, ...) one step runs, counted by torch.profiler(with_flops=True):
    what a provider's time is bound by on a CPU (for MLP 4x256, N=4096, Allen-Cahn: 19.46 GFLOP for nested
    autograd and jets alike), so a speedup there can only come from the elementwise work and overheads.
    None when the profiler does not count (a compiled step's inductor kernels, for one)."""
    with torch.profiler.profile(with_flops=True, record_shapes=True) as prof:
        step()
    flops = sum(e.flops for e in prof.key_averages() if e.flops and "mm" in e.key)
    return flops / 1e9 if flops else None


def _minor_page_faults() -> int:
    """Minor page faults of this process so far (first touches of fresh pages, which the kernel zeroes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def measure_case(model_name, problem, n, providers, device, rounds, dtype) -> dict:
    model = build_model(model_name, device).to(dtype)
    torch.manual_seed(1)
    x = torch.rand(n, 2, device=device, dtype=dtype)
    case = {"model": model_name, "problem": problem, "N": n, "dtype": str(dtype).replace("torch.", "")}
    runnable, results = [], {}
    for provider in providers:
        reason = available(provider, device)
        if reason:
            results[provider] = {"status": reason}
            continue
        loss = loss_function(provider, problem, model, x)

        def step(loss=loss):
            model.zero_grad(set_to_none=True)
            value = loss()
            value.backward()
            return value

        started = time.perf_counter()
        value = step()
        first_call_s = time.perf_counter() - started  # includes compilation for the compiled provider
        # a parameter the residual does not depend on (the output bias under a pure Laplacian) has no grad
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
        gradient = torch.cat([g.reshape(-1) for g in grads])
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            step()
            torch.cuda.synchronize()
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        else:
            peak = None
        time_fn(step, device, warmup=1, repeats=1)
        results[provider] = {
            "loss": value.item(),
            "first_call_s": first_call_s,
            "peak_memory_mib": peak,
            "matmul_gflop": matmul_gflop(step),
            "samples_ms": [],
            "cpu_samples_ms": [],  # process CPU time, all threads: less sensitive to other jobs than wall time
            "minor_page_faults": [],  # per step: fresh pages the step touched (each zeroed by the kernel)
        }
        runnable.append((provider, step, gradient))
    for _ in range(rounds):
        for provider, step, _ in runnable:
            cpu_started = time.process_time()
            faults_started = _minor_page_faults()
            results[provider]["samples_ms"].append(time_fn(step, device, warmup=0, repeats=1)["median_ms"])
            results[provider]["cpu_samples_ms"].append((time.process_time() - cpu_started) * 1e3)
            results[provider]["minor_page_faults"].append(_minor_page_faults() - faults_started)
    reference = next((g for p, _, g in runnable if p == "nested_autograd"), None)
    for provider, _, gradient in runnable:
        samples = results[provider]["samples_ms"]
        results[provider]["median_ms"] = statistics.median(samples)
        results[provider]["cpu_median_ms"] = statistics.median(results[provider]["cpu_samples_ms"])
        results[provider]["minor_page_faults_median"] = statistics.median(results[provider]["minor_page_faults"])
        results[provider]["p10_ms"] = quantile(samples, 0.1)
        results[provider]["p90_ms"] = quantile(samples, 0.9)
        if reference is not None:
            results[provider]["grad_rel_diff_vs_nested_autograd"] = (
                (gradient - reference).norm() / reference.norm()
            ).item()
    if any(p == "nested_autograd" for p, _, _ in runnable):
        base = results["nested_autograd"]
        for provider, _, _ in runnable:
            results[provider]["speedup_vs_nested_autograd"] = base["median_ms"] / results[provider]["median_ms"]
            results[provider]["cpu_time_speedup_vs_nested_autograd"] = (
                base["cpu_median_ms"] / results[provider]["cpu_median_ms"]
            )
            if base["peak_memory_mib"] and results[provider]["peak_memory_mib"]:
                results[provider]["memory_ratio_vs_nested_autograd"] = (
                    results[provider]["peak_memory_mib"] / base["peak_memory_mib"]
                )
    case["providers"] = results
    return case


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", choices=["mlp", "piratenet"], help="default: see above")
    parser.add_argument("--problems", nargs="+", default=["allen_cahn"], choices=["allen_cahn", "laplacian"])
    parser.add_argument("--sizes", nargs="+", type=int, help="default: see above")
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS, help="default: all (on a GPU see above)")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timed repetitions per provider")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--suite", default="residual", help="results file prefix")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="repeat the whole measurement in this many fresh Python processes, one after another, and save every "
        "run (a process's heap history decides how many pages nested autograd faults per step)",
    )
    args = parser.parse_args(argv)
    if args.processes < 1:
        raise ValueError(f"--processes must be >= 1, got {args.processes}")
    on_gpu = torch.device(args.device).type == "cuda"
    args.models = args.models or (["piratenet", "mlp"] if on_gpu else ["mlp"])
    args.sizes = args.sizes or ([8192] if on_gpu else [4096])
    args.providers = args.providers or [p for p in PROVIDERS if not (on_gpu and p in _NOT_BY_DEFAULT_ON_GPU)]
    if args.processes > 1:
        _in_fresh_processes(args)
        return
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    cases = []
    for model_name in args.models:
        for problem in args.problems:
            for n in args.sizes:
                case = measure_case(model_name, problem, n, args.providers, device, args.rounds, dtype)
                cases.append(case)
                for provider, r in case["providers"].items():
                    if "median_ms" not in r:
                        print(f"{model_name:9s} {problem:10s} N={n:6d} {provider:16s} {r['status']}")
                        continue
                    speed = r.get("speedup_vs_nested_autograd")
                    cpu_speed = r.get("cpu_time_speedup_vs_nested_autograd")
                    memory = "" if r["peak_memory_mib"] is None else f" peak {r['peak_memory_mib']:.0f} MiB"
                    print(
                        f"{model_name:9s} {problem:10s} N={n:6d} {provider:16s} median {r['median_ms']:8.1f} ms"
                        f" (p10 {r['p10_ms']:.1f}, p90 {r['p90_ms']:.1f})"
                        + (f"  x{speed:.2f} vs nested autograd" if speed else "")
                        + (f" (CPU time {r['cpu_median_ms']:.0f} ms, x{cpu_speed:.2f})" if cpu_speed else "")
                        + f", {r['minor_page_faults_median']:.0f} page faults"
                        + memory
                    )
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    payload = {
        "description": "PINN residual loss + backward; providers timed interleaved; "
        "speedup = nested_autograd median / provider median",
        "device_label": device_name(device),
        "load_average_at_end": load,
        "cases": cases,
    }
    path = save_results(args.suite, payload, device)
    print(f"saved {path}")


def _in_fresh_processes(args) -> None:
    """Run this benchmark args.processes times, each in a new Python process, and save all runs plus, per case and
    provider, the runs' medians and speedups."""
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        for run in range(args.processes):
            child = [sys.executable, str(Path(__file__).resolve()), "--device", args.device]
            child += ["--rounds", str(args.rounds), "--dtype", args.dtype, "--suite", str(Path(folder) / f"run{run}")]
            child += ["--models", *args.models, "--problems", *args.problems, "--providers", *args.providers]
            child += ["--sizes", *map(str, args.sizes)]
            subprocess.run(child, check=True)
            (path,) = Path(folder).glob(f"run{run}-*.json")
            runs.append(json.loads(path.read_text()))
    summary = {}
    for case_runs in zip(*(run["cases"] for run in runs), strict=True):
        first = case_runs[0]
        key = f"{first['model']} {first['problem']} N={first['N']}"
        summary[key] = {
            provider: {
                field: [case["providers"][provider].get(field) for case in case_runs]
                for field in ("median_ms", "speedup_vs_nested_autograd", "minor_page_faults_median")
            }
            for provider, result in first["providers"].items()
            if "median_ms" in result
        }
    for key, providers in summary.items():
        for provider, fields in providers.items():
            speeds = ", ".join(f"x{v:.2f}" for v in fields["speedup_vs_nested_autograd"] if v is not None)
            print(f"{key} {provider:16s} medians {[round(v, 1) for v in fields['median_ms']]} ms  {speeds}")
    payload = {
        "description": f"{args.processes} runs, each in a fresh process: {runs[0]['description']}",
        "summary": summary,
        "runs": runs,
    }
    print(f"saved {save_results(args.suite, payload, torch.device(args.device))}")


if __name__ == "__main__":
    main()
