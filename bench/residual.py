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
ratios are of those samples. On a CPU each provider runs in a spawned process of its own (--isolation process), as
a user's training would: glibc sizes its mmap and trim thresholds from the largest blocks freed so far, so in a
shared process one provider's frees decide how many pages another's fresh tensors fault in (measured on the goal
case: nested autograd faulted 0 to 68,000 pages per step in a process shared with jets_native, 19,000 alone).
--isolation shared (the default on a GPU, whose caching allocator has no such history) times all in one process.
Peak memory is measured on CUDA only (torch.cuda.max_memory_allocated; bench/residual_memory.py estimates it for
the CUDA path on a CPU).
By default a CPU runs the CPU goal case (MLP 4x256, N=4096) and a GPU the GPU goal case (PirateNet 3x256, then
MLP 4x256, N=8192; all providers but jets_torch_compiled and the jets_native ones), Allen-Cahn.
matmul_gflop is the GEMM work of one step (profiler flop counts): jets and nested autograd do the same GEMMs at
second order (24 N F^2 flops per hidden layer each), so on a CPU, where GEMMs dominate, jets can gain only on
the elementwise work and on memory: jets_native takes its large stacks from the C++ buffer cache
(soap_kernels.cpu_buffer_cache), while every other provider's fresh tensors may page-fault in again each step
(minor_page_faults_median counts them). MALLOC_MMAP_THRESHOLD_=1000000000 MALLOC_TRIM_THRESHOLD_=10000000000 in
the environment (recorded in the results as malloc_environment) spares every provider those faults: the
comparison with nested autograd at its best.

    python bench/residual.py --providers nested_autograd jets_native   # the CPU goal case: MLP 4x256, N=4096
    python bench/residual.py --providers nested_autograd jets_native --rounds 20 --processes 6   # as recorded
    MALLOC_MMAP_THRESHOLD_=1000000000 MALLOC_TRIM_THRESHOLD_=10000000000 python bench/residual.py ...   # no faults
    python bench/residual.py --sizes 2048 8192 32768 --models mlp piratenet --problems allen_cahn laplacian
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
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


def prepare_provider(provider, model_name, problem, n, device, dtype):
    """(step, the provider's result fields measured before timing, its parameter gradient); (None, {"status": why},
    None) when it cannot run here. The model and points come from fixed seeds, so every process builds the same."""
    reason = available(provider, device)
    if reason:
        return None, {"status": reason}, None
    model = build_model(model_name, device).to(dtype)
    torch.manual_seed(1)
    x = torch.rand(n, 2, device=device, dtype=dtype)
    loss = loss_function(provider, problem, model, x)

    def step():
        model.zero_grad(set_to_none=True)
        value = loss()
        value.backward()
        return value

    started = time.perf_counter()
    value = step()
    first_call_s = time.perf_counter() - started  # includes compilation for the compiled provider
    # a parameter the residual does not depend on (the output bias under a pure Laplacian) has no grad
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
    gradient = torch.cat([g.reshape(-1) for g in grads]).cpu()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        peak = None
    time_fn(step, device, warmup=1, repeats=1)
    result = {
        "process_id": os.getpid(),
        "loss": value.item(),
        "first_call_s": first_call_s,
        "peak_memory_mib": peak,
        "matmul_gflop": matmul_gflop(step),
    }
    return step, result, gradient


def take_sample(step, device) -> tuple[float, float, int]:
    """One timed step: (wall ms, process CPU ms over all threads, minor page faults)."""
    cpu_started = time.process_time()
    faults_started = _minor_page_faults()
    wall_ms = time_fn(step, device, warmup=0, repeats=1)["median_ms"]
    return wall_ms, (time.process_time() - cpu_started) * 1e3, _minor_page_faults() - faults_started


def _serve_provider(connection, provider, model_name, problem, n, device_name_, dtype_name) -> None:
    """A provider's own process: prepare it, send (result, gradient), then answer each "sample" with one."""
    try:
        device = torch.device(device_name_)
        step, result, gradient = prepare_provider(provider, model_name, problem, n, device, getattr(torch, dtype_name))
        connection.send((result, gradient))
        while connection.recv() == "sample":
            connection.send(take_sample(step, device))
    except Exception:  # the parent raises it, with the provider's name
        with contextlib.suppress(OSError):  # unless the parent has gone
            connection.send(("error", traceback.format_exc()))
    finally:
        connection.close()


