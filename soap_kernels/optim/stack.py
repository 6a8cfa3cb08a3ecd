"""The stacked state of same-shape parameters, and one SOAP step on it as batched tensor operations.

A ParamStack holds, for B parameters of one param group with the same shape, dtype, device and step count,
contiguous buffers [B, ...]: the moments m~ and v (in the eigenbasis), the Kronecker factors L_d and bases Q_d
of every factored dim, and the device step counter t. Each parameter's optimizer state is a set of views
into these buffers, so state_dict stays per parameter while every phase is one batched call per stack.
All buffers are updated in place (the views stay valid), and every update is masked by the device flag
`ok` (all gradients finite), so a skipped step changes nothing and needs no host synchronisation.

A step of all stacks is begin_step_ (one multi-tensor copy of every gradient and parameter into the stacks'
working buffers), ParamStack.step_ per stack (batched ops on those buffers), finish_step_ (one multi-tensor
copy of the new values into the parameters, one add to the step counters): a small network's step is
launch-bound on a GPU, so what can be done for all stacks at once is.

`impl` picks the kernels: "torch" (torch ops only), "native" (torch matmuls + the C++/CUDA moment kernel),
"triton" (the fused Triton ops for 1-D and 2-D views: factor update, rotated Adam, momentum carry; other
ranks use the native path).
"""

from __future__ import annotations

import torch

from soap_kernels import profile
from soap_kernels._backend import native_kernels_for
from soap_kernels.ops.adam_moments import adam_moments_
from soap_kernels.ops.factor_update import factor_update_
from soap_kernels.ops.rotated_adam import rotate_momentum_, rotated_adam_
from soap_kernels.optim.layout import PreconditionPlan
from soap_kernels.optim.projection import gram, project, project_back
from soap_kernels.optim.refresh import initial_basis


def state_dtype(param_dtype: torch.dtype) -> torch.dtype:
    """Optimizer state dtype: float64 for float64 parameters, float32 otherwise (bf16/fp16 included)."""
    return torch.float64 if param_dtype == torch.float64 else torch.float32


