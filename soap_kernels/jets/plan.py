"""The slot layout of a jet and the elementwise rules that propagate it.

A jet of a field f over N points is a stack J[k] = D_k f, k = 0..K-1, of shape [K, N, F]: slot 0 is the
value, the other slots are the partial derivatives needed for what was asked (every requested multi-index
and all of its sub-multi-indices), plus optionally one collapsed Laplacian slot L = sum_{i in axes} f_ii.

Linear maps act on every slot alike. An elementwise function h = s(z) follows Faa di Bruno's formula
over the set partitions P of the positions of a multi-index a:

    D_a s(z) = sum_P s^(|P|)(z) * prod_{B in P} D_{a_B} z,

and a product h = x * y follows Leibniz's rule D_a (x y) = sum_{T subset of positions} D_{a_T} x D_{a\\T} y.
For the Laplacian slot: L s(z) = s'(z) L z + s''(z) sum_i (D_i z)^2 and L(x y) = x L y + y L x +
2 sum_i D_i x D_i y. Both rules are compiled once per layout into lists of terms, so the torch reference
and the Triton kernels evaluate the same program.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

MAX_ORDER = 4
LAPLACIAN = "laplacian"

# One activation term: coef * s^(order)(z_0) * prod_{f in factors} z_f.
ActivationTerm = tuple[float, int, tuple[int, ...]]
# One product term: coef * x_a * y_b.
ProductTerm = tuple[float, int, int]
# One adjoint term: coef * s^(order)(z_0) * g_out * prod_{f in factors} z_f.
AdjointTerm = tuple[float, int, int, tuple[int, ...]]


def _set_partitions(positions: Sequence[int]) -> Iterator[list[list[int]]]:
    """All partitions of `positions` into non-empty blocks."""
    if not positions:
        yield []
        return
    first, rest = positions[0], positions[1:]
    for partition in _set_partitions(rest):
        for index in range(len(partition)):
            yield partition[:index] + [[first] + partition[index]] + partition[index + 1 :]
        yield [[first]] + partition


def _sub_indices(index: tuple[int, ...]) -> set[tuple[int, ...]]:
    """Every non-empty sub-multi-index of a sorted multi-index (including itself)."""
    subs: set[tuple[int, ...]] = set()
    for mask in range(1, 2 ** len(index)):
        subs.add(tuple(sorted(index[p] for p in range(len(index)) if mask >> p & 1)))
    return subs


def normalise_derivative(index: object, num_inputs: int) -> tuple[int, ...]:
    """A requested derivative as a sorted tuple of input axes; ValueError/TypeError naming what is wrong."""
    if not isinstance(index, tuple | list):
        raise TypeError(f"derivative {index!r} must be a tuple of input axes such as (0,) or (1, 1)")
    for axis in index:
        if not isinstance(axis, int) or isinstance(axis, bool):
            raise TypeError(f"derivative {tuple(index)!r}: axis {axis!r} is not an int")
        if not 0 <= axis < num_inputs:
            raise ValueError(
                f"derivative {tuple(index)!r}: axis {axis} is out of range for x with {num_inputs} features"
            )
    if len(index) > MAX_ORDER:
        raise ValueError(f"derivative {tuple(index)!r} has order {len(index)}; at most {MAX_ORDER} is supported")
    return tuple(sorted(index))


@dataclass(frozen=True)
class JetPlan:
    """Slot layout for a jet over `num_inputs` input axes.

    slots[0] == () is the value; the others are sorted multi-indices, then LAPLACIAN when laplacian_axes
    is set. Build with `JetPlan.build`, which closes the requested set under sub-multi-indices.

    The term programs are computed once per plan by functools.cache'd methods behind plain properties, not
    functools.cached_property: on Python 3.11 that takes a lock torch.compile (Dynamo) cannot trace, and a
    compiled PirateNet jet reads plan.product_terms in traced code.
    """

    num_inputs: int
    indices: tuple[tuple[int, ...], ...]
    laplacian_axes: tuple[int, ...] | None = None

    @staticmethod
    def build(
        num_inputs: int, derivatives: Iterable[object] = (), laplacian_axes: Iterable[int] | None = None
    ) -> JetPlan:
        """The smallest layout holding the requested derivatives (and their lower-order ingredients)."""
        needed: set[tuple[int, ...]] = set()
        for request in derivatives:
            index = normalise_derivative(request, num_inputs)
            if index:
                needed |= _sub_indices(index)
        lap = None
        if laplacian_axes is not None:
            lap = tuple(sorted({normalise_derivative((axis,), num_inputs)[0] for axis in laplacian_axes}))
            if not lap:
                raise ValueError("laplacian_axes is empty; pass the input axes to sum second derivatives over")
            needed |= {(axis,) for axis in lap}
        ordered = ((),) + tuple(sorted(needed, key=lambda index: (len(index), index)))
        return JetPlan(num_inputs, ordered, lap)

    @property
    def key(self) -> str:
        """A canonical string naming this layout (custom ops take it as their layout argument)."""
        slots = "|".join(",".join(map(str, index)) for index in self.indices)
        lap = "" if self.laplacian_axes is None else ",".join(map(str, self.laplacian_axes))
        return f"{self.num_inputs};{slots};{lap}"

    @staticmethod
    @functools.cache
    def from_key(key: str) -> JetPlan:
        """Inverse of `key`."""
        try:
            num_inputs, slots, lap = key.split(";")
            indices = tuple(tuple(int(a) for a in s.split(",")) if s else () for s in slots.split("|"))
            laplacian_axes = None if lap == "" else tuple(int(a) for a in lap.split(","))
            plan = JetPlan(int(num_inputs), indices, laplacian_axes)
        except ValueError as error:
            raise ValueError(f"malformed jet layout key {key!r}") from error
        if plan.indices[:1] != ((),):
            raise ValueError(f"malformed jet layout key {key!r}: slot 0 must be the value")
        return plan

    @property
    def num_slots(self) -> int:
        return len(self.indices) + (self.laplacian_axes is not None)

    @property
    def laplacian_slot(self) -> int | None:
        return None if self.laplacian_axes is None else len(self.indices)

    def slot(self, index: tuple[int, ...]) -> int:
        """Slot number of a sorted multi-index."""
        return self.indices.index(tuple(sorted(index)))

    @property
    def activation_terms(self) -> tuple[tuple[ActivationTerm, ...], ...]:
        """Per slot k: terms (coef, m, factors) with D_k s(z) = sum coef * s^(m)(z_0) * prod z_factors."""
        return self._activation_terms()

    @functools.cache  # noqa: B019 (plans are few and immutable; see the class docstring)
    def _activation_terms(self) -> tuple[tuple[ActivationTerm, ...], ...]:
        programs: list[tuple[ActivationTerm, ...]] = [((1.0, 0, ()),)]
        for index in self.indices[1:]:
            counts: Counter = Counter()
            for partition in _set_partitions(list(range(len(index)))):
                factors = tuple(sorted(self.slot(tuple(index[p] for p in block)) for block in partition))
                counts[(len(partition), factors)] += 1
            programs.append(tuple((float(c), m, f) for (m, f), c in sorted(counts.items())))
        if self.laplacian_axes is not None:
            terms = [(1.0, 1, (self.laplacian_slot,))]
            terms += [(1.0, 2, (self.slot((axis,)),) * 2) for axis in self.laplacian_axes]
            programs.append(tuple(terms))
        return tuple(programs)

    @property
    def max_activation_order(self) -> int:
        """Highest derivative of the activation the forward rule uses."""
        return self._max_activation_order()

    @functools.cache  # noqa: B019 (plans are few and immutable; see the class docstring)
    def _max_activation_order(self) -> int:
        return max(m for terms in self.activation_terms for _, m, _ in terms)

    @property
    def activation_adjoint_terms(self) -> tuple[tuple[AdjointTerm, ...], ...]:
        """Per slot j: terms (coef, m, k, factors) with dL/dz_j = sum coef * s^(m)(z_0) * g_k * prod z_factors.

        This is the transpose of the linearisation of `activation_terms` at z: d/dz_0 raises the
        activation's derivative order by one; d/dz_j (j > 0) removes one factor z_j (times its multiplicity).
        """
        return self._activation_adjoint_terms()

    @functools.cache  # noqa: B019 (plans are few and immutable; see the class docstring)
    def _activation_adjoint_terms(self) -> tuple[tuple[AdjointTerm, ...], ...]:
        adjoint: list[Counter] = [Counter() for _ in range(self.num_slots)]
        for k, terms in enumerate(self.activation_terms):
            for coef, m, factors in terms:
                adjoint[0][(m + 1, k, factors)] += coef
                for j in set(factors):
                    rest = list(factors)
                    rest.remove(j)
                    adjoint[j][(m, k, tuple(rest))] += coef * factors.count(j)
        return tuple(
            tuple((c, m, k, f) for (m, k, f), c in sorted(counter.items())) for counter in adjoint
        )

    @property
    def product_terms(self) -> tuple[tuple[ProductTerm, ...], ...]:
        """Per slot k: terms (coef, a, b) with D_k (x y) = sum coef * x_a * y_b (Leibniz)."""
        return self._product_terms()

    @functools.cache  # noqa: B019 (plans are few and immutable; see the class docstring)
    def _product_terms(self) -> tuple[tuple[ProductTerm, ...], ...]:
        programs: list[tuple[ProductTerm, ...]] = [((1.0, 0, 0),)]
        for index in self.indices[1:]:
            counts: Counter = Counter()
            for mask in range(2 ** len(index)):
                left = tuple(index[p] for p in range(len(index)) if mask >> p & 1)
                right = tuple(index[p] for p in range(len(index)) if not mask >> p & 1)
                counts[(self.slot(left), self.slot(right))] += 1
            programs.append(tuple((float(c), a, b) for (a, b), c in sorted(counts.items())))
        if self.laplacian_axes is not None:
            lap = self.laplacian_slot
            terms = [(1.0, 0, lap), (1.0, lap, 0)]
            terms += [(2.0, self.slot((axis,)), self.slot((axis,))) for axis in self.laplacian_axes]
            programs.append(tuple(terms))
        return tuple(programs)
