"""soap_kernels.SOAP: a drop-in for the reference SOAP (nikhilvyas/SOAP a1e5535) with batched state.

Per parameter (DESIGN.md section 4): the first step sets the Kronecker factors L_d = (1 - beta_s) G_(d) G_(d)^T
and Q_d = eigenvectors of L_d (descending); later steps rotate g~ = project(g), update Adam moments
m~, v in the eigenbasis, move p by -lr sqrt(1 - b2^t)/(1 - b1^t) project_back(m~ / (sqrt(v) + eps)), decay
p <- p - lr wd p, then move the factors toward G G^T and, every precondition_frequency-th step, refresh
the bases (m~ carried across, v permuted with the columns).

Extensions: parameters of one shape, dtype and device in a group are stacked (one batched call per phase
and shape, see stack.py); refresh="qr" (the reference), "eigh" or "exact" (exact bases); a step whose gradients hold NaN
or Inf leaves parameters and state unchanged, decided on the device, and counts in `skipped_steps`.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable

import torch

from soap_kernels import profile
from soap_kernels._backend import native_kernels_for, requested_backend, resolve_backend
from soap_kernels.optim.graph_conditional import only_where_any
from soap_kernels.optim.layout import precondition_plan
from soap_kernels.optim.refresh import CAPTURABLE_REFRESH_METHODS, REFRESH_METHODS, batched_refresh, step_method
from soap_kernels.optim.sharding import sharded_refresh, sharding_active
from soap_kernels.optim.stack import ParamStack, begin_step_, finish_step_, step_sizes

_BACKENDS = ("auto", "torch", "cuda", "triton")


def _check_number(name: str, value, low: float, high: float | None = None, high_open: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"SOAP: {name} must be a real number, got {value!r}")
    if value < low or (high is not None and (value >= high if high_open else value > high)):
        bound = f"[{low}, {high})" if high is not None else f">= {low}"
        raise ValueError(f"SOAP: {name} must be in {bound}, got {value!r}")


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"SOAP: {name} must be an integer, got {value!r}")
    if value < low:
        raise ValueError(f"SOAP: {name} must be >= {low}, got {value!r}")


def _check_lr(lr) -> None:
    """lr: a real number >= 0, or a 0-d floating tensor >= 0 (updated in place by schedulers, read on the device)."""
    if not isinstance(lr, torch.Tensor):
        _check_number("lr", lr, 0.0)
        return
    if lr.dim() != 0 or not lr.is_floating_point():
        raise TypeError(f"SOAP: a tensor lr must be a 0-d floating tensor, got {lr.dtype} shape {tuple(lr.shape)}")
    if not bool(lr >= 0):  # read once here, at construction, never in step()
        raise ValueError(f"SOAP: lr must be >= 0, got {lr!r}")


def _validate_group(group: dict) -> None:
    """Raise ValueError/TypeError naming the first bad hyper-parameter of a param group."""
    _check_lr(group["lr"])
    betas = group["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"SOAP: betas must be a pair (beta1, beta2), got {betas!r}")
    _check_number("betas[0]", betas[0], 0.0, 1.0)
    _check_number("betas[1]", betas[1], 0.0, 1.0)
    _check_number("shampoo_beta", group["shampoo_beta"], -float("inf"), 1.0)
    _check_number("eps", group["eps"], 0.0)
    _check_number("weight_decay", group["weight_decay"], 0.0)
    _check_int("precondition_frequency", group["precondition_frequency"], 1)
    _check_int("max_precond_dim", group["max_precond_dim"], 1)
    if group["refresh"] not in REFRESH_METHODS:
        raise ValueError(f"SOAP: refresh must be one of {REFRESH_METHODS}, got {group['refresh']!r}")
    if not isinstance(group["capturable"], bool):
        raise TypeError(f"SOAP: capturable must be a bool, got {group['capturable']!r}")
    if group["capturable"] and group["refresh"] not in CAPTURABLE_REFRESH_METHODS:
        raise ValueError(
            f"SOAP: refresh={group['refresh']!r} reads results back to the host (torch.linalg.eigh checks its "
            f"status) and cannot run in a capturable step; use one of {CAPTURABLE_REFRESH_METHODS}"
        )
    for param in group["params"]:
        if param.is_complex():
            raise TypeError(f"SOAP: complex parameters are not supported (got dtype {param.dtype})")


def _moved(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """tensor on `device`; asynchronous only towards a GPU: a non-blocking copy to the CPU may be read before it
    lands (a parameter set split between a GPU and the CPU would read garbage flags)."""
    return tensor.to(device, non_blocking=torch.device(device).type == "cuda")


class SOAP(torch.optim.Optimizer):
    """SOAP: Adam in the eigenbasis of Shampoo's Kronecker factors (Vyas et al. 2024, arXiv 2409.11321).

    Same constructor and trajectory as the reference implementation, plus:
        refresh: "qr" (reference: one power iteration + QR), "eigh" (exact eigenbasis, torch.linalg.eigh) or
            "exact" (exact, warm-started Jacobi in C++/CUDA: graph-safe on GPUs, slow on CPUs);
        backend: "auto" (native C++/CUDA kernels where built), "torch" (pure torch), "cuda" (native,
            required), "triton" (fused Triton kernels: CUDA, or CPU under TRITON_INTERPRET=1); env
            SOAP_KERNELS_BACKEND overrides; a forced backend that cannot run raises RuntimeError.
        shard_refresh: under torch.distributed with several ranks, divide the refresh work among the ranks
            (one all_reduce per refresh step, identical state everywhere; every rank must see the same
            gradients, as under DistributedDataParallel). Without it every rank refreshes everything.
        capturable: steps can be captured in a CUDA graph (torch.cuda.graph) and replayed: the step counters
            live on the device, lr may be a 0-d tensor on the parameters' device (schedulers update it in place;
            a float lr is baked into a captured graph), and no step after the first (initialising, eigh) one
            reads anything back to the host. Eager steps refresh on the reference schedule; a step captured in a
            graph (and, as the host cannot count replays, every eager step after a capture) computes the refresh
            and installs it only where the device step count is a multiple of precondition_frequency, so one
            captured step is right at every replay, at the price of precondition_frequency - 1 extra refresh
            computations per refresh. "qr" runs as soap_kernels::refresh_eigenbasis (on CUDA CholeskyQR, no
            cuSOLVER): the reference's subspaces, equal up to column signs and rounding. "eigh" is refused.
            load_state_dict and add_param_group replace the state buffers: capture again after them.
        data_format: only "channels_first" (the reference default) is supported.
    Attributes: skipped_steps (device tensor): steps skipped because a gradient was not finite.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 3e-3,
        betas: tuple[float, float] = (0.95, 0.95),
        shampoo_beta: float = -1,
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        precondition_frequency: int = 10,
        max_precond_dim: int = 10000,
        merge_dims: bool = False,
        precondition_1d: bool = False,
        normalize_grads: bool = False,
        data_format: str = "channels_first",
        correct_bias: bool = True,
        refresh: str = "qr",
        backend: str = "auto",
        shard_refresh: bool = False,
        capturable: bool = False,
    ):
        if data_format != "channels_first":
            raise NotImplementedError(f"SOAP: data_format={data_format!r} is not supported; use 'channels_first'")
        if backend not in _BACKENDS:
            raise ValueError(f"SOAP: backend must be one of {_BACKENDS}, got {backend!r}")
        defaults = dict(
            lr=lr, betas=tuple(betas) if isinstance(betas, (tuple, list)) else betas, shampoo_beta=shampoo_beta,
            eps=eps, weight_decay=weight_decay, precondition_frequency=precondition_frequency,
            max_precond_dim=max_precond_dim, merge_dims=merge_dims, precondition_1d=precondition_1d,
            normalize_grads=normalize_grads, correct_bias=correct_bias, refresh=refresh, capturable=capturable,
        )  # fmt: skip
        self._backend = backend
        requested_backend(backend)  # an unknown SOAP_KERNELS_BACKEND fails here, not at the first step
        self._shard_refresh = bool(shard_refresh)
        self._stacks: dict[tuple, ParamStack] = {}  # (group index, parameter ids) -> stack
        self._stack_of: dict[int, tuple] = {}  # parameter id -> its stack's key
        self._skipped: torch.Tensor | None = None
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        _validate_group(self.param_groups[-1])
        self._forget_stacks()

    # ---- public state --------------------------------------------------------------------------------
    @property
    def skipped_steps(self) -> torch.Tensor:
        """How many steps were skipped for non-finite gradients (a device tensor; reading it may sync)."""
        return self._skipped if self._skipped is not None else torch.zeros((), dtype=torch.int64)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["soap_kernels"] = {"skipped_steps": self.skipped_steps.clone()}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Load per-parameter state keeping its dtypes (float32 state of bf16/fp16 parameters stays float32)."""
        saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        saved_state = state_dict["state"]
        super().load_state_dict(state_dict)
        params = [p for group in self.param_groups for p in group["params"]]
        for saved_id, param in zip(saved_ids, params):
            if saved_id in saved_state:
                self.state[param] = _to_device(saved_state[saved_id], param.device)
        for group in self.param_groups:  # checkpoints from before the option existed
            group.setdefault("capturable", False)
        extra = state_dict.get("soap_kernels", {})
        self._skipped = extra["skipped_steps"].clone() if "skipped_steps" in extra else None
        self._forget_stacks()

    def _forget_stacks(self) -> None:
        self._stacks.clear()
        self._stack_of.clear()

    # ---- the step ------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        """One optimisation step for every parameter with a gradient; returns closure's loss if given."""
        with_grads = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        for p in with_grads:  # bad input fails before any state changes
            if p.grad.is_sparse:
                raise TypeError(f"SOAP does not support sparse gradients (parameter of shape {tuple(p.shape)})")
        # so does a forced backend that cannot run here
        implementation = {device: self._implementation(device) for device in {p.device for p in with_grads}}
        for group in self.param_groups:  # and a capturable step that cannot be what it promises
            if group["capturable"]:
                params = [p for p in group["params"] if p.grad is not None]
                _check_capturable(group, params, self.state, self._shard_refresh and sharding_active())
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = []
        for index, group in enumerate(self.param_groups):
            params = [p for p in group["params"] if p.grad is not None]
            stacks = self._stacks_for(index, group, params)
            work += [(group, stack, step_size) for stack, step_size in zip(stacks, step_sizes(stacks, group))]
        if not work:
            return loss
        stacks = [stack for _, stack, _ in work]
        begin_step_(stacks)
        ok = self._all_finite([stack.stacked_grads() for stack in stacks])
        ok_on = {device: _moved(ok, device) for device in {stack.device for stack in stacks}}
        refreshing = []
        for group, stack, step_size in work:
            if stack.device not in implementation:  # gradients the closure made on another device
                implementation[stack.device] = self._implementation(stack.device)
            impl = implementation[stack.device]
            if stack.step_(ok_on[stack.device], step_size, group, impl):
                refreshing.append((group, stack, impl))
        finish_step_(stacks, ok_on)
        due = [
            (stack, stack.refresh_mask(ok_on[stack.device], group),
             step_method(group["refresh"], group["capturable"], impl, stack.device), impl)
            for group, stack, impl in refreshing
        ]  # fmt: skip
        # in a capture, optionally a conditional node: replays refresh only where some stack is due (see there)
        with profile.range("soap/refresh"), only_where_any([mask for _, mask, _, _ in due]):
            self._refresh(due)
        if self._skipped is None or self._skipped.device != ok.device:  # a loaded counter may be on the CPU
            previous = 0 if self._skipped is None else self._skipped
            self._skipped = torch.zeros((), dtype=torch.int64, device=ok.device) + previous
        self._skipped.add_(~ok)  # in place (a captured graph replays it); a bool adds as 0 or 1
        return loss

    def _refresh(self, due: list[tuple[ParamStack, torch.Tensor, str, str]]) -> None:
        """Refresh the bases of the stacks whose step is a refresh step: factors of one size from all stacks in
        one batched call (batched_refresh), or divided among ranks if asked (sharded_refresh)."""
        if not due:
            return
        requests = [
            ((k, d), factor, basis, method)
            for k, (stack, _, method, _) in enumerate(due)
            for d, factor, basis in stack.refresh_requests()
        ]
        sharded = self._shard_refresh and sharding_active()
        results = sharded_refresh(requests) if sharded else batched_refresh(requests)
        for k, (stack, stack_ok, _, impl) in enumerate(due):
            stack.apply_refresh({d: results[(k, d)] for d, _, _ in stack.refresh_requests()}, stack_ok, impl)

    def _implementation(self, device: torch.device) -> str:
        """"torch", "native" or "triton" for stacks on `device` (see stack.py); a forced backend that cannot
        run there raises RuntimeError. "auto" uses the native kernels where built; the Triton ops run only when
        asked for until they are validated on a GPU (bench/gpu_check.sh)."""
        requested = requested_backend(self._backend)
        resolve_backend(device, requested)  # raises when a forced backend cannot run on this device
        if requested in ("torch", "triton"):
            return requested
        return "native" if native_kernels_for(device) else "torch"  # "cuda" (checked above) or "auto"

    @staticmethod
    def _all_finite(stacked_grads: list[torch.Tensor]) -> torch.Tensor:
        """One 0-d bool on the first gradient's device: every gradient entry is finite (no host sync).

        One multi-tensor pass per device and dtype: torch's AMP check (found_inf <- 1 where an entry is not
        finite) with an unscale factor of 1, which writes every value back unchanged into our stacked copies
        (a private torch op, the one torch.amp.GradScaler runs; capturable in a CUDA graph as GradScaler's is).
        """
        device = stacked_grads[0].device
        sharing: dict[tuple, list[torch.Tensor]] = {}
        for grads in stacked_grads:
            sharing.setdefault((grads.device, grads.dtype), []).append(grads)
        found = []
        for (grads_device, _), grads in sharing.items():
            found_inf = torch.zeros((), dtype=torch.float32, device=grads_device)
            unit = torch.ones((), dtype=torch.float32, device=grads_device)
            torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, unit)
            found.append(_moved(found_inf, device))
        return (found[0] if len(found) == 1 else torch.stack(found).sum()) == 0

    def _stacks_for(self, group_index: int, group: dict, params: list[torch.Tensor]) -> list[ParamStack]:
        """Stacks of the parameters with gradients: same shape, dtype, device and step count share one."""
        buckets: dict[tuple, list[torch.Tensor]] = {}
        for p in params:
            key = (tuple(p.shape), p.dtype, p.device, self._host_step(p))
            buckets.setdefault(key, []).append(p)
        stacks = []
        for members in buckets.values():
            key = (group_index, tuple(id(p) for p in members))
            stack = self._stacks.get(key)
            if stack is None:
                stack = self._build_stack(key, group, members)
            stacks.append(stack)
        return stacks

    def _host_step(self, p: torch.Tensor) -> int | None:
        """p's step count as a host int: its stack's, else its state's (a device tensor in capturable state is
        read once, after load_state_dict, never in a step of a built stack)."""
        key = self._stack_of.get(id(p))
        if key in self._stacks:
            return self._stacks[key].step
        step = self.state[p].get("step")
        return None if step is None else int(step)

    def _build_stack(self, key: tuple, group: dict, members: list[torch.Tensor]) -> ParamStack:
        for p in members:  # a parameter leaving a stack makes that stack stale
            old_key = self._stack_of.pop(id(p), None)
            if old_key is not None:
                self._stacks.pop(old_key, None)
        plan = precondition_plan(
            tuple(members[0].shape), group["max_precond_dim"], group["merge_dims"], group["precondition_1d"]
        )
        stack = ParamStack(members, plan, [self.state[p] for p in members], group["capturable"])
        self._stacks[key] = stack
        for p in members:
            self._stack_of[id(p)] = key
        return stack


