"""soap_kernels::rotated_adam_ and soap_kernels::rotate_momentum_ (Triton) against their torch references and the
optimizer's projection math: TRITON_INTERPRET=1 on CPU tensors, or a CUDA GPU."""

from __future__ import annotations

import contextlib
import types

import pytest
import torch

from soap_kernels.ops import _triton_utils
from soap_kernels.ops import rotated_adam as ra
from soap_kernels.ops.rotated_adam import rotate_momentum_, rotate_momentum_ref, rotated_adam_, rotated_adam_ref
from soap_kernels.optim.projection import project, project_back
from tests.cuda_marks import needs_gpu_memory, needs_two_gpus
from tests.launch_guards import record_launch_guards

OPCHECK_ALL = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
HYPER = dict(beta1=0.9, beta2=0.99, eps=1e-8)
_ADAM_REF = rotated_adam_ref  # bound at import: the triton_only fixture patches the module attributes
_CARRY_REF = rotate_momentum_ref


@pytest.fixture
def device(triton_device):
    return triton_device


@pytest.fixture
def triton_only(monkeypatch):
    """Make a silent fall back to the torch reference inside the ops an error."""

    def refuse(*args, **kwargs):
        raise AssertionError("the op ran the torch reference instead of the Triton kernels")

    monkeypatch.setattr(ra, "rotated_adam_ref", refuse)
    monkeypatch.setattr(ra, "rotate_momentum_ref", refuse)


def _tol(dtype):
    return dict(rtol=1e-11, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-6)


def _step_matches_reference(state, ok, dtype, decay, normalize) -> None:
    """rotated_adam_ on `state` (in place) gives _adam_reference's param, exp_avg and exp_avg_sq."""
    expected = _adam_reference(state, ok, decay, normalize)
    param, exp_avg, exp_avg_sq, grad, bases, step_size = state
    rotated_adam_(param, exp_avg, exp_avg_sq, grad, bases, ok, step_size, **HYPER, decay=decay, normalize=normalize)
    for name, actual, want in zip(("param", "exp_avg", "exp_avg_sq"), (param, exp_avg, exp_avg_sq), expected):
        torch.testing.assert_close(actual, want, **_tol(dtype), msg=lambda m, n=name: f"{n}: {m}")


def _orthogonal(gen, batch, n, dtype, device):
    q, _ = torch.linalg.qr(torch.randn(batch, n, n, generator=gen, dtype=torch.float64))
    return q.to(dtype=dtype, device=device)


