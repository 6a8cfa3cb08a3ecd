"""SOAP step time: soap_kernels.SOAP against torch.optim.Adam, pytorch_optimizer.SOAP and heavyball.SOAP.

Parameter sets: the paper's PirateNet 3x256 (Wang et al. 2025) and a 4x512 tanh MLP. Settings: the paper's
(lr 1e-3, betas (0.9, 0.999), weight_decay 0, precondition_frequency 2, precondition_1d True).
Every provider steps on the same precomputed gradients. A timed block is `precondition_frequency` steps, so
block time / frequency is the mean step time including refreshes. Providers:
    soap_kernels (backend auto), soap_kernels_torch, soap_kernels_triton (CUDA), soap_kernels_capturable (eager,
    tensor lr), soap_kernels_graph / soap_kernels_triton_graph (CUDA: one capturable step captured in a CUDA
    graph and replayed; a captured step computes the refresh every time, see SOAP's capturable),
    soap_kernels_graph_conditional (the same with the refresh in a conditional node, computed only on replays
    that are refresh steps: SOAP_KERNELS_CONDITIONAL_REFRESH=1 while capturing), the
    *_no_refresh variants (precondition_frequency 10^9: the step without refresh that the issue compares with
    fused Adam), pytorch_optimizer_soap (the baseline), adam (fused on CUDA), heavyball_soap (torch.compile's
    default mode, not heavyball's max-autotune: see HEAVYBALL_COMPILE_MODE).
Graph providers copy each gradient into the captured .grad buffers, which the others do not need to.
Launches per step (the torch profiler: device kernels on CUDA, aten calls on CPU) are recorded beside times.
On a CPU the providers are timed in interleaved rounds (harness.time_interleaved), so a shared machine's
load hits them alike; on a GPU each is timed by do_bench in turn.

    python bench/soap_step.py [--device cpu|cuda] [--sizes paper|small|smoke] [--providers a,b]
    python -m bench soap_step
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.harness import OUT_OF_TIME, SuiteConfig, captured, record, save_results  # noqa: E402

PAPER_SETTINGS = dict(lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0, precondition_frequency=2, precondition_1d=True)
PROVIDERS = (
    "soap_kernels", "soap_kernels_triton", "soap_kernels_torch", "soap_kernels_capturable", "soap_kernels_graph",
    "soap_kernels_graph_conditional", "soap_kernels_triton_graph", "soap_kernels_no_refresh",
    "soap_kernels_triton_no_refresh", "pytorch_optimizer_soap", "adam", "heavyball_soap",
)  # fmt: skip  (heavyball last: its first step compiles for tens of seconds on a GPU)
CUDA_ONLY = (
    "soap_kernels_triton", "soap_kernels_graph", "soap_kernels_graph_conditional", "soap_kernels_triton_graph",
    "soap_kernels_triton_no_refresh",
)  # fmt: skip
NO_REFRESH_FREQUENCY = 10**9
BASELINE = "pytorch_optimizer_soap"
HEAVYBALL_COMPILE_MODE = "default"


def pirate_net_shapes(width: int = 256, blocks: int = 3, fourier: int = 128, inputs: int = 2) -> list[tuple]:
    """Parameter shapes of PirateNet (Fourier features, U/V gates, blocks of 3 RWF dense layers, RWF head).

    RWF layers hold a matrix V and vectors g (scale) and b (bias); the issue's list: a 2x128 Fourier matrix;
    two 256x256 gates with biases; 9 RWF 256x256 layers with g and b; one alpha scalar; a 256x1 RWF head
    with g and b.
    """
    shapes: list[tuple] = [(inputs, fourier)]
    shapes += [(2 * fourier, width), (width,)] * 2  # gates U and V
    for _ in range(blocks * 3):
        shapes += [(width, width), (width,), (width,)]
    shapes += [()]  # alpha
    shapes += [(width, 1), (1,), (1,)]
    return shapes


def mlp_shapes(width: int = 512, layers: int = 4, inputs: int = 2, outputs: int = 1) -> list[tuple]:
    """Weights (out x in) and biases of a plain MLP."""
    dims = [inputs] + [width] * layers + [outputs]
    shapes: list[tuple] = []
    for fan_in, fan_out in zip(dims[:-1], dims[1:]):
        shapes += [(fan_out, fan_in), (fan_out,)]
    return shapes


def least_work(shapes: list[tuple], provider: str) -> dict:
    """The fewest flops and bytes of one step of `provider` (float32 state), for % of peak; {} where not modelled.

    A SOAP step without refresh, per parameter of N values viewed with factored dims n_d (PAPER_SETTINGS: 1-D
    parameters factored, no merging): rotating G into the eigenbasis and the update back costs 2 N n_d flops per
    factored dim each way, the factor update G_(d) G_(d)^T N n_d (its symmetric half): 5 N sum_d n_d flops; it
    reads G, p, m, v, L_d, Q_d and writes p, m, v, L_d: 4 (7 N + 3 sum_d n_d^2) bytes. Fused Adam: 4 * 7 N bytes.
    Steps with refreshes are not modelled (the refresh's least work depends on the algorithm).
    """
    from soap_kernels.optim.layout import precondition_plan

    if provider == "adam":
        return {"bytes_moved": 4.0 * 7 * sum(torch.Size(s).numel() for s in shapes)}
    if not provider.endswith("_no_refresh"):
        return {}
    flops = bytes_moved = 0.0
    for shape in shapes:
        plan = precondition_plan(shape, 10000, False, PAPER_SETTINGS["precondition_1d"])
        sizes = plan.factor_sizes
        flops += 5.0 * plan.numel * sum(sizes)
        bytes_moved += 4.0 * (7 * plan.numel + 3 * sum(n * n for n in sizes))
    return {"flops": flops, "bytes_moved": bytes_moved, "peak_dtype": "fp32"}


def cases(sizes: str) -> dict[str, list[tuple]]:
    """Parameter sets by name; "smoke" is a tiny PirateNet that only checks the suite runs."""
    if sizes == "smoke":
        return {"piratenet-1x16": pirate_net_shapes(width=16, blocks=1, fourier=8)}
    return {"piratenet-3x256": pirate_net_shapes(), "mlp-4x512": mlp_shapes()}


def make_optimizer(provider: str, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The provider's optimizer with the paper's settings (ImportError when its package is missing)."""
    if provider.startswith("soap_kernels"):
        from soap_kernels import SOAP

        if provider in CUDA_ONLY and not params[0].is_cuda:
            raise ImportError(f"{provider} runs on CUDA only (Triton's CPU interpreter and graphs are not timed)")
        settings = dict(PAPER_SETTINGS, backend="triton" if "triton" in provider else "auto")
        if provider == "soap_kernels_torch":
            settings["backend"] = "torch"
        if provider.endswith("_no_refresh"):
            settings["precondition_frequency"] = NO_REFRESH_FREQUENCY
        if _captured(provider) or provider.endswith("_capturable"):
            settings.update(capturable=True, lr=torch.tensor(settings["lr"], device=params[0].device))
        return SOAP(params, **settings)
    if provider == "pytorch_optimizer_soap":
        from pytorch_optimizer import SOAP as PytorchOptimizerSOAP

        return PytorchOptimizerSOAP(
            params, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0, precondition_frequency=2, precondition_1d=True
        )
    if provider == "heavyball_soap":
        import heavyball
        import heavyball.utils

        # heavyball compiles its update with mode "max-autotune-no-cudagraphs", whose autotuning took over 90 s
        # on an H100 (bench/results/gpu_check-*); torch.compile's default mode fuses the same code without it.
        heavyball.utils.compile_mode = HEAVYBALL_COMPILE_MODE
        return heavyball.SOAP(
            params, lr=1e-3, betas=(0.9, 0.999), shampoo_beta=0.999, weight_decay=0.0, precondition_frequency=2,
            precondition_1d=True, max_precond_dim=10000, merge_dims=False,
        )  # fmt: skip
    if provider == "adam":
        fused = params[0].is_cuda
        return torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.999), fused=fused)
    raise ValueError(f"unknown provider {provider!r}; expected one of {PROVIDERS}")


