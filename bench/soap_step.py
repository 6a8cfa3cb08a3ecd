"""SOAP step time: soap_kernels.SOAP against torch.optim.Adam and pytorch_optimizer.SOAP.

Parameter sets: the paper's PirateNet 3x256 (Wang et al. 2025) and a 4x512 tanh MLP. Settings: the paper's
(lr 1e-3, betas (0.9, 0.999), weight_decay 0, precondition_frequency 2, precondition_1d True).
Each provider steps on the same precomputed gradients. A timed block is `precondition_frequency` steps, so
block median / frequency is the mean step time including refreshes. Prints a table, saves JSON.

    python bench/soap_step.py [--device cpu|cuda] [--blocks 10] [--sets pirate_3x256 mlp_4x512]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.harness import save_results, time_fn  # noqa: E402

PAPER_SETTINGS = dict(lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0, precondition_frequency=2, precondition_1d=True)


def pirate_net_shapes(width: int = 256, blocks: int = 3, fourier: int = 128, inputs: int = 2) -> list[tuple]:
    """Parameter shapes of PirateNet (Fourier features, U/V gates, blocks of 3 RWF dense layers, RWF head).

    RWF layers hold a matrix V and vectors g (scale) and b (bias); each block has a trainable alpha.
    The issue's list: 2x128 Fourier matrix; two 256x256 gates with biases; 9 RWF 256x256 layers with g, b;
    one alpha scalar; a 256x1 RWF head with g and b.
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


PARAMETER_SETS: dict[str, Callable[[], list[tuple]]] = {"pirate_3x256": pirate_net_shapes, "mlp_4x512": mlp_shapes}


def _providers() -> dict[str, Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]]:
    from soap_kernels import SOAP

    providers = {
        "adam_fused" if torch.cuda.is_available() else "adam": lambda ps: torch.optim.Adam(
            ps, lr=1e-3, betas=(0.9, 0.999), fused=torch.cuda.is_available()
        ),
        "soap_kernels": lambda ps: SOAP(ps, **PAPER_SETTINGS),
        "soap_kernels_torch": lambda ps: SOAP(ps, backend="torch", **PAPER_SETTINGS),
    }
    try:
        from pytorch_optimizer import SOAP as PytorchOptimizerSOAP

        providers["pytorch_optimizer_soap"] = lambda ps: PytorchOptimizerSOAP(
            ps, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0, precondition_frequency=2, precondition_1d=True
        )
    except ImportError:
        print("pytorch_optimizer is not installed (pip install .[bench]); skipping its provider")
    return providers


def measure(shapes: list[tuple], make_optimizer, device: torch.device, blocks: int, frequency: int = 2) -> dict:
    """Median time of a block of `frequency` steps, divided by frequency (refresh steps included)."""
    generator = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(0.1 * torch.randn(s, generator=generator).to(device)) for s in shapes]
    pool = [[torch.randn(s, generator=generator).to(device) for s in shapes] for _ in range(frequency)]
    optimizer = make_optimizer(params)

    def block() -> None:
        for grads in pool:
            for p, g in zip(params, grads):
                p.grad = g
            optimizer.step()

    block()  # the initialising first step and one refresh happen outside the timed region
    timing = time_fn(block, device=device, warmup=1, repeats=blocks)
    return {key: (value / frequency if key.endswith("_ms") else value) for key, value in timing.items()}


def run(device: str = "cpu", blocks: int = 10, sets: list[str] | None = None) -> dict:
    device = torch.device(device)
    results: dict = {"settings": {**PAPER_SETTINGS, "betas": list(PAPER_SETTINGS["betas"])}, "sets": {}}
    providers = _providers()
    for name in sets or list(PARAMETER_SETS):
        shapes = PARAMETER_SETS[name]()
        entry = {
            "tensors": len(shapes),
            "values": int(sum(torch.Size(s).numel() for s in shapes)),
            "step_ms": {},
        }
        for provider, make in providers.items():
            entry["step_ms"][provider] = measure(shapes, make, device, blocks)
            print(f"{name:14s} {provider:24s} {entry['step_ms'][provider]['median_ms']:9.2f} ms/step", flush=True)
        medians = {p: v["median_ms"] for p, v in entry["step_ms"].items()}
        ours = medians["soap_kernels"]
        entry["ratios"] = {f"{p}_over_soap_kernels": m / ours for p, m in medians.items() if p != "soap_kernels"}
        results["sets"][name] = entry
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--blocks", type=int, default=10, help="timed blocks of precondition_frequency steps")
    parser.add_argument("--sets", nargs="+", choices=list(PARAMETER_SETS), default=list(PARAMETER_SETS))
    args = parser.parse_args(argv)
    results = run(args.device, args.blocks, args.sets)
    path = save_results("soap_step", results, device=args.device)
    print("\nmedian ms per step (mean over refresh and non-refresh steps); ratio = provider / soap_kernels")
    for name, entry in results["sets"].items():
        for provider, timing in entry["step_ms"].items():
            ratio = entry["ratios"].get(f"{provider}_over_soap_kernels", 1.0)
            print(f"  {name:14s} {provider:24s} {timing['median_ms']:9.2f} ms   x{ratio:6.2f}")
    print(f"saved {path}")
    return results


if __name__ == "__main__":
    main()
