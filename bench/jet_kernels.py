"""The dense jet layer's Triton forward and backward, fused and split, and the fused kernels' launch settings.

One PirateNet/MLP hidden layer of the Allen-Cahn jets: a stack of 4 slots (u, u_t, u_x, u_xx) of N points,
256 -> 256 features, tanh, float32. The forward launcher (z and h) and the backward launcher (g_z, dL/dx,
dL/dW, dL/db) are timed: fused with today's launch settings, split (torch.mm plus an elementwise kernel: the
comparison that soap_kernels.ops.jet_dense_triton.DEFAULT_KERNELS rests on), then fused with each other
setting that candidates() lists (tile sizes, warps, pipelining stages; one that does not compile, e.g. for
want of shared memory, is an error row), beside torch.matmul (cuBLAS on a GPU) of [4 N, 256] by [256, 256],
the layer's main GEMM alone: a floor for the forward, half of one for the backward. Each row carries TFLOP/s
of the GEMM work (2 * 4N * 256 * 256 flops forward, twice that backward).

    python -m bench jet_kernels --device cuda          # the sweep (about a minute, compiles included)
    python -m bench jet_kernels --sizes smoke          # a CPU check that each setting launches (interpreter)
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import torch

from bench.harness import OUT_OF_TIME, SuiteConfig, record

DERIVATIVES = [(0,), (1, 1)]  # Allen-Cahn: u_t and u_xx (u_x rides along as the first-order slot of u_xx)
WIDTH = 256
POINTS = {"paper": 8192, "small": 2048, "smoke": 5}


def candidates(device: torch.device) -> list:
    """Today's setting first, then the alternatives worth compiling on Hopper."""
    from soap_kernels.ops.jet_dense_triton import LaunchConfig, launch_config

    current = {kind: launch_config(kind, 4, device) for kind in ("forward", "backward")}
    if device.type != "cuda":
        return [current]  # the interpreter ignores warps and stages: one check that the sweep runs
    alternatives = [
        LaunchConfig(64, 64, 32, 4, 3),
        LaunchConfig(64, 128, 32, 4, 2),
        LaunchConfig(64, 128, 32, 8, 2),
        LaunchConfig(128, 64, 32, 8, 2),
        LaunchConfig(128, 128, 32, 8, 2),
        LaunchConfig(64, 64, 64, 4, 2),
        LaunchConfig(32, 64, 32, 4, 3),
        LaunchConfig(64, 64, 32, 8, 1),
        LaunchConfig(64, 128, 32, 8, 1),
        LaunchConfig(128, 64, 32, 8, 1),
    ]
    return [current] + [{"forward": c, "backward": c} for c in alternatives]


def _name(config) -> str:
    return f"M{config.block_m} N{config.block_n} K{config.block_k} w{config.num_warps} s{config.num_stages}"


def _launchers(points: int, device: torch.device) -> dict[str, Callable[[], object]]:
    """The forward and backward launchers on one layer's stacks (fresh random data, float32)."""
    from soap_kernels.jets.plan import JetPlan
    from soap_kernels.ops.jet_dense_triton import jet_dense_activation_backward_triton, jet_dense_activation_triton

    plan = JetPlan.build(2, DERIVATIVES)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(plan.num_slots, points, WIDTH, generator=generator).to(device)
    weight = (torch.randn(WIDTH, WIDTH, generator=generator) / WIDTH**0.5).to(device)
    bias = torch.randn(WIDTH, generator=generator).to(device)
    _, z = jet_dense_activation_triton(x, weight, bias, "tanh", plan.key)
    grad_h = torch.randn_like(z)
    return {
        "forward": lambda: jet_dense_activation_triton(x, weight, bias, "tanh", plan.key),
        "backward": lambda: jet_dense_activation_backward_triton(grad_h, z, x, weight, "tanh", plan.key, True),
    }


@contextlib.contextmanager
def _running(way: str, settings: dict | None = None):
    """Inside: both directions run `way` ("fused" or "split"), fused ones with `settings` ({kind: LaunchConfig},
    None: today's); the environment and launch_config are restored after."""
    from soap_kernels.ops import jet_dense_triton

    default = jet_dense_triton.launch_config
    if settings is not None:
        jet_dense_triton.launch_config = lambda kind, num_slots, device: settings[kind]
    try:
        with jet_dense_triton.using_kernels(way):
            yield
    finally:
        jet_dense_triton.launch_config = default


def run(config: SuiteConfig) -> dict:
    """One row per (kernel, way, launch setting) plus cuBLAS's GEMM; see the module docstring. Order: the GEMM,
    today's fused settings and the split path (the comparison the defaults rest on), then the other settings."""
    from soap_kernels._backend import resolve_backend
    from soap_kernels.jets.plan import JetPlan

    device = torch.device(config.device)
    resolve_backend(device, "triton")  # a clear RuntimeError without Triton on CUDA or its interpreter
    points = POINTS[config.sizes]
    slots = JetPlan.build(2, DERIVATIVES).num_slots
    gemm_flops = 2.0 * slots * points * WIDTH * WIDTH
    case = f"allen_cahn {slots} slots N={points} {WIDTH}->{WIDTH} float32"
    a = torch.randn(slots * points, WIDTH, device=device)
    b = torch.randn(WIDTH, WIDTH, device=device)
    rows = [record(f"{case} gemm", "torch_matmul", config.time(lambda: a @ b), flops=gemm_flops, peak_dtype="fp32")]
    launchers = _launchers(points, device)
    settings = candidates(device)
    ways = [("fused", settings[0], "current "), ("split", None, "")]
    ways += [("fused", other, "") for other in settings[1:]]
    for way, chosen, prefix in ways:
        for kind, flops in (("forward", gemm_flops), ("backward", 2 * gemm_flops)):
            if way == "split":
                provider, extra = "split: " + ("torch.mm + activation kernel" if kind == "forward" else
                                               "adjoint kernel + torch.mm"), {}  # fmt: skip
            else:
                provider, extra = prefix + _name(chosen[kind]), dataclasses.asdict(chosen[kind])
            if config.out_of_time():
                rows.append(record(f"{case} {kind}", provider, None, error=OUT_OF_TIME))
                continue
            try:
                with _running(way, chosen):
                    launchers[kind]()  # compiles this setting
                    timing = config.time(launchers[kind])
            except Exception as error:  # out of shared memory or registers: this setting cannot run
                rows.append(record(f"{case} {kind}", provider, None, error=f"{type(error).__name__}: {error}"))
                continue
            rows.append(record(f"{case} {kind}", provider, timing, flops=flops, peak_dtype="fp32", way=way, **extra))
    return {
        "records": rows,
        "settings": {"derivatives": [list(d) for d in DERIVATIVES], "width": WIDTH, "points": points},
        "unit": "ms per launch (forward: GEMM + activation jet; backward: g_z, dL/dx, dL/dW, dL/db)",
    }
