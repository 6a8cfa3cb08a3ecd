"""The training loop: one PINN, one PDE, time-marching windows, metrics, checkpoints and resume.

Per step s (window w, local time t in [0, T/windows]):
    points ~ U(box), sorted by t            (sampling.BoxSampler: chunks seeded by (seed, s, chunk))
    jet = u and its input derivatives       (derivatives.evaluate -> soap_kernels.jet)
    losses = {initial/boundary terms, causal residual terms}   (pdes/*, weighting.py)
    loss = sum_k w_k loss_k;  optimizer step;  scheduler step
    every weight_update_every steps: w <- grad-norm update from per-term gradients
    every log_every steps: a metrics.jsonl record (losses, weights, rel L2 on the window, gradient
    alignment between the terms' gradients (intra-step) and between consecutive updates (inter-step)).
With config.cuda_graph (one CUDA process), the unlogged steps without a weight update are replayed from a CUDA
graph of the step (step_graph.py, _graph_body): points copied into static buffers, one replay, the loss read
back; the logged and weighting steps run eagerly as above on the same capturable optimizer.
Time windows (KS, Ginzburg-Landau): the window's initial condition is the previous window's prediction at
its end; as in the paper's code, each window starts from the same freshly initialised network (same seed),
physics-informed-initialised to its own initial condition, with a fresh optimizer, schedule and weights.

Data parallelism (torch.distributed initialised, e.g. under torchrun; see distributed.py): the global batch
of batch_size points is drawn as sample_chunks seeded chunks and rank r evaluates chunks r, r + W, ...; the
initial/boundary terms (fixed grids) are computed on rank 0 only. One all_reduce of the per-chunk residual
square sums and condition losses gives every rank the global loss values (causal weights, the non-finite
check, logs); one all_reduce of the flat gradient (on weighting/logging steps: of the per-term gradients,
stacked) gives every rank the global gradient, so parameters, optimizer state and loss weights stay
identical on all ranks without a parameter broadcast. A W-rank run follows the 1-rank trajectory up to
rounding. Only rank 0 writes logs, checkpoints and plots; a checkpoint holds global state only (the points
of step s depend on (seed, s, chunk) alone), so a run resumes at any world size that divides sample_chunks.
Not DDP: the per-term gradients come from torch.autograd.grad, which DDP's backward hooks do not reduce,
and the network runs through soap_kernels.jet rather than the module's forward.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from soap_kernels import alignment_score

from . import derivatives, distributed
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig, validate
from .models import ModelSpec, build_model, describe_model
from .optimizers import build_optimizer
from .pdes import Window, get_pde, grid_points
from .progress import ProgressBar
from .references import Reference
from .sampling import BoxSampler
from .schedule import build_scheduler
from .step_graph import StepGraph
from .weighting import chunk_square_sums, grad_norm_weights, residual_losses_from_sums, update_weights

__all__ = ["Trainer", "NonFiniteLossError"]

METRICS_NAME = "metrics.jsonl"
_EVAL_CHUNK = 16384


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf (on every rank alike); the last good state is in the checkpoint."""


