"""Command line: list, train (with plots), compare, resume and clear errors for bad input."""

import json

import pytest
from soap_pinn.cli import main


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("allen_cahn", "burgers", "kdv", "ks", "wave", "ginzburg_landau", "gray_scott", "ldc", "small",
                 "paper"):
        assert name in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "heat"], "unknown PDE 'heat'"),
        (["train", "allen_cahn", "--preset", "huge"], "invalid choice: 'huge'"),
        (["train", "allen_cahn", "--optimizer", "sgd"], "invalid choice: 'sgd'"),
        (["train", "allen_cahn", "--steps", "0"], "must be a positive integer"),
        (["train", "allen_cahn", "--bogus"], "unrecognized arguments: --bogus"),
        (["train", "ldc"], "needs a reference file: pass --reference PATH"),
        (["train"], "needs a PDE name"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_input_is_a_clear_error(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_compare_rejects_non_run_folder(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["compare", str(tmp_path)])
    assert "not a soap-pinn run folder" in capsys.readouterr().err


@pytest.fixture
def tiny_runs(monkeypatch):
    """Every configuration the command line makes gets a tiny network and a coarse reference."""
    from soap_pinn import config as config_module

    original = config_module.make_config

    def coarse(*args, **kwargs):
        kwargs.update(reference_settings=dict(modes=64, steps_per_output=2, nt=21, nx=33), batch_size=64,
                      hidden_features=16, fourier_features=16, causal_chunks=8, ic_stride=1, eval_stride_x=1)
        return original(*args, **kwargs)

    monkeypatch.setattr(config_module, "make_config", coarse)


def test_time_step(tiny_runs, tmp_path, capsys):
    saved = tmp_path / "timing.json"
    assert main(["time-step", "allen_cahn", "--rounds", "2", "--steps-per-round", "1", "--save", str(saved)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and lines[0].startswith("soap  jet")
    results = json.loads(saved.read_text())["results"]
    assert [len(r["wall_samples"]) for r in results] == [2, 2, 2, 2]
    assert all(r["cpu_s_per_step"] > 0 for r in results)


def test_time_step_reports_a_failing_variant_and_times_the_rest(tiny_runs, capsys):
    from soap_pinn.step_timing import time_variants

    variants = [dict(optimizer="adam"), dict(optimizer="adam", init_from="/nowhere"), dict(optimizer="soap")]
    results = time_variants("allen_cahn", variants, rounds=2, steps_per_round=1, warmup=1)
    assert "error" not in results[0] and "error" not in results[2]
    assert [len(results[i]["wall_samples"]) for i in (0, 2)] == [2, 2]
    assert results[1]["variant"] == variants[1] and results[1]["error"].startswith("ValueError: init_from '/nowhere'")
    with pytest.raises(ValueError, match="dtype must be float32 or float64, got 'float16'"):  # before any timing
        time_variants("allen_cahn", [dict(optimizer="adam"), dict(dtype="float16")], rounds=1)
    with pytest.raises(SystemExit):
        main(["time-step", "allen_cahn", "--cuda-graph"])
    assert "--cuda-graph needs --device cuda, got cpu" in capsys.readouterr().err


def test_train_resume_compare(tiny_runs, tmp_path, capsys):
    # a tiny Allen-Cahn run through the real command line, on a coarse reference
    out = tmp_path / "run"
    argv = ["train", "allen_cahn", "--optimizer", "adam", "--steps", "4", "--batch-size", "64",
            "--log-every", "2", "--save-every", "2", "--out", str(out)]
    assert main(argv) == 0
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "summary.json", "solution.png", "curves.png",
                 "alignment.png"):
        assert (out / name).exists(), name
    assert main(["train", "--resume", str(out), "--steps", "6", "--no-plots"]) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 6
    with pytest.raises(SystemExit):
        main(["train", "--resume", str(out), "--optimizer", "soap"])
    assert "--optimizer cannot change" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(argv)  # the same --out again without --resume
    assert "already holds a run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--resume", str(out), "--init-from", str(out)])
    assert "--init-from cannot change" in capsys.readouterr().err
    staged = tmp_path / "next-stage"  # a curriculum stage through the command line
    assert main([*argv[:-1], str(staged), "--init-from", str(out), "--no-plots"]) == 0
    assert json.loads((staged / "config.json").read_text())["init_from"] == str(out.resolve())
    capsys.readouterr()
    report = tmp_path / "report.json"
    assert main(["compare", str(out), "--json", "--save", str(report)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["pde"] == "allen_cahn" and rows[0]["steps"] == 6
    saved = json.loads(report.read_text())
    # every 2nd step, the last step of the first 4-step session (3) and of the resumed session (5)
    assert [point["step"] for point in saved["runs"][0]["curve"]] == [0, 2, 3, 4, 5]
    assert saved["machine"]["cpu_count"] >= 1
