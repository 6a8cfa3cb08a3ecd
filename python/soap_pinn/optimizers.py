"""Optimizers of the comparison: Adam, and SOAP from soap_kernels with the paper's settings.

The paper (arXiv 2502.00604) runs SOAP with betas (0.9, 0.999), precondition_frequency 2, 1-D tensors
preconditioned and no weight decay; Adam with betas (0.9, 0.999), eps 1e-8. The learning rate comes
from the schedule (schedule.py).
"""

from __future__ import annotations

import importlib

import torch

__all__ = ["OPTIMIZERS", "build_optimizer"]

OPTIMIZERS = ("soap", "adam")


def build_optimizer(
    name: str, parameters, lr: float, shard_refresh: bool = False, capturable: bool = False
) -> torch.optim.Optimizer:
    """The optimizer `name` ('soap' or 'adam') over parameters with base learning rate lr.

    shard_refresh (soap only): divide SOAP's eigenbasis refresh among the torch.distributed ranks.
    capturable: steps a CUDA graph can hold (step_graph.py): the learning rate a float32 tensor on the parameters'
    device (the scheduler fills it in place), step counters on the device; Adam then runs fused.
    """
    parameters = list(parameters)
    if capturable:
        lr = torch.tensor(lr, dtype=torch.float32, device=parameters[0].device)
    if name == "adam":
        if shard_refresh:
            raise ValueError("shard_refresh applies to the soap optimizer only, not 'adam'")
        extra = {"capturable": True, "fused": True} if capturable else {}
        return torch.optim.Adam(parameters, lr=lr, betas=(0.9, 0.999), eps=1e-8, **extra)
    if name == "soap":
        try:
            soap = importlib.import_module("soap_kernels.optim.soap").SOAP
        except (ImportError, AttributeError) as error:
            raise NotImplementedError(
                "optimizer 'soap' needs soap_kernels.SOAP, which this build does not provide"
            ) from error
        extra = {"shard_refresh": True} if shard_refresh else {}
        return soap(parameters, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                    precondition_frequency=2, precondition_1d=True, capturable=capturable, **extra)
    raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
