"""Remaking a jet network's elementwise stacks in the backward instead of keeping them (jet(..., recompute=True)).

The backward of a jet network keeps [K, N, F] stacks: each dense layer its input x (for dL/dW = sum_k g_k^T x_k)
and its z = x W^T + b (for the activation adjoint), each product both operands, each scaling by a trainable
factor its operand. Every stack but the z's is elementwise in kept stacks: h = s(z) as a jet, the gates
v + h (u - v), the residual mix alpha h + (1 - alpha) x. So a stack made by an elementwise rule carries a
Recipe (the rule and its sources: kept tensors or other recipes), and while `keeping_recipes()` is active a
saved-tensor hook stores the recipe in place of the stack; the backward runs it again, under no_grad. Every
tensor kept this way (saved as is, or a recipe's source) is checked like autograd checks saved tensors: one
modified in place before the backward raises instead of giving wrong gradients. Inside jet(), these hooks take
the place of any saved-tensor hooks the caller set (torch.autograd.graph.save_on_cpu, for one).
A stack that is shared, the source of two recipes or saved twice (PirateNet's gates u - v and v, a block's
output), is kept instead (`Recipe.kept`): remaking it for every use would cost more passes than it saves memory.
Memory: about one stack per dense layer (its z) plus the shared ones, instead of two to three per layer; time:
the elementwise passes again in the backward, and the GEMMs of layers on a narrow input (ops/jet_dense.py's
NARROW_INPUT: the coordinates), whose z is remade too, since their GEMM costs about an elementwise pass. Recipes
deeper than MAX_DEPTH rules are not made (the stack is kept), which bounds the work a backward redoes per saved
stack.
With keeping_recipes(layers=True) (jet(..., recompute="all")) a dense layer's z gets a recipe too: the layer's
op run again on its input (itself remade), one GEMM. That recipe is cached: count_calls fixes, when the forward
is done, how many calls the backward will make to it, and the first call's stack is held until the last, so each
GEMM runs once per backward, and z is in memory only from the first backward node that needs it (the block
being differentiated) to the last. Between shared stacks (kept) a chain of layers is remade at once: PirateNet's
blocks, one at a time; a plain MLP, one chain from x, holds all its z again at its first backward node.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

# PirateNet's gate v + s(z) (u - v) is three rules deep over the kept v and u - v; four leaves room for one more
MAX_DEPTH = 4
_ATTRIBUTE = "_soap_jet_recipe"
_state = threading.local()  # .keeping: whether keeping_recipes() is active in this thread (hooks are per thread)


@dataclass(frozen=True, eq=False)
class _Kept:
    """A tensor kept for the backward (detached: no graph held, so no reference cycle through it) and its
    version then; get() raises, as autograd does, if it was modified in place since."""

    tensor: torch.Tensor
    version: int

    @staticmethod
    def of(tensor: torch.Tensor) -> _Kept:
        return _Kept(tensor.detach(), tensor._version)

    def get(self) -> torch.Tensor:
        if self.tensor._version != self.version:
            raise RuntimeError(
                "one of the variables needed for gradient computation has been modified by an inplace operation: "
                f"a {tuple(self.tensor.shape)} tensor kept by soap_kernels.jet(..., recompute) is at version "
                f"{self.tensor._version}, expected {self.version}"
            )
        return self.tensor


@dataclass(eq=False)
class Recipe:
    """make(*sources) remakes the stack; a source is a _Kept tensor or another Recipe. uses: recipes made from
    this one; saves: times autograd saved the stack; kept: the stack itself once shared (then never remade).
    cached (a dense layer's z, remade by its GEMM): in a backward, the first call's stack is held until the
    `calls` that backward makes (count_calls) are done, so each GEMM runs once per backward; each backward
    counts anew (a retained graph), and its end drops a stack a skipped node left held."""

    make: Callable[..., torch.Tensor]
    sources: tuple
    depth: int
    uses: int = 0
    saves: int = 0
    kept: _Kept | None = None
    cached: bool = False
    calls: int = 0
    calls_left: int = 0
    remade: torch.Tensor | None = None
    backward: int = -1  # the autograd graph task whose calls calls_left counts

    @property
    def chain_depth(self) -> int:
        """The rules a call runs before reaching a stack that is there: none for a kept or cached recipe."""
        return 0 if self.kept is not None or self.cached else self.depth

    def __call__(self) -> torch.Tensor:
        if self.kept is not None:
            return self.kept.get()
        # held for the backward's later calls; outside a backward (grad_fn._saved_* read by hand) nothing is held
        backward = torch._C._current_graph_task_id() if self.cached else -1
        if backward != -1 and backward != self.backward:  # the first call in this backward
            self.backward, self.calls_left, self.remade = backward, self.calls, None
            # by weak reference: the graph frees this recipe and its sources as the backward goes on
            torch.autograd.Variable._execution_engine.queue_callback(functools.partial(_drop_remade, weakref.ref(self)))
        stack = self.remade
        if stack is None:
            with torch.no_grad():
                stack = self.make(*(s() if isinstance(s, Recipe) else s.get() for s in self.sources))
        if backward != -1:
            self.calls_left -= 1
            self.remade = stack if self.calls_left > 0 else None
        return stack

    def count_use(self, stack: torch.Tensor, saved: bool) -> None:
        """Note a use of `stack` (this recipe's): the second use as a source, or second save, keeps it."""
        if saved:
            self.saves += 1
        else:
            self.uses += 1
        if self.kept is None and (self.uses >= 2 or self.saves >= 2):
            self.kept, self.sources = _Kept.of(stack), ()  # what it was made from may go
            # later users take the stack itself; no stack -> recipe -> stack cycle (which only the GC could free)
            delattr(stack, _ATTRIBUTE)


def _drop_remade(recipe_ref: weakref.ref) -> None:
    """At the end of a backward, for a cached recipe still alive: drop its stack, which a node the backward
    skipped (autograd.grad of some parameters only) would have called last."""
    recipe = recipe_ref()
    if recipe is not None:
        recipe.remade = None


def attach(
    stack: torch.Tensor, make: Callable[..., torch.Tensor], *operands: torch.Tensor, cached: bool = False
) -> torch.Tensor:
    """Give `stack` = make(*operands) a recipe whose sources are the operands' recipes where they have one
    (else the operands themselves), unless that recipe would be deeper than MAX_DEPTH. Returns the stack.
    cached: for a costly rule (a GEMM), remade once per backward and held until its last use."""
    sources = tuple(recipe_of(t) or _Kept.of(t) for t in operands)
    recipes = [s for s in sources if isinstance(s, Recipe)]
    # a source this use makes shared is kept from now on (count_use below): no rules to run for it
    depth = 1 + max((0 if s.uses + recipes.count(s) >= 2 else s.chain_depth for s in recipes), default=0)
    if depth > MAX_DEPTH and not cached:  # a cached recipe runs its sources' rules once, not per call
        return stack
    for operand, source in zip(operands, sources, strict=True):
        if isinstance(source, Recipe):
            source.count_use(operand, saved=False)
    recipe = Recipe(make, sources, depth, cached=cached)
    setattr(stack, _ATTRIBUTE, recipe)
    made = getattr(_state, "recipes", None)
    if made is not None:
        made.append(recipe)
    return stack


def count_calls(recipes: list[Recipe]) -> None:
    """Set each cached recipe's `calls`: the calls one backward makes to it, once every save is done.

    A recipe is called once per save of its stack (an unpack) and once per call of a recipe made from it that is
    not kept; a cached one calls its sources only the first time. `recipes` in the order they were made (each
    after its sources), so one pass from the last fixes every count.
    """
    calls = {id(r): r.saves for r in recipes}
    for recipe in reversed(recipes):
        if recipe.kept is not None:
            continue  # its stack is there: its sources are never called (and were dropped)
        made = calls[id(recipe)]
        if recipe.cached:
            recipe.calls, made = made, min(made, 1)
        for source in recipe.sources:
            if isinstance(source, Recipe) and id(source) in calls:
                calls[id(source)] += made


def recipe_of(tensor: torch.Tensor) -> Recipe | None:
    return getattr(tensor, _ATTRIBUTE, None)


def forget(tensor: torch.Tensor) -> None:
    """Drop the tensor's recipe (and what it holds): for the stacks jet() returns, which nothing remakes."""
    if recipe_of(tensor) is not None:
        delattr(tensor, _ATTRIBUTE)


def keeping_recipes_active() -> bool:
    """Whether keeping_recipes() is active: ops then need not save what a recipe remakes."""
    return getattr(_state, "keeping", False)


def remaking_layers_active() -> bool:
    """Whether keeping_recipes(layers=True) is active: the dense layers' z get (cached) recipes too."""
    return getattr(_state, "layers", False)


@dataclass(frozen=True, eq=False)
class _ViewOf:
    """A saved view (a reshape, a slot) of a stack with a recipe: the recipe and where the view lies in it."""

    recipe: Recipe
    base_stride: tuple[int, ...]
    size: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int


def _pack(tensor: torch.Tensor):
    recipe = recipe_of(tensor)
    if recipe is not None:
        recipe.count_use(tensor, saved=True)
        return recipe
    base = tensor._base
    base_recipe = recipe_of(base) if base is not None else None
    if base_recipe is not None:
        base_recipe.count_use(base, saved=True)
        return _ViewOf(base_recipe, base.stride(), tensor.size(), tensor.stride(), tensor.storage_offset())
    return _Kept.of(tensor)


def _unpack(saved):
    if isinstance(saved, _Kept):
        return saved.get()
    if torch.is_grad_enabled():
        # the remade stack would have no history: a recorded (create_graph) backward through it would be wrong
        raise RuntimeError(
            "soap_kernels.jet(..., recompute): the jets' backward cannot be recorded (create_graph=True) "
            "because it remakes stacks without their history; call jet(..., recompute=False) for that"
        )
    if isinstance(saved, Recipe):
        return saved()
    base = saved.recipe()
    if base.stride() != saved.base_stride:  # the rules make contiguous stacks: a remade one is laid out alike
        raise RuntimeError(f"jets recompute: a remade stack has strides {base.stride()}, not {saved.base_stride}")
    return base.as_strided(saved.size, saved.stride, saved.offset)


@contextlib.contextmanager
def keeping_recipes(layers: bool = False) -> Iterator[None]:
    """While active, tensors autograd saves for the backward are stored as their recipes when they have one.
    layers: the dense layers' z are remade too, by their GEMM (ops/jet_dense.py gives them cached recipes)."""
    outer_recipes = getattr(_state, "recipes", None)
    previous = keeping_recipes_active(), remaking_layers_active(), outer_recipes
    _state.keeping, _state.layers, _state.recipes = True, layers, []
    try:
        with torch.autograd.graph.saved_tensors_hooks(_pack, _unpack):
            yield
        if outer_recipes is None:
            count_calls(_state.recipes)
        else:  # nested: the outer context counts them, once its saves are all done too
            outer_recipes.extend(_state.recipes)
    finally:
        _state.keeping, _state.layers, _state.recipes = previous
