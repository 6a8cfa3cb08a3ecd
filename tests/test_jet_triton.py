"""The jet Triton kernels against the torch reference: TRITON_INTERPRET=1 on CPU, or a CUDA GPU."""

import pytest
import torch

import soap_kernels
from soap_kernels import nn as snn
from soap_kernels.jets import JetPlan
from soap_kernels.jets.reference import activation_jet_adjoint_ref, activation_jet_ref
from soap_kernels.ops.jet_dense import (
    jet_dense_activation,
    jet_dense_activation_backward,
    jet_dense_activation_backward_ref,
    jet_dense_activation_ref,
)
from soap_kernels.ops.jet_dense_triton import jet_activation_triton
from tests.cuda_marks import needs_gpu_memory, needs_two_gpus
from tests.launch_guards import record_launch_guards


@pytest.fixture
def device(triton_device):
    return triton_device


LAYOUTS = {
    "value_only": JetPlan.build(1, []),
    "allen_cahn": JetPlan.build(2, [(0,), (1, 1)]),
    "mixed_fourth_laplacian": JetPlan.build(2, [(0, 1, 1), (1, 1, 1, 1)], laplacian_axes=[0, 1]),
}
OPCHECK_ALL = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
# float32 tolerance: the order-5 towers of gelu, sigmoid and silu (polynomials in the sigmoid/tanh value)
# cancel heavily in float32; both implementations land within ~4e-5 of the float64 result
FLOAT32_RTOL = {"gelu": 2e-4, "sigmoid": 2e-4, "silu": 2e-4}


def _close(actual, expected, dtype, activation, what):
    # sums of fourth-order terms lose digits relative to the largest entry, not to each entry
    scale = max(expected.abs().max().item() if expected.numel() else 0.0, 1.0)
    rtol = 1e-11 if dtype == torch.float64 else FLOAT32_RTOL.get(activation, 1e-5)
    atol = rtol * scale
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=what)


@pytest.fixture(params=["fused", "split"])
def kernels(request, monkeypatch):
    """Both ways of running a layer (ops/jet_dense_triton.kernel_choice), forward and backward alike."""
    monkeypatch.setenv("SOAP_KERNELS_JET_FORWARD", request.param)
    monkeypatch.setenv("SOAP_KERNELS_JET_BACKWARD", request.param)
    return request.param


