"""Trainer: a smoke run for every PDE, resume equals uninterrupted, non-finite loss, outputs, errors.

All runs use tiny networks, tiny batches and coarse references so the file runs in well under a minute
on a 2-core CPU.
"""

import json
import math

import numpy as np
import pytest
import torch
from soap_pinn.config import make_config
from soap_pinn.pdes import NOT_IMPLEMENTED, PDES
from soap_pinn.trainer import NonFiniteLossError, Trainer

COARSE = {
    "allen_cahn": dict(modes=64, steps_per_output=2, nt=21, nx=33),
    "burgers": dict(modes=64, steps_per_output=4, nt=21, nx=33),
    "kdv": dict(modes=64, steps_per_output=4, nt=21, nx=33),
    "ks": dict(modes=64, steps_per_output=4, nt=21, nx=33),
    "wave": dict(nt=21, nx=33),
    "ginzburg_landau": dict(modes=16, steps_per_output=2, nt=11, n_out=9),
    "gray_scott": dict(modes=16, steps_per_output=200, nt=11, n_out=9),  # dt 1e-3: the reactions are stiff
}


def tiny_config(name, optimizer="adam", steps=10, **overrides):
    settings = dict(
        optimizer=optimizer, steps=steps, log_every=3, save_every=5, hidden_features=16, fourier_features=16,
        batch_size=64, causal_chunks=8, reference_settings=COARSE[name], plots=False, ic_stride=1,
        eval_stride_x=1, eval_stride_t=1, warmup_steps=2, weight_update_every=4,
    )
    settings.update(overrides)
    return make_config(name, "small", **settings)


def parameters(trainer):
    return [p.detach().clone() for p in trainer.model.parameters()]


@pytest.mark.parametrize("name", sorted(name for name, pde in PDES.items() if not pde.needs_reference_file))
def test_smoke_run_every_pde(tmp_path, name):  # ldc (a user's reference file): test_ldc.py
    steps = 10
    summary = Trainer(tiny_config(name, steps=steps), tmp_path, progress=False).run()
    assert summary["steps"] == steps and math.isfinite(summary["rel_l2"])
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 3, 6, 9]
    pde = PDES[name]
    for record in records:
        assert set(record["losses"]) == set(pde.loss_terms) == set(record["weights"])
        assert all(math.isfinite(v) for v in record["losses"].values())
        assert math.isfinite(record["rel_l2"]) and record["time"] >= 0
        assert -1.0 <= record["alignment"]["intra_step"] <= 1.0
    windows = {r["window"] for r in records}
    assert windows == set(range(min(pde.recipe.time_windows, 4))) or pde.recipe.time_windows > 1
    prediction = np.load(tmp_path / "prediction.npz")
    assert prediction["prediction"].shape == prediction["reference"].shape


