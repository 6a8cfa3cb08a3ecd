"""Every Triton kernel compiles for sm_90 and sm_80 (bench/triton_gpu_compile.py, no GPU needed) and fits the
per-block shared memory; the check itself fails on a kernel that does not fit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from soap_kernels.ops._triton_utils import HAS_TRITON

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="needs Triton")


def _run_check(*args: str, code: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the real compiler, not the interpreter
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "bench.triton_gpu_compile", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def test_every_kernel_compiles_for_hopper_and_ampere():
    result = _run_check("--arch", "90", "80", "--quick")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert " 0 failed" in result.stdout


def test_the_check_flags_a_kernel_that_overflows_shared_memory():
    """Triton's default 3 pipelining stages for the jet backward need more than an H100 block's 227 KiB."""
    code = """
import torch
from bench import triton_gpu_compile as check
import dataclasses
from soap_kernels.ops import jet_dense_triton
default = jet_dense_triton.launch_config
def three_stage_backward(kind, num_slots, device):
    config = default(kind, num_slots, device)
    return dataclasses.replace(config, num_stages=3) if kind == "backward" else config
jet_dense_triton.launch_config = three_stage_backward
rows = check.check([90], quick=True, dtypes=(torch.float32,), groups=("jet",))
print('FAILED' in {r['status'] for r in rows if r['case'].startswith('jet_dense allen_cahn')})
"""
    result = _run_check(code=code)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip().splitlines()[-1] == "True"
