"""spawn_ranks: torch.multiprocessing.spawn with a hang guard, for the torch.distributed tests.

The tests of a rank that dies check that the others report it (their error message); if that ever broke, the
survivors would wait forever and take the whole test run with them. So the ranks are joined with a deadline,
and after it they are killed and the test fails as hung. The deadline is a guard far above any normal run,
not a measurement: no test asserts on how long the ranks took.
"""

from __future__ import annotations

import time

import pytest
import torch.multiprocessing as mp

HANG_DEADLINE_S = 600.0


def spawn_ranks(fn, args: tuple, nprocs: int, deadline_s: float = HANG_DEADLINE_S) -> None:
    """Run fn(rank, *args) in nprocs processes; re-raise a rank's exception; fail the test if they hang."""
    context = mp.spawn(fn, args=args, nprocs=nprocs, join=False)
    give_up = time.monotonic() + deadline_s
    while not context.join(timeout=1.0):  # raises ProcessRaisedException when a rank failed
        if time.monotonic() > give_up:
            for process in context.processes:
                process.kill()
            pytest.fail(f"{nprocs} ranks still running after {deadline_s:.0f} s: a collective hangs")