def _capturing() -> bool:
    """True inside a CUDA graph capture on the current stream."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _check_capturable(group: dict, params: list[torch.Tensor], state: dict, sharded: bool) -> None:
    """A capturable step reads lr on the parameters' device, cannot capture the initialising (eigh) step, and
    on CUDA refreshes with the native refresh_eigenbasis kernel (the torch reference copies index tensors
    from the host and reads flags back); checked before any state is allocated."""
    if sharded and params and _capturing():
        raise RuntimeError(
            "SOAP(capturable=True) with shard_refresh=True cannot be captured in a CUDA graph: the sharded refresh "
            "builds index tensors on the host (eager steps are fine); capture without shard_refresh"
        )
    lr = group["lr"]
    for p in params:
        if p.is_cuda and (requested_backend() == "torch" or not native_kernels_for(p.device)):
            raise RuntimeError(
                f"SOAP(capturable=True) on {p.device} refreshes with the native refresh_eigenbasis kernel, which "
                + ("SOAP_KERNELS_BACKEND=torch rules out" if requested_backend() == "torch" else "is not built here")
                + " (the torch reference cannot be captured); build with SOAP_KERNELS_CUDA=1 or drop capturable"
            )
        if isinstance(lr, torch.Tensor) and lr.device != p.device:
            raise ValueError(
                f"SOAP(capturable=True): a tensor lr must be on the parameters' device {p.device}, got {lr.device}"
            )
        if "step" not in state.get(p, {}) and p.is_cuda and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                "SOAP(capturable=True): the first step initialises the bases with torch.linalg.eigh, which "
                "synchronises with the host; run it (and a warm-up step) eagerly before capturing"
            )


def _to_device(value, device: torch.device):
    """Copy a saved state value onto `device`, keeping tensor dtypes."""
    if isinstance(value, torch.Tensor):
        return value.to(device=device, copy=True)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    return value
