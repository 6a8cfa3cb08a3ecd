"""Activations the jets understand: the function and its derivative tower s, s', ..., s^(n).

tanh and sigmoid derivatives are polynomials in the function's own value (tanh' = 1 - tanh^2,
sigmoid' = sigmoid (1 - sigmoid)), built once by differentiating the polynomial and multiplying by the
first derivative. silu(x) = x sigmoid(x) gives silu^(k) = x sigmoid^(k) + k sigmoid^(k-1).
gelu is the tanh approximation 0.5 x (1 + tanh(c (x + a x^3))): its tower is the univariate Faa di Bruno
composition of the tanh tower with the cubic's derivatives, then Leibniz with 0.5 x.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

ACTIVATIONS = ("tanh", "sin", "cos", "silu", "swish", "gelu", "sigmoid")
MAX_TOWER = 5  # forward uses up to order 4, the adjoint one more

_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_A = 0.044715


def check_activation(name: object) -> str:
    """The canonical activation name; ValueError naming an unknown one."""
    if not isinstance(name, str):
        raise TypeError(f"activation must be a string, got {name!r}")
    key = name.lower()
    if key not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATIONS}")
    return "silu" if key == "swish" else key


def activation_function(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The plain elementwise function, as a module's forward uses it."""
    name = check_activation(name)
    if name == "gelu":
        return functools.partial(torch.nn.functional.gelu, approximate="tanh")
    return {
        "tanh": torch.tanh,
        "sin": torch.sin,
        "cos": torch.cos,
        "silu": torch.nn.functional.silu,
        "sigmoid": torch.sigmoid,
    }[name]


@functools.cache
def logistic_polynomials(kind: str, order: int) -> tuple[tuple[float, ...], ...]:
    """Coefficients (lowest degree first) of P_k with s^(k) = P_k(s), for s = tanh or sigmoid."""
    first = (1.0, 0.0, -1.0) if kind == "tanh" else (0.0, 1.0, -1.0)  # 1 - t^2 ; s - s^2
    polys = [(0.0, 1.0)]
    for _ in range(order):
        p = polys[-1]
        dp = [i * p[i] for i in range(1, len(p))] or [0.0]
        product = [0.0] * (len(dp) + len(first) - 1)
        for i, a in enumerate(dp):
            for j, b in enumerate(first):
                product[i + j] += a * b
        polys.append(tuple(product))
    return tuple(polys)


def _horner(coefficients: tuple[float, ...], t: torch.Tensor) -> torch.Tensor:
    """sum_i c_i t^i by Horner's rule, one fused pass (addcmul) per degree."""
    result = torch.full_like(t, coefficients[-1]) if len(coefficients) == 1 else None
    for c in reversed(coefficients[:-1]):
        # addcmul takes a 0-d CPU tensor as `self` only on a CPU; elsewhere the constant is filled on the device,
        # which needs no copy from the host
        if t.device.type == "cpu":
            constant = torch.tensor(c, dtype=t.dtype)
        else:
            constant = torch.full((), c, dtype=t.dtype, device=t.device)
        if result is None:
            result = torch.add(constant, t, alpha=coefficients[-1])
        else:
            result = torch.addcmul(constant, result, t)
    return result


def _polynomial(coefficients: tuple[float, ...], t: torch.Tensor, t_squared: torch.Tensor) -> torch.Tensor:
    """P(t); an even or odd P (tanh's tower) is evaluated in t^2, halving the passes."""
    if all(c == 0 for c in coefficients[1::2]):
        return _horner(coefficients[0::2], t_squared)
    if all(c == 0 for c in coefficients[0::2]):
        return t * _horner(coefficients[1::2], t_squared)
    return _horner(coefficients, t)


def _logistic_tower(kind: str, value: torch.Tensor, order: int) -> list[torch.Tensor]:
    polys = logistic_polynomials(kind, order)
    squared = value * value if order else value
    return [value] + [_polynomial(polys[k], value, squared) for k in range(1, order + 1)]


def _compose_tower(outer: list[torch.Tensor], inner: list[torch.Tensor], order: int) -> list[torch.Tensor]:
    """(f o g)^(k) for k <= order from f^(j)(g(x)) and g^(j)(x) (univariate Faa di Bruno, k <= 5)."""
    g = inner
    result = [outer[0]]
    if order >= 1:
        result.append(outer[1] * g[1])
    if order >= 2:
        result.append(outer[1] * g[2] + outer[2] * g[1] ** 2)
    if order >= 3:
        result.append(outer[1] * g[3] + 3 * outer[2] * g[1] * g[2] + outer[3] * g[1] ** 3)
    if order >= 4:
        result.append(
            outer[1] * g[4]
            + outer[2] * (4 * g[1] * g[3] + 3 * g[2] ** 2)
            + 6 * outer[3] * g[1] ** 2 * g[2]
            + outer[4] * g[1] ** 4
        )
    if order >= 5:
        result.append(
            outer[1] * g[5]
            + outer[2] * (5 * g[1] * g[4] + 10 * g[2] * g[3])
            + outer[3] * (10 * g[1] ** 2 * g[3] + 15 * g[1] * g[2] ** 2)
            + 10 * outer[4] * g[1] ** 3 * g[2]
            + outer[5] * g[1] ** 5
        )
    return result


def activation_tower(name: str, z: torch.Tensor, order: int) -> list[torch.Tensor]:
    """[s(z), s'(z), ..., s^(order)(z)] for the activation `name`."""
    name = check_activation(name)
    if not 0 <= order <= MAX_TOWER:
        raise ValueError(f"activation derivative order {order} is outside 0..{MAX_TOWER}")
    if name == "tanh":
        return _logistic_tower("tanh", torch.tanh(z), order)
    if name == "sigmoid":
        return _logistic_tower("sigmoid", torch.sigmoid(z), order)
    if name in ("sin", "cos"):
        s, c = torch.sin(z), torch.cos(z)
        cycle = [s, c, -s, -c] if name == "sin" else [c, -s, -c, s]
        return [cycle[k % 4] for k in range(order + 1)]
    if name == "silu":
        sig = _logistic_tower("sigmoid", torch.sigmoid(z), order)
        return [z * sig[0]] + [z * sig[k] + k * sig[k - 1] for k in range(1, order + 1)]
    # gelu, tanh approximation: 0.5 x (1 + T), T = tanh(u), u = c (x + a x^3)
    u = [_GELU_C * (z + _GELU_A * z**3), _GELU_C * (1 + 3 * _GELU_A * z**2), 6 * _GELU_C * _GELU_A * z]
    u += [torch.full_like(z, 6 * _GELU_C * _GELU_A)] + [torch.zeros_like(z)] * 2
    tanh_tower = _logistic_tower("tanh", torch.tanh(u[0]), order)
    one_plus_t = _compose_tower(tanh_tower, u, order)
    one_plus_t[0] = 1 + one_plus_t[0]
    return [0.5 * z * one_plus_t[0]] + [
        0.5 * (z * one_plus_t[k] + k * one_plus_t[k - 1]) for k in range(1, order + 1)
    ]
