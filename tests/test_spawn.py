"""The hang guard of tests/spawn.py: ranks that do not finish are killed and the test fails."""

from __future__ import annotations

import time

import pytest

from tests.spawn import spawn_ranks


def _sleeping_rank(rank: int) -> None:
    time.sleep(120)


def _failing_rank(rank: int) -> None:
    raise ValueError(f"rank {rank} failed")


def test_ranks_that_hang_are_killed_and_fail_the_test():
    with pytest.raises(pytest.fail.Exception, match="still running after 3 s"):
        spawn_ranks(_sleeping_rank, (), nprocs=1, deadline_s=3)


def test_a_rank_that_raises_is_reported():
    with pytest.raises(Exception, match="rank 0 failed"):
        spawn_ranks(_failing_rank, (), nprocs=1)
