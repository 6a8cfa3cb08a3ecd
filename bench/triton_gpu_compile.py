"""Compile every Triton kernel of soap_kernels for NVIDIA GPUs on a machine without one.

Triton compiles to PTX and cubin (its bundled ptxas) for any target; only loading and launching need a GPU.
This script swaps Triton's active driver for one that reports a CUDA target (sm_80, sm_90) and turns every
kernel launch into a compile-only warm-up, then calls the op launchers (rotated Adam, momentum carry, factor
update, the jet layers forward and backward, the jet product) on small CPU tensors with the block sizes they
use on CUDA.
It reports, per kernel and configuration, whether it compiled and the shared memory it needs against the
architecture's per-block limit. It catches what the interpreter cannot: tl.dot shape and dtype rules,
float64 tl.dot lowering, register/shared-memory overflows at compile time. It does not check results.

    python -m bench.triton_gpu_compile [--arch 90 80] [--quick] [--json PATH]

Must run without TRITON_INTERPRET=1 (the interpreter replaces the JIT at import); exit status 1 if any
float32 kernel fails (float64 failures are reported: the ops probe float64 tl.dot at run time and fall back).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import torch

SHARED_MEMORY_LIMIT = {80: 163 * 1024, 90: 227 * 1024}  # opt-in maximum per block (bytes), A100 / H100
JET_ACTIVATIONS = ("tanh", "sin", "silu", "gelu")
JET_REQUESTS = {  # (num_inputs, derivatives, laplacian axes): the layouts the trainer's PDEs use
    "allen_cahn": (2, [(0,), (1, 1)], None),
    "kdv": (2, [(0,), (1,), (1, 1, 1)], None),
    "kuramoto_sivashinsky": (2, [(0,), (1,), (1, 1), (1, 1, 1, 1)], None),
    "laplacian_2d": (2, [], [0, 1]),
    "navier_stokes_2d": (2, [(0,), (1,), (0, 0), (1, 1)], None),
}


class _CompileOnlyDriver:
    """What triton.runtime.jit asks of the active driver, answered for a CUDA device that is not there."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def is_active(self) -> bool:
        return True

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_current_target(self):
        return self.target

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")


@contextlib.contextmanager
def compile_only(arch: int, compiled: list) -> Iterator[None]:
    """Inside: launches compile for sm_<arch> and do not run; each compiled kernel is appended to `compiled`
    as (kernel name, metadata). The ops' CUDA block sizes are used for CPU tensors."""
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    from soap_kernels.ops import _triton_utils, factor_update, jet_dense_triton, rotated_adam

    original_run = JITFunction.run
    original_blocks = _triton_utils.gemm_blocks
    original_jet_config = jet_dense_triton.launch_config

    def run_compile_only(self, *args, grid, warmup, **kwargs):
        kernel = original_run(self, *args, grid=grid, warmup=True, **kwargs)
        compiled.append((self.fn.__name__, kernel.metadata))
        return kernel

    def cuda_blocks(dtype, device):
        return original_blocks(dtype, torch.device("cuda"))

    def cuda_jet_config(kind, num_slots, device):
        return original_jet_config(kind, num_slots, torch.device("cuda"))

    previous_driver = driver._active  # reset_active() would create the default driver, which needs a GPU
    driver.set_active(_CompileOnlyDriver(arch))
    JITFunction.run = run_compile_only
    for module in (_triton_utils, factor_update, rotated_adam):
        module.gemm_blocks = cuda_blocks
    jet_dense_triton.launch_config = cuda_jet_config
    try:
        yield
    finally:
        driver._active = previous_driver
        JITFunction.run = original_run
        for module in (_triton_utils, factor_update, rotated_adam):
            module.gemm_blocks = original_blocks
        jet_dense_triton.launch_config = original_jet_config


def soap_cases(dtype: torch.dtype, quick: bool) -> dict[str, Callable[[], None]]:
    """Launches of the SOAP kernels: odd shapes, a 1 x n, a paper-size 256 x 256 (chain split), one-sided bases,
    normalize and weight decay on and off."""
    from soap_kernels.ops.factor_update import factor_update_triton
    from soap_kernels.ops.rotated_adam import rotate_momentum_triton, rotated_adam_triton

    shapes = [(7, 33)] if quick else [(7, 33), (1, 12), (256, 256)]
    cases = {}
    for m, n in shapes:
        batch = 3
        grad = torch.randn(batch, m, n, dtype=dtype)
        left = torch.eye(m, dtype=dtype).expand(batch, m, m).contiguous()
        right = torch.eye(n, dtype=dtype).expand(batch, n, n).contiguous()
        ok = torch.tensor(True)
        steps = torch.full((batch,), 1e-3, dtype=dtype)
        for sides, (q_left, q_right) in {"both": (left, right), "right": (None, right)}.items():
            for normalize, decay in ((False, 0.0), (True, 1e-4)):
                cases[f"rotated_adam_ {m}x{n} bases={sides} normalize={normalize} decay={decay > 0}"] = partial(
                    rotated_adam_triton, torch.zeros_like(grad), torch.zeros_like(grad), torch.zeros_like(grad), grad,
                    q_left, q_right, ok, steps, 0.9, 0.999, 1e-8, decay, normalize,
                )  # fmt: skip
            cases[f"rotate_momentum_ {m}x{n} bases={sides}"] = partial(
                rotate_momentum_triton, grad.clone(), q_left, q_right, q_left, q_right, ok
            )
        for dim, size in ((0, m), (1, n)):
            cases[f"factor_update_ {m}x{n} dim={dim}"] = partial(
                factor_update_triton, torch.zeros(batch, size, size, dtype=dtype), grad, ok, 0.95, dim
            )
    return cases