def step_block(shapes: list[tuple], provider: str, device: torch.device, frequency: int = 2) -> Callable[[], None]:
    """A callable running `frequency` optimizer steps on precomputed gradients (state already initialised)."""
    generator = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(0.1 * torch.randn(s, generator=generator).to(device)) for s in shapes]
    pool = [[torch.randn(s, generator=generator).to(device) for s in shapes] for _ in range(frequency)]
    optimizer = make_optimizer(provider, params)

    def block() -> None:
        for grads in pool:
            for p, g in zip(params, grads):
                p.grad = g
            optimizer.step()

    block()  # the initialising first step and one refresh happen before timing
    if not _captured(provider):
        return block
    return _graph_block(params, pool, optimizer, conditional=provider.endswith("_conditional"))


def _captured(provider: str) -> bool:
    return provider.endswith(("_graph", "_graph_conditional"))


def _graph_block(
    params: list[torch.nn.Parameter], pool: list[list[torch.Tensor]], optimizer, conditional: bool
) -> Callable[[], None]:
    """Capture one optimizer step in a CUDA graph (after eager warm-up on a side stream), its refresh in a
    conditional node if asked; the block copies each pool entry into the static .grad buffers and replays it."""
    import os
    from unittest import mock

    for p, g in zip(params, pool[0]):
        p.grad = g.clone()
    # read while the step is captured, not at replays
    with mock.patch.dict(os.environ, {"SOAP_KERNELS_CONDITIONAL_REFRESH": "1" if conditional else "0"}):
        replay = captured(optimizer.step)

    def block() -> None:
        for grads in pool:
            torch._foreach_copy_([p.grad for p in params], grads)
            replay()

    block()
    return block


