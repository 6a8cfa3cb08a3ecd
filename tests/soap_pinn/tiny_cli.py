"""`soap-pinn` with every configuration shrunk to a tiny network and a coarse reference (for tests that
launch the command line in other processes, e.g. under torchrun)."""

import sys

import torch
from soap_pinn import config as config_module
from soap_pinn.cli import main

_original = config_module.make_config


def _tiny(*args, **kwargs):
    kwargs.update(reference_settings=dict(modes=64, steps_per_output=2, nt=21, nx=33), batch_size=64,
                  hidden_features=16, fourier_features=16, causal_chunks=8, ic_stride=1, eval_stride_x=1,
                  dtype="float64")  # fmt: skip
    return _original(*args, **kwargs)


if __name__ == "__main__":
    torch.set_num_threads(1)
    config_module.make_config = _tiny
    sys.exit(main())
