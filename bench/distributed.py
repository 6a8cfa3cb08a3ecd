"""Data-parallel SOAP step on W CPU processes (gloo): sharded eigenbasis refresh against the redundant one.

One data-parallel training step without the network: all_reduce(SUM) of the flat gradient, then
SOAP.step() with the paper's settings (precondition_frequency 2, 1-D tensors preconditioned). Providers:
    redundant_refresh   SOAP(): every rank refreshes every Kronecker factor itself (baseline)
    shard_refresh       SOAP(shard_refresh=True): each rank refreshes its share, one all_reduce shares them
Every rank steps on the same precomputed gradients (those of a data-parallel run after its all_reduce), on a
PirateNet-like parameter set (bench.soap_step.pirate_net_shapes), both providers in the same processes,
alternating blocks of steps (so load changes hit both alike). A step's time is the slowest rank's; the
reported median is over blocks of precondition_frequency steps (one refresh each) divided by the frequency,
and the refresh and plain steps are also reported apart. Bytes per step are the all_reduce payloads counted
on rank 0 (gradient, and refresh buffers averaged over the steps); a ring all_reduce sends and receives
about 2 (W - 1) / W times its payload per rank.

CPU only: one process per core is the meaningful layout; with more processes than cores (4 on a 2-core
machine) the processes time-share the cores and the numbers say more about oversubscription than about
scaling. The multi-GPU (NCCL) version needs several GPUs.

    python bench/distributed.py [--sizes small|paper|smoke] [--worlds 2 4] [--steps 20]
    python -m bench distributed --device cpu
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.harness import SuiteConfig, record, save_results, spread  # noqa: E402
from bench.soap_step import PAPER_SETTINGS, pirate_net_shapes  # noqa: E402

PROVIDERS = ("redundant_refresh", "shard_refresh")
BASELINE = "redundant_refresh"
WORLDS = (2, 4)


def shapes_for(sizes: str) -> tuple[str, list[tuple]]:
    """(name, parameter shapes): the paper's 3x256 PirateNet, a 2x128 one for CPUs, a tiny one for smoke runs."""
    if sizes == "paper":
        return "piratenet-3x256", pirate_net_shapes()
    if sizes == "smoke":
        return "piratenet-1x16", pirate_net_shapes(width=16, blocks=1, fourier=8)
    return "piratenet-2x128", pirate_net_shapes(width=128, blocks=2, fourier=64)


class _PayloadCounter:
    """Wraps torch.distributed.all_reduce and adds up the bytes of every tensor reduced, by label."""

    def __init__(self):
        import torch.distributed as dist

        self.dist, self.original = dist, dist.all_reduce
        self.label, self.bytes = "refresh", {"gradient": 0, "refresh": 0}

    def __enter__(self) -> _PayloadCounter:
        def counting(tensor, *args, **kwargs):
            self.bytes[self.label] += tensor.numel() * tensor.element_size()
            return self.original(tensor, *args, **kwargs)

        self.dist.all_reduce = counting  # soap_kernels.optim.sharding looks it up at call time
        return self

    def __exit__(self, *exc):
        self.dist.all_reduce = self.original


