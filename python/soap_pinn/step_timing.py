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
    """Median wall and CPU seconds per training step for each variant (dict of TrainConfig overrides)."""
    trainers = []
    with tempfile.TemporaryDirectory() as scratch:
        for index, overrides in enumerate(variants):
            config = config_module.make_config(pde, preset, plots=False, **overrides)
            trainer = Trainer(config, f"{scratch}/{index}", progress=False)
            for _ in range(warmup):
                trainer._train_step(log=False)
                trainer.step += 1
            trainers.append(trainer)
        wall = [[] for _ in variants]
        cpu = [[] for _ in variants]
        for _ in range(rounds):
            for index, trainer in enumerate(trainers):
                wall_start, cpu_start = time.perf_counter(), time.process_time()
                for _ in range(steps_per_round):
                    trainer._train_step(log=False)
                    trainer.step += 1
                wall[index].append((time.perf_counter() - wall_start) / steps_per_round)
                cpu[index].append((time.process_time() - cpu_start) / steps_per_round)
    return [
        {"variant": overrides, "wall_s_per_step": statistics.median(w), "cpu_s_per_step": statistics.median(c),
         "wall_samples": w, "cpu_samples": c}
        for overrides, w, c in zip(variants, wall, cpu)
    ]  # fmt: skip