def launches_per_step(block: Callable[[], None], device: torch.device, steps: int) -> tuple[float, str]:
    """Kernels (CUDA) or aten calls (CPU) per step of one profiled block (see bench.trace.launch_count)."""
    from bench.trace import launch_count

    cuda = device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as prof:
        block()
        if cuda:
            torch.cuda.synchronize(device)
    count, unit = launch_count(prof.key_averages(), cuda)
    return count / steps, unit


def run(config: SuiteConfig) -> dict:
    """One record per (parameter set, provider): median ms per step, refreshes included."""
    frequency = PAPER_SETTINGS["precondition_frequency"]
    on_gpu = config.device.type == "cuda"
    rows = []
    for name, shapes in cases(config.sizes).items():
        values = int(sum(torch.Size(s).numel() for s in shapes))
        blocks, timings, launches = {}, {}, {}
        for provider in PROVIDERS:
            if not config.wants(provider):
                continue
            if config.out_of_time():
                rows.append(record(name, provider, None, error=OUT_OF_TIME))
                continue
            try:
                blocks[provider] = step_block(shapes, provider, config.device, frequency)
            except ImportError as error:
                rows.append(record(name, provider, None, error=f"not installed: {error}"))
                continue
            if on_gpu:  # timed and profiled at once: a later provider that runs out of time loses nothing earlier
                timings[provider] = config.time(blocks[provider])
                launches[provider] = launches_per_step(blocks[provider], config.device, frequency)
        if not on_gpu:  # interleaved rounds
            timings = config.time_many(blocks, repeats=10)
            launches = {p: launches_per_step(block, config.device, frequency) for p, block in blocks.items()}
        for provider in blocks:
            per_step = {k: (v / frequency if k.endswith("_ms") else v) for k, v in timings[provider].items()}
            count, unit = launches[provider]
            extra = {"compile_mode": HEAVYBALL_COMPILE_MODE} if provider == "heavyball_soap" else {}
            rows.append(record(
                name, provider, per_step, tensors=len(shapes), values=values, launches_per_step=count,
                launch_unit=unit, **least_work(shapes, provider), **extra,
            ))  # fmt: skip
            print(f"{name:16s} {provider:30s} {per_step['median_ms']:9.2f} ms/step {count:8.0f} {unit}", flush=True)
    return {
        "records": rows,
        "baseline_provider": BASELINE,
        "settings": {**PAPER_SETTINGS, "betas": list(PAPER_SETTINGS["betas"])},
        "unit": "ms per step, mean over a block of precondition_frequency steps (one refresh per block)",
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", default="paper", choices=["paper", "small", "smoke"])
    parser.add_argument("--providers", default=None, help="comma-separated subset of " + ",".join(PROVIDERS))
    args = parser.parse_args(argv)
    providers = tuple(args.providers.split(",")) if args.providers else None
    config = SuiteConfig(device=torch.device(args.device), sizes=args.sizes, providers=providers)
    results = run(config)
    path = save_results("soap_step", results, device=args.device)
    print(f"\nmedian ms per step (refreshes included); ratio = {BASELINE} / provider")
    records = results["records"]
    baselines = {r["case"]: r["median_ms"] for r in records if r["provider"] == BASELINE and "median_ms" in r}
    for row in results["records"]:
        if "median_ms" not in row:
            print(f"  {row['case']:16s} {row['provider']:30s} {row['error']}")
            continue
        ratio = baselines.get(row["case"], float("nan")) / row["median_ms"]
        print(f"  {row['case']:16s} {row['provider']:30s} {row['median_ms']:9.2f} ms  (p10 {row['p10_ms']:.2f}, "
              f"p90 {row['p90_ms']:.2f})  {ratio:6.2f}x  {row['launches_per_step']:6.0f} launches")  # fmt: skip
    print(f"saved {path}")
    return results


if __name__ == "__main__":
    main()
