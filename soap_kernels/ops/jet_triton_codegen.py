"""Source generation for the jet Triton kernels: activation towers and the compiled jet programs as code.

A jet layout (JetPlan) and an activation fix the epilogue of the forward kernel (Faa di Bruno) and the
prologue of the backward kernel (its adjoint), so each (layout, activation, dtype) gets its own kernel
source, built from the same term lists the torch reference evaluates. The source is registered with
`linecache` so Triton (and its interpreter) can read it like a file, without writing to disk.
"""

from __future__ import annotations

import functools
import hashlib
import linecache
import math

from soap_kernels.jets.activations import check_activation, logistic_polynomials

_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_A = 0.044715


def float_literal(value: float, dtype: str) -> str:
    """A literal at full precision: Triton rounds Python floats to float32, so wrap inexact ones."""
    if float(value).is_integer() or value * 1024 == int(value * 1024):
        return repr(float(value))
    return f"tl.full([], {value!r}, {dtype})"


def _horner(coefficients: tuple[float, ...], t: str, dtype: str) -> str:
    expression = float_literal(coefficients[-1], dtype)
    for c in reversed(coefficients[:-1]):
        expression = f"({expression}) * {t}" + (f" + {float_literal(c, dtype)}" if c else "")
    return expression


def _logistic_lines(kind: str, value: str, order: int, prefix: str, dtype: str) -> list[str]:
    polys = logistic_polynomials(kind, order)
    lines = [f"{prefix}0 = {value}"]
    lines += [f"{prefix}{k} = {_horner(polys[k], f'{prefix}0', dtype)}" for k in range(1, order + 1)]
    return lines


def _compose_lines(f: str, g: str, order: int, out: str) -> list[str]:
    """out_k = (outer o inner)^(k) from f{j} = outer^(j)(inner) and g{j} = inner^(j) (Faa di Bruno)."""
    formulas = [
        f"{f}0",
        f"{f}1 * {g}1",
        f"{f}1 * {g}2 + {f}2 * {g}1 * {g}1",
        f"{f}1 * {g}3 + 3.0 * {f}2 * {g}1 * {g}2 + {f}3 * {g}1 * {g}1 * {g}1",
        f"{f}1 * {g}4 + {f}2 * (4.0 * {g}1 * {g}3 + 3.0 * {g}2 * {g}2) + 6.0 * {f}3 * {g}1 * {g}1 * {g}2"
        f" + {f}4 * {g}1 * {g}1 * {g}1 * {g}1",
        f"{f}1 * {g}5 + {f}2 * (5.0 * {g}1 * {g}4 + 10.0 * {g}2 * {g}3)"
        f" + {f}3 * (10.0 * {g}1 * {g}1 * {g}3 + 15.0 * {g}1 * {g}2 * {g}2)"
        f" + 10.0 * {f}4 * {g}1 * {g}1 * {g}1 * {g}2 + {f}5 * {g}1 * {g}1 * {g}1 * {g}1 * {g}1",
    ]
    return [f"{out}{k} = {formulas[k]}" for k in range(order + 1)]


def tower_lines(activation: str, z: str, order: int, dtype: str) -> list[str]:
    """Statements defining d0..d{order} = s^(k)(z) for the activation, in Triton."""
    name = check_activation(activation)
    if name == "tanh":
        return _logistic_lines("tanh", f"_tanh({z})", order, "d", dtype)
    if name == "sigmoid":
        return _logistic_lines("sigmoid", f"_sigmoid({z})", order, "d", dtype)
    if name in ("sin", "cos"):
        lines = [f"sin_z = tl.sin({z})", f"cos_z = tl.cos({z})"]
        cycle = ["sin_z", "cos_z", "-sin_z", "-cos_z"] if name == "sin" else ["cos_z", "-sin_z", "-cos_z", "sin_z"]
        return lines + [f"d{k} = {cycle[k % 4]}" for k in range(order + 1)]
    if name == "silu":
        lines = _logistic_lines("sigmoid", f"_sigmoid({z})", order, "sg", dtype)
        lines.append(f"d0 = {z} * sg0")
        return lines + [f"d{k} = {z} * sg{k} + {float(k)} * sg{k - 1}" for k in range(1, order + 1)]
    # gelu (tanh approximation): 0.5 z (1 + tanh(u)), u = c (z + a z^3)
    c, a = float_literal(_GELU_C, dtype), float_literal(_GELU_A, dtype)
    ca6 = float_literal(6 * _GELU_C * _GELU_A, dtype)
    lines = [
        f"u0 = {c} * ({z} + {a} * {z} * {z} * {z})",
        f"u1 = {c} * (1.0 + 3.0 * {a} * {z} * {z})",
        f"u2 = {ca6} * {z}",
        f"u3 = {ca6} + 0.0 * {z}",
        f"u4 = 0.0 * {z}",
        "u5 = u4",
    ]
    lines += _logistic_lines("tanh", "_tanh(u0)", order, "th", dtype)
    lines += _compose_lines("th", "u", order, "ft")
    lines.append("ft0 = 1.0 + ft0")
    lines.append(f"d0 = 0.5 * {z} * ft0")
    return lines + [f"d{k} = 0.5 * ({z} * ft{k} + {float(k)} * ft{k - 1})" for k in range(1, order + 1)]


def _product(coef: float, parts: list[str]) -> str:
    expression = " * ".join(parts)
    return expression if coef == 1.0 else f"{coef!r} * {expression}"


def forward_program_lines(plan, z: str = "acc", out: str = "h") -> list[str]:
    """h{k} = sum_terms coef * d{m} * prod z{f}, from plan.activation_terms."""
    lines = []
    for k, terms in enumerate(plan.activation_terms):
        pieces = [_product(coef, [f"d{m}"] + [f"{z}{f}" for f in factors]) for coef, m, factors in terms]
        lines.append(f"{out}{k} = " + " + ".join(pieces))
    return lines


def adjoint_program_lines(plan, z: str = "z", g: str = "g", out: str = "gz") -> list[str]:
    """gz{j} = sum_terms coef * d{m} * g{k} * prod z{f}, from plan.activation_adjoint_terms."""
    lines = []
    for j, terms in enumerate(plan.activation_adjoint_terms):
        pieces = [
            _product(coef, [f"d{m}", f"{g}{k}"] + [f"{z}{f}" for f in factors]) for coef, m, k, factors in terms
        ]
        lines.append(f"{out}{j} = " + (" + ".join(pieces) if pieces else f"0.0 * {z}0"))
    return lines


@functools.cache
def load_generated(source: str, tag: str) -> dict:
    """Execute generated kernel source under a linecache filename (so inspect can read it); its namespace."""
    digest = hashlib.sha1(source.encode()).hexdigest()[:16]
    filename = f"<soap_kernels-{tag}-{digest}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    namespace: dict = {"__name__": f"soap_kernels_generated_{digest}"}
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - our own generated kernel source
    return namespace
