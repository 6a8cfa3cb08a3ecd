"""SOAP vs Adam on a small PINN: -u''(x) = pi^2 sin(pi x) on [0, 1], u(0) = u(1) = 0 (exact u = sin(pi x)).

Both optimizers train the same tanh MLP from the same initialisation on the same collocation points;
prints the final loss and the relative L2 error of each.   python examples/soap_vs_adam.py [--steps 500]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from soap_kernels import SOAP


def make_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(1, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1)
    )


def pinn_loss(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Mean squared residual of -u'' - pi^2 sin(pi x) plus the squared boundary values."""
    x = x.requires_grad_(True)
    u = model(x)
    (du,) = torch.autograd.grad(u.sum(), x, create_graph=True)
    (d2u,) = torch.autograd.grad(du.sum(), x, create_graph=True)
    residual = -d2u - math.pi**2 * torch.sin(math.pi * x)
    boundary = model(torch.tensor([[0.0], [1.0]]))
    return residual.square().mean() + boundary.square().mean()


def relative_l2(model: torch.nn.Module) -> float:
    x = torch.linspace(0, 1, 501).unsqueeze(1)
    with torch.no_grad():
        exact = torch.sin(math.pi * x)
        return float((model(x) - exact).norm() / exact.norm())


def train(name: str, steps: int) -> dict:
    model = make_model(seed=0)
    if name == "soap":
        optimizer = SOAP(model.parameters(), lr=3e-3, betas=(0.9, 0.999), weight_decay=0.0, precondition_frequency=2)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.999))
    x = torch.rand(256, 1, generator=torch.Generator().manual_seed(1))
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = pinn_loss(model, x.clone())
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    return {"loss": pinn_loss(model, x.clone()).item(), "rel_l2": relative_l2(model), "s": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=500)
    steps = parser.parse_args().steps
    for name in ("adam", "soap"):
        result = train(name, steps)
        print(f"{name:5s} after {steps} steps: loss {result['loss']:.3e}  rel L2 {result['rel_l2']:.3e}  "
              f"({result['s']:.1f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
