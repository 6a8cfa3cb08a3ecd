"""End-to-end PINN training step: residual, loss, backward and optimizer step, timed together.

The problem is the paper's Allen-Cahn equation, u_t - 1e-4 u_xx + 5 u^3 - 5 u = 0 at N collocation points
(t, x); the loss is the mean squared residual (initial and boundary terms cost little beside it and are left
out). One network per size: PirateNet 3x256 with N = 8192 (paper), a tanh MLP 4x256 with N = 1024 (small),
a tanh MLP 2x32 with N = 64 (smoke). Providers, each "<residual>+<optimizer>" on the same network:

    autograd+pytorch_optimizer_soap  nested reverse-mode autograd + pytorch_optimizer.SOAP (today's way)
    autograd+soap_kernels            nested autograd + soap_kernels.SOAP
    jets+soap_kernels                soap_kernels.jet (forward mode, first-order backward) + soap_kernels.SOAP
    jets+soap_kernels_triton         (CUDA) the same with SOAP(backend="triton"): whether "auto" should pick it
    jets+adam                        soap_kernels.jet + torch.optim.Adam (fused on CUDA): the first-order floor
    jets+soap_kernels_graph          (CUDA) the jets step with SOAP(capturable=True), the whole step (loss, backward,
                                     optimizer step) captured in one CUDA graph and replayed; a captured SOAP step
                                     computes the refresh at every step (it installs it every second), so this
                                     pays one extra refresh per two steps and saves every launch's CPU cost
    jets+adam_graph                  (CUDA) the same with Adam(capturable=True, fused=True)

SOAP runs with the paper's settings (precondition_frequency 2, 1-D tensors preconditioned), so a timed block
is two steps (one refresh) and the reported time is per step. Before timing, the two residual methods are
checked to give the same loss at the same parameters.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from bench.harness import OUT_OF_TIME, SuiteConfig, captured, record

PROVIDERS = (
    "autograd+pytorch_optimizer_soap", "autograd+soap_kernels", "jets+soap_kernels", "jets+soap_kernels_triton",
    "jets+adam", "jets+soap_kernels_graph", "jets+adam_graph",
)  # fmt: skip
CUDA_ONLY_OPTIMIZERS = ("soap_kernels_triton", "soap_kernels_graph", "adam_graph")  # the interpreter is not timed
GRAPH_SUFFIX = "_graph"
BASELINE = "autograd+pytorch_optimizer_soap"
SOAP_SETTINGS = dict(lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0, precondition_frequency=2, precondition_1d=True)
DIFFUSION, REACTION = 1e-4, 5.0

# size -> (case name, network factory, collocation points, timed repeats on CPU)
CASES: dict[str, tuple[str, Callable[[], torch.nn.Module], int, int]] = {
    "paper": ("allen_cahn piratenet-3x256 N=8192", lambda: _nn().PirateNet(2, 1, 256, 3, "tanh"), 8192, 5),
    "small": ("allen_cahn mlp-4x256 N=1024", lambda: _nn().MLP(2, 1, 256, 4, "tanh"), 1024, 5),
    "smoke": ("allen_cahn mlp-2x32 N=64", lambda: _nn().MLP(2, 1, 32, 2, "tanh"), 64, 3),
}


def _nn():
    from soap_kernels import nn

    return nn


def residual_autograd(model: torch.nn.Module, points: torch.Tensor) -> torch.Tensor:
    """Allen-Cahn residual through nested reverse-mode autograd (backward is then a double backward)."""
    points = points.detach().requires_grad_(True)
    u = model(points)
    grad_u = torch.autograd.grad(u.sum(), points, create_graph=True)[0]
    u_t, u_x = grad_u[:, :1], grad_u[:, 1:2]
    u_xx = torch.autograd.grad(u_x.sum(), points, create_graph=True)[0][:, 1:2]
    return u_t - DIFFUSION * u_xx + REACTION * (u**3 - u)


def residual_jets(model: torch.nn.Module, points: torch.Tensor) -> torch.Tensor:
    """Allen-Cahn residual from soap_kernels.jet: u, u_t and u_xx in one forward-mode pass."""
    from soap_kernels import jet

    out = jet(model, points, [(0,), (1, 1)])
    u = out[()]
    return out[(0,)] - DIFFUSION * out[(1, 1)] + REACTION * (u**3 - u)


def _optimizer(name: str, parameters: list[torch.nn.Parameter], device: torch.device) -> torch.optim.Optimizer:
    if name.endswith(GRAPH_SUFFIX):  # capturable: the learning rate a device tensor, counters on the device
        lr = torch.tensor(SOAP_SETTINGS["lr"], device=device)
        if name == "soap_kernels_graph":
            from soap_kernels import SOAP

            return SOAP(parameters, **{**SOAP_SETTINGS, "lr": lr}, capturable=True)
        if name == "adam_graph":
            return torch.optim.Adam(parameters, lr=lr, betas=(0.9, 0.999), capturable=True, fused=True)
    if name == "pytorch_optimizer_soap":
        from pytorch_optimizer import SOAP as ReferenceSOAP  # the bench extra; absent -> an error row

        return ReferenceSOAP(parameters, **SOAP_SETTINGS)
    if name in ("soap_kernels", "soap_kernels_triton"):
        from soap_kernels import SOAP

        return SOAP(parameters, **SOAP_SETTINGS, backend="triton" if name.endswith("_triton") else "auto")
    if name == "adam":
        return torch.optim.Adam(parameters, lr=1e-3, betas=(0.9, 0.999), fused=device.type == "cuda")
    raise ValueError(f"unknown optimizer {name!r}")


def make_block(provider: str, model: torch.nn.Module, points: torch.Tensor) -> Callable[[], None]:
    """Two training steps (one SOAP refresh) of `provider` on its own copy of the network."""
    residual_name, optimizer_name = provider.split("+")
    residual = {"autograd": residual_autograd, "jets": residual_jets}[residual_name]
    graph = provider.endswith(GRAPH_SUFFIX)
    if optimizer_name in CUDA_ONLY_OPTIMIZERS and points.device.type != "cuda":
        why = "it captures the step in a CUDA graph" if graph else "Triton's CPU interpreter is not timed"
        raise ImportError(f"{provider} runs on CUDA only ({why})")
    optimizer = _optimizer(optimizer_name, list(model.parameters()), points.device)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        residual(model, points).square().mean().backward()
        optimizer.step()

    # warm-up steps eager (SOAP's first initialises its bases with eigh, which a graph cannot hold); the captured
    # step's zero_grad(set_to_none=True) runs first, so its backward allocates the gradients in the graph's pool;
    # every replay reuses the same points (a trainer would copy each step's points into them first)
    step = captured(train_step, warmup=3) if graph else train_step

    def block() -> None:
        step()
        step()

    return block


def run(config: SuiteConfig) -> dict:
    """Per-step time of every provider on the case for config.sizes; see the module docstring."""
    case, factory, n_points, cpu_repeats = CASES[config.sizes]
    device = config.device
    generator = torch.Generator().manual_seed(0)
    points = (
        torch.rand(n_points, 2, generator=generator).mul_(torch.tensor([1.0, 2.0])).sub_(torch.tensor([0.0, 1.0]))
    )  # t in [0, 1], x in [-1, 1]
    points = points.to(device)
    torch.manual_seed(0)
    template = factory().to(device)

    loss_autograd = residual_autograd(template, points).square().mean().detach()
    loss_jets = residual_jets(template, points).square().mean().detach()
    agreement = float((loss_jets - loss_autograd).abs() / loss_autograd.abs().clamp_min(1e-30))

    rows = []
    for provider in PROVIDERS:
        if not config.wants(provider):
            continue
        if config.out_of_time():
            rows.append(record(case, provider, None, error=OUT_OF_TIME))
            continue
        model = copy.deepcopy(template)
        try:
            block = make_block(provider, model, points)
            block()  # SOAP's first step only initialises its preconditioner: keep it out of the timing
        except Exception as error:  # a missing package, a CPU for a CUDA-only provider, or a capture that fails
            rows.append(record(case, provider, None, error=f"{type(error).__name__}: {error}"))
            continue
        kwargs = {} if device.type == "cuda" else {"repeats": cpu_repeats}
        timing = config.time(block, **kwargs)
        per_step = {key: value / 2 if key.endswith("_ms") else value for key, value in timing.items()}
        rows.append(record(case, provider, per_step, parameters=sum(p.numel() for p in model.parameters())))
    return {
        "records": rows,
        "baseline_provider": BASELINE,
        "settings": {**SOAP_SETTINGS, "betas": list(SOAP_SETTINGS["betas"]), "points": n_points},
        "loss_relative_difference_jets_vs_autograd": agreement,
    }