def _state(shape, factored, dtype, device, seed=0):
    """(param, exp_avg, exp_avg_sq, grad, bases, step_size) for a stack [B, *view_shape]."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*size, positive=False):
        x = torch.rand(size, generator=gen, dtype=torch.float64) if positive else torch.randn(size, generator=gen)
        return x.to(dtype=dtype, device=device)

    param, exp_avg, grad = rand(*shape), rand(*shape) * 0.1, rand(*shape)
    exp_avg_sq = rand(*shape, positive=True) * 0.01
    bases = [_orthogonal(gen, shape[0], n, dtype, device) if has else None for n, has in zip(shape[1:], factored)]
    step_size = (torch.rand(shape[0], generator=gen, dtype=torch.float64) * 1e-2 + 1e-3).to(device)
    return param, exp_avg, exp_avg_sq, grad, bases, step_size


def _matrix_args(shape, bases):
    return (None, bases[0]) if len(shape) == 2 else (bases[0], bases[1])


def _adam_reference(state, ok, decay, normalize):
    param, exp_avg, exp_avg_sq, grad, bases, step_size = (
        [x.clone() if isinstance(x, torch.Tensor) else x for x in state]
    )  # fmt: skip
    views = [t.unsqueeze(1) if t.dim() == 2 else t for t in (param, exp_avg, exp_avg_sq, grad)]
    _ADAM_REF(*views, *_matrix_args(grad.shape, bases), ok, step_size, **HYPER, decay=decay, normalize=normalize)
    return param, exp_avg, exp_avg_sq


CASES = [  # (shape [B, *view_shape], factored dims)
    ((3, 7, 33), (True, True)),
    ((1, 1, 5), (False, True)),
    ((2, 40, 70), (True, False)),
    ((2, 5, 6), (False, False)),
    ((3, 33), (True,)),
    ((1, 7), (False,)),
    ((1, 257), (True,)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_rotated_adam_matches_reference(device, dtype, case, triton_only):
    shape, factored = case
    ok = torch.tensor(True, device=device)
    for decay, normalize in [(0.0, False), (3e-5, True)]:
        _step_matches_reference(_state(shape, factored, dtype, device), ok, dtype, decay, normalize)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_split_chain_path(device, dtype, monkeypatch, triton_only):
    """With every chain split (X B formed first by its own launch) both ops still match their references."""
    monkeypatch.setattr(ra, "_CHAIN_MAX_ROW_TILES", 0)
    ok = torch.tensor(True, device=device)
    _step_matches_reference(_state((2, 37, 70), (True, True), dtype, device, seed=5), ok, dtype, 1e-4, True)
    _check_carry(device, dtype, (2, 37, 70), (True, True), seed=6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_normalize_with_partials_summed_by_torch(device, dtype, monkeypatch, triton_only):
    """Past _MAX_PARTIALS tiles the per-tile sums of U^2 are summed by torch before the normalising launch."""
    monkeypatch.setattr(ra, "_MAX_PARTIALS", 1)
    ok = torch.tensor(True, device=device)
    _step_matches_reference(_state((2, 40, 70), (True, True), dtype, device, seed=13), ok, dtype, 1e-4, True)


def test_reference_is_the_optimizer_math():
    """rotated_adam_ref is stack.py's _update_params (project, adam moments, project_back, rms, step, decay)."""
    ok = torch.tensor(True)
    for shape, factored in [((3, 6, 5), (True, True)), ((2, 9), (True,)), ((2, 4, 3), (False, True))]:
        state = _state(shape, factored, torch.float64, "cpu", seed=7)
        param, exp_avg, exp_avg_sq, grad, bases, step_size = (
            s.clone() if isinstance(s, torch.Tensor) else s for s in state
        )  # fmt: skip
        rotated = project(grad, bases)
        new_avg = exp_avg * 0.9 + 0.1 * rotated
        new_sq = exp_avg_sq * 0.99 + (1.0 - 0.99) * rotated * rotated
        update = project_back(new_avg / (new_sq.sqrt() + 1e-8), bases)
        update = update / (1e-30 + update.square().mean(dim=tuple(range(1, update.dim())), keepdim=True).sqrt())
        new = param - step_size.reshape(-1, *[1] * (param.dim() - 1)) * update
        new = new - 2e-4 * new
        actual = _adam_reference(state, ok, 2e-4, True)
        for got, want in zip(actual, (new, new_avg, new_sq)):
            torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-14)


@pytest.mark.filterwarnings("ignore:invalid value encountered")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("normalize", [False, True])
def test_not_ok_leaves_state_bitwise_unchanged(device, dtype, normalize, triton_only):
    ok = torch.tensor(False, device=device)
    for shape, factored in [((3, 7, 33), (True, True)), ((1, 5), (True,))]:
        param, exp_avg, exp_avg_sq, grad, bases, step_size = _state(shape, factored, dtype, device)
        grad.view(-1)[0] = float("nan")
        grad.view(-1)[-1] = float("inf")
        before = [t.clone() for t in (param, exp_avg, exp_avg_sq)]
        rotated_adam_(
            param, exp_avg, exp_avg_sq, grad, bases, ok, step_size, **HYPER, decay=1e-3, normalize=normalize
        )  # fmt: skip
        for actual, old in zip((param, exp_avg, exp_avg_sq), before):
            assert torch.equal(actual, old)


