"""`Jet`: a field's values and input derivatives at N points, with the operations networks are built of.

A Jet wraps a stack [K, N, F] laid out by a JetPlan. Linear combinations act slot by slot; the product of
two jets follows Leibniz's rule; `dense` applies a layer W, b (and an activation) through the custom op
soap_kernels::jet_dense_activation, whose backward is first order. With `recompute`, every stack an elementwise
rule makes carries the recipe to make it again (jets/recompute.py), so the backward need not keep it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from soap_kernels.jets import recompute as _recompute
from soap_kernels.jets.plan import JetPlan
from soap_kernels.jets.reference import activation_jet_ref, linear_jet_ref, product_jet_ref, seed_jet_ref


@dataclass(frozen=True)
class Jet:
    """stack[k] = D_k f for the slots of `plan`; `kernels` ("torch", "triton" or "native") picks the
    implementation of the fused layers (soap_kernels/ops/jet_dense.py); `recompute`: attach recipes to the
    stacks elementwise rules make (jets/recompute.py)."""

    stack: torch.Tensor
    plan: JetPlan
    kernels: str = "torch"
    recompute: bool = False

    @staticmethod
    def seed(x: torch.Tensor, plan: JetPlan, kernels: str = "torch", recompute: bool = False) -> Jet:
        """The jet of the input coordinates x [N, d] themselves."""
        return Jet(seed_jet_ref(x, plan), plan, kernels, recompute)

    @property
    def value(self) -> torch.Tensor:
        return self.stack[0]

    @property
    def features(self) -> int:
        return self.stack.shape[-1]

    def _like(self, stack: torch.Tensor) -> Jet:
        return Jet(stack, self.plan, self.kernels, self.recompute)

    def _made(self, make, *operands: torch.Tensor) -> Jet:
        """The jet of make(*operands), an elementwise rule: with recompute, its stack carries the recipe."""
        stack = make(*operands)
        if self.recompute:
            _recompute.attach(stack, make, *operands)
        return self._like(stack)

    def dense(self, weight: torch.Tensor, bias: torch.Tensor | None, activation: str | None = None) -> Jet:
        """s(x W^T + b) as a jet; with activation None, just the affine map."""
        from soap_kernels.ops.jet_dense import jet_activation_values, jet_dense_activation, jet_linear

        if activation is None:
            if self.kernels == "native":
                return self._like(jet_linear(self.stack.contiguous(), weight, bias))
            return self._like(linear_jet_ref(self.stack, weight, bias))

        h, z = jet_dense_activation(self.stack.contiguous(), weight, bias, activation, self.plan.key, self.kernels)
        if self.recompute:  # h from the kept z by the same elementwise rule as the layer's
            layout, kernels = self.plan.key, self.kernels
            _recompute.attach(h, lambda z: jet_activation_values(z, activation, layout, kernels), z)
        return self._like(h)

    def activation(self, name: str) -> Jet:
        """s(x) elementwise as a jet (torch reference; the fused path is `dense`)."""
        plan = self.plan
        return self._made(lambda stack: activation_jet_ref(stack, name, plan), self.stack)

    def select(self, columns: Sequence[int] | slice) -> Jet:
        """The jet of some feature columns."""
        return self._like(self.stack[..., columns])

    @staticmethod
    def cat(jets: Sequence[Jet]) -> Jet:
        """Feature-wise concatenation."""
        return jets[0]._made(lambda *stacks: torch.cat(stacks, dim=-1), *(j.stack for j in jets))

    def _cached_arithmetic(self, *stacks: torch.Tensor) -> bool:
        """Whether slot-wise arithmetic runs as the ops of ops/jet_arithmetic.py (outputs from the CPU buffer
        cache): on the "native" kernels, for CPU stacks of one shape the C++ kernels take."""
        if self.kernels != "native":
            return False
        from soap_kernels.ops.jet_dense_native import native_stack_supported

        return all(s.shape == self.stack.shape and s.dtype == self.stack.dtype for s in stacks) and all(
            native_stack_supported(s) for s in (self.stack, *stacks)
        )

    def _add(self, other: Jet, alpha: float) -> Jet:
        """self + alpha other, slot by slot."""
        if self._cached_arithmetic(other.stack):
            from soap_kernels.ops.jet_arithmetic import jet_add

            return self._made(lambda x, y: jet_add(x, y, alpha), self.stack, other.stack)
        return self._made(lambda x, y: torch.add(x, y, alpha=alpha), self.stack, other.stack)

    def __add__(self, other: Jet) -> Jet:
        return self._add(other, 1.0)

    def __sub__(self, other: Jet) -> Jet:
        return self._add(other, -1.0)

    def __mul__(self, other: Jet | torch.Tensor | float) -> Jet:
        """Jet * jet is the Leibniz product; jet * constant (a parameter, not a field) scales every slot."""
        if isinstance(other, Jet):
            if self.kernels != "torch":
                from soap_kernels.ops.jet_product import jet_product, product_supported

                if product_supported(self.stack, other.stack, self.kernels):
                    layout = self.plan.key
                    return self._made(lambda x, y: jet_product(x, y, layout), self.stack, other.stack)
            plan = self.plan
            return self._made(lambda x, y: product_jet_ref(x, y, plan), self.stack, other.stack)
        return self.scale(other)

    def scale(self, factor: torch.Tensor | float) -> Jet:
        """Every slot times a constant (a parameter, not a field). `jet * tensor` does the same, but under
        torch.compile Dynamo takes a `*` with a tensor operand for a tensor op, so compiled code calls this."""
        # the op keeps the stack's shape and dtype: only for factors of its dtype that do not broadcast it
        if (
            self._cached_arithmetic()
            and isinstance(factor, torch.Tensor)
            and factor.numel() == 1
            and factor.dim() <= self.stack.dim()
            and factor.dtype == self.stack.dtype
        ):
            from soap_kernels.ops.jet_arithmetic import jet_scale

            return self._made(jet_scale, self.stack, factor)
        if isinstance(factor, torch.Tensor):  # a source, so a recipe checks it was not modified in place
            return self._made(torch.mul, self.stack, factor)
        return self._made(lambda x: x * factor, self.stack)

    __rmul__ = __mul__

    def mix(self, end: Jet, weight: torch.Tensor) -> Jet:
        """self + weight (end - self) slot by slot, weight a one-element parameter (not a field): weight end +
        (1 - weight) self as one elementwise pass forward instead of three, with a lean backward (jets/mix.py)."""
        from soap_kernels.jets.mix import mix

        return self._made(mix, self.stack, end.stack, weight)