def test_inter_step_alignment_is_the_cosine_of_consecutive_updates(tmp_path):
    """Logged at steps 3 and 6 (log_every 3) from the updates of steps 2-3 and 5-6, recomputed here from
    parameter snapshots of an identical run stopped step by step; step 0 has no previous update."""
    config = tiny_config("allen_cahn", steps=7, save_every=100)
    Trainer(config, tmp_path / "logged", progress=False).run()
    records = [json.loads(line) for line in (tmp_path / "logged" / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r["alignment"]["inter_step"] for r in records}
    assert logged[0] is None
    trainer = Trainer(config, tmp_path / "stepped", progress=False)
    snapshots = [torch.cat([p.reshape(-1) for p in parameters(trainer)])]
    for _ in range(7):
        trainer.run(stop_after=1)
        snapshots.append(torch.cat([p.reshape(-1) for p in parameters(trainer)]))
    for step in (3, 6):
        before, now = snapshots[step] - snapshots[step - 1], snapshots[step + 1] - snapshots[step]
        cosine = float(torch.dot(before, now) / (before.norm() * now.norm()))
        assert logged[step] == pytest.approx(cosine, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("name", ["allen_cahn", "burgers", "wave"])
def test_an_unlogged_step_reads_the_device_once(tmp_path, name):
    """The non-finite-loss check is a training step's one host read (on a GPU each is a synchronisation): the
    condition losses' grids reach the device once per window, not once per step; grad-norm weights update
    without reading back either (weight_update_every 1: every step)."""
    from tests.host_sync_guard import record_host_reads

    trainer = Trainer(tiny_config(name, optimizer="soap", steps=20, weight_update_every=1), tmp_path, progress=False)
    trainer.run(stop_after=3)  # log_every 3: step 3 is logged, step 4 is not
    trainer._train_step(log=True)
    trainer.step += 1
    constants = dict(trainer.window.device_constants)
    assert constants  # made on the first step, then reused
    with record_host_reads() as reads:
        trainer._train_step(log=False)
    assert reads == ["host read: Tensor.item", "host read: aten::_local_scalar_dense"]
    assert all(trainer.window.device_constants[k] is v for k, v in constants.items())


def test_losses_decrease_on_allen_cahn(tmp_path):
    # not a convergence study: 40 Adam steps must lower the weighted loss (it cannot if gradients are wrong)
    config = tiny_config("allen_cahn", steps=40, log_every=39, warmup_steps=1, weighting="none",
                         physics_informed_init=False, learning_rate=3e-3)
    Trainer(config, tmp_path, progress=False).run()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["loss"] < 0.5 * records[0]["loss"]


@pytest.mark.parametrize("name, optimizer", [("allen_cahn", "soap"), ("ks", "adam")])
def test_resume_equals_uninterrupted(tmp_path, name, optimizer):
    # bitwise: same ops in the same order on the same CPU; KS crosses time windows (5 steps each)
    steps = 12 if name == "allen_cahn" else 20
    whole = Trainer(tiny_config(name, optimizer, steps=steps), tmp_path / "whole", progress=False)
    whole.run()
    stopped = Trainer(tiny_config(name, optimizer, steps=steps), tmp_path / "split", progress=False)
    assert stopped.run(stop_after=7) == {"step": 7, "completed": False}
    resumed = Trainer(tiny_config(name, optimizer, steps=steps), tmp_path / "split", resume=True, progress=False)
    assert resumed.step == 7
    resumed.run()
    for a, b in zip(parameters(whole), parameters(resumed)):
        assert torch.equal(a, b)
    lines_whole = [json.loads(x) for x in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    lines_split = [json.loads(x) for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    strip = lambda r: {k: v for k, v in r.items() if k != "time"}  # noqa: E731
    assert [strip(r) for r in lines_whole] == [strip(r) for r in lines_split]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_resume_on_cuda_equals_uninterrupted(tmp_path):
    # the checkpoint is loaded with map_location=cuda, which also moves the CPU RNG state it holds
    config = lambda: tiny_config("allen_cahn", "soap", steps=8, device="cuda")  # noqa: E731
    whole = Trainer(config(), tmp_path / "whole", progress=False)
    whole.run()
    Trainer(config(), tmp_path / "split", progress=False).run(stop_after=5)
    resumed = Trainer(config(), tmp_path / "split", resume=True, progress=False)
    assert resumed.step == 5
    resumed.run()
    for a, b in zip(parameters(whole), parameters(resumed)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_non_finite_loss_stops_and_keeps_checkpoint(tmp_path, monkeypatch):
    trainer = Trainer(tiny_config("allen_cahn", steps=10), tmp_path, progress=False)
    trainer.run(stop_after=5)
    good = parameters(trainer)
    original = trainer.pde.residual

    def poisoned(d):
        (r,) = original(d)
        return (r * float("nan"),)

    monkeypatch.setattr(trainer.pde, "residual", poisoned)
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 5"):
        trainer.run()
    monkeypatch.undo()
    restored = Trainer(tiny_config("allen_cahn", steps=10), tmp_path, resume=True, progress=False)
    assert restored.step == 5
    for a, b in zip(good, parameters(restored)):
        assert torch.equal(a, b)


def test_bad_settings_raise_value_error(monkeypatch):
    with pytest.raises(ValueError, match="unknown PDE 'heat'"):
        make_config("heat")
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        make_config("allen_cahn", "huge")
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        make_config("allen_cahn", optimizer="sgd")
    with pytest.raises(ValueError, match="divisible by causal_chunks"):
        make_config("allen_cahn", batch_size=100)
    monkeypatch.setitem(NOT_IMPLEMENTED, "heat", "a planned PDE")
    with pytest.raises(NotImplementedError, match="PDE 'heat': a planned PDE"):
        make_config("heat")
    with pytest.raises(ValueError, match="needs a reference file"):
        make_config("ldc")


def test_paper_preset_matches_recipe():
    config = make_config("kdv", "paper")
    assert (config.hidden_features, config.hidden_layers, config.batch_size) == (256, 3, 4096)
    assert (config.warmup_steps, config.decay_steps, config.causal_tol, config.causal_chunks) == (5000, 2000, 0.1, 16)
    assert make_config("ks", "paper").steps == 10 * 200_000


def test_time_limit_stops_and_finishes(tmp_path):
    summary = Trainer(tiny_config("allen_cahn", steps=10_000), tmp_path, progress=False).run(time_limit_s=1e-9)
    assert summary["time_limited"] and summary["steps"] == 1 and math.isfinite(summary["rel_l2"])
    assert (tmp_path / "checkpoint.pt").exists()


def test_physics_informed_init_fits_the_initial_condition(tmp_path):
    # kept when it lowers the loss: on Allen-Cahn the initial-condition misfit drops by orders of magnitude
    def initial_misfit(pi_init):
        config = tiny_config("allen_cahn", hidden_features=32, fourier_features=32, physics_informed_init=pi_init)
        trainer = Trainer(config, tmp_path / str(pi_init), progress=False)
        return float(trainer.pde.condition_losses(trainer.model, trainer.window)["ics"])

    assert initial_misfit(True) < 1e-2 * initial_misfit(False)


def test_init_from_starts_from_another_runs_model(tmp_path):
    """A curriculum stage: the second run starts from the first run's final parameters (another seed would give
    other ones), trains, and an architecture that does not fit or a folder without a checkpoint is refused."""
    first = Trainer(tiny_config("allen_cahn", steps=4), tmp_path / "first", progress=False)
    first.run()
    trained = parameters(first)
    settings = dict(steps=4, seed=7, init_from=str(tmp_path / "first"))
    second = Trainer(tiny_config("allen_cahn", **settings), tmp_path / "second", progress=False)
    for loaded, expected in zip(parameters(second), trained, strict=True):
        assert torch.equal(loaded, expected)
    assert math.isfinite(second.run()["rel_l2"])
    assert json.loads((tmp_path / "second" / "config.json").read_text())["init_from"] == str(tmp_path / "first")
    narrow = dict(settings, hidden_features=8, fourier_features=8)
    with pytest.raises(ValueError, match="does not fit"):
        Trainer(tiny_config("allen_cahn", **narrow), tmp_path / "third", progress=False)
    with pytest.raises(ValueError, match="init_from .*nowhere"):
        Trainer(tiny_config("allen_cahn", init_from=str(tmp_path / "nowhere")), tmp_path / "fourth", progress=False)