def _worker(rank: int, world: int, store: str, out: str, providers: list, sizes: str, warmup: int, steps: int):
    """Each provider's optimizer on its own copy of the parameters; blocks of precondition_frequency steps
    alternate between the providers, so a change in the machine's load hits them alike."""
    import torch.distributed as dist

    from soap_kernels import SOAP

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=300)
    )
    try:
        _, shapes = shapes_for(sizes)
        generator = torch.Generator().manual_seed(0)
        initial = [torch.randn(s, generator=generator) for s in shapes]
        pool = [[torch.randn(s, generator=generator) * 1e-2 for s in shapes] for _ in range(4)]
        runs = {}
        for provider in providers:
            params = [torch.nn.Parameter(p.clone()) for p in initial]
            optimizer = SOAP(params, shard_refresh=provider == "shard_refresh", **PAPER_SETTINGS)
            runs[provider] = {"params": params, "optimizer": optimizer, "calls": 0, "step_s": [], "refresh": []}
        flat = torch.empty(sum(torch.Size(s).numel() for s in shapes))
        counter = _PayloadCounter()

        def step(run: dict, timed: bool) -> None:
            dist.barrier()
            started = time.perf_counter()
            torch.cat([g.reshape(-1) for g in pool[run["calls"] % len(pool)]], out=flat)
            counter.label = "gradient"
            dist.all_reduce(flat)
            counter.label = "refresh"
            offset = 0
            for p in run["params"]:
                p.grad = flat[offset : offset + p.numel()].view_as(p) / world
                offset += p.numel()
            before = dict(counter.bytes)
            run["optimizer"].step()
            run["calls"] += 1
            if timed:
                run["step_s"].append(time.perf_counter() - started)
                run["refresh"].append(counter.bytes["refresh"] - before["refresh"])

        frequency = PAPER_SETTINGS["precondition_frequency"]
        with counter:
            for run in runs.values():
                for _ in range(warmup):
                    step(run, timed=False)
            gradient_before = counter.bytes["gradient"]
            for _ in range(steps // frequency):
                for run in runs.values():
                    for _ in range(frequency):
                        step(run, timed=True)
            gradient_bytes = (counter.bytes["gradient"] - gradient_before) / (steps * len(runs))
        result = {}
        for provider, run in runs.items():
            slowest = torch.tensor(run["step_s"], dtype=torch.float64)
            dist.all_reduce(slowest, op=dist.ReduceOp.MAX)  # a step is done when its slowest rank is
            result[provider] = {"step_s": slowest.tolist(), "refresh_bytes": run["refresh"],
                                "gradient_bytes_per_step": gradient_bytes}  # fmt: skip
        if rank == 0:
            Path(out).write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def measure(world: int, providers: list[str], sizes: str, warmup: int, steps: int) -> dict[str, dict]:
    """Spawn `world` processes; per provider: step times (slowest rank) and all_reduce payload bytes per step."""
    import torch.multiprocessing as mp

    frequency = PAPER_SETTINGS["precondition_frequency"]
    if steps < frequency or steps % frequency or warmup % frequency:
        raise ValueError(f"steps ({steps}) and warmup ({warmup}) must be multiples of {frequency}")
    with tempfile.TemporaryDirectory() as scratch:
        out = os.path.join(scratch, "result.json")
        args = (world, os.path.join(scratch, "store"), out, list(providers), sizes, warmup, steps)
        mp.spawn(_worker, args=args, nprocs=world, join=True)
        results = json.loads(Path(out).read_text())
    # call 0 initialises SOAP; call k >= 1 is its step t = k and refreshes when t % frequency == 0
    due = [(warmup + i) % frequency == 0 for i in range(steps)]
    timings = {}
    for provider, result in results.items():
        if provider == "shard_refresh" and due != [b > 0 for b in result["refresh_bytes"]]:
            raise RuntimeError(f"refresh all_reduces on unexpected steps: {result['refresh_bytes']}")
        step_ms = [1e3 * t for t in result["step_s"]]
        blocks = sorted(sum(step_ms[i : i + frequency]) / frequency for i in range(0, steps, frequency))
        refresh = [t for t, d in zip(step_ms, due) if d]
        plain = [t for t, d in zip(step_ms, due) if not d]
        timings[provider] = {
            **spread(blocks),
            "method": f"wall, slowest rank, blocks of {frequency} steps interleaved between providers",
            "refresh_step_median_ms": statistics.median(refresh),
            "plain_step_median_ms": statistics.median(plain),
            "gradient_bytes_per_step": result["gradient_bytes_per_step"],
            "refresh_bytes_per_step": sum(result["refresh_bytes"]) / steps,
        }
    return timings


def run(config: SuiteConfig) -> dict:
    """One record per (world size, provider)."""
    if config.device.type != "cpu":
        raise NotImplementedError("this suite times gloo on CPU processes; NCCL timing needs several GPUs")
    name, shapes = shapes_for(config.sizes)
    worlds = tuple(config.extra.get("worlds", WORLDS if config.sizes != "smoke" else (2,)))
    steps = int(config.extra.get("steps", 4 if config.sizes == "smoke" else 40))
    warmup = 4
    cores = os.cpu_count() or 1
    providers = [provider for provider in PROVIDERS if config.wants(provider)]
    rows = []
    for world in worlds:
        timings = measure(world, providers, config.sizes, warmup, steps)
        for provider in providers:
            timing = timings[provider]
            rows.append(record(f"{name} world={world}", provider, timing, world_size=world,
                               oversubscribed=world > cores))  # fmt: skip
            print(f"{name} world={world} {provider:18s} {timing['median_ms']:9.2f} ms/step  "
                  f"refresh {timing['refresh_bytes_per_step'] / 1e6:7.3f} MB/step", flush=True)  # fmt: skip
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    notes = [
        f"{cores} CPU cores; every process runs 1 thread; load average (1, 5, 15 min) at the end: "
        f"{', '.join(f'{x:.2f}' for x in load) if load else 'unknown'} (other jobs share the machine when it "
        f"exceeds {cores})",
        "world sizes above the core count are oversubscribed: processes time-share cores, so their step times "
        "measure contention, not scaling"
        if any(w > cores for w in worlds)
        else "no world size oversubscribes",
        "bytes are all_reduce payloads per step on one rank (refresh bytes averaged over all steps); gloo's ring "
        "all_reduce moves about 2 (W - 1) / W of the payload per rank each way",
    ]
    return {
        "records": rows,
        "baseline_provider": BASELINE,
        "settings": {
            **PAPER_SETTINGS,
            "betas": list(PAPER_SETTINGS["betas"]),
            "parameters": name,
            "values": int(sum(torch.Size(s).numel() for s in shapes)),
            "tensors": len(shapes),
            "timed_steps": steps,
            "warmup_steps": warmup,
            "backend": "gloo",
        },  # fmt: skip
        "unit": "ms per step, mean over a block of precondition_frequency steps (one refresh per block)",
        "notes": notes,
    }


def format_table(result: dict) -> str:
    lines = [f"{'case':26s} {'provider':18s} {'median ms':>9s} {'p10-p90 ms':>15s} {'refresh ms':>10s} "
             f"{'plain ms':>9s} {'grad MB':>8s} {'refresh MB':>10s} {'vs redundant':>12s}"]  # fmt: skip
    base = {r["case"]: r["median_ms"] for r in result["records"] if r["provider"] == BASELINE}
    for r in result["records"]:
        ratio = base.get(r["case"], float("nan")) / r["median_ms"]
        spread = f"{r['p10_ms']:.1f}-{r['p90_ms']:.1f}"
        lines.append(
            f"{r['case']:26s} {r['provider']:18s} {r['median_ms']:9.2f} {spread:>15s} "
            f"{r['refresh_step_median_ms']:10.2f} {r['plain_step_median_ms']:9.2f} "
            f"{r['gradient_bytes_per_step'] / 1e6:8.3f} {r['refresh_bytes_per_step'] / 1e6:10.3f} {ratio:11.2f}x"
        )
    return "\n".join(lines + [f"note: {n}" for n in result["notes"]])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="small", choices=("paper", "small", "smoke"))
    parser.add_argument("--worlds", type=int, nargs="+", default=list(WORLDS))
    parser.add_argument("--steps", type=int, default=40, help="timed steps per configuration (even)")
    parser.add_argument("--providers", nargs="*", default=None)
    args = parser.parse_args(argv)
    if args.steps < 2 or args.steps % 2:
        parser.error(f"--steps must be an even number >= 2, got {args.steps}")
    if any(w < 2 for w in args.worlds):
        parser.error(f"--worlds must all be at least 2, got {args.worlds}")
    config = SuiteConfig(device=torch.device("cpu"), sizes=args.sizes,
                         providers=tuple(args.providers) if args.providers else None,
                         extra={"worlds": args.worlds, "steps": args.steps})  # fmt: skip
    result = run(config)
    print(format_table(result))
    path = save_results("distributed", result, "cpu")
    print(f"saved {path}")
    return result


if __name__ == "__main__":
    main()
