"""Divide SOAP's eigenbasis refresh among torch.distributed ranks; every rank ends with identical bases.

Each factor matrix L[b] of every stack due for a refresh is one work item of cost n^3; items are dealt out
largest first to the least-loaded rank (the same deterministic plan on every rank). A rank refreshes its
rows, writes (new basis, column order) into a zero buffer laid out for all items, and one all_reduce(SUM)
per (device, dtype) shares the results: a row is non-zero on exactly one rank, so the sum is that rank's
result exactly (a -0.0 may come back as +0.0). The column orders travel as floats (exact below 2^24).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import torch
import torch.distributed as dist

from soap_kernels.optim.refresh import RefreshRequest, refresh_basis


def plan_rows(requests: Sequence[RefreshRequest], world_size: int) -> list[list[list[int]]]:
    """rows[i][r]: the batch rows of request i that rank r refreshes (longest-processing-time first)."""
    items = [(-(f.shape[-1] ** 3), i, row) for i, (_, f, _, _) in enumerate(requests) for row in range(f.shape[0])]
    items.sort()  # largest cost first; ties by request then row, so every rank builds the same plan
    loads = [(0, rank) for rank in range(world_size)]
    rows: list[list[list[int]]] = [[[] for _ in range(world_size)] for _ in requests]
    for negative_cost, i, row in items:
        load, rank = heapq.heappop(loads)
        rows[i][rank].append(row)
        heapq.heappush(loads, (load - negative_cost, rank))
    return rows


def sharded_refresh(
    requests: Sequence[RefreshRequest], process_group: dist.ProcessGroup | None = None
) -> dict[tuple, tuple[torch.Tensor, torch.Tensor]]:
    """{key: (new_basis [B, n, n], order [B, n])} for every request, computed once across the ranks."""
    rank, world = dist.get_rank(process_group), dist.get_world_size(process_group)
    rows = plan_rows(requests, world)
    by_buffer: dict[tuple, list[int]] = {}
    for i, (_, factor, _, _) in enumerate(requests):
        by_buffer.setdefault((factor.device, factor.dtype), []).append(i)
    results: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
    for (device, dtype), indices in by_buffer.items():
        sizes = [requests[i][1].shape[0] * requests[i][1].shape[1] * (requests[i][1].shape[1] + 1) for i in indices]
        buffer = torch.zeros(sum(sizes), dtype=dtype, device=device)
        views = {}
        offset = 0
        for i, size in zip(indices, sizes):
            batch, n = requests[i][1].shape[:2]
            bases = buffer[offset : offset + batch * n * n].view(batch, n, n)
            orders = buffer[offset + batch * n * n : offset + size].view(batch, n)
            views[i] = (bases, orders)
            offset += size
            mine = rows[i][rank]
            if mine:
                _, factor, basis, method = requests[i]
                index = torch.tensor(mine, device=device)
                new_basis, order = refresh_basis(factor.index_select(0, index), basis.index_select(0, index), method)
                bases.index_copy_(0, index, new_basis)
                orders.index_copy_(0, index, order.to(dtype))
        try:
            dist.all_reduce(buffer, group=process_group)
        except Exception as error:  # a dead or hung peer: say which collective, never hang silently
            raise RuntimeError(
                f"SOAP: the sharded refresh's all_reduce failed on rank {rank} of {world} ({error}); a peer rank "
                "may have died or timed out (init_process_group(timeout=...) bounds the wait)"
            ) from error
        for i in indices:
            bases, orders = views[i]
            results[requests[i][0]] = (bases, orders.round().to(torch.int64))
    return results


def sharding_active(process_group: dist.ProcessGroup | None = None) -> bool:
    """True when torch.distributed is initialised with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(process_group) > 1