def _check_carry(device, dtype, shape, factored, seed=0):
    gen = torch.Generator().manual_seed(seed + 100)
    _, exp_avg, _, _, old_bases, _ = _state(shape, factored, dtype, device, seed=seed)
    new_bases = [_orthogonal(gen, shape[0], q.shape[-1], dtype, device) if q is not None else None for q in old_bases]
    ok = torch.tensor(True, device=device)
    expected = exp_avg.clone()
    view = expected.unsqueeze(1) if expected.dim() == 2 else expected
    _CARRY_REF(view, *_matrix_args(shape, old_bases), *_matrix_args(shape, new_bases), ok)
    rotate_momentum_(exp_avg, old_bases, new_bases, ok)
    torch.testing.assert_close(exp_avg, expected, **_tol(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_rotate_momentum_matches_reference(device, dtype, case, triton_only):
    _check_carry(device, dtype, *case)


def test_rotate_momentum_reference_is_the_optimizer_math():
    for shape, factored in [((3, 6, 5), (True, True)), ((2, 9), (True,))]:
        _, exp_avg, _, _, old, _ = _state(shape, factored, torch.float64, "cpu", seed=8)
        _, _, _, _, new, _ = _state(shape, factored, torch.float64, "cpu", seed=9)
        expected = project(project_back(exp_avg, old), new)
        view = exp_avg.unsqueeze(1) if exp_avg.dim() == 2 else exp_avg
        rotate_momentum_ref(view, *_matrix_args(shape, old), *_matrix_args(shape, new), torch.tensor(True))
        torch.testing.assert_close(exp_avg, expected, rtol=1e-13, atol=1e-14)


@pytest.mark.filterwarnings("ignore:invalid value encountered")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rotate_momentum_not_ok_unchanged(device, dtype, triton_only):
    _, exp_avg, _, _, bases, _ = _state((3, 7, 33), (True, True), dtype, device)
    nan_bases = [torch.full_like(q, float("nan")) for q in bases]
    before = exp_avg.clone()
    rotate_momentum_(exp_avg, bases, nan_bases, torch.tensor(False, device=device))
    assert torch.equal(exp_avg, before)


def test_opcheck(device):
    utils = OPCHECK_ALL if device.type == "cuda" else ("test_schema", "test_autograd_registration", "test_faketensor")
    param, exp_avg, exp_avg_sq, grad, (ql, qr), step_size = _state((3, 7, 5), (True, True), torch.float64, device)
    for ok in (True, False):
        flag = torch.tensor(ok, device=device)
        torch.library.opcheck(
            torch.ops.soap_kernels.rotated_adam_.default,
            (param, exp_avg, exp_avg_sq, grad, ql, None, flag, step_size, 0.9, 0.99, 1e-8, 1e-4, True, False),
            test_utils=utils,
        )
        torch.library.opcheck(
            torch.ops.soap_kernels.rotate_momentum_.default,
            (exp_avg, ql, qr, ql.flip(0).contiguous(), qr, flag, False),
            test_utils=utils,
        )


def test_schemas_declare_the_mutations():
    adam = str(torch.ops.soap_kernels.rotated_adam_.default._schema)
    assert "Tensor(a0!) param, Tensor(a1!) exp_avg, Tensor(a2!) exp_avg_sq, Tensor grad" in adam
    carry = str(torch.ops.soap_kernels.rotate_momentum_.default._schema)
    assert carry.startswith("soap_kernels::rotate_momentum_(Tensor(a0!) exp_avg, Tensor? old_q_left")
    assert adam.endswith("-> ()") and carry.endswith("-> ()")


def test_reference_path_without_triton(monkeypatch):
    """On CPU without the interpreter the ops run the torch references."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    ok = torch.tensor(True)
    state = _state((2, 4, 3), (True, True), torch.float64, "cpu")
    expected = _adam_reference(state, ok, 0.0, False)
    param, exp_avg, exp_avg_sq, grad, bases, step_size = state
    rotated_adam_(param, exp_avg, exp_avg_sq, grad, bases, ok, step_size, **HYPER)
    for actual, want in zip((param, exp_avg, exp_avg_sq), expected):
        torch.testing.assert_close(actual, want, rtol=0, atol=0)


def test_bad_arguments_raise():
    param, exp_avg, exp_avg_sq, grad, bases, step_size = _state((2, 4, 3), (True, True), torch.float32, "cpu")
    ok = torch.tensor(True)

    def call(**changes):
        args = dict(param=param, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq, grad=grad, bases=bases, ok=ok,
                    step_size=step_size)  # fmt: skip
        args.update(changes)
        hyper = {**HYPER, **{k: args.pop(k) for k in list(args) if k in ("beta1", "eps", "decay")}}
        rotated_adam_(args["param"], args["exp_avg"], args["exp_avg_sq"], args["grad"], args["bases"], args["ok"],
                      args["step_size"], **hyper)  # fmt: skip

    with pytest.raises(ValueError, match="exp_avg has shape"):
        call(exp_avg=exp_avg[:, :3].contiguous())
    with pytest.raises(TypeError, match="exp_avg_sq has dtype"):
        call(exp_avg_sq=exp_avg_sq.double())
    with pytest.raises(ValueError, match="q_left has shape"):
        call(bases=[bases[1], bases[1]])
    with pytest.raises(ValueError, match="got 1 bases"):
        call(bases=[bases[0]])
    with pytest.raises(ValueError, match="step_size"):
        call(step_size=step_size[:1])
    with pytest.raises(TypeError, match="ok must be"):
        call(ok=torch.tensor([True, True]))
    with pytest.raises(ValueError, match="beta1=1.5"):
        call(beta1=1.5)
    with pytest.raises(ValueError, match="decay=-1.0"):
        call(decay=-1.0)
    with pytest.raises(ValueError, match="contiguous"):
        call(param=param.mT.contiguous().mT)
    with pytest.raises(ValueError, match="view rank 3"):
        call(param=param[..., None], exp_avg=exp_avg[..., None], exp_avg_sq=exp_avg_sq[..., None], grad=grad[..., None])
    with pytest.raises(TypeError, match="float32 and float64"):
        half = [t.half() for t in (param, exp_avg, exp_avg_sq, grad)]
        call(param=half[0], exp_avg=half[1], exp_avg_sq=half[2], grad=half[3], bases=[b.half() for b in bases])
    with pytest.raises(ValueError, match="both be given or both be None"):
        rotate_momentum_(exp_avg, bases, [bases[0], None], ok)


def test_tf32_opt_in_runs(device, triton_only):
    """allow_tf32=True (float32 only) runs the same kernels with TF32 products: close to the exact result."""
    ok = torch.tensor(True, device=device)
    state = _state((3, 20, 17), (True, True), torch.float32, device, seed=11)
    expected = _adam_reference(state, ok, 0.0, False)
    param, exp_avg, exp_avg_sq, grad, bases, step_size = state
    rotated_adam_(param, exp_avg, exp_avg_sq, grad, bases, ok, step_size, **HYPER, allow_tf32=True)
    torch.testing.assert_close(exp_avg, expected[1], rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(param, expected[0], rtol=1e-2, atol=1e-3)


@pytest.mark.cuda
def test_float64_runs_the_triton_kernels_on_gpu():
    """Triton >= 3.6 lowers a float64 tl.dot on NVIDIA GPUs (DMMA on sm80+): no fall back to the torch reference."""
    from soap_kernels.ops._triton_utils import use_triton

    assert use_triton(torch.zeros(1, dtype=torch.float64, device="cuda"))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", [((3, 256, 256), (True, True)), ((2, 512, 384), (True, True)), ((4, 1000), (True,))],
                         ids=str)  # fmt: skip
def test_real_sizes_on_gpu(dtype, case):
    shape, factored = case
    ok = torch.tensor(True, device="cuda")
    tol = dict(rtol=1e-10, atol=1e-11) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    for normalize in (False, True):
        state = _state(shape, factored, dtype, "cuda")
        expected = _adam_reference(state, ok, 1e-4, normalize)
        param, exp_avg, exp_avg_sq, grad, bases, step_size = state
        rotated_adam_(param, exp_avg, exp_avg_sq, grad, bases, ok, step_size, **HYPER, decay=1e-4, normalize=normalize)
        for actual, want in zip((param, exp_avg, exp_avg_sq), expected):
            torch.testing.assert_close(actual, want, **tol)
    _check_carry("cuda", dtype, shape, factored)


@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_ops_compose_to_the_optimizer_trajectory(device, triton_only):
    """factor_update_ + rotated_adam_ + rotate_momentum_ wired as ParamStack does reproduce SOAP (torch backend)
    over 7 steps of a float64 stack of two 6 x 6 matrices and a 6 x 7 one, with a refresh every 2nd step and a
    skipped (NaN) step; this is the integration the optimizer's triton backend performs. (Only full-rank factors:
    a vector's rank-1 first factor has a degenerate eigenspace whose basis depends on rounding, DESIGN.md 4.)"""
    from soap_kernels import SOAP
    from soap_kernels.ops.factor_update import factor_update_
    from soap_kernels.optim.refresh import initial_basis, refresh_basis

    lr, (beta1, beta2), eps, wd, freq = 0.01, (0.9, 0.95), 1e-8, 0.01, 2
    gen = torch.Generator().manual_seed(12)
    shapes = [(6, 6), (6, 6), (6, 7)]
    ours = [torch.randn(s, generator=gen, dtype=torch.float64).to(device) for s in shapes]
    theirs = [p.clone().cpu().requires_grad_() for p in ours]
    opt = SOAP(theirs, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=wd, precondition_frequency=freq,
               backend="torch")  # fmt: skip
    stacks = [[0, 1], [2]]
    state = []
    for members in stacks:
        view = (len(members), *shapes[members[0]])
        zeros = dict(dtype=torch.float64, device=device)
        state.append(dict(
            exp_avg=torch.zeros(view, **zeros), exp_avg_sq=torch.zeros(view, **zeros),
            factors=[torch.zeros(view[0], n, n, **zeros) for n in view[1:]], bases=None,
            t=torch.zeros(view[0], dtype=torch.int64, device=device),
        ))  # fmt: skip
    for step in range(8):
        grads = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
        if step == 4:
            grads[1][2, 3] = float("nan")
        for p, g in zip(theirs, grads):
            p.grad = g.clone()
        opt.step()
        ok = torch.stack([g.isfinite().all() for g in grads]).all().to(device)
        for members, st in zip(stacks, state):
            g = torch.stack([grads[i] for i in members]).to(device)
            if st["bases"] is not None:
                stacked = torch.stack([ours[i] for i in members])
                t_next = (st["t"] + 1).to(torch.float64)
                step_size = lr * torch.sqrt(1.0 - beta2**t_next) / (1.0 - beta1**t_next)
                rotated_adam_(stacked, st["exp_avg"], st["exp_avg_sq"], g, st["bases"], ok, step_size,
                              beta1=beta1, beta2=beta2, eps=eps, decay=lr * wd)  # fmt: skip
                for i, row in zip(members, stacked):
                    ours[i].copy_(row)
                st["t"] = torch.where(ok, st["t"] + 1, st["t"])
            for d, factor in enumerate(st["factors"]):
                factor_update_(factor, g, ok, beta2, d)
            if st["bases"] is None:
                st["bases"], st["step"] = [initial_basis(f) for f in st["factors"]], 0
                continue
            st["step"] += 1
            if st["step"] % freq == 0:
                new_bases = []
                for d, (factor, basis) in enumerate(zip(st["factors"], st["bases"])):
                    new_basis, order = refresh_basis(factor, basis, "qr")
                    index_shape = [factor.shape[0]] + [1] * (g.dim() - 1)
                    index_shape[d + 1] = order.shape[-1]
                    permuted = st["exp_avg_sq"].gather(d + 1, order.reshape(index_shape).expand_as(g))
                    st["exp_avg_sq"].copy_(torch.where(ok, permuted, st["exp_avg_sq"]))
                    new_bases.append(torch.where(ok, new_basis, basis))
                rotate_momentum_(st["exp_avg"], st["bases"], new_bases, ok)
                st["bases"] = new_bases
    for mine, reference in zip(ours, theirs):
        torch.testing.assert_close(mine.cpu(), reference.detach(), rtol=1e-9, atol=1e-11)


# ---- launch device guard and the float64 tl.dot probe ------------------------------------------------------


def test_every_launch_runs_under_a_guard_for_the_stacks_device(device, monkeypatch, triton_only):
    """Triton launches on the current CUDA device: each kernel launch must sit inside on_device_of(the stack)."""
    monkeypatch.setattr(ra, "_CHAIN_MAX_ROW_TILES", 0)  # also launch the split-chain X B products
    launches = record_launch_guards(monkeypatch, ra)
    ok = torch.tensor(True, device=device)
    _step_matches_reference(
        _state((2, 37, 70), (True, True), torch.float64, device, seed=7), ok, torch.float64, 1e-4, True
    )
    _check_carry(device, torch.float64, (2, 37, 70), (True, True), seed=8)
    names = {name for name, _ in launches}
    assert names == {
        "_sandwich_kernel", "_rotated_adam_moments_kernel", "_rotated_adam_update_kernel",
        "_rotated_adam_normalized_update_kernel",
    }  # fmt: skip
    assert all(guards == [torch.device(device)] for _, guards in launches), launches


def test_device_guard_selects_the_tensors_cuda_device(monkeypatch):
    """on_device_of: torch.cuda.device(tensor.device) for a CUDA tensor, a no-op context for a CPU one."""
    entered = []

    @contextlib.contextmanager
    def fake_cuda_device(dev):
        entered.append(torch.device(dev))
        yield

    monkeypatch.setattr(torch.cuda, "device", fake_cuda_device)
    with _triton_utils.on_device_of(types.SimpleNamespace(device=torch.device("cuda", 1))):
        assert entered == [torch.device("cuda", 1)]
    with _triton_utils.on_device_of(torch.zeros(1)):
        pass
    assert entered == [torch.device("cuda", 1)]


@pytest.mark.cuda
@needs_two_gpus
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stack_on_a_gpu_that_is_not_current(dtype):
    """Tensors on cuda:1 while cuda:0 is current: the kernels must run on cuda:1 and match the reference."""
    device = torch.device("cuda", 1)
    ok = torch.tensor(True, device=device)
    with torch.cuda.device(0):
        for normalize in (False, True):
            state = _state((2, 37, 70), (True, True), dtype, device, seed=9)
            _step_matches_reference(state, ok, dtype, 1e-4, normalize)
        _check_carry(device, dtype, (2, 37, 70), (True, True), seed=10)
        assert torch.cuda.current_device() == 0


def test_fp64_probe_operands_are_exact_in_float64_only():
    """The probe's fixed inputs: their float64 product is exact, a float32 (or TF32) product is not."""
    a, b = _triton_utils._fp64_probe_operands()
    exact = a @ b
    assert exact.abs().max() < 2**53
    assert torch.equal(a.double() @ b.double(), exact.double())
    assert not torch.equal(a.float().double() @ b.float().double(), exact.double())


def test_fp64_probe_refuses_to_run_inside_cuda_graph_capture(monkeypatch):
    """The probe syncs with the host: asked first during capture it raises, and caches no answer for the device."""
    monkeypatch.setattr(torch.cuda, "device", lambda dev: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    cached = _triton_utils._fp64_dot_supported.cache_info().currsize
    with pytest.raises(RuntimeError, match="run one eager step before capturing"):
        _triton_utils.fp64_dot_supported(torch.device("cuda", 3))
    assert _triton_utils._fp64_dot_supported.cache_info().currsize == cached


@pytest.mark.cuda
@needs_gpu_memory(64)
def test_parameter_of_more_than_2_31_elements():
    """A vector of 2^31 + 4096 elements (no basis), normalised: offsets past 2^31 must not wrap.

    A constant gradient from zero state makes every U entry equal, so U / rms(U) = 1 and every parameter entry
    must become -step; a wrapped offset would leave the tail untouched (or write the head twice).
    """
    torch.cuda.empty_cache()  # blocks cached by earlier tests must not make the big allocations fail
    numel = 2**31 + 4096
    param = torch.zeros(1, numel, device="cuda")
    exp_avg, exp_avg_sq = torch.zeros_like(param), torch.zeros_like(param)
    grad = torch.full_like(param, 0.5)
    step = torch.tensor([1e-2], device="cuda")
    ok = torch.tensor(True, device="cuda")
    rotated_adam_(param, exp_avg, exp_avg_sq, grad, [None], ok, step, **HYPER, normalize=True)
    del exp_avg, exp_avg_sq, grad
    for part in (param[0, :4096], param[0, 2**31 - 2048 : 2**31 + 2048], param[0, -4096:]):
        torch.testing.assert_close(part, torch.full_like(part, -1e-2), rtol=1e-5, atol=0)
