"""The trainer under torch.distributed (gloo, CPU processes): a 2-rank run follows the 1-rank trajectory,
a 2-rank checkpoint resumes on 1 rank, torchrun drives the command line, bad world sizes and dead ranks
are clear errors.

Runs are tiny (16-wide network, 64 points, float64) so the file takes well under a minute on 2 cores.
Trajectories are compared with a tolerance: the ranks' partial gradient sums add up in another order
than one process's sum (float64 rounding, ~1e-16 per step).
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from soap_pinn import distributed
from soap_pinn.checkpoint import load_checkpoint
from soap_pinn.config import make_config
from soap_pinn.trainer import NonFiniteLossError, Trainer

from tests.spawn import spawn_ranks

COARSE = dict(modes=64, steps_per_output=2, nt=21, nx=33)
STEPS, STOP = 10, 5
STALL_TIMEOUT_S = 3
NAN_STEP = 3
TOLERANCE = dict(rtol=1e-9, atol=1e-12)
HELPER = Path(__file__).with_name("tiny_cli.py")


def tiny_config(**overrides):
    settings = dict(
        optimizer="adam", steps=STEPS, log_every=3, save_every=STOP, hidden_features=16, fourier_features=16,
        batch_size=64, causal_chunks=8, sample_chunks=8, reference_settings=COARSE, plots=False, ic_stride=1,
        eval_stride_x=1, eval_stride_t=1, warmup_steps=2, weight_update_every=4, dtype="float64",
    )  # fmt: skip
    settings.update(overrides)
    return make_config("allen_cahn", "small", **settings)


def final_parameters(folder: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(folder, torch.device("cpu"))["model"]


def records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _init(rank: int, world: int, store: Path, timeout_s: float) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s),
    )  # fmt: skip


def _worker(rank: int, world: int, out: str) -> None:
    """Three 2-rank scenarios in one spawn (starting processes costs ~10 s here):
    adam: train to STOP (checkpoint), copy that run folder to adam-at-stop/, train on to STEPS;
    soap with shard_refresh: each rank saves its final parameters;
    a NaN residual on rank 1 only at step NAN_STEP: each rank writes the error it gets;
    a stalled rank: rank 1 stops after 2 steps and waits (past the 3 s timeout) until rank 0 has written the error
    it gets."""
    torch.set_num_threads(1)
    out = Path(out)
    _init(rank, world, out / "store-1", 60)
    try:
        trainer = Trainer(tiny_config(), out / "adam", progress=False)
        assert trainer.run(stop_after=STOP) == {"step": STOP, "completed": False}
        if rank == 0:
            shutil.copytree(out / "adam", out / "adam-at-stop")
        trainer.run()
        trainer = Trainer(tiny_config(optimizer="soap", shard_refresh=True, steps=4), out / "soap", progress=False)
        trainer.run()
        torch.save([p.detach() for p in trainer.model.parameters()], out / f"soap-rank{rank}.pt")
        trainer = Trainer(tiny_config(), out / "nan", progress=False)
        trainer.run(stop_after=NAN_STEP)
        original = trainer.pde.residual
        if rank == 1:
            trainer.pde.residual = lambda jet: tuple(r * float("nan") for r in original(jet))
        try:
            trainer.run()
            outcome = "no error"
        except NonFiniteLossError as error:
            outcome = str(error)
        finally:
            trainer.pde.residual = original
        (out / f"nan-rank{rank}.txt").write_text(outcome)
    finally:
        dist.destroy_process_group()
    _init(rank, world, out / "store-2", STALL_TIMEOUT_S)
    trainer = Trainer(tiny_config(), out / "dying", progress=False)
    if rank == 1:
        trainer.run(stop_after=2)
        # rank 1 stalls after step 2 and leaves only once rank 0 has reported (or after a guard far above the
        # timeout): leaving after a fixed sleep raced rank 0's timeout on a loaded machine, and a peer that closed
        # its connection first made gloo abort rank 0 (SIGABRT) instead of raising the timeout
        give_up = time.monotonic() + 120
        while not (out / "dying.json").exists() and time.monotonic() < give_up:
            time.sleep(0.1)
        os._exit(0)  # see below
    try:
        trainer.run()
        message = "no error"
    except distributed.DistributedError as error:
        message = str(error)
    (out / "dying.json").write_text(json.dumps({"message": message}))
    # The second process group's threads are still live after the timed-out collective: the interpreter's
    # teardown could std::terminate the rank (seen under load: SIGABRT, "terminate called without an active
    # exception"), failing the spawn though every result is written. os._exit skips that teardown.
    os._exit(0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The folder of the 2-rank scenarios (see _worker) and of a 1-rank adam run (single/)."""
    folder = tmp_path_factory.mktemp("distributed")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # first, so the reference solution is cached for the spawned ranks
        Trainer(tiny_config(), folder / "single", progress=False).run()
    finally:
        torch.set_num_threads(previous)
    spawn_ranks(_worker, (2, str(folder)), nprocs=2)  # fails the tests if a collective hangs
    return folder