def jet_cases(dtype: torch.dtype, quick: bool) -> dict[str, Callable[[], None]]:
    """Launches of the jet layer kernels (forward, backward, the activation alone) for the PDEs' layouts and every
    activation, and of the jet product."""
    from soap_kernels.jets.plan import JetPlan
    from soap_kernels.ops.jet_bilinear_triton import jet_bilinear_triton
    from soap_kernels.ops.jet_dense_triton import (
        jet_activation_triton,
        jet_dense_activation_backward_triton,
        jet_dense_activation_triton,
        using_kernels,
    )
    from soap_kernels.ops.jet_product import product_program, transposed_program

    quick_layouts = ("allen_cahn", "kuramoto_sivashinsky")  # 4 and 6 slots: the most shared memory
    requests = {k: JET_REQUESTS[k] for k in quick_layouts} if quick else JET_REQUESTS
    activations = ("tanh",) if quick else JET_ACTIVATIONS
    cases = {}
    for name, (inputs, derivatives, laplacian) in requests.items():
        plan = JetPlan.build(inputs, derivatives, laplacian)
        x = torch.randn(plan.num_slots, 37, 33, dtype=dtype)
        weight = torch.randn(20, 33, dtype=dtype)
        bias = torch.randn(20, dtype=dtype)
        for activation in activations:

            def forward_and_backward(plan=plan, x=x, weight=weight, bias=bias, activation=activation):
                for way in ("fused", "split"):  # both ways of running a layer (jet_dense_triton.kernel_choice)
                    with using_kernels(way):
                        h, z = jet_dense_activation_triton(x, weight, bias, activation, plan.key)
                        grad = torch.ones_like(h)
                        jet_dense_activation_backward_triton(grad, z, x, weight, activation, plan.key, True)
                jet_activation_triton(z, activation, plan.key)  # the remaking of h (jet(..., recompute=True))

            cases[f"jet_dense {name} {activation}"] = forward_and_backward

        def products(plan=plan, x=x):  # the Leibniz product (PirateNet's gates) and its two backward programs
            terms, coefs = product_program(plan.key)
            jet_bilinear_triton(x, x, plan.num_slots, terms, coefs)
            for wrt in (0, 1):
                jet_bilinear_triton(x, x, plan.num_slots, *transposed_program(terms, coefs, wrt))

        cases[f"jet_bilinear {name}"] = products
    return cases


CASE_GROUPS = {"soap": soap_cases, "jet": jet_cases}


def check(
    archs: list[int], quick: bool, dtypes=(torch.float32, torch.float64), groups=tuple(CASE_GROUPS)
) -> list[dict]:
    """Compile every case of `groups` for every arch and dtype; one row per (arch, dtype, case, kernel)."""
    rows = []
    for arch in archs:
        for dtype in dtypes:
            for group in groups:
                for case, launch in CASE_GROUPS[group](dtype, quick).items():
                    compiled: list = []
                    row = {"arch": f"sm_{arch}", "dtype": str(dtype).replace("torch.", ""), "case": case}
                    try:
                        with compile_only(arch, compiled):
                            launch()
                    except Exception as error:  # noqa: BLE001 - a compile failure of any kind is the finding
                        rows.append({**row, "status": "FAILED", "error": f"{type(error).__name__}: {error}"[:2000]})
                        continue
                    for kernel, metadata in compiled:
                        shared = int(getattr(metadata, "shared", 0))
                        limit = SHARED_MEMORY_LIMIT.get(arch)
                        status = "ok" if limit is None or shared <= limit else "FAILED"
                        rows.append({
                            **row, "kernel": kernel, "status": status, "shared_bytes": shared,
                            "num_warps": int(getattr(metadata, "num_warps", 0)),
                            "error": None if status == "ok" else f"shared memory {shared} B > limit {limit} B",
                        })  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", type=int, default=[90, 80], help="compute capabilities (90 = sm_90)")
    parser.add_argument("--quick", action="store_true", help="one shape, two PDE layouts, tanh only")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: the interpreter replaces Triton's compiler at import", file=sys.stderr)
        return 2
    import triton

    rows = check(args.arch, args.quick)
    for row in rows:
        detail = row.get("error") or f"{row['kernel']}: shared {row['shared_bytes']} B, {row['num_warps']} warps"
        print(f"{row['arch']} {row['dtype']:8s} {row['status']:6s} {row['case']:58s} {detail}")
    failed = [r for r in rows if r["status"] != "ok"]
    hard = [r for r in failed if r["dtype"] == "float32"]
    print(f"\n{len(rows)} kernels compiled, {len(failed)} failed ({len(hard)} float32), Triton {triton.__version__}")
    if args.json:
        args.json.write_text(json.dumps({"triton": triton.__version__, "rows": rows}, indent=1))
    return 1 if hard else 0


if __name__ == "__main__":
    sys.exit(main())