class Trainer:
    """Train config.pde into out_dir; `resume=True` continues from out_dir/checkpoint.pt.

    Under an initialised torch.distributed process group every rank builds a Trainer with the same config
    and out_dir (on storage every rank can read, for resume); rank 0 alone writes into out_dir.
    """

    def __init__(self, config: TrainConfig, out_dir: str | Path, resume: bool = False, progress: bool = True):
        validate(config)
        self.config = config
        self.dist = distributed.current()
        if config.cuda_graph and self.dist.active:
            raise ValueError(
                f"cuda_graph runs on one process; this run has {self.dist.world_size} (the collectives between "
                "ranks are not captured)"
            )
        if config.sample_chunks % self.dist.world_size:
            raise ValueError(
                f"world size {self.dist.world_size} must divide sample_chunks {config.sample_chunks} "
                "(each rank evaluates the same number of sample chunks)"
            )
        self.out = Path(out_dir)
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.pde = get_pde(config.pde)
        self.device = torch.device(config.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but torch.cuda.is_available() is False")
        self.dtype = getattr(torch, config.dtype)
        self.show_progress = progress
        self.reference = self.pde.reference(**config.reference_settings)
        self.window_slices = _window_slices(len(self.reference.t), config.time_windows)
        self.steps_per_window = config.steps // config.time_windows

        recipe = self.pde.recipe
        self.model_spec = ModelSpec(
            input_dim=self.pde.input_dim, output_dim=self.pde.output_dim,
            hidden_features=config.hidden_features, hidden_layers=config.hidden_layers,
            activation=recipe.activation, periodic_axes=dict(recipe.periodic_axes),
            fourier_features=config.fourier_features, fourier_scale=recipe.fourier_scale,
            rwf=(recipe.rwf_mean, 0.1),
        )  # fmt: skip
        self.model = build_model(self.model_spec, seed=config.seed, architecture=config.architecture)
        self.model.to(device=self.device, dtype=self.dtype)
        if config.init_from is not None and not resume:
            self._load_initial_model(Path(config.init_from))
        self._sync_model("the initial parameters")
        # every window starts from these initial parameters (before physics-informed initialisation)
        self.initial_model_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]
        duration = float(self.reference.t[self.window_slices[0].stop - 1] - self.reference.t[0])
        self.sampler = _box_sampler(self.pde, duration, config)

        self.step = 0
        self._prefetched: tuple[int, torch.Tensor, torch.Tensor] | None = None  # (step, points, chunk indices)
        self.elapsed = 0.0
        self.finished_windows: list[dict] = []  # model state at the end of each finished window
        self.previous_update: list[torch.Tensor] | None = None
        self.last_record: dict | None = None
        if resume:
            self._restore(load_checkpoint(self.out, self.device))
        else:
            self._start_window(0, self.reference.solution[0])
            if config.physics_informed_init and config.init_from is None:
                self._physics_informed_init()
            if self.dist.is_main:
                (self.out / "config.json").write_text(config.to_json())
                (self.out / METRICS_NAME).write_text("")
        if self.dist.is_main:
            self._write_run_info()

    # ----- windows -------------------------------------------------------------------------------
    def _window_of(self, step: int) -> int:
        return min(step // self.steps_per_window, self.config.time_windows - 1)

    def _start_window(self, index: int, initial_state: np.ndarray) -> None:
        """Window `index` with its initial condition; fresh optimizer, schedule and loss weights."""
        rows = self.window_slices[index]
        window_reference = Reference(
            self.reference.t[rows], self.reference.coordinates, self.reference.solution[rows]
        )
        self.window = Window(index, window_reference, np.asarray(initial_state))
        config = self.config
        self.optimizer = build_optimizer(config.optimizer, self.parameters, config.learning_rate, config.shard_refresh,
                                         capturable=config.cuda_graph)  # fmt: skip
        self.scheduler = build_scheduler(self.optimizer, config.warmup_steps, config.decay_steps, config.decay_rate)
        self.weights = {name: torch.tensor(float(config.initial_weights[name]), device=self.device, dtype=self.dtype)
                        for name in self.pde.loss_terms}  # fmt: skip
        self.previous_update = None
        self.step_graph: StepGraph | None = None  # captured again for the new optimizer and weights
        if config.cuda_graph and isinstance(self.optimizer, torch.optim.Adam):  # the captured step's mask
            self.optimizer.found_inf = torch.zeros((), dtype=torch.float32, device=self.device)

    def _advance_window(self, index: int) -> None:
        """Freeze the finished window; start the next from its prediction at the window's end."""
        self.finished_windows.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})
        end_state = self._predict(self.model, self.window.duration, self.reference.coordinates)[0]
        self.model.load_state_dict(self.initial_model_state)  # in place: self.parameters stay valid
        self._start_window(index, end_state)
        if self.config.physics_informed_init:
            self._physics_informed_init()

    def _physics_informed_init(self) -> None:
        """Fit the output layer to the window's initial condition on a (t, x) grid (the paper's pi-init).

        Kept only if it lowers the weighted loss at fixed check points: a least-squares fit to a rough
        initial condition (a poor previous window) can produce huge output weights whose high derivatives
        overflow the residual; then the window starts from the plain initialisation instead.
        """
        if not hasattr(self.model, "physics_informed_init"):
            return
        try:
            self._fit_initial_condition()
        finally:  # rank 0's result for all: a least-squares fit need not give the same bits on every GPU
            self._sync_model("the physics-informed initialisation")

    def _sync_model(self, what: str) -> None:
        """Every rank takes rank 0's parameters and buffers (a no-op on one rank)."""
        distributed.broadcast_(list(self.model.state_dict().values()), what)

    def _fit_initial_condition(self) -> None:
        stride = self.config.ic_stride
        coordinates = tuple(c[::stride] for c in self.reference.coordinates)
        state = self.window.initial_state
        for axis in range(len(coordinates)):
            state = np.take(state, np.arange(0, state.shape[axis], stride), axis=axis)
        times = self.window.reference.t[::10] - self.window.t_start
        inputs = grid_points(times, coordinates)
        targets = np.tile(state.reshape(-1, self.pde.output_dim), (len(times), 1))
        before_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        before = self._check_loss()
        self.model.physics_informed_init(
            torch.as_tensor(inputs, dtype=self.dtype, device=self.device),
            torch.as_tensor(targets, dtype=self.dtype, device=self.device),
        )
        after = self._check_loss()
        if not (math.isfinite(after) and after <= before):
            self.model.load_state_dict(before_state)

    def _check_loss(self) -> float:
        """Weighted loss (plain mean-square residual) at fixed points of the window: no sampler draws."""
        reference = self._eval_reference(self.window_slices[self.window.index])
        points = grid_points(reference.t - self.window.t_start, reference.coordinates)
        chosen = np.linspace(0, len(points) - 1, min(len(points), self.config.batch_size)).astype(int)
        x = torch.as_tensor(points[chosen], dtype=self.dtype, device=self.device)
        jet = derivatives.evaluate(self.model, x, self.pde.derivatives, self.config.derivatives)
        losses = self.pde.condition_losses(self.model, self.window, self.config.ic_stride)
        losses.update((name, (r**2).mean()) for name, r in zip(self.pde.residual_terms, self.pde.residual(jet)))
        return float(sum(self.weights[name] * losses[name].detach() for name in self.pde.loss_terms))

    # ----- one step ------------------------------------------------------------------------------
    def _sample(self, step: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's collocation points of `step` (default: this step) and their causal chunk indices
        (sampling.BoxSampler: a function of the step alone); this step's comes from _prefetch when it ran."""
        step = self.step if step is None else step
        if self._prefetched is not None and self._prefetched[0] == step:
            return self._prefetched[1:]
        chunks = self.config.causal_chunks if self.config.causal else 1
        return self.sampler.sample(
            step, self.dtype, self.device, self.dist.rank, self.dist.world_size, causal_chunks=chunks
        )

    def _prefetch(self, step: int) -> None:
        """Draw step `step`'s points now (host work: random numbers, copies and launches), kept for _sample."""
        self._prefetched = (step, *self._sample(step))

    def _losses(
        self, points: torch.Tensor, chunk_index: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor | None]:
        """(this rank's loss terms with gradient, the global terms detached, causal weights or None).

        The local terms add up over the ranks to the global ones (weighting.residual_losses_from_sums);
        one all_reduce shares the per-chunk residual square sums and the condition losses.
        """
        config, rank = self.config, self.dist
        chunks = config.causal_chunks if config.causal else 1
        jet = derivatives.evaluate(self.model, points, self.pde.derivatives, config.derivatives)
        local_sums = chunk_square_sums(self.pde.residual(jet), chunk_index, chunks)
        condition_names = [name for name in self.pde.loss_terms if name not in self.pde.residual_terms]
        if rank.is_main:  # fixed grids, the same on every rank: rank 0 alone contributes them
            conditions = self.pde.condition_losses(self.model, self.window, config.ic_stride)
            local_conditions = [conditions[name] for name in condition_names]
        else:
            local_conditions = [torch.zeros((), dtype=local_sums.dtype, device=self.device)] * len(condition_names)
        shared = torch.cat([local_sums.detach().reshape(-1), *(c.detach().reshape(1) for c in local_conditions)])
        distributed.all_reduce_sum(shared, "the loss sums")
        global_sums = shared[: local_sums.numel()].view_as(local_sums)
        tol = config.causal_tol if config.causal else None
        local_residual, global_residual, causal = residual_losses_from_sums(
            local_sums, global_sums, config.batch_size, tol
        )
        local = dict(zip(self.pde.residual_terms, local_residual))
        local.update(zip(condition_names, local_conditions))
        total = dict(zip(self.pde.residual_terms, global_residual))
        total.update(zip(condition_names, shared[local_sums.numel() :]))
        return {name: local[name] for name in self.pde.loss_terms}, {n: total[n] for n in self.pde.loss_terms}, causal

    def _train_step(self, log: bool) -> dict | None:
        config, step = self.config, self.step
        update_weights_now = config.weighting == "grad_norm" and step % config.weight_update_every == 0
        # the update is kept only where an inter-step alignment needs it (this step's and the one before a
        # logged step): a copy of every parameter each step would cost a launch per tensor on a GPU
        keep_update = log or self._logs(step + 1)
        if config.cuda_graph and not (log or update_weights_now):
            self._graph_train_step(keep_update)
            return None
        local, losses, causal = self._losses(*self._sample())
        total = sum(self.weights[name] * loss for name, loss in losses.items())  # global: the same on every rank
        if not torch.isfinite(total).item():
            self._stop_at_non_finite_loss(losses)  # parameters are still those of the last finite step
        term_gradients = None
        if log or update_weights_now:
            # per-term gradients (for grad-norm weights and the intra-step alignment); their weighted sum
            # is the gradient of the total loss, so no second backward is needed
            flat = []
            for loss in local.values():
                grads = (torch.autograd.grad(loss, self.parameters, retain_graph=True, allow_unused=True)
                         if loss.requires_grad else [None] * len(self.parameters))  # fmt: skip
                flat.append(_flatten(grads, self.parameters))
            stacked = distributed.all_reduce_sum(torch.stack(flat), "the per-term gradients")
            term_gradients = {name: _unflatten(row, self.parameters) for name, row in zip(local, stacked)}
            for index, parameter in enumerate(self.parameters):
                parameter.grad = sum(self.weights[name] * grads[index] for name, grads in term_gradients.items())
        else:
            self.optimizer.zero_grad(set_to_none=True)
            sum(self.weights[name] * loss for name, loss in local.items()).backward()
            if self.dist.active:
                gradient = _flatten([p.grad for p in self.parameters], self.parameters)
                distributed.all_reduce_sum(gradient, "the gradient")
                for parameter, reduced in zip(self.parameters, _unflatten(gradient, self.parameters)):
                    parameter.grad = reduced
        before = self._parameters_if(keep_update)
        learning_rate = float(self.optimizer.param_groups[0]["lr"]) if log else None  # a device tensor if captured
        self.optimizer.step()
        self.scheduler.step()
        update = self._update_since(before)
        record = None
        if log and self.dist.is_main:
            record = {
                "step": step,
                "window": self.window.index,
                "loss": float(total.detach()),
                "losses": {k: float(v.detach()) for k, v in losses.items()},
                "weights": {k: float(v) for k, v in self.weights.items()},
                "lr": learning_rate,
                "alignment": {
                    "intra_step": _alignment([g for g in term_gradients.values()]),
                    "inter_step": _alignment([self.previous_update, update]) if self.previous_update else None,
                },
                "causal_weight_min": float(causal.min()) if causal is not None else None,
            }
        if update_weights_now:  # in place: a captured step reads these tensors
            new_weights = update_weights(self.weights, grad_norm_weights(term_gradients), config.weight_momentum)
            for name, weight in new_weights.items():
                self.weights[name].copy_(weight)
        self.previous_update = update
        return record

    def _stop_at_non_finite_loss(self, losses: dict[str, torch.Tensor]) -> None:
        """Checkpoint the current (last good) state and raise NonFiniteLossError."""
        if self.dist.is_main:
            self._save()
        raise NonFiniteLossError(
            f"non-finite loss at step {self.step} ({ {k: float(v.detach()) for k, v in losses.items()} }); "
            f"stopped; the last good state is in {self.out / 'checkpoint.pt'}"
        )

    # ----- the captured step (--cuda-graph) ------------------------------------------------------------
    def _graph_train_step(self, keep_update: bool) -> None:
        """An unlogged step without a weight update, from the window's StepGraph (step_graph.py): points in,
        one replay, the next step's points drawn while it runs, then the loss's finiteness read back (a
        non-finite one's update was masked on the device)."""
        points, chunk_index = self._sample()
        if self.step_graph is None:
            self.step_graph = StepGraph(self._graph_body, points, chunk_index, capture=self.device.type == "cuda")
        before = self._parameters_if(keep_update)
        total, losses = self.step_graph(points, chunk_index)
        self._prefetch(self.step + 1)  # while the GPU runs this step, before the host waits for it
        if not torch.isfinite(total).item():
            self._stop_at_non_finite_loss(losses)
        self.scheduler.step()
        self.previous_update = self._update_since(before)

    def _parameters_if(self, keep: bool) -> list[torch.Tensor] | None:
        """A copy of the parameters where an inter-step alignment needs this step's update, else None."""
        return [p.detach().clone() for p in self.parameters] if keep else None

    def _update_since(self, before: list[torch.Tensor] | None) -> list[torch.Tensor] | None:
        """The parameters' change since `before` (None where no copy was kept)."""
        return None if before is None else torch._foreach_sub([p.detach() for p in self.parameters], before)

    def _graph_body(self, points: torch.Tensor, chunk_index: torch.Tensor):
        """Losses, backward and optimizer step with no host read: (total loss, loss terms), detached.

        A non-finite total cannot stop the step before its update, so it masks the update instead: the
        objective is scaled by NaN (1 otherwise, which changes no bit), so every gradient is NaN and SOAP skips
        the step on the device (parameters and moments unchanged; its step counter, which schedules refreshes,
        counts the skipped step, so the checkpoint of a stopped run is one SOAP step ahead of the eager path's);
        Adam (fused) skips it through `found_inf`, the flag torch.amp.GradScaler hands fused optimizers.
        """
        local, losses, _ = self._losses(points, chunk_index)
        total = sum(self.weights[name] * loss for name, loss in losses.items())
        non_finite = ~torch.isfinite(total)
        objective = sum(self.weights[name] * loss for name, loss in local.items())
        self.optimizer.zero_grad(set_to_none=True)
        (objective * torch.where(non_finite, float("nan"), 1.0)).backward()
        for parameter in self.parameters:  # one the loss does not reach gets zeros, as on a logged step, so the
            if parameter.grad is None:  # optimizer sees the same parameters (and SOAP the same stacks) every step
                parameter.grad = torch.zeros_like(parameter)
        found_inf = getattr(self.optimizer, "found_inf", None)
        if found_inf is not None:
            found_inf.copy_(non_finite)
        self.optimizer.step()
        return total.detach(), {name: loss.detach() for name, loss in losses.items()}

    # ----- the loop ------------------------------------------------------------------------------
    def run(self, stop_after: int | None = None, time_limit_s: float | None = None) -> dict:
        """Train until config.steps (or until `stop_after` more steps: an interruption, for tests).

        time_limit_s: stop once the run's training wall time (self.elapsed, logging included) reaches it,
        checkpoint, and finish as if the run were complete ("time_limited" in the summary).
        Returns the summary (also written to summary.json when the run completes).
        """
        config = self.config
        time_limited = False
        target = config.steps if stop_after is None else min(config.steps, self.step + stop_after)
        main = self.dist.is_main
        bar = ProgressBar(config.steps, start=self.step) if self.show_progress and main else None
        clock = time.perf_counter()
        try:
            while self.step < target:
                window = self._window_of(self.step)
                if window != self.window.index:
                    self._advance_window(window)
                record = self._train_step(self._logs(self.step))
                self.step += 1
                if record is not None:
                    self.elapsed += time.perf_counter() - clock
                    clock = time.perf_counter()
                    record["rel_l2"] = self.window_error()
                    record["time"] = self.elapsed
                    self.last_record = record
                    with open(self.out / METRICS_NAME, "a") as handle:
                        handle.write(json.dumps(record) + "\n")
                if self.step % config.save_every == 0 or self.step == target:
                    self.elapsed += time.perf_counter() - clock
                    clock = time.perf_counter()
                    if main:
                        self._save()
                if bar is not None:
                    fields = {"loss": f"{self.last_record['loss']:.3e}", "rel_l2": f"{self.last_record['rel_l2']:.3e}"}
                    bar.update(self.step, fields, force=self.step == target)
                running = self.elapsed + time.perf_counter() - clock
                if time_limit_s is not None and self._time_is_up(running, time_limit_s):
                    self.elapsed += time.perf_counter() - clock
                    clock = time.perf_counter()
                    if main:
                        self._save()
                    time_limited = True
                    break
        finally:
            if bar is not None:
                bar.close()
        if self.step < config.steps and not time_limited:
            return {"step": self.step, "completed": False}
        return self._finish(time_limited)

    def _logs(self, step: int) -> bool:
        """Whether step `step` is logged (metrics, alignment): every log_every-th and the last."""
        return step % self.config.log_every == 0 or step == self.config.steps - 1

    def _time_is_up(self, elapsed: float, limit_s: float) -> bool:
        """Whether any rank's clock reached the limit (one all_reduce(MAX): all ranks stop at the same step; on
        one rank the host clock alone, as a device flag read back would synchronise every step)."""
        if not self.dist.active:
            return elapsed >= limit_s
        flag = torch.tensor([1.0 if elapsed >= limit_s else 0.0], device=self.device)
        return bool(distributed.all_reduce_max(flag, "the time-limit flag").item() > 0)

    def _finish(self, time_limited: bool = False) -> dict:
        """Whole-domain error from all windows, prediction file, plots and summary.json (rank 0 only; the
        other ranks return {"step", "completed", "rank", "time_limited"})."""
        if not self.dist.is_main:
            return {"step": self.step, "completed": True, "rank": self.dist.rank, "time_limited": time_limited}
        prediction = self.full_prediction()
        reference = self._eval_reference()
        rel_l2 = self.pde.relative_error(prediction, reference.solution)
        np.savez(self.out / "prediction.npz", t=reference.t, prediction=prediction, reference=reference.solution,
                 **{f"coordinate_{i}": c for i, c in enumerate(reference.coordinates)})  # fmt: skip
        summary = {
            "pde": self.config.pde, "optimizer": self.config.optimizer, "preset": self.config.preset,
            "steps": self.step, "rel_l2": rel_l2, "final_loss": self.last_record["loss"] if self.last_record else None,
            "wall_time_s": self.elapsed, "steps_per_s": self.step / self.elapsed if self.elapsed else None,
            "model": describe_model(self.model), "derivatives": derivatives.backend_name(self.config.derivatives),
            "time_limited": time_limited, "world_size": self.dist.world_size,
        }  # fmt: skip
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        if self.config.plots:
            from .plots import plot_run

            plot_run(self.out)
        return summary

    # ----- evaluation ----------------------------------------------------------------------------
    def _eval_reference(self, rows: slice = slice(None)) -> Reference:
        st, sx = self.config.eval_stride_t, self.config.eval_stride_x
        t = self.reference.t[rows][::st]
        coordinates = tuple(c[::sx] for c in self.reference.coordinates)
        solution = self.reference.solution[rows][::st]
        for axis in range(1, 1 + len(coordinates)):
            solution = np.take(solution, np.arange(0, solution.shape[axis], sx), axis=axis)
        return Reference(t, coordinates, solution)

    @torch.no_grad()
    def _predict(self, model, times, coordinates) -> np.ndarray:
        """Model output on the grid (local times) x coordinates: [nt, *space, out]."""
        times = np.atleast_1d(np.asarray(times, dtype=np.float64))
        inputs = torch.as_tensor(grid_points(times, coordinates), dtype=self.dtype, device=self.device)
        outputs = torch.cat([model(chunk) for chunk in inputs.split(_EVAL_CHUNK)])
        shape = (len(times),) + tuple(len(c) for c in reversed(coordinates)) + (self.pde.output_dim,)
        return outputs.double().cpu().numpy().reshape(shape)

    def window_error(self) -> float:
        """Relative L2 error of the current model on the current window's part of the reference grid."""
        reference = self._eval_reference(self.window_slices[self.window.index])
        prediction = self._predict(self.model, reference.t - self.window.t_start, reference.coordinates)
        return self.pde.relative_error(prediction, reference.solution)

    def full_prediction(self) -> np.ndarray:
        """The prediction on the (strided) reference grid, each time from the window that owns it."""
        reference = self._eval_reference()
        t_all = reference.t
        parts = []
        current = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        model = build_model(self.model_spec, seed=self.config.seed, architecture=self.config.architecture)
        model.to(device=self.device, dtype=self.dtype)
        for index, rows in enumerate(self.window_slices):
            state = self.finished_windows[index] if index < len(self.finished_windows) else current
            model.load_state_dict(state)
            t0, t1 = self.reference.t[rows.start], self.reference.t[rows.stop - 1]
            # each time belongs to the first window that contains it
            owned = (t_all >= t0 - 1e-12) & (t_all <= t1 + 1e-12)
            if index > 0:
                owned &= t_all > t0 + 1e-12
            parts.append(self._predict(model, t_all[owned] - t0, reference.coordinates))
        return np.concatenate(parts, axis=0)

    # ----- checkpoints ---------------------------------------------------------------------------
    def _save(self) -> None:
        state = {
            "step": self.step,
            "elapsed": self.elapsed,
            "window_index": self.window.index,
            "initial_state": self.window.initial_state,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "weights": self.weights,
            "torch_rng": torch.get_rng_state(),
            "previous_update": self.previous_update,
            "finished_windows": self.finished_windows,
            "last_record": self.last_record,
        }
        save_checkpoint(self.out, state)

    def _load_initial_model(self, run_dir: Path) -> None:
        """This run starts from the model of the run in run_dir (its last checkpoint)."""
        try:
            state = load_checkpoint(run_dir, self.device)["model"]
        except FileNotFoundError as error:
            raise ValueError(f"init_from {str(run_dir)!r}: {error}") from None
        try:
            self.model.load_state_dict(state)
        except RuntimeError as error:  # missing/unexpected keys or other shapes: another architecture
            raise ValueError(f"init_from {str(run_dir)!r}: its model does not fit this run's ({error})") from None

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.finished_windows = state["finished_windows"]
        self._start_window(state["window_index"], state["initial_state"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.weights = state["weights"]
        torch.set_rng_state(state["torch_rng"].cpu())  # a CPU ByteTensor, whatever map_location moved it to
        self.previous_update = state["previous_update"]
        self.step, self.elapsed = state["step"], state["elapsed"]
        self.last_record = state["last_record"]
        if not self.dist.is_main:
            return
        # records logged after this checkpoint belong to the lost part of the interrupted run
        path = self.out / METRICS_NAME
        lines = path.read_text().splitlines() if path.exists() else []
        kept = [line for line in lines if line.strip() and json.loads(line)["step"] < self.step]
        path.write_text("".join(line + "\n" for line in kept))
        (self.out / "config.json").write_text(self.config.to_json())

    def _write_run_info(self) -> None:
        info = {
            "model": describe_model(self.model),
            "derivatives": derivatives.backend_name(self.config.derivatives),
            "optimizer": type(self.optimizer).__module__ + "." + type(self.optimizer).__name__,
            "soap_kernels_backend_env": os.environ.get("SOAP_KERNELS_BACKEND"),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "device": str(self.device),
            "world_size": self.dist.world_size,
            "cuda_graph": self.config.cuda_graph,
        }
        (self.out / "run_info.json").write_text(json.dumps(info, indent=2))


def _window_slices(nt: int, windows: int) -> list[slice]:
    """Row ranges of the reference per window; consecutive windows share their boundary time."""
    if (nt - 1) % windows:
        raise ValueError(f"{nt - 1} reference time intervals cannot be split into {windows} equal windows")
    per = (nt - 1) // windows
    return [slice(i * per, (i + 1) * per + 1) for i in range(windows)]


def _box_sampler(pde, duration: float, config: TrainConfig) -> BoxSampler:
    bounds = [(0.0, duration), *pde.spatial_bounds]
    return BoxSampler(bounds, config.batch_size, seed=config.seed + 1, chunks=config.sample_chunks)


def _flatten(tensors, parameters) -> torch.Tensor:
    """One flat vector of the per-parameter tensors (None as zeros)."""
    return torch.cat([(torch.zeros_like(p) if t is None else t).reshape(-1) for t, p in zip(tensors, parameters)])


def _unflatten(flat: torch.Tensor, parameters) -> list[torch.Tensor]:
    """Views of flat shaped like the parameters (the inverse of _flatten)."""
    return [part.view_as(p) for part, p in zip(flat.split([p.numel() for p in parameters]), parameters)]


def _alignment(vectors) -> float | None:
    """alignment_score of the vectors, or None when one of them is zero (e.g. SOAP's first update)."""
    flat = [torch.cat([v.reshape(-1) for v in vector]) for vector in vectors]
    if any(float(torch.linalg.vector_norm(v)) == 0.0 for v in flat):
        return None
    value = float(alignment_score(flat))
    return value if math.isfinite(value) else None
