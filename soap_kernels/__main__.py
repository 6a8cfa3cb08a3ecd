"""`python -m soap_kernels info`: how the extension was built and which backends run here."""

from __future__ import annotations

import argparse
import json
import sys


def info() -> dict:
    """Build and runtime report: torch, CUDA, the native extension, Triton, and the forced backend."""
    import os

    import torch

    from soap_kernels import __version__
    from soap_kernels._backend import triton_available, triton_interpreted
    from soap_kernels._native import native_build_info

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    native = native_build_info()
    return {
        "soap_kernels": __version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "native_extension": native,
        "backends_here": {
            "torch": True,
            "cpp_cpu": native is not None,
            "cuda": bool(native and native["cuda"] and torch.cuda.is_available()),
            "triton": triton_available(),
            "triton_interpreted": triton_interpreted(),
        },
        "triton": triton_version,
        "SOAP_KERNELS_BACKEND": os.environ.get("SOAP_KERNELS_BACKEND"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soap_kernels")
    parser.add_argument("command", choices=["info"], help="info: print the build and backend report")
    parser.parse_args(argv)
    print(json.dumps(info(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