class ProviderProcess:
    """One provider in a spawned process of its own, so its heap starts as a user's training process's does and no
    other provider's allocations change how many pages its steps fault in (glibc sizes its mmap and trim
    thresholds from the largest blocks freed so far, so in a shared process one provider's frees decide whether
    another's fresh tensors come from the heap or from new pages)."""

    # longest wait for an answer: preparing includes torch.compile for jets_torch_compiled, minutes on a CPU
    ANSWER_TIMEOUT_S = 1800

    def __init__(self, provider, model_name, problem, n, device, dtype):
        context = multiprocessing.get_context("spawn")
        self.provider = provider
        self.connection, child = context.Pipe()
        self.process = context.Process(
            target=_serve_provider,
            args=(child, provider, model_name, problem, n, str(device), str(dtype).replace("torch.", "")),
            daemon=True,
        )
        self.process.start()
        child.close()
        try:
            self.result, self.gradient = self._receive()
        except BaseException:
            self.close()
            raise

    def _receive(self):
        """The process's next answer; RuntimeError naming the provider when it failed, died or hung."""
        try:
            if not self.connection.poll(self.ANSWER_TIMEOUT_S):
                raise RuntimeError(f"provider {self.provider} gave no answer in {self.ANSWER_TIMEOUT_S} s")
            message = self.connection.recv()
        except (EOFError, OSError) as error:
            raise self._ended() from error
        if isinstance(message, tuple) and message and message[0] == "error":
            raise RuntimeError(f"provider {self.provider} failed in its process:\n{message[1]}")
        return message

    def _ended(self) -> RuntimeError:
        self.process.join(timeout=10)
        return RuntimeError(
            f"provider {self.provider}'s process ended without an answer (exit code {self.process.exitcode})"
        )

    def sample(self) -> tuple[float, float, int]:
        try:
            self.connection.send("sample")
        except OSError as error:
            raise self._ended() from error
        return self._receive()

    def close(self) -> None:
        """Stop the process (killing it if it does not stop within a minute); safe on a failed or closed one."""
        try:
            self.connection.send("stop")
        except OSError:  # the process is gone, or the pipe was closed already
            pass
        self.process.join(timeout=60)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.connection.close()


def measure_case(model_name, problem, n, providers, device, rounds, dtype, isolation="shared") -> dict:
    """Time `providers` on one case, interleaved: each round takes one sample of every provider in turn, so load
    from elsewhere hits them alike. isolation "process" runs each provider in a process of its own (ProviderProcess),
    "shared" all of them in this one."""
    case = {"model": model_name, "problem": problem, "N": n, "dtype": str(dtype).replace("torch.", "")}
    case["isolation"] = isolation
    results, gradients, samplers, workers = {}, {}, {}, []
    try:
        for provider in providers:
            if isolation == "process" and available(provider, device) is None:
                worker = ProviderProcess(provider, model_name, problem, n, device, dtype)
                workers.append(worker)
                results[provider], gradients[provider] = worker.result, worker.gradient
                samplers[provider] = worker.sample
                continue
            step, results[provider], gradient = prepare_provider(provider, model_name, problem, n, device, dtype)
            if step is not None:
                gradients[provider] = gradient
                samplers[provider] = functools.partial(take_sample, step, device)
        samples = {provider: [] for provider in samplers}
        for _ in range(rounds):
            for provider, sample in samplers.items():
                samples[provider].append(sample())
    finally:
        for worker in workers:
            worker.close()
    for provider, taken in samples.items():
        wall, cpu, faults = (list(column) for column in zip(*taken, strict=True)) if taken else ([], [], [])
        result = results[provider]
        result.update(samples_ms=wall, cpu_samples_ms=cpu, minor_page_faults=faults)
        result["median_ms"] = statistics.median(wall)
        result["cpu_median_ms"] = statistics.median(cpu)  # process CPU time, all threads: less load-sensitive
        result["minor_page_faults_median"] = statistics.median(faults)  # fresh pages a step touched
        result["p10_ms"] = quantile(wall, 0.1)
        result["p90_ms"] = quantile(wall, 0.9)
        if "nested_autograd" in gradients:
            reference = gradients["nested_autograd"]
            difference = (gradients[provider] - reference).norm() / reference.norm()
            result["grad_rel_diff_vs_nested_autograd"] = difference.item()
    if "nested_autograd" in samples:
        base = results["nested_autograd"]
        for provider in samples:
            result = results[provider]
            result["speedup_vs_nested_autograd"] = base["median_ms"] / result["median_ms"]
            result["cpu_time_speedup_vs_nested_autograd"] = base["cpu_median_ms"] / result["cpu_median_ms"]
            if base["peak_memory_mib"] and result["peak_memory_mib"]:
                result["memory_ratio_vs_nested_autograd"] = result["peak_memory_mib"] / base["peak_memory_mib"]
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
    parser.add_argument(
        "--isolation",
        choices=["process", "shared"],
        help="process: each provider in a spawned process of its own, as a user's training runs (default on a CPU, "
        "where a process's heap history decides how many pages nested autograd faults in per step); shared: all "
        "in this process (default on a GPU, whose caching allocator has no such history)",
    )
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
    args.isolation = args.isolation or ("shared" if on_gpu else "process")
    if args.processes > 1:
        _in_fresh_processes(args)
        return
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    cases = []
    for model_name in args.models:
        for problem in args.problems:
            for n in args.sizes:
                case = measure_case(model_name, problem, n, args.providers, device, args.rounds, dtype, args.isolation)
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
    where = "each in a process of its own" if args.isolation == "process" else "all in one process"
    payload = {
        "description": f"PINN residual loss + backward; providers timed interleaved, {where}; "
        "speedup = nested_autograd median / provider median",
        "isolation": args.isolation,
        # glibc's allocator settings change how many pages a step faults in (see ProviderProcess)
        "malloc_environment": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
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
            child += ["--isolation", args.isolation]
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