def test_two_ranks_follow_the_one_rank_trajectory(runs):
    two, one = final_parameters(runs / "adam"), final_parameters(runs / "single")
    initial = Trainer(tiny_config(), runs / "fresh", progress=False).initial_model_state
    assert two.keys() == one.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], **TOLERANCE)
    assert any(not torch.equal(one[name], initial[name]) for name in one)  # they trained: not a vacuous check
    logged_two, logged_one = records(runs / "adam"), records(runs / "single")
    assert [r["step"] for r in logged_two] == [r["step"] for r in logged_one] == [0, 3, 6, 9]
    for a, b in zip(logged_two, logged_one):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-9)
        assert a["weights"] == pytest.approx(b["weights"], rel=1e-9)  # grad-norm weights from global gradients
        assert a["causal_weight_min"] == pytest.approx(b["causal_weight_min"], rel=1e-9)
    summary = json.loads((runs / "adam" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == STEPS


def test_two_rank_checkpoint_resumes_on_one_rank(runs):
    assert load_checkpoint(runs / "adam-at-stop", torch.device("cpu"))["step"] == STOP
    resumed = Trainer(tiny_config(), runs / "adam-at-stop", resume=True, progress=False)
    assert resumed.step == STOP
    resumed.run()
    expected = final_parameters(runs / "single")
    for name, value in final_parameters(runs / "adam-at-stop").items():
        torch.testing.assert_close(value, expected[name], **TOLERANCE)


def test_soap_with_sharded_refresh_keeps_the_ranks_identical(runs):
    # SOAP's first bases span degenerate eigenspaces (1-D and non-square factors), so its trajectory is not
    # comparable across world sizes (DESIGN.md section 4); the ranks must still agree bit for bit
    rank0, rank1 = (torch.load(runs / f"soap-rank{r}.pt", weights_only=True) for r in range(2))
    for a, b in zip(rank0, rank1):
        assert torch.equal(a, b)
    assert all(torch.isfinite(a).all() for a in rank0)
    assert json.loads((runs / "soap" / "summary.json").read_text())["steps"] == 4


def test_a_non_finite_loss_on_one_rank_stops_every_rank(runs):
    for rank in range(2):
        assert f"non-finite loss at step {NAN_STEP}" in (runs / f"nan-rank{rank}.txt").read_text()
    assert load_checkpoint(runs / "nan", torch.device("cpu"))["step"] == NAN_STEP  # rank 0 kept the good state


def test_a_stalled_rank_is_reported_not_hung(runs):
    report = json.loads((runs / "dying.json").read_text())
    assert "all_reduce of the loss sums failed on rank 0 of 2" in report["message"]
    assert "a peer rank may have died" in report["message"]  # reported: the survivor's wait ended with an error


def test_world_size_must_divide_the_sample_chunks(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(distributed, "current", lambda: distributed.Context(rank=0, world_size=3))
    with pytest.raises(ValueError, match="world size 3 must divide sample_chunks 8"):
        Trainer(tiny_config(), tmp_path / "a", progress=False)
    from soap_pinn.cli import main

    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(SystemExit):
        main(["train", "allen_cahn", "--steps", "2", "--out", str(tmp_path / "b")])
    assert "3 processes (WORLD_SIZE) must divide --sample-chunks 8" in capsys.readouterr().err
    with pytest.raises(ValueError, match="batch_size 60 must be divisible by sample_chunks 8"):
        tiny_config(batch_size=60, causal_chunks=4)
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(SystemExit):
        main(["train", "allen_cahn", "--optimizer", "adam", "--shard-refresh", "--out", str(tmp_path / "c")])
    assert "shard_refresh applies to the soap optimizer only, not 'adam'" in capsys.readouterr().err


def test_torchrun_runs_the_command_line(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the session's reference cache (conftest) is inherited
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(HELPER),
               "train", "allen_cahn", "--optimizer", "soap", "--shard-refresh", "--steps", "4", "--log-every", "2",
               "--no-plots", "--dist-timeout", "30", "--out", str(out)]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4
    assert result.stdout.count('"world_size": 2') == 1  # the summary is printed by rank 0 only
    assert [r["step"] for r in records(out)] == [0, 2, 3]
    info = json.loads((out / "run_info.json").read_text())
    assert info["world_size"] == 2
