"""Where a training step's time goes: torch.profiler tables for the train_step suite's providers.

    python -m bench.trace [--device cuda] [--sizes paper|small|smoke] [--providers jets+soap_kernels,...]
                          [--rows 15] [--chrome DIR]

For each provider it runs two training steps (one SOAP refresh) under torch.profiler with soap_kernels'
named ranges on, and prints the operators sorted by self device time (CPU time on CPU), plus the number of
kernels launched (CUDA) or operators run (CPU) per step, the count that fusion is meant to cut. Profiles are
not timings: the profiler slows each launch; use `python -m bench train_step` for times.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from bench import harness


def launch_count(events, cuda: bool) -> tuple[int, str]:
    """(count, unit) from profiler key_averages: device activities on CUDA (kernels, Triton's and CUDA C++'s
    alike, memcpy and memset; the launch calls if the profiler lists no activities), aten calls on CPU."""
    if cuda:
        device_type = torch.autograd.DeviceType.CUDA
        launched = sum(e.count for e in events if getattr(e, "device_type", None) == device_type)
        if launched:
            return launched, "device kernels (memcpy/memset included)"
        launches = ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx", "cudaLaunchKernelExC", "cudaGraphLaunch")
        return sum(e.count for e in events if e.key in launches), "kernel launch calls"
    return sum(e.count for e in events if e.key.startswith("aten::")), "aten operator calls (nested ones included)"


def profile_provider(provider: str, config: harness.SuiteConfig, rows: int, chrome_dir: Path | None) -> dict:
    """Profile two steps of one train_step provider; returns {"table", "per_step", "unit"}."""
    import copy

    from bench import train_step
    from soap_kernels import profile

    case, factory, n_points, _ = train_step.CASES[config.sizes]
    torch.manual_seed(0)
    model = copy.deepcopy(factory().to(config.device))
    points = torch.rand(n_points, 2, device=config.device)
    block = train_step.make_block(provider, model, points)
    block()  # initialising step and compilation out of the profile
    block()
    if config.device.type == "cuda":
        torch.cuda.synchronize(config.device)
    cuda = config.device.type == "cuda"
    chrome = chrome_dir / f"trace-{provider.replace('+', '_')}.json" if chrome_dir else None
    profile.enable_ranges(True)
    try:
        with profile.torch_trace(chrome, cuda=cuda) as prof:
            block()
            if cuda:
                torch.cuda.synchronize(config.device)
    finally:
        profile.enable_ranges(False)
    events = prof.key_averages()
    launched, unit = launch_count(events, cuda)
    sort_by = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    return {
        "case": case,
        "table": events.table(sort_by=sort_by, row_limit=rows),
        "per_step": launched / 2,
        "unit": unit,
    }


def main(argv: list[str] | None = None) -> int:
    from bench import train_step

    parser = argparse.ArgumentParser(prog="python -m bench.trace", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", choices=harness.SIZES, default=None)
    parser.add_argument("--providers", default=",".join(train_step.PROVIDERS))
    parser.add_argument("--rows", type=int, default=15, help="operators listed per provider")
    parser.add_argument("--chrome", type=Path, default=None, help="also write Chrome traces into this folder")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    config = harness.SuiteConfig(device=device, sizes=args.sizes or ("paper" if device.type == "cuda" else "small"))
    if args.chrome:
        args.chrome.mkdir(parents=True, exist_ok=True)
    summary = []
    failed = 0
    for provider in args.providers.split(","):
        print(f"== {provider} ({config.sizes}, {harness.device_name(device)})", flush=True)
        try:
            result = profile_provider(provider, config, args.rows, args.chrome)
        except ImportError as error:
            summary.append(f"{provider:<34} not run: {error}")
            continue
        except Exception as error:  # report and go on to the next provider
            failed += 1
            summary.append(f"{provider:<34} FAILED: {type(error).__name__}: {error}")
            continue
        print(result["table"], flush=True)
        summary.append(f"{provider:<34} {result['per_step']:8.0f} {result['unit']} per step  ({result['case']})")
    print("\n".join(["", "per training step (profiled, not timed):", *summary]), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
