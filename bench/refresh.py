"""Eigenbasis refresh of a stack of Kronecker factors: soap_kernels.refresh_eigenbasis against torch.

Providers (each refreshes a [batch, n, n] stack of factors from the previous bases):
  torch_qr_path       the SOAP reference: diag(Q^T L Q), argsort, L @ Q_sorted, torch.linalg.qr (baseline)
  torch_eigh          torch.linalg.eigh of every factor (an exact refresh without warm start)
  soap_kernels_qr     refresh_eigenbasis(method="qr"): the same result; on CUDA shifted CholeskyQR in float64, on
                      the CPU Householder QR in the input dtype with the batch split over the threads
  soap_kernels_exact  refresh_eigenbasis(method="exact"): warm-started Jacobi (exact eigenvectors), as dispatched
                      (the scalar kernel, or block-Jacobi on CUDA above n = block_jacobi.MIN_N["cuda"])
  soap_kernels_exact_scalar      the scalar Jacobi kernel forced (only where the dispatch picks block-Jacobi)
  soap_kernels_exact_block       block-Jacobi forced, max_sweeps 30 (n >= 256; where the dispatch does not pick it)
  soap_kernels_exact_block_cap8  block-Jacobi, max_sweeps 8: on CUDA every capped sweep is issued, so a warm
                      start's cap sets the cost (n >= 256)
  soap_kernels_qr_graph / soap_kernels_exact_graph  (CUDA) the op captured in a CUDA graph, timed by replays:
                      the issue's measure (the paper model's refresh inside a captured step), launch gaps excluded
Block-Jacobi rows also carry `sweeps`: the most sweeps any matrix of the case rotated in.
Factors drift like SOAP's between two refreshes (precondition_frequency 2, shampoo beta 0.95), and the bases
are the previous factor's eigenvectors, so "exact" runs from the warm start it gets in training.

    python bench/refresh.py [--device cpu|cuda] [--sizes paper|small|smoke] [--dtype float32|float64]
                            [--n 256 384] [--batch 1 8]   (only these cases of the grid)
    python -m bench refresh --device cpu
    python bench/refresh.py --device cuda --profile --n 256 --batch 1 40 --providers soap_kernels_qr
                            (no timing: each provider's kernels under torch.profiler, sorted by device time)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.harness import OUT_OF_TIME, SuiteConfig, captured, record, save_results  # noqa: E402

PROVIDERS = (
    "torch_qr_path",
    "torch_eigh",
    "soap_kernels_qr",
    "soap_kernels_exact",
    "soap_kernels_exact_scalar",
    "soap_kernels_exact_block",
    "soap_kernels_exact_block_cap8",
    "soap_kernels_qr_graph",
    "soap_kernels_exact_graph",
)
GRAPH_SUFFIX = "_graph"
BASELINE = "torch_qr_path"
SHAMPOO_BETA = 0.95
# On a CPU the Jacobi solvers of "exact" are correctness paths (about 9 n^3 scalar flops per sweep): cases
# with more work than this (batch 8 at n = 256) are recorded as skipped there instead of taking minutes each.
CPU_EXACT_MAX_WORK = 8 * 256**3
BLOCK_MIN_N = 256  # the block-Jacobi rows: the paper's widths


def cases(sizes: str) -> list[tuple[int, int]]:
    """(batch, n) pairs: the issue's grid, or a tiny one for smoke runs."""
    if sizes == "smoke":
        return [(1, 16), (2, 32)]
    return [(batch, n) for batch in (1, 8, 40) for n in (64, 128, 256, 384)]