class ParamStack:
    """Batched SOAP state and step for B same-shape parameters (see module docstring)."""

    def __init__(
        self, params: list[torch.Tensor], plan: PreconditionPlan, states: list[dict], capturable: bool = False
    ):
        self.params = params
        self.capturable = capturable
        # Set once a step of this stack is captured in a CUDA graph: replays advance the device step count
        # without the host knowing, so from then on every step computes the refresh (installed when due).
        self.graph_captured = False
        self.plan = plan
        first = params[0]
        self.dtype = state_dtype(first.dtype)
        self.device = first.device
        self.batch = len(params)
        self.shape = tuple(first.shape)
        self.states = states  # the per-parameter state dicts, kept pointing into the stacked buffers
        # Working buffers (not state): the gradients and the parameters' values, stacked, filled by begin_step_.
        # Kept between steps (two parameter-sized copies in the state dtype) so that a captured step's copies
        # have fixed addresses and an eager step allocates nothing.
        self.grads = torch.empty((self.batch, *self.shape), dtype=self.dtype, device=self.device)
        self.values = torch.empty_like(self.grads)
        self.grad_rows, self.value_rows = self.grads.unbind(0), self.values.unbind(0)  # per parameter, made once
        if states[0]:
            self._gather(states)
        else:
            self._allocate()
        self._write_views()

    # ---- layout ---------------------------------------------------------------------------------------
    def _allocate(self) -> None:
        zeros = dict(dtype=self.dtype, device=self.device)
        self.step: int | None = None  # host step count; None until the first (initialising) step
        self.exp_avg = torch.zeros((self.batch, *self.shape), **zeros)
        self.exp_avg_sq = torch.zeros((self.batch, *self.shape), **zeros)
        self.t = torch.zeros(self.batch, dtype=torch.int64, device=self.device)
        self.step_count = torch.zeros(self.batch, dtype=torch.int64, device=self.device) if self.capturable else None
        self.factors = [
            torch.zeros(self.batch, n, n, **zeros) if has else None
            for n, has in zip(self.plan.view_shape, self.plan.factored)
        ]
        self.bases: list[torch.Tensor | None] = [None] * len(self.factors)

    def _gather(self, states: list[dict]) -> None:
        """Stack existing per-parameter states (after load_state_dict or a change of stack membership)."""

        def stacked(values: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
            return torch.stack([v.to(device=self.device, dtype=dtype) for v in values])

        self.step = int(states[0]["step"])
        self.exp_avg = stacked([s["exp_avg"] for s in states], self.dtype).reshape(self.batch, *self.shape)
        self.exp_avg_sq = stacked([s["exp_avg_sq"] for s in states], self.dtype).reshape(self.batch, *self.shape)
        self.t = stacked([torch.as_tensor(s["t"]) for s in states], torch.int64).reshape(self.batch)
        self.step_count = None
        if self.capturable:
            self.step_count = stacked([torch.as_tensor(s["step"]) for s in states], torch.int64).reshape(self.batch)
        self.factors, self.bases = [], []
        for d, has in enumerate(self.plan.factored):
            if not has:
                self.factors.append(None)
                self.bases.append(None)
                continue
            self.factors.append(stacked([s["GG"][d] for s in states], self.dtype))
            self.bases.append(stacked([s["Q"][d] for s in states], self.dtype))

    def _write_views(self) -> None:
        """Point every parameter's state at its slice of the stacked buffers."""
        for i, state in enumerate(self.states):
            state.clear()
            if self.step is not None:
                state["step"] = self.step if self.step_count is None else self.step_count[i]
            state["t"] = self.t[i]
            state["exp_avg"] = self.exp_avg[i]
            state["exp_avg_sq"] = self.exp_avg_sq[i]
            state["GG"] = [None if f is None else f[i] for f in self.factors]
            if self.step is not None:
                state["Q"] = [None if q is None else q[i] for q in self.bases]

    def _view(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(self.batch, *self.plan.view_shape)

    # ---- the step -------------------------------------------------------------------------------------
    def stacked_grads(self) -> torch.Tensor:
        """The gradients as one [B, *view_shape] tensor in the state dtype (filled by begin_step_)."""
        return self._view(self.grads)

    @property
    def initialised(self) -> bool:
        """Whether the initialising step has run (the parameters move from the next step on)."""
        return self.step is not None

    def step_(self, ok: torch.Tensor, step_size: torch.Tensor, group: dict, impl: str) -> bool:
        """One SOAP step of the whole stack on the gradients begin_step_ loaded (ok: 0-d bool, all gradients
        finite; step_size: this stack's entry of step_sizes); finish_step_ then writes the parameters.

        Returns True when this step computes a refresh (a refresh step; in a capturable stack also every step
        captured in or run after a CUDA graph, see refresh_mask): the caller then computes new bases for
        refresh_requests() and hands them to apply_refresh (so refreshes of all stacks can be batched or
        divided among ranks).
        """
        grads = self.stacked_grads()
        if not self.initialised:
            with profile.range("soap/initialise"):
                self._update_factors(grads, ok, group, impl)
                for d, factor in enumerate(self.factors):
                    if factor is not None:
                        self.bases[d] = initial_basis(factor)
            self.step = 0  # the first step only initialises: the parameters do not move
            self._write_views()
            return False
        self.step += 1  # host count: which stacks share a step count (on replays of a captured graph it stays)
        with profile.range("soap/update_params"):
            self._update_params(grads, ok, step_size, group, impl)
        with profile.range("soap/update_factors"):
            self._update_factors(grads, ok, group, impl)
        due_on_host = self.step % group["precondition_frequency"] == 0 and any(self.plan.factored)
        if self.step_count is None:
            for state in self.states:
                state["step"] = self.step
            return due_on_host
        if self.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            self.graph_captured = True
        return due_on_host or (self.graph_captured and any(self.plan.factored))  # installed per refresh_mask

    def refresh_mask(self, ok: torch.Tensor, group: dict) -> torch.Tensor:
        """Where a computed refresh is installed: ok, and in a capturable stack also a refresh step by the device
        step count (all members share it)."""
        if self.step_count is None:
            return ok
        return ok & (self.step_count[0] % group["precondition_frequency"] == 0)

    def _fused(self, impl: str) -> bool:
        """Whether the Triton ops handle this stack (they take 1-D and 2-D views)."""
        return impl == "triton" and 1 <= len(self.plan.view_shape) <= 2

    def _update_params(
        self, grads: torch.Tensor, ok: torch.Tensor, step_size: torch.Tensor, group: dict, impl: str
    ) -> None:
        """Rotated Adam: m~, v from g~ = project(g); p <- p - step_size project_back(m~/(sqrt(v)+eps)); decay."""
        beta1, beta2 = (float(b) for b in group["betas"])
        weight_decay, eps = float(group["weight_decay"]), float(group["eps"])
        lr = _lr_on(group, self.device)
        params = self.values
        if self._fused(impl):
            fused_decay = 0.0 if isinstance(lr, torch.Tensor) else lr * weight_decay  # the kernel takes a number
            rotated_adam_(
                self._view(params), self._view(self.exp_avg), self._view(self.exp_avg_sq), grads, self.bases, ok,
                step_size, beta1=beta1, beta2=beta2, eps=eps, decay=fused_decay, normalize=group["normalize_grads"],
            )  # fmt: skip
            if isinstance(lr, torch.Tensor) and weight_decay > 0.0:
                assign_where_(params, ok, params - (lr * weight_decay).to(self.dtype) * params)
        else:
            use_native = impl != "torch" and native_kernels_for(self.device)
            rotated = project(grads, self.bases)
            direction = adam_moments_(
                self._view(self.exp_avg), self._view(self.exp_avg_sq), rotated.contiguous(), ok, beta1, beta2, eps,
                use_native=use_native,
            )  # fmt: skip
            update = project_back(direction, self.bases).reshape(self.batch, *self.shape)
            if group["normalize_grads"]:
                reduce_dims = tuple(range(1, update.dim()))
                rms = update.square().mean(dim=reduce_dims, keepdim=True).sqrt() if reduce_dims else update.abs()
                update = update / (1e-30 + rms)
            new = params - step_size.reshape(self.batch, *([1] * len(self.shape))) * update
            if weight_decay > 0.0:
                new = new - (lr * weight_decay) * new  # decoupled decay of the updated parameter, as the reference
            assign_where_(params, ok, new)

    def _update_factors(self, grads: torch.Tensor, ok: torch.Tensor, group: dict, impl: str) -> None:
        """L_d <- lerp(L_d, G_(d) G_(d)^T, 1 - beta_s) for every factored dim."""
        shampoo_beta = float(group["shampoo_beta"] if group["shampoo_beta"] >= 0 else group["betas"][1])
        for d, factor in enumerate(self.factors):
            if factor is None:
                continue
            if impl == "triton":
                factor_update_(factor, grads, ok, shampoo_beta, d)
            else:
                moved = torch.lerp(factor, gram(grads, d + 1), 1.0 - shampoo_beta)
                assign_where_(factor, ok, moved)

    def refresh_requests(self) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
        """(dim, factor stack, basis stack) for every factored dim: the inputs of refresh_basis."""
        return [(d, f, q) for d, (f, q) in enumerate(zip(self.factors, self.bases)) if f is not None]

    def apply_refresh(
        self, results: dict[int, tuple[torch.Tensor, torch.Tensor]], ok: torch.Tensor, impl: str
    ) -> None:
        """Install new bases {dim: (new_basis, order)}: v permuted with the bases' column order; m~ carried
        from the old basis to the new (project back, then forward); all masked by ok."""
        exp_avg = self._view(self.exp_avg)
        exp_avg_sq = self._view(self.exp_avg_sq)
        new_bases: list[torch.Tensor | None] = []
        permuted_sq = exp_avg_sq
        for d, factor in enumerate(self.factors):
            if factor is None:
                new_bases.append(None)
                continue
            new_basis, order = results[d]
            new_bases.append(new_basis)
            index_shape = [self.batch] + [1] * len(self.plan.view_shape)
            index_shape[d + 1] = order.shape[-1]
            index = order.reshape(index_shape).expand_as(permuted_sq)
            permuted_sq = permuted_sq.gather(d + 1, index)
        if self._fused(impl):
            rotate_momentum_(exp_avg, self.bases, new_bases, ok)
        else:
            assign_where_(exp_avg, ok, project(project_back(exp_avg, self.bases), new_bases))
        assign_where_(exp_avg_sq, ok, permuted_sq)
        for basis, new_basis in zip(self.bases, new_bases):
            if basis is not None:
                assign_where_(basis, ok, new_basis)


def _copy_all_(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """target <- source for every pair: one multi-tensor copy per (device, target dtype, source dtype), the lists
    its fast path takes whole (older torch builds took a mixed list's kernel from its first tensor's dtype)."""
    sharing: dict[tuple, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    for target, source in pairs:
        targets, sources = sharing.setdefault((target.device, target.dtype, source.dtype), ([], []))
        targets.append(target)
        sources.append(source)
    for targets, sources in sharing.values():
        torch._foreach_copy_(targets, sources)


def begin_step_(stacks: list[ParamStack]) -> None:
    """Copy every stack's gradients (and, once initialised, its parameters) into its working buffers, in the
    state dtype: a multi-tensor copy for all stacks (one per device and dtype pair)."""
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    for stack in stacks:
        pairs += zip(stack.grad_rows, [p.grad for p in stack.params])
        if stack.initialised:
            pairs += zip(stack.value_rows, stack.params)
    _copy_all_(pairs)


def finish_step_(stacks: list[ParamStack], ok: dict[torch.device, torch.Tensor]) -> None:
    """After ParamStack.step_ of every stack (ok: the step's flag on each stack's device): copy the new values into
    the parameters of the stacks that moved (a multi-tensor copy) and advance their counters t (where ok) and
    step_count (one multi-tensor add)."""
    moved = [stack for stack in stacks if stack.initialised and stack.step > 0]
    if not moved:  # the initialising step
        return
    _copy_all_([pair for stack in moved for pair in zip(stack.params, stack.value_rows)])
    for stack in moved:
        # One add per stack: the multi-tensor add of a tensor scalar reads it on the host for CPU tensors.
        stack.t.add_(ok[stack.device])  # a bool adds as 0 or 1
    step_counts = [stack.step_count for stack in moved if stack.step_count is not None]
    if step_counts:
        torch._foreach_add_(step_counts, 1)


def assign_where_(target: torch.Tensor, ok: torch.Tensor, new: torch.Tensor) -> None:
    """target <- ok ? new : target, in place, as one kernel (torch.where writing into target, which it may alias
    element for element) rather than a where and a copy."""
    torch.where(ok, new, target, out=target)


def _lr_on(group: dict, device: torch.device) -> float | torch.Tensor:
    """The group's lr: a float, or a tensor lr on `device` (read there, never on the host)."""
    lr = group["lr"]
    return lr.to(device) if isinstance(lr, torch.Tensor) else float(lr)


def step_sizes(stacks: list[ParamStack], group: dict) -> list[torch.Tensor]:
    """Per stack, [B] step sizes at its next t in its state dtype: lr sqrt(1 - b2^t) / (1 - b1^t) formed in float64
    (or lr without bias correction).

    One pass over the concatenated step counts of all stacks that share a device and dtype: about ten launches
    per step for a param group instead of about ten per stack (the step of a small network is launch-bound).
    """
    beta1, beta2 = group["betas"]
    sizes: list[torch.Tensor | None] = [None] * len(stacks)
    sharing: dict[tuple, list[int]] = {}
    for i, stack in enumerate(stacks):
        sharing.setdefault((stack.device, stack.dtype), []).append(i)
    for (device, dtype), members in sharing.items():
        lr = _lr_on(group, device)
        count = sum(stacks[i].batch for i in members)
        if group["correct_bias"]:
            t = (torch.cat([stacks[i].t for i in members]) + 1).to(torch.float64)
            shared = (lr * torch.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)).to(dtype)
        elif isinstance(lr, torch.Tensor):
            shared = lr.to(dtype).reshape(1).expand(count).contiguous()
        else:
            shared = torch.full((count,), lr, dtype=dtype, device=device)
        for i, size in zip(members, shared.split([stacks[i].batch for i in members])):
            sizes[i] = size
    return sizes