@pytest.mark.parametrize("layout", list(LAYOUTS), ids=list(LAYOUTS))
@pytest.mark.parametrize("activation", ["tanh", "sin", "silu", "gelu", "sigmoid"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_kernels_match_reference_on_odd_shapes(device, layout, activation, dtype, kernels):
    plan = LAYOUTS[layout]
    torch.manual_seed(0)
    # 70 x 33: several programs of the split path's elementwise kernels (1024 elements of a slot each)
    for n, f_in, f_out, bias in [(7, 33, 17, True), (1, 1, 1, False), (33, 7, 1, True), (70, 5, 33, True)]:
        x = torch.randn(plan.num_slots, n, f_in, dtype=dtype, device=device)
        w = torch.randn(f_out, f_in, dtype=dtype, device=device) / f_in**0.5
        b = torch.randn(f_out, dtype=dtype, device=device) if bias else None
        h, z = jet_dense_activation(x, w, b, activation, plan.key, "triton")
        h_ref, z_ref = jet_dense_activation_ref(x, w, b, activation, plan.key)
        shape = f"N={n} F_in={f_in} F_out={f_out}"
        _close(z, z_ref, dtype, activation, f"z {shape}")
        _close(h, h_ref, dtype, activation, f"h {shape}")
        g = torch.randn_like(h)
        for compute_grad_x in (True, False):
            ours = jet_dense_activation_backward(g, z_ref, x, w, activation, plan.key, "triton", compute_grad_x)
            ref = jet_dense_activation_backward_ref(g, z_ref, x, w, activation, plan.key, compute_grad_x)
            for a, e, name in zip(ours, ref, ("grad_x", "grad_w", "grad_b")):
                _close(a, e, dtype, activation, f"{name} {shape} compute_grad_x={compute_grad_x}")


@pytest.mark.parametrize("layout", list(LAYOUTS), ids=list(LAYOUTS))
@pytest.mark.parametrize("activation", ["tanh", "sin", "gelu"])
def test_split_and_fused_agree_in_float32(device, layout, activation, monkeypatch):
    """The same activation statements either way: only the GEMMs' summation order differs, so the two agree far
    more closely than either agrees with the float64 reference (float32 4th-order sums lose digits alike)."""
    plan = LAYOUTS[layout]
    torch.manual_seed(1)
    for n, f_in, f_out in [(7, 33, 17), (33, 7, 1), (70, 5, 33)]:
        x = torch.randn(plan.num_slots, n, f_in, device=device)
        w = torch.randn(f_out, f_in, device=device) / f_in**0.5
        b = torch.randn(f_out, device=device)
        results = {}
        for way in ("fused", "split"):
            monkeypatch.setenv("SOAP_KERNELS_JET_FORWARD", way)
            monkeypatch.setenv("SOAP_KERNELS_JET_BACKWARD", way)
            h, z = jet_dense_activation(x, w, b, activation, plan.key, "triton")
            g = torch.randn(h.shape, generator=torch.Generator().manual_seed(n)).to(device)
            results[way] = (h, z, *jet_dense_activation_backward(g, z, x, w, activation, plan.key, "triton", True))
        for a, e, name in zip(results["split"], results["fused"], ("h", "z", "grad_x", "grad_w", "grad_b")):
            _close(a, e, torch.float32, activation, f"{name} N={n} F_in={f_in} F_out={f_out}")


def test_an_unknown_kernel_choice_is_refused(device, monkeypatch):
    plan = LAYOUTS["allen_cahn"]
    x = torch.randn(plan.num_slots, 3, 2, dtype=torch.float64, device=device)
    w = torch.randn(2, 2, dtype=torch.float64, device=device)
    _, z = jet_dense_activation_ref(x, w, None, "tanh", plan.key)
    monkeypatch.setenv("SOAP_KERNELS_JET_FORWARD", "fastest")
    with pytest.raises(ValueError, match="SOAP_KERNELS_JET_FORWARD='fastest'"):
        jet_dense_activation(x, w, None, "tanh", plan.key, "triton")
    monkeypatch.delenv("SOAP_KERNELS_JET_FORWARD")
    monkeypatch.setenv("SOAP_KERNELS_JET_BACKWARD", "fastest")
    with pytest.raises(ValueError, match="SOAP_KERNELS_JET_BACKWARD='fastest'"):
        jet_dense_activation_backward(torch.randn_like(z), z, x, w, "tanh", plan.key, "triton", True)


@pytest.mark.parametrize("layout", list(LAYOUTS), ids=list(LAYOUTS))
@pytest.mark.parametrize("activation", ["tanh", "sin", "silu", "gelu", "sigmoid"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_activation_kernel_remakes_the_layers_h_from_its_z(device, layout, activation, dtype):
    """jet_activation_triton (what jet(..., recompute=True) remakes h with) against the fused forward's h and the
    reference, on odd and empty shapes."""
    if device.type == "cuda" and activation not in ("tanh", "gelu"):
        pytest.skip("on a GPU tanh and gelu only (bench/gpu_check.sh's time); every activation runs interpreted")
    plan = LAYOUTS[layout]
    torch.manual_seed(2)
    for n, f_in, f_out in [(7, 33, 17), (1, 1, 1), (33, 7, 1), (1025, 3, 1), (0, 3, 2)]:
        x = torch.randn(plan.num_slots, n, f_in, dtype=dtype, device=device)
        w = torch.randn(f_out, f_in, dtype=dtype, device=device) / f_in**0.5
        h, z = jet_dense_activation(
            x, w, torch.randn(f_out, dtype=dtype, device=device), activation, plan.key, "triton"
        )
        remade = jet_activation_triton(z, activation, plan.key)
        if device.type == "cpu":  # the interpreter evaluates the same statements on the same values
            assert torch.equal(remade, h), f"N={n} F_out={f_out}"
        _close(remade, activation_jet_ref(z, activation, plan), dtype, activation, f"N={n} F_out={f_out}")


def test_wide_layer_257(device):
    plan = LAYOUTS["allen_cahn"]
    torch.manual_seed(1)
    x = torch.randn(plan.num_slots, 5, 257, dtype=torch.float64, device=device)
    w = torch.randn(257, 257, dtype=torch.float64, device=device) / 16
    b = torch.randn(257, dtype=torch.float64, device=device)
    h, _ = jet_dense_activation(x, w, b, "tanh", plan.key, "triton")
    torch.testing.assert_close(h, jet_dense_activation_ref(x, w, b, "tanh", plan.key)[0], rtol=1e-12, atol=1e-12)


def test_opcheck_triton_path(device):
    """Under the interpreter, AOT tracing would run the CPU-emulated kernel on fake tensors: skip that util."""
    utils = OPCHECK_ALL if device.type == "cuda" else ("test_schema", "test_autograd_registration", "test_faketensor")
    plan = LAYOUTS["allen_cahn"]
    torch.manual_seed(2)
    x = torch.randn(plan.num_slots, 5, 7, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(3, 7, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, device=device, requires_grad=True)
    torch.library.opcheck(jet_dense_activation, (x, w, b, "tanh", plan.key, "triton"), test_utils=utils)
    z = torch.randn(plan.num_slots, 5, 3, dtype=torch.float64, device=device)
    torch.library.opcheck(
        jet_dense_activation_backward,
        (torch.randn_like(z), z, x.detach(), w.detach(), "tanh", plan.key, "triton", True),
        test_utils=utils,
    )


def test_jet_with_triton_backend_matches_torch_backend(device):
    torch.manual_seed(3)
    model = snn.PirateNet(2, 1, 8, 1, "tanh", alpha_init=0.3, rwf=(1.0, 0.1)).double().to(device)
    x = torch.rand(9, 2, dtype=torch.float64, device=device)
    derivatives = [(0,), (1, 1), (0, 1)]
    results = {}
    for backend in ("triton", "torch"):
        out = soap_kernels.jet(model, x, derivatives, laplacian_axes=[0, 1], backend=backend)
        loss = sum((v**2).sum() for v in out.values())
        grads = torch.autograd.grad(loss, list(model.parameters()))
        results[backend] = (out, grads)
    for key in results["torch"][0]:
        torch.testing.assert_close(results["triton"][0][key], results["torch"][0][key], rtol=1e-11, atol=1e-11)
    for a, e in zip(results["triton"][1], results["torch"][1]):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-11)


def test_unsupported_dtype_is_not_implemented(device):
    plan = LAYOUTS["value_only"]
    x = torch.randn(1, 3, 4, dtype=torch.float16, device=device)
    with pytest.raises(NotImplementedError, match="float16"):
        jet_dense_activation(x, torch.randn(2, 4, dtype=torch.float16, device=device), None, "tanh", plan.key, "triton")


def test_triton_backend_refused_without_gpu_or_interpreter(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="backend 'triton' cannot run"):
        soap_kernels.jet(snn.MLP(2, 1, 3, 1), torch.zeros(3, 2), [(0,)], backend="triton")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("model_name", ["mlp", "piratenet"])  # PirateNet: the jet product's kernel too
def test_triton_path_under_torch_compile_matches_eager(model_name):
    torch.manual_seed(4)
    if model_name == "mlp":
        model = snn.MLP(2, 1, 64, 3).cuda()
    else:
        model = snn.PirateNet(2, 1, 64, 2, "tanh", rwf=(1.0, 0.1), alpha_init=0.5).cuda()
    x = torch.rand(1000, 2, device="cuda")

    def loss():
        r = soap_kernels.jet(model, x, [(0,), (1, 1)], backend="triton")
        return ((r[(0,)] - 1e-4 * r[(1, 1)] + 5 * r[()] ** 3 - 5 * r[()]) ** 2).mean()

    eager = torch.autograd.grad(loss(), list(model.parameters()))
    compiled = torch.autograd.grad(torch.compile(loss, fullgraph=True)(), list(model.parameters()))
    for a, e in zip(compiled, eager):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-6)


@pytest.fixture
def poisoned_empty_like(monkeypatch):
    """torch.empty_like returns NaN-filled tensors, so an output the kernels leave unwritten cannot pass."""
    empty_like = torch.empty_like

    def nan_filled(*args, **kwargs):
        out = empty_like(*args, **kwargs)
        return out.fill_(float("nan")) if out.is_floating_point() else out

    monkeypatch.setattr(torch, "empty_like", nan_filled)


@pytest.mark.parametrize("n, f_in, f_out", [(5, 0, 3), (5, 3, 0), (0, 3, 2)], ids=str)
def test_empty_dimensions_match_reference(device, n, f_in, f_out, kernels, poisoned_empty_like):
    """No features in or out, or no points: every output is still fully defined (zeros where the sum is empty)."""
    plan = LAYOUTS["allen_cahn"]
    torch.manual_seed(5)
    x = torch.randn(plan.num_slots, n, f_in, dtype=torch.float64, device=device)
    w = torch.randn(f_out, f_in, dtype=torch.float64, device=device)
    b = torch.randn(f_out, dtype=torch.float64, device=device)
    h, z = jet_dense_activation(x, w, b, "tanh", plan.key, "triton")
    # the reference forward cannot view an empty feature dim as [-1, 0]: form z = x W^T + b here
    z_ref = torch.einsum("knf,of->kno", x, w)
    z_ref[0] += b
    h_ref = activation_jet_ref(z_ref, "tanh", plan)
    torch.testing.assert_close(h, h_ref)
    torch.testing.assert_close(z, z_ref)
    g = torch.randn(h_ref.shape, dtype=torch.float64, device=device)
    grad_z = activation_jet_adjoint_ref(g, z_ref, "tanh", plan)  # the reference backward has the same [-1, 0] view
    expected = (grad_z @ w, torch.einsum("kno,knf->of", grad_z, x), grad_z[0].sum(0))
    for compute_grad_x in (True, False):
        ours = jet_dense_activation_backward(g, z_ref, x, w, "tanh", plan.key, "triton", compute_grad_x)
        for a, e, name in zip(ours, expected, ("grad_x", "grad_w", "grad_b")):
            if name == "grad_x" and not compute_grad_x:
                assert a.numel() == 0
                continue
            torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12, msg=f"{name} compute_grad_x={compute_grad_x}")


def test_weight_of_another_dtype_is_cast_like_the_forward(device):
    """A float32 weight with a float64 jet: both launchers compute with the weight cast to float64, and the
    weight and bias gradients come back in the weight's dtype (as the fake implementation promises)."""
    plan = LAYOUTS["allen_cahn"]
    torch.manual_seed(6)
    x = torch.randn(plan.num_slots, 7, 5, dtype=torch.float64, device=device)
    w32 = torch.randn(3, 5, dtype=torch.float32, device=device)
    w = w32.double()  # the same values
    h, z = jet_dense_activation(x, w32, None, "tanh", plan.key, "triton")
    h_ref, z_ref = jet_dense_activation_ref(x, w, None, "tanh", plan.key)
    torch.testing.assert_close(h, h_ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(h)
    grad_x, grad_w, grad_b = jet_dense_activation_backward(g, z_ref, x, w32, "tanh", plan.key, "triton", True)
    ref_x, ref_w, ref_b = jet_dense_activation_backward_ref(g, z_ref, x, w, "tanh", plan.key, True)
    torch.testing.assert_close(grad_x, ref_x, rtol=1e-12, atol=1e-12)
    assert grad_w.dtype == grad_b.dtype == torch.float32
    torch.testing.assert_close(grad_w, ref_w.float())
    torch.testing.assert_close(grad_b, ref_b.float())


def test_every_launch_runs_under_a_guard_for_the_inputs_device(device, kernels, monkeypatch):
    """Triton launches on the current CUDA device: forward and backward launches sit inside on_device_of(input)."""
    from soap_kernels.ops import jet_dense_triton

    launches = record_launch_guards(monkeypatch, jet_dense_triton)
    plan = LAYOUTS["allen_cahn"]
    x = torch.randn(plan.num_slots, 5, 7, dtype=torch.float64, device=device)
    w = torch.randn(3, 7, dtype=torch.float64, device=device)
    h, z = jet_dense_activation(x, w, None, "tanh", plan.key, "triton")
    jet_dense_activation_backward(torch.randn_like(h), z, x, w, "tanh", plan.key, "triton", True)
    names = {
        "fused": ("_jet_dense_activation_kernel", "_jet_dense_activation_backward_kernel"),
        "split": ("_jet_activation_kernel", "_jet_activation_adjoint_kernel"),
    }[kernels]
    assert launches == [(name, [torch.device(device)]) for name in names]


@pytest.mark.cuda
@needs_two_gpus
def test_inputs_on_a_gpu_that_is_not_current():
    """Tensors on cuda:1 while cuda:0 is current: the kernels must run on cuda:1 and match the reference."""
    device = torch.device("cuda", 1)
    plan = LAYOUTS["allen_cahn"]
    torch.manual_seed(7)
    x = torch.randn(plan.num_slots, 100, 33, dtype=torch.float64, device=device)
    w = torch.randn(17, 33, dtype=torch.float64, device=device) / 6
    b = torch.randn(17, dtype=torch.float64, device=device)
    with torch.cuda.device(0):
        h, z = jet_dense_activation(x, w, b, "tanh", plan.key, "triton")
        g = torch.randn_like(h)
        ours = jet_dense_activation_backward(g, z, x, w, "tanh", plan.key, "triton", True)
        torch.cuda.synchronize(device)
    h_ref, z_ref = jet_dense_activation_ref(x, w, b, "tanh", plan.key)
    torch.testing.assert_close(h, h_ref, rtol=1e-11, atol=1e-11)
    for a, e in zip(ours, jet_dense_activation_backward_ref(g, z_ref, x, w, "tanh", plan.key, True)):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


@pytest.mark.cuda
@needs_gpu_memory(48)
def test_slots_past_2_31_elements():
    """Four slots of 2^29 + 64 elements each (2^31 + 256 in all): the slot offsets must not wrap (64-bit)."""
    torch.cuda.empty_cache()  # blocks cached by earlier tests must not make the big allocations fail
    plan = LAYOUTS["allen_cahn"]
    n, features = 2**24 + 2, 32
    x = torch.randn(plan.num_slots, n, features, device="cuda")
    w = torch.randn(features, features, device="cuda") / 6
    h, z = jet_dense_activation(x, w, None, "tanh", plan.key, "triton")
    tail = x[:, -64:].contiguous()
    h_ref, z_ref = jet_dense_activation_ref(tail, w, None, "tanh", plan.key)
    torch.testing.assert_close(z[:, -64:], z_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(h[:, -64:], h_ref, rtol=1e-4, atol=1e-5)
    del h
    g = torch.zeros_like(z)
    g[:, -64:] = 1.0
    grad_x, _, _ = jet_dense_activation_backward(g, z, x, w, "tanh", plan.key, "triton", True)
    z_tail = z[:, -64:].contiguous()
    ref_x, _, _ = jet_dense_activation_backward_ref(g[:, -64:], z_tail, tail, w, "tanh", plan.key, True)
    torch.testing.assert_close(grad_x[:, -64:], ref_x, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("how", ["default", "legacy flag", "matmul precision", "new API", "global new API"])
def test_tf32_follows_torch_however_it_was_set(how, monkeypatch):
    """The jets' float32 CUDA GEMMs use TF32 exactly where torch's matmuls would; setting it through the new API
    made the legacy flag raise when read (on CUDA tensors only, so CPU runs never saw it)."""
    from types import SimpleNamespace

    from soap_kernels.ops.jet_dense_triton import _precision

    matmul, mkldnn_matmul = torch.backends.cuda.matmul, torch.backends.mkldnn.matmul
    saved = (torch.get_float32_matmul_precision(), torch.backends.fp32_precision, matmul.fp32_precision,
             mkldnn_matmul.fp32_precision)  # set_float32_matmul_precision sets the CPU's (oneDNN) too; fmt: skip
    try:
        torch.backends.fp32_precision, matmul.fp32_precision = "none", "none"  # nothing set: torch's default
        if how == "legacy flag":
            matmul.allow_tf32 = True
        elif how == "matmul precision":
            torch.set_float32_matmul_precision("high")
        elif how == "new API":
            matmul.fp32_precision = "tf32"
        elif how == "global new API":
            torch.backends.fp32_precision = "tf32"
        expected = "ieee" if how == "default" else "tf32"
        cuda_float32 = SimpleNamespace(is_cuda=True, dtype=torch.float32)
        assert _precision(cuda_float32) == expected
        assert _precision(SimpleNamespace(is_cuda=True, dtype=torch.float64)) == "ieee"
        assert _precision(SimpleNamespace(is_cuda=False, dtype=torch.float32)) == "ieee"
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.fp32_precision, matmul.fp32_precision, mkldnn_matmul.fp32_precision = saved[1:]


@pytest.mark.parametrize("fp64_dot", [True, False])
def test_auto_takes_triton_for_float64_only_where_it_lowers_a_float64_dot(fp64_dot, monkeypatch):
    """On CUDA, "auto" runs float64 jets on Triton where the probe found float64 tl.dot exact, else on torch."""
    from types import SimpleNamespace

    from soap_kernels.jets import api
    from soap_kernels.ops import _triton_utils

    monkeypatch.setattr(api, "triton_available", lambda: True)
    monkeypatch.setattr(_triton_utils, "fp64_dot_supported", lambda device: fp64_dot)
    cuda = torch.device("cuda", 0)
    assert api._layer_kernels(SimpleNamespace(is_cuda=True, dtype=torch.float32, device=cuda), "auto") == "triton"
    float64 = SimpleNamespace(is_cuda=True, dtype=torch.float64, device=cuda)
    assert api._layer_kernels(float64, "auto") == ("triton" if fp64_dot else "torch")
