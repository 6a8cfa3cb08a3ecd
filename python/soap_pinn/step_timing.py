"""Per-step cost of training variants (optimizer x derivative method), measured interleaved.

Each variant is a Trainer on the same PDE and preset. After a warm-up, rounds of `steps_per_round`
non-logging steps run for each variant in turn, so a machine whose load drifts (a shared CPU) affects
all variants alike. Reported per variant: median wall time per step and median CPU time per step
(process time; on a single-threaded run it is insensitive to other processes' load).
"""

from __future__ import annotations

import statistics
import tempfile
import time

from . import config as config_module
from .trainer import Trainer

__all__ = ["time_variants"]


def time_variants(
    pde: str,
    variants: list[dict],
    preset: str = "small",
    rounds: int = 5,
    steps_per_round: int = 10,
    warmup: int = 5,
) -> list[dict]:
    """Median wall and CPU seconds per training step for each variant (dict of TrainConfig overrides).

    A bad configuration raises ValueError before anything runs; a variant that fails while running (set-up,
    warm-up or a round) gets {"variant", "error"} and leaves the rounds, and the others go on, so one
    combination this machine cannot run (say a CUDA graph on a backend that cannot be captured) costs only its
    own row."""
    configs = [config_module.make_config(pde, preset, plots=False, **overrides) for overrides in variants]
    trainers: list[Trainer | None] = []
    errors: dict[int, str] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for index, config in enumerate(configs):
            try:
                trainer = Trainer(config, f"{scratch}/{index}", progress=False)
                _steps(trainer, warmup)
            except Exception as error:  # noqa: BLE001 - reported in the variant's row
                errors[index], trainer = f"{type(error).__name__}: {error}", None
            trainers.append(trainer)
        wall = [[] for _ in variants]
        cpu = [[] for _ in variants]
        for _ in range(rounds):
            for index, trainer in enumerate(trainers):
                if index in errors:
                    continue
                wall_start, cpu_start = time.perf_counter(), time.process_time()
                try:
                    _steps(trainer, steps_per_round)
                except Exception as error:  # noqa: BLE001
                    errors[index] = f"{type(error).__name__}: {error}"
                    continue
                wall[index].append((time.perf_counter() - wall_start) / steps_per_round)
                cpu[index].append((time.process_time() - cpu_start) / steps_per_round)
    return [
        {"variant": overrides, "error": errors[index]} if index in errors else
        {"variant": overrides, "wall_s_per_step": statistics.median(w), "cpu_s_per_step": statistics.median(c),
         "wall_samples": w, "cpu_samples": c}
        for index, (overrides, w, c) in enumerate(zip(variants, wall, cpu))
    ]  # fmt: skip


def _steps(trainer: Trainer, count: int) -> None:
    """`count` unlogged training steps (each ends with the trainer's one host read, the loss check)."""
    for _ in range(count):
        trainer._train_step(log=False)
        trainer.step += 1
