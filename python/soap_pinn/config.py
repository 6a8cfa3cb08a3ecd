"""Run configuration: a preset ('paper' or 'small') applied to a PDE's recipe, then explicit overrides.

paper: the paper's settings (PirateNet 3x256 (LDC 4x256), Fourier features 256, batch 8192 or the PDE's, warm-up
5000 steps, decay per PDE, grad-norm weights every 1000 steps, the PDE's steps per time window).
small: the same recipe shrunk to finish in minutes on a laptop CPU (PirateNet 2x64, batch 1024, warm-up
100, decay every 500 steps, weights every 100 steps, 2000 steps in all); everything else as the paper.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from .pdes import get_pde

__all__ = ["TrainConfig", "PRESETS", "make_config"]

PRESETS = ("small", "paper")


@dataclass
class TrainConfig:
    pde: str
    preset: str = "small"
    optimizer: str = "soap"
    shard_refresh: bool = False  # SOAP(shard_refresh=True): divide the eigenbasis refresh among the ranks
    cuda_graph: bool = False  # unlogged steps replayed from a CUDA graph (step_graph.py); one CUDA process
    steps: int = 2000  # optimizer steps in all (split evenly over the time windows)
    seed: int = 42
    device: str = "cpu"
    dtype: str = "float32"
    architecture: str = "auto"  # auto | pirate | local (see models.build_model)
    derivatives: str = "jet"  # jet (soap_kernels.jet) | autograd (nested reverse mode, the baseline)
    hidden_features: int = 64
    hidden_layers: int = 2
    fourier_features: int = 64
    batch_size: int = 1024  # residual points per step in all (summed over ranks)
    sample_chunks: int = 8  # the batch is drawn in this many seeded chunks; the world size must divide it
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    decay_steps: int = 500
    decay_rate: float = 0.9
    causal: bool = True
    causal_tol: float = 1.0
    causal_chunks: int = 32
    weighting: str = "grad_norm"  # grad_norm | none
    weight_update_every: int = 100
    weight_momentum: float = 0.9
    initial_weights: dict[str, float] = field(default_factory=dict)
    time_windows: int = 1
    physics_informed_init: bool = True
    log_every: int = 50  # metrics.jsonl record (losses, rel L2, alignment) every this many steps
    save_every: int = 500  # checkpoint every this many steps (and at the end)
    ic_stride: int = 1  # use every ic_stride-th grid point for initial/boundary losses
    eval_stride_t: int = 1  # rel L2 on every eval_stride_t-th reference time ...
    eval_stride_x: int = 1  # ... and every eval_stride_x-th point per spatial axis
    plots: bool = True
    reference_settings: dict = field(default_factory=dict)  # overrides of the reference generator
    # a run folder whose final model parameters start this run (a curriculum, e.g. LDC's Reynolds numbers);
    # optimizer, schedule and loss weights start fresh, and physics-informed initialisation is skipped
    init_from: str | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        data = json.loads(Path(path).read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def make_config(pde_name: str, preset: str = "small", **overrides) -> TrainConfig:
    """The configuration for pde_name under preset, with keyword overrides (None values are ignored)."""
    pde = get_pde(pde_name)
    recipe = pde.recipe
    if preset == "paper":
        base = dict(
            hidden_features=256, hidden_layers=recipe.hidden_layers, fourier_features=256,
            batch_size=recipe.batch_size,
            warmup_steps=5000, decay_steps=recipe.decay_steps, weight_update_every=1000,
            steps=recipe.max_steps * recipe.time_windows, log_every=100, save_every=10000,
            eval_stride_t=1, eval_stride_x=2 if pde.input_dim > 2 else 1,
        )
    elif preset == "small":
        base = dict(
            hidden_features=64, hidden_layers=2, fourier_features=64, batch_size=1024, warmup_steps=100,
            decay_steps=500, weight_update_every=100, steps=2000, log_every=50, save_every=500,
            ic_stride=4 if pde.input_dim > 2 else 2, eval_stride_t=2, eval_stride_x=8 if pde.input_dim > 2 else 2,
        )
    else:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    base.update(
        causal_tol=recipe.causal_tol, causal_chunks=recipe.causal_chunks, time_windows=recipe.time_windows,
        causal=recipe.causal, physics_informed_init=recipe.physics_informed_init,
        initial_weights={name: recipe.initial_weights.get(name, 1.0) for name in pde.loss_terms},
    )
    base.update({k: v for k, v in overrides.items() if v is not None})
    config = TrainConfig(pde=pde_name, preset=preset, **base)
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    """ValueError naming the first bad setting."""
    from .optimizers import OPTIMIZERS

    get_pde(config.pde).check_reference_settings(config.reference_settings)
    if config.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {config.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
    if config.dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64, got {config.dtype!r}")
    if config.derivatives not in ("jet", "autograd"):
        raise ValueError(f"derivatives must be jet or autograd, got {config.derivatives!r}")
    if config.weighting not in ("grad_norm", "none"):
        raise ValueError(f"weighting must be grad_norm or none, got {config.weighting!r}")
    for name in ("steps", "batch_size", "log_every", "save_every", "weight_update_every", "time_windows",
                 "ic_stride", "eval_stride_t", "eval_stride_x", "causal_chunks", "decay_steps", "sample_chunks"):
        if getattr(config, name) <= 0:
            raise ValueError(f"{name} must be positive, got {getattr(config, name)}")
    if config.causal and config.batch_size % config.causal_chunks:
        raise ValueError(f"batch_size {config.batch_size} must be divisible by causal_chunks {config.causal_chunks}")
    if config.batch_size % config.sample_chunks:
        raise ValueError(f"batch_size {config.batch_size} must be divisible by sample_chunks {config.sample_chunks}")
    if config.cuda_graph and config.device != "cuda":
        raise ValueError(f"cuda_graph needs device 'cuda', got {config.device!r}")
    if config.cuda_graph and config.shard_refresh:
        raise ValueError("cuda_graph and shard_refresh exclude each other (a sharded refresh is not captured)")
    if config.shard_refresh and config.optimizer != "soap":
        raise ValueError(f"shard_refresh applies to the soap optimizer only, not {config.optimizer!r}")
    if config.steps < config.time_windows:
        raise ValueError(f"steps ({config.steps}) must be at least the number of time windows ({config.time_windows})")