def drifting_factors(batch: int, n: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """(L, Q): L a SOAP factor two steps after the one whose eigenvectors Q are (descending)."""
    generator = torch.Generator().manual_seed(seed)
    gradient = torch.randn(batch, n, n, dtype=torch.float64, generator=generator) / n**0.5
    previous = torch.zeros(batch, n, n, dtype=torch.float64)
    for _ in range(20):
        gradient = gradient + 0.3 * torch.randn(batch, n, n, dtype=torch.float64, generator=generator) / n**0.5
        previous = SHAMPOO_BETA * previous + (1 - SHAMPOO_BETA) * gradient @ gradient.mT
    basis = torch.linalg.eigh(previous).eigenvectors.flip(-1)
    factor = previous
    for _ in range(2):
        gradient = gradient + 0.3 * torch.randn(batch, n, n, dtype=torch.float64, generator=generator) / n**0.5
        factor = SHAMPOO_BETA * factor + (1 - SHAMPOO_BETA) * gradient @ gradient.mT
    return factor.to(device=device, dtype=dtype), basis.to(device=device, dtype=dtype)


def torch_qr_path(factor: torch.Tensor, basis: torch.Tensor):
    """The reference SOAP refresh, batched: sort by diag(Q^T L Q), one power step, torch.linalg.qr."""
    estimated = (basis * (factor @ basis)).sum(-2)
    order = torch.argsort(estimated, dim=-1, descending=True)
    n = factor.shape[-1]
    sorted_basis = torch.gather(basis, 2, order.unsqueeze(1).expand(-1, n, n))
    return torch.linalg.qr(factor @ sorted_basis)[0], order


def make(provider: str, factor: torch.Tensor, basis: torch.Tensor):
    if provider.endswith(GRAPH_SUFFIX):
        return captured(make(provider.removesuffix(GRAPH_SUFFIX), factor, basis))
    if provider == "torch_qr_path":
        return lambda: torch_qr_path(factor, basis)
    if provider == "torch_eigh":
        return lambda: torch.linalg.eigh(factor)
    from soap_kernels.ops.block_jacobi import block_jacobi_refresh
    from soap_kernels.ops.refresh_eigenbasis import refresh_eigenbasis

    if provider == "soap_kernels_exact_scalar":
        return lambda: torch.ops.soap_kernels.refresh_eigenbasis(factor, basis, "exact", 30)
    if provider.startswith("soap_kernels_exact_block"):
        max_sweeps = 8 if provider.endswith("cap8") else 30
        return lambda: block_jacobi_refresh(factor, basis, max_sweeps)
    method = provider.removeprefix("soap_kernels_")
    return lambda: refresh_eigenbasis(factor, basis, method, use_native=True)


def applies(provider: str, n: int, device: torch.device, block_min_n: int = BLOCK_MIN_N) -> bool:
    """Whether a provider has a row for this size: the forced-kernel variants only where they differ from the
    dispatched soap_kernels_exact, the block-Jacobi ones at the paper's widths (any size in smoke runs)."""
    from soap_kernels.ops.block_jacobi import uses_block_jacobi

    if provider.endswith(GRAPH_SUFFIX):
        return torch.device(device).type == "cuda"
    if provider == "soap_kernels_exact_scalar":
        return uses_block_jacobi(n, device)
    if provider == "soap_kernels_exact_block":
        return n >= block_min_n and not uses_block_jacobi(n, device)
    if provider == "soap_kernels_exact_block_cap8":
        return n >= block_min_n
    return True


def block_sweeps(provider: str, factor: torch.Tensor, basis: torch.Tensor) -> int | None:
    """The most sweeps any matrix rotated in, for the block-Jacobi providers (None for the others)."""
    from soap_kernels.ops.block_jacobi import block_jacobi_refresh_with_sweeps, uses_block_jacobi

    n = factor.shape[-1]
    provider = provider.removesuffix(GRAPH_SUFFIX)
    if provider == "soap_kernels_exact" and uses_block_jacobi(n, factor.device):
        max_sweeps = 30
    elif provider.startswith("soap_kernels_exact_block"):
        max_sweeps = 8 if provider.endswith("cap8") else 30
    else:
        return None
    return int(block_jacobi_refresh_with_sweeps(factor, basis, max_sweeps)[2].max())


def run(config: SuiteConfig) -> dict:
    from soap_kernels.ops import block_jacobi

    device = torch.device(config.device)
    dtype = getattr(torch, config.extra.get("dtype", "float32"))
    rows = []
    only_n, only_batch = config.extra.get("n"), config.extra.get("batch")
    for batch, n in cases(config.sizes):
        if (only_n and n not in only_n) or (only_batch and batch not in only_batch):
            continue
        factor, basis = drifting_factors(batch, n, dtype, device)
        name = f"batch={batch} n={n}"
        fns = {}
        for provider in PROVIDERS:
            block_min_n = 1 if config.sizes == "smoke" else BLOCK_MIN_N
            if not config.wants(provider) or not applies(provider, n, device, block_min_n):
                continue
            if config.out_of_time():
                rows.append(record(name, provider, None, error=OUT_OF_TIME))
                continue
            exact = provider.startswith("soap_kernels_exact")
            if exact and device.type == "cpu" and batch * n**3 > CPU_EXACT_MAX_WORK:
                rows.append(record(name, provider, None, error="skipped on CPU: Jacobi is the GPU design"))
                continue
            try:
                fns[provider] = make(provider, factor, basis)
                fns[provider]()  # a provider that fails is reported here, not dropped
            except Exception as error:
                fns.pop(provider, None)
                rows.append(record(name, provider, None, error=f"{type(error).__name__}: {error}"))
        large = batch * n**3 >= 8 * 256**3
        timings = config.time_many(fns, repeats=5 if large else 10)  # interleaved on a CPU
        for provider, timing in timings.items():
            qr = provider.removesuffix(GRAPH_SUFFIX).endswith(("qr_path", "_qr"))
            flops = batch * (2 + 8 / 3) * n**3 if qr else None
            extra = {"batch": batch, "n": n}
            sweeps = block_sweeps(provider, factor, basis) if provider.startswith("soap_kernels_exact") else None
            if sweeps is not None:
                extra["sweeps"] = sweeps
            # the CUDA op computes in float64 whatever the input dtype; torch's path in the input dtype
            in_double = dtype == torch.float64 or (provider.startswith("soap_kernels") and device.type == "cuda")
            peak = "fp64" if in_double else "fp32"
            rows.append(record(name, provider, timing, flops=flops, peak_dtype=peak, **extra))
    return {
        "records": rows,
        "baseline_provider": BASELINE,
        "settings": {
            "dtype": str(dtype),
            "shampoo_beta": SHAMPOO_BETA,
            "torch_threads": torch.get_num_threads(),
            "block_jacobi_min_n": dict(block_jacobi.MIN_N),
            "block_jacobi_max_block": block_jacobi.MAX_BLOCK,
        },
    }


def profile_cases(config: SuiteConfig, rows: int) -> None:
    """Print, per case and provider, the profiler's operator table for one call (after a warm-up) and the
    kernels (CUDA) or aten calls (CPU) it launches: where a refresh's time goes, and whether launches bound it."""
    from bench.trace import launch_count

    device = torch.device(config.device)
    cuda = device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    dtype = getattr(torch, config.extra.get("dtype", "float32"))
    only_n, only_batch = config.extra.get("n"), config.extra.get("batch")
    for batch, n in cases(config.sizes):
        if (only_n and n not in only_n) or (only_batch and batch not in only_batch):
            continue
        factor, basis = drifting_factors(batch, n, dtype, device)
        for provider in PROVIDERS:
            if not config.wants(provider) or provider.endswith(GRAPH_SUFFIX) or not applies(provider, n, device):
                continue
            fn = make(provider, factor, basis)
            fn()
            with torch.profiler.profile(activities=activities) as prof:
                fn()
                if cuda:
                    torch.cuda.synchronize(device)
            events = prof.key_averages()
            count, unit = launch_count(events, cuda)
            print(f"== {provider}, batch={batch} n={n}: {count} {unit}")
            sort_by = "self_cuda_time_total" if cuda else "self_cpu_time_total"
            print(events.table(sort_by=sort_by, row_limit=rows, max_name_column_width=60))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", default="small", choices=("paper", "small", "smoke"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--providers", nargs="*", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--n", type=int, nargs="*", default=None, help="only these sizes of the grid")
    parser.add_argument("--batch", type=int, nargs="*", default=None, help="only these batch sizes of the grid")
    parser.add_argument("--profile", action="store_true", help="print profiler tables instead of timing")
    parser.add_argument("--rows", type=int, default=15, help="rows of each profiler table (--profile)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = SuiteConfig(
        device=torch.device(args.device),
        sizes=args.sizes,
        providers=tuple(args.providers) if args.providers else None,
        extra={"dtype": args.dtype, "n": args.n, "batch": args.batch},
    )
    if args.profile:
        profile_cases(config, args.rows)
        return
    result = run(config)
    baseline = {row["case"]: row.get("median_ms") for row in result["records"] if row["provider"] == BASELINE}
    print(f"{'case':<18} {'provider':<30} {'median ms':>10} {'p10-p90 ms':>18} {'vs qr path':>10} {'sweeps':>6}")
    for row in result["records"]:
        if "median_ms" not in row:
            print(f"{row['case']:<18} {row['provider']:<30} {row.get('error', '')}")
            continue
        base = baseline.get(row["case"])
        ratio = f"{base / row['median_ms']:.2f}x" if base else ""
        spread = f"{row['p10_ms']:.2f}-{row['p90_ms']:.2f}"
        sweeps = row.get("sweeps", "")
        print(f"{row['case']:<18} {row['provider']:<30} {row['median_ms']:>10.2f} {spread:>18} {ratio:>10} {sweeps:>6}")
    path = save_results("refresh", result, config.device)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
