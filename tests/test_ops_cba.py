"""Class batch attention (fer_lightning.ops.class_batch_attention): backends against the reference.

Triton runs in its CPU interpreter here (TRITON_INTERPRET=1 set before import, as CI does), so sizes
are tiny. Tolerances are per dtype: 16-bit results are compared with the fp32 reference.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from ops_helpers import TOLERANCES, needs_cuda, needs_triton_cpu

from fer_lightning.ops import _dispatch, class_batch_attention

FAST_BACKENDS = ["fast", pytest.param("triton", marks=needs_triton_cpu)]
ALL_BACKENDS = ["reference", *FAST_BACKENDS]


def make_inputs(batch: int, classes: int, dim: int, dtype=torch.float32, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, classes, dim, generator=generator)
    k = torch.randn(batch, classes, dim, generator=generator)
    v = torch.randn(batch, classes, generator=generator)
    return [t.to(dtype).requires_grad_() for t in (q, k, v)]


def output_and_grads(fn, q, k, v, seed: int = 1):
    """fn(q, k, v) and the gradients of ⟨fn(q, k, v), G⟩ for a fixed random G, all in fp32."""
    out = fn(q, k, v)
    cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.dtype)
    grads = torch.autograd.grad(out, (q, k, v), cotangent)
    return [t.float() for t in (out, *grads)]


def reference_fp32(q, k, v, scale=None):
    leaves = [t.detach().float().requires_grad_() for t in (q, k, v)]
    return output_and_grads(
        lambda q, k, v: class_batch_attention(q, k, v, scale=scale, backend="reference"), *leaves
    )


def assert_all_close(actual, expected, dtype=torch.float32):
    atol, rtol = TOLERANCES[dtype]
    for name, a, e in zip(("out", "dq", "dk", "dv"), actual, expected):
        torch.testing.assert_close(a, e, atol=atol, rtol=rtol, msg=lambda m, name=name: f"{name}: {m}")


# ---------------------------------------------------------------- reference


def test_reference_matches_naive_double_loop():
    batch, classes, dim, scale = 5, 3, 4, 0.6
    q, k, v = (t.detach().double() for t in make_inputs(batch, classes, dim))
    expected = torch.zeros(batch, classes, dtype=torch.float64)
    for n, i in itertools.product(range(classes), range(batch)):
        logits = [scale * float(q[i, n] @ k[j, n]) for j in range(batch)]
        top = max(logits)
        weights = [math.exp(z - top) for z in logits]
        expected[i, n] = sum(w * float(v[j, n]) for j, w in enumerate(weights)) / sum(weights)
    torch.testing.assert_close(class_batch_attention(q, k, v, scale=scale, backend="reference"), expected)


@pytest.mark.parametrize("scale", [None, 1.0, 5**-0.5])  # BTN's 1/√N, the paper's none, 1/√D
def test_reference_gradcheck_float64(scale):
    leaves = [t.detach().double().requires_grad_() for t in make_inputs(3, 2, 5)]
    assert torch.autograd.gradcheck(
        lambda q, k, v: class_batch_attention(q, k, v, scale=scale, backend="reference"), leaves
    )


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_gradients_match_closed_form_with_tied_query_and_key(backend):
    """dv_n = A_nᵀ g_n, dF_n = s (dZ_n + dZ_nᵀ) F_n, F = q = k (docs/kernels.md#class-batch-attention-cba)."""
    features, _, values = make_inputs(
        6, 3, 5, dtype=torch.float64 if backend == "reference" else torch.float32
    )
    scale = 0.7
    grad_out = torch.randn(6, 3, generator=torch.Generator().manual_seed(3), dtype=features.dtype)
    out = class_batch_attention(features, features, values, scale=scale, backend=backend)
    grad_features, grad_values = torch.autograd.grad(out, (features, values), grad_out)

    F_n = features.detach().transpose(0, 1)  # (N, B, L)
    v_n = values.detach().t()  # (N, B)
    g_n = grad_out.t()
    A = torch.softmax(scale * F_n @ F_n.transpose(1, 2), dim=-1)  # (N, B, B)
    o_n = (A @ v_n.unsqueeze(-1)).squeeze(-1)
    dZ = g_n.unsqueeze(-1) * A * (v_n.unsqueeze(1) - o_n.unsqueeze(-1))  # dZ[n, i, j]
    expected_features = (scale * (dZ + dZ.transpose(1, 2)) @ F_n).transpose(0, 1)
    expected_values = (A.transpose(1, 2) @ g_n.unsqueeze(-1)).squeeze(-1).t()
    atol, rtol = TOLERANCES[torch.float32]
    torch.testing.assert_close(grad_features, expected_features, atol=atol, rtol=rtol)
    torch.testing.assert_close(grad_values, expected_values, atol=atol, rtol=rtol)


@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_batch_permutation_permutes_the_output(backend):
    q, k, v = (t.detach() for t in make_inputs(9, 4, 7))
    permutation = torch.randperm(9, generator=torch.Generator().manual_seed(0))
    out = class_batch_attention(q, k, v, backend=backend)
    out_permuted = class_batch_attention(q[permutation], k[permutation], v[permutation], backend=backend)
    torch.testing.assert_close(out_permuted, out[permutation], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_batch_of_one_returns_the_value(backend):
    q, k, v = (t.detach() for t in make_inputs(1, 7, 49))
    torch.testing.assert_close(class_batch_attention(q, k, v, backend=backend), v)


def test_default_scale_is_inverse_sqrt_classes():
    q, k, v = make_inputs(5, 7, 3)
    torch.testing.assert_close(
        class_batch_attention(q, k, v, backend="reference"),
        class_batch_attention(q, k, v, scale=1 / math.sqrt(7), backend="reference"),
    )


# ---------------------------------------------------------------- fast paths against the reference

# (batch, classes, dim): BTN's D = 49; batches that are not multiples of the 16/64-wide blocks.
SHAPES = [(19, 7, 49), (70, 2, 5), (2, 3, 1)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_matches_reference_fp32(backend, shape):
    q, k, v = make_inputs(*shape)
    actual = output_and_grads(lambda q, k, v: class_batch_attention(q, k, v, backend=backend), q, k, v)
    assert_all_close(actual, reference_fp32(q, k, v))


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_accepts_features_with_strided_last_dim(backend):
    # As a channels-last conv output reshaped to (B, N, 49) is: stride 1 on N, not on D.
    q, k, v = (t.detach() for t in make_inputs(19, 3, 49))
    q_strided, k_strided = (t.transpose(1, 2).contiguous().transpose(1, 2).requires_grad_() for t in (q, k))
    assert q_strided.stride(-1) != 1
    v = v.requires_grad_()
    actual = output_and_grads(
        lambda q, k, v: class_batch_attention(q, k, v, backend=backend), q_strided, k_strided, v
    )
    assert_all_close(actual, reference_fp32(q, k, v))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_matches_reference_in_16_bit(backend, dtype):
    q, k, v = make_inputs(19, 3, 49, dtype=dtype)
    assert class_batch_attention(q, k, v, backend=backend).dtype == dtype
    actual = output_and_grads(lambda q, k, v: class_batch_attention(q, k, v, backend=backend), q, k, v)
    assert_all_close(actual, reference_fp32(q, k, v), dtype)


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_on_cuda_matches_reference(dtype):
    q, k, v = make_inputs(1000, 7, 49)
    leaves = [t.detach().cuda().to(dtype).requires_grad_() for t in (q, k, v)]
    actual = output_and_grads(lambda q, k, v: class_batch_attention(q, k, v, backend="triton"), *leaves)
    assert_all_close([t.cpu() for t in actual], reference_fp32(q, k, v), dtype)


# ---------------------------------------------------------------- autocast, compile, arguments


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_autocast_runs_in_the_autocast_dtype(backend):
    q, k, v = make_inputs(19, 3, 49)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = class_batch_attention(q, k, v, backend=backend)
    assert out.dtype == torch.bfloat16
    grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    assert all(g.dtype == torch.float32 for g in grads)  # the leaves stay fp32
    atol, rtol = TOLERANCES[torch.bfloat16]
    torch.testing.assert_close(out.float(), reference_fp32(q, k, v)[0], atol=atol, rtol=rtol)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_compiles_with_torch_compile(backend):
    torch._dynamo.reset()
    q, k, v = make_inputs(19, 3, 49)

    def attend(q, k, v):
        return class_batch_attention(q, k, v, backend=backend) + v  # with the residual of BTN's P_BT

    compiled = torch.compile(attend, backend="aot_eager", fullgraph=True)
    assert_all_close(output_and_grads(compiled, q, k, v), output_and_grads(attend, q, k, v))


@pytest.mark.slow
def test_compiles_with_inductor():
    torch._dynamo.reset()
    q, k, v = make_inputs(19, 3, 49)

    def attend(q, k, v):
        return class_batch_attention(q, k, v, backend="fast") * 2

    assert_all_close(output_and_grads(torch.compile(attend), q, k, v), output_and_grads(attend, q, k, v))


def test_bad_arguments_raise():
    q, k, v = make_inputs(4, 3, 5)
    with pytest.raises(ValueError, match="backend"):
        class_batch_attention(q, k, v, backend="flash")
    with pytest.raises(ValueError, match="shape"):
        class_batch_attention(q, k, v[:, :2])
    with pytest.raises(ValueError, match="dtype"):
        class_batch_attention(q, k.double(), v)


def test_triton_backend_without_triton_says_so(monkeypatch):
    monkeypatch.setattr(_dispatch, "TRITON_INSTALLED", False)
    q, k, v = make_inputs(4, 3, 5)
    with pytest.raises(RuntimeError, match="triton package"):
        class_batch_attention(q, k, v, backend="triton")
