"""Data parallelism for the trainer: which rank this is, starting torch.distributed under torchrun, and
collectives that say which rank and which collective failed instead of hanging silently.

Under torchrun every process has RANK, WORLD_SIZE and LOCAL_RANK in its environment; `init_from_env` starts
the process group from them (NCCL for CUDA, gloo for CPU) with a timeout, so a dead or stuck peer turns into
a DistributedError on the others after at most that long (gloo; NCCL reports errors asynchronously, and
torch's watchdog aborts the process after the timeout instead). Without those variables (or with WORLD_SIZE 1)
nothing is started and every collective here is a no-op.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Context", "DistributedError", "current", "env_world", "init_from_env", "all_reduce_sum",
           "all_reduce_max", "broadcast_", "shutdown"]  # fmt: skip

DEFAULT_TIMEOUT_S = 300.0


class DistributedError(RuntimeError):
    """A collective failed or timed out: a peer rank probably died."""


@dataclass(frozen=True)
class Context:
    """This process's place in the job (rank 0 of 1 when torch.distributed is not running)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def current() -> Context:
    """The running process group's rank and size, or the single-process context."""
    if not (dist.is_available() and dist.is_initialized()):
        return Context()
    return Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def env_world() -> Context:
    """RANK / WORLD_SIZE / LOCAL_RANK from the environment (torchrun sets them); rank 0 of 1 if absent."""
    try:
        world = int(os.environ.get("WORLD_SIZE", 1))
        rank = int(os.environ.get("RANK", 0))
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError as error:
        raise ValueError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers: {error}") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"bad torch.distributed environment: RANK={rank}, WORLD_SIZE={world}")
    return Context(rank, world, local)


def init_from_env(device: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Context:
    """Start the process group when launched by torchrun with WORLD_SIZE > 1; return this rank's context.

    device "cuda": backend NCCL and torch.cuda.set_device(LOCAL_RANK), so "cuda" means this rank's GPU;
    "cpu": gloo. timeout_s bounds every collective's wait for its peers.
    """
    context = env_world()
    if not context.active:
        return context
    if dist.is_initialized():
        return current()
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but torch.cuda.is_available() is False")
        if context.local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {context.local_rank} but only {torch.cuda.device_count()} GPUs are visible")
        torch.cuda.set_device(context.local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return current()


def shutdown(synchronise: bool = False) -> None:
    """Leave the process group. synchronise (a clean finish on every rank): meet the other ranks at a barrier
    first, so that no rank tears its connections down while another is still finishing its run; without it a
    rank aborted at exit now and then ("terminate called without an active exception" inside gloo, about 1 in
    25 runs of the 2-rank torchrun test). Not on an error path: a barrier with a dead peer waits for the
    timeout."""
    if dist.is_available() and dist.is_initialized():
        try:
            if synchronise:
                _collective("barrier", "the shutdown barrier", dist.barrier)
        finally:
            dist.destroy_process_group()


def _collective(name: str, what: str, call) -> None:
    try:
        call()
    except Exception as error:  # gloo raises on a closed peer or a timeout; say where, never hang silently
        context = current()
        raise DistributedError(
            f"soap-pinn: {name} of {what} failed on rank {context.rank} of {context.world_size} ({error}); "
            "a peer rank may have died or stalled (the process group's timeout bounds the wait)"
        ) from error


def all_reduce_sum(tensor: torch.Tensor, what: str) -> torch.Tensor:
    """tensor <- sum over ranks (in place, returned); a no-op on one rank."""
    if current().active:
        _collective("all_reduce", what, lambda: dist.all_reduce(tensor))
    return tensor


def all_reduce_max(tensor: torch.Tensor, what: str) -> torch.Tensor:
    """tensor <- elementwise max over ranks (in place, returned); a no-op on one rank."""
    if current().active:
        _collective("all_reduce(MAX)", what, lambda: dist.all_reduce(tensor, op=dist.ReduceOp.MAX))
    return tensor


def broadcast_(tensors, what: str, src: int = 0) -> None:
    """Overwrite every tensor with rank src's (one flat broadcast per dtype); a no-op on one rank."""
    if not current().active:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for tensor in tensors:
        by_dtype.setdefault(tensor.dtype, []).append(tensor)
    for group in by_dtype.values():
        flat = torch.cat([t.detach().reshape(-1) for t in group])
        _collective("broadcast", what, lambda flat=flat: dist.broadcast(flat, src=src))
        offset = 0
        with torch.no_grad():
            for tensor in group:
                tensor.copy_(flat[offset : offset + tensor.numel()].view_as(tensor))
                offset += tensor.numel()
