"""Peak memory of the PINN residual loss + backward on the CUDA code path, estimated on a machine without a GPU.

bench/residual.py measures peak memory on a GPU (torch.cuda.max_memory_allocated). This script predicts it
where there is none: it runs the same loss + backward as residual.py on CPU tensors, with the Triton kernels
under TRITON_INTERPRET=1 (set here, before Triton loads) so the jets take the ops, launchers and saved tensors
of their CUDA path, and follows the live bytes op by op (bench/memory_trace.py). The runs at two small N fix
every op's live bytes as a N + c, which gives the peak at the paper's N; a third small N checks the fit
(predicted and measured must agree to the byte). nested_autograd runs the same ATen ops on a CPU as on a GPU.

Counted: every tensor an op returns, as on the GPU after the step's inputs and parameters (the gradients are
counted), including those a Python custom op (a Triton launcher) makes and frees before it returns. Not
counted: an ATen or C++ op's scratch memory that never becomes a tensor (cuBLAS workspaces), the caching
allocator's rounding to 512-byte blocks. Providers: nested_autograd; jets_triton (every stack kept, jet()'s
default); jets_triton_recompute (jet(..., recompute=True): the dense layers' z and the shared stacks kept, the
other elementwise stacks remade in the backward); jets_triton_recompute_all (recompute="all": the z too, each
layer run again once per backward).

    python bench/residual_memory.py                       # MLP 4x256 and PirateNet 3x256, both problems
    python bench/residual_memory.py --models piratenet --problems allen_cahn --targets 8192
    python bench/residual_memory.py --models piratenet --problems allen_cahn --targets 8192 --explain --suite x
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports Triton: the jets' GPU path on CPU tensors

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.harness import save_results  # noqa: E402
from bench.memory_trace import AllocationTrace, affine_peak, peak_breakdown  # noqa: E402
from bench.residual import build_model, loss_function  # noqa: E402

PROVIDERS = ("nested_autograd", "jets_triton", "jets_triton_recompute", "jets_triton_recompute_all")  # residual.py's


def step_trace(provider: str, model_name: str, problem: str, n: int, dtype: torch.dtype, record_live: bool = False):
    """The AllocationTrace of one loss + backward at N points (model and points made before the trace)."""
    model = build_model(model_name, torch.device("cpu")).to(dtype)
    torch.manual_seed(1)
    x = torch.rand(n, 2, dtype=dtype)
    loss = loss_function(provider, problem, model, x)
    model.zero_grad(set_to_none=True)
    with AllocationTrace(record_live=record_live) as trace:
        loss().backward()
    return trace


def estimate(provider, model_name, problem, fit_sizes, check_size, targets, dtype, explain=False) -> dict:
    traces = [step_trace(provider, model_name, problem, n, dtype, record_live=explain) for n in fit_sizes]
    timelines = [trace.timeline for trace in traces]
    check = step_trace(provider, model_name, problem, check_size, dtype).timeline
    predicted_check = affine_peak(fit_sizes, timelines, check_size)
    result = {
        "fit_sizes": list(fit_sizes),
        "ops": len(timelines[0]),
        "check": {"N": check_size, "measured_bytes": max(check), "predicted_bytes": predicted_check},
        "fit_holds": max(check) == predicted_check,
        "peak_mib": {str(n): affine_peak(fit_sizes, timelines, n) / 2**20 for n in targets},
    }
    if explain:
        peak_op, places = peak_breakdown(fit_sizes, traces, max(targets))
        result["peak_breakdown"] = {
            "N": max(targets),
            "op_index": peak_op,
            "live": [{"where": p["where"], "count": p["count"], "mib": p["bytes"] / 2**20} for p in places],
        }
    return result


def _print_breakdown(model_name: str, problem: str, provider: str, breakdown: dict) -> None:
    print(f"  live at the peak of {model_name} {problem} {provider}, N={breakdown['N']} (op {breakdown['op_index']}):")
    for place in breakdown["live"]:
        if place["mib"] >= 0.5:
            print(f"    {place['mib']:9.1f} MiB  {place['count']:3d} x  {place['where']}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mlp", "piratenet"], choices=["mlp", "piratenet"])
    parser.add_argument(
        "--problems", nargs="+", default=["allen_cahn", "laplacian"], choices=["allen_cahn", "laplacian"]
    )
    parser.add_argument("--providers", nargs="+", default=list(PROVIDERS), choices=PROVIDERS)
    parser.add_argument("--targets", nargs="+", type=int, default=[2048, 8192, 32768])
    parser.add_argument("--fit-sizes", nargs=2, type=int, default=[16, 32])
    parser.add_argument("--check-size", type=int, default=48)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--suite", default="residual-memory-estimate")
    parser.add_argument(
        "--explain", action="store_true", help="list what is live at each peak (largest target N) and where it was made"
    )
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    cases = []
    for model_name in args.models:
        for problem in args.problems:
            results = {
                p: estimate(p, model_name, problem, args.fit_sizes, args.check_size, args.targets, dtype, args.explain)
                for p in args.providers
            }
            for n in map(str, args.targets):
                base = results.get("nested_autograd")
                for provider, r in results.items():
                    ratio = r["peak_mib"][n] / base["peak_mib"][n] if base else None
                    r.setdefault("ratio_vs_nested_autograd", {})[n] = ratio
                    check = r["check"]
                    print(
                        f"{model_name:9s} {problem:10s} N={n:>6s} {provider:17s} peak {r['peak_mib'][n]:9.1f} MiB"
                        + (f"  x{ratio:.2f} of nested autograd" if ratio else "")
                        + f"  (check N={check['N']}: measured {check['measured_bytes']}, "
                        f"predicted {check['predicted_bytes']} bytes{'' if r['fit_holds'] else ': THE FIT FAILS'})"
                    )
            for provider, r in results.items():
                if "peak_breakdown" in r:
                    _print_breakdown(model_name, problem, provider, r["peak_breakdown"])
            cases.append({"model": model_name, "problem": problem, "dtype": args.dtype, "providers": results})
    payload = {
        "description": "estimated peak memory (MiB above the step's inputs) of the residual loss + backward on the "
        "CUDA code path, traced op by op on CPU tensors (Triton interpreter) and extrapolated in N",
        "cases": cases,
    }
    path = save_results(args.suite, payload, "cpu")
    print(f"saved {path}")
    failed = [
        f"{c['model']} {c['problem']} {p}" for c in cases for p, r in c["providers"].items() if not r["fit_holds"]
    ]
    if failed:
        raise SystemExit(f"the affine fit failed its check for: {', '.join(failed)} (the estimates there are void)")
    return payload


if __name__ == "__main__":
    main()
