"""Top-k region routing attention (fer_lightning.ops.bra): every backend against the gather reference.

Triton runs in its CPU interpreter here (TRITON_INTERPRET=1 set before import, as CI does), so Triton
sizes are tiny. Tolerances are per dtype, next to the dtype: 16-bit results are compared with the fp32
reference.
"""

from __future__ import annotations

import itertools
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from ops_helpers import TOLERANCES, needs_cuda, needs_triton_cpu

from fer_lightning.ops import _dispatch, region_attention, route_regions, routing_attention
from fer_lightning.ops.bra import fast as bra_fast
from fer_lightning.ops.bra import routed_attention_op
from fer_lightning.ops.bra.reference import region_attention_reference

# name: (batch, heads, H, W, d, d_v, regions, topk)
CASES = {
    "2x2-windows": (2, 1, 4, 4, 8, 8, 2, 2),
    "3x2-windows-odd-dims": (1, 3, 6, 4, 5, 5, 2, 3),
    "value-dim-differs": (1, 2, 4, 4, 5, 7, 2, 2),
    "topk-1": (1, 2, 6, 6, 4, 4, 3, 1),
    "topk-all": (1, 1, 4, 4, 4, 4, 2, 4),
    "batch-and-heads": (2, 3, 4, 4, 4, 4, 2, 2),  # images and heads must not be mixed up
    "window-wider-than-a-block": (1, 1, 18, 9, 3, 3, 1, 1),  # 162 tokens: several 64-row blocks
}


def make_inputs(case: str, dtype=torch.float32, seed: int = 0):
    batch, heads, height, width, dim, dim_v, regions, topk = CASES[case]
    generator = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(batch, heads, height, width, dim, generator=generator) for _ in range(2))
    v = torch.randn(batch, heads, height, width, dim_v, generator=generator)
    route_idx = route_regions(q, k, regions, topk)
    if case == "3x2-windows-odd-dims":  # same values stored channels-first: kernels must follow strides
        q, k, v = (t.permute(0, 1, 4, 2, 3).contiguous().permute(0, 1, 3, 4, 2) for t in (q, k, v))
    return [t.to(dtype).requires_grad_() for t in (q, k, v)], route_idx, regions


def output_and_grads(fn, q, k, v, seed: int = 1):
    """fn(q, k, v) and the gradients of ⟨fn(q, k, v), G⟩ for a fixed random G, all in fp32."""
    out = fn(q, k, v)
    cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.dtype)
    grads = torch.autograd.grad(out, (q, k, v), cotangent)
    return [t.float() for t in (out, *grads)]


def assert_all_close(actual, expected, dtype=torch.float32):
    atol, rtol = TOLERANCES[dtype]
    for name, a, e in zip(("out", "dq", "dk", "dv"), actual, expected):
        torch.testing.assert_close(a, e, atol=atol, rtol=rtol, msg=lambda m, name=name: f"{name}: {m}")


def fp32_reference(q, k, v, route_idx, regions):
    leaves = [t.detach().float().requires_grad_() for t in (q, k, v)]
    return output_and_grads(
        lambda q, k, v: region_attention(q, k, v, route_idx, regions, backend="reference"), *leaves
    )


def dense_masked_attention(q, k, v, route_idx, regions, scale):
    """Full attention over all tokens with -inf outside the routed regions (test only)."""
    batch, _heads, height, width, _ = q.shape
    region_of = (
        (torch.arange(height)[:, None] // (height // regions)) * regions
        + torch.arange(width)[None, :] // (width // regions)
    ).flatten()
    routed = torch.zeros(batch, regions**2, regions**2, dtype=torch.bool)
    routed.scatter_(2, route_idx, True)
    allowed = routed[:, region_of][:, :, region_of].unsqueeze(1)  # (B, 1, HW, HW)
    logits = scale * q.flatten(2, 3) @ k.flatten(2, 3).transpose(-1, -2)
    weights = logits.masked_fill(~allowed, float("-inf")).softmax(-1)
    return (weights @ v.flatten(2, 3)).unflatten(2, (height, width))


@pytest.fixture(params=["streaming", "dense_masked"])
def fast_algorithm(request, monkeypatch):
    """Run the "fast" backend with each of its two exact algorithms, whatever the shape would pick."""
    # Dense-masked needs d_v = d (PyTorch's fused CPU kernel), so cases with d_v ≠ d always stream.
    monkeypatch.setattr(
        bra_fast,
        "prefer_dense_masked",
        lambda q, v, *_: request.param == "dense_masked" and v.shape[-1] == q.shape[-1],
    )
    return request.param


# ---------------------------------------------------------------- routing


def test_route_regions_matches_brute_force():
    generator = torch.Generator().manual_seed(0)
    batch, heads, size, dim, regions, topk = 2, 3, 6, 4, 3, 4
    q, k = (
        torch.randn(batch, heads, size, size, dim, generator=generator, dtype=torch.float64) for _ in range(2)
    )
    window = size // regions

    def descriptor(x, b, region):
        row, col = divmod(region, regions)
        patch = x[b, :, row * window : (row + 1) * window, col * window : (col + 1) * window]
        return patch.mean(dim=(1, 2)).flatten()  # heads concatenated

    route_idx = route_regions(q, k, regions, topk)
    assert route_idx.shape == (batch, regions**2, topk) and route_idx.dtype == torch.long
    for b, r in itertools.product(range(batch), range(regions**2)):
        scores = [float(descriptor(q, b, r) @ descriptor(k, b, g)) for g in range(regions**2)]
        expected = sorted(range(regions**2), key=lambda g: -scores[g])[:topk]
        assert route_idx[b, r].tolist() == expected


def test_route_regions_breaks_ties_by_lower_index():
    # Key regions 1, 3 and 6 have identical descriptors (scores tie) and the largest; region 0 next.
    regions = 3
    k = torch.zeros(1, 1, 6, 6, 2)
    for region, value in ((1, 5.0), (3, 5.0), (6, 5.0), (0, 2.0)):
        row, col = divmod(region, regions)
        k[0, 0, 2 * row : 2 * row + 2, 2 * col : 2 * col + 2] = value
    q = torch.ones(1, 1, 6, 6, 2)
    route_idx = route_regions(q, k, regions, topk=4)
    assert route_idx[0].tolist() == [[1, 3, 6, 0]] * regions**2
    # All logits equal: the lowest indices, in order.
    assert route_regions(q, torch.ones_like(k), regions, topk=5)[0, 0].tolist() == [0, 1, 2, 3, 4]


def test_route_regions_carries_no_gradient():
    (q, k, _), _route_idx, _ = make_inputs("2x2-windows")
    assert not route_regions(q, k, 2, 2).requires_grad


def test_route_regions_rejects_bad_topk():
    q = torch.zeros(1, 1, 4, 4, 2)
    with pytest.raises(ValueError, match="topk"):
        route_regions(q, q, 2, 5)


# ---------------------------------------------------------------- reference


@pytest.mark.parametrize("case", ["2x2-windows", "3x2-windows-odd-dims", "topk-1", "topk-all"])
def test_reference_matches_dense_masked_attention(case):
    (q, k, v), route_idx, regions = make_inputs(case, dtype=torch.float64)
    scale = q.shape[-1] ** -0.5
    expected = dense_masked_attention(q, k, v, route_idx, regions, scale)
    torch.testing.assert_close(region_attention_reference(q, k, v, route_idx, regions, scale), expected)


@pytest.mark.parametrize("topk", [1, 2, 4])
def test_reference_gradcheck_float64(topk):
    generator = torch.Generator().manual_seed(topk)
    q, k, v = (torch.randn(1, 2, 4, 4, 2, generator=generator, dtype=torch.float64) for _ in range(3))
    route_idx = route_regions(q, k, 2, topk)
    leaves = [t.requires_grad_() for t in (q, k, v)]
    assert torch.autograd.gradcheck(
        lambda q, k, v: region_attention(q, k, v, route_idx, 2, backend="reference"), leaves, fast_mode=True
    )


# ---------------------------------------------------------------- fast path


@pytest.mark.parametrize("case", list(CASES))
def test_fast_matches_reference(case, fast_algorithm):
    (q, k, v), route_idx, regions = make_inputs(case)
    expected = fp32_reference(q, k, v, route_idx, regions)
    actual = output_and_grads(
        lambda q, k, v: region_attention(q, k, v, route_idx, regions, backend="fast"), q, k, v
    )
    assert_all_close(actual, expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fast_matches_reference_in_16_bit(dtype, fast_algorithm):
    (q, k, v), route_idx, regions = make_inputs("3x2-windows-odd-dims", dtype=dtype)
    expected = fp32_reference(q, k, v, route_idx, regions)
    actual = output_and_grads(
        lambda q, k, v: region_attention(q, k, v, route_idx, regions, backend="fast"), q, k, v
    )
    assert actual[0].dtype == torch.float32  # compared in fp32; the op itself returned `dtype`
    assert_all_close(actual, expected, dtype)


@pytest.mark.parametrize("chunk_bytes", [1, 10_000])  # one query region per chunk; several bands per chunk
@pytest.mark.parametrize("case", ["3x2-windows-odd-dims", "value-dim-differs"])
def test_fast_streaming_in_many_chunks_matches_reference(case, chunk_bytes, monkeypatch):
    monkeypatch.setattr(bra_fast, "_CHUNK_BYTES", chunk_bytes)
    monkeypatch.setattr(bra_fast, "prefer_dense_masked", lambda *args: False)
    (q, k, v), route_idx, regions = make_inputs(case)
    expected = fp32_reference(q, k, v, route_idx, regions)
    actual = output_and_grads(
        lambda q, k, v: region_attention(q, k, v, route_idx, regions, backend="fast"), q, k, v
    )
    assert_all_close(actual, expected)


def test_fast_streaming_is_picked_for_sparse_routing_and_dense_masked_for_dense():
    q = torch.zeros(2, 1, 28, 28, 4)
    assert not bra_fast.prefer_dense_masked(q, q, regions=7, topk=4)
    assert bra_fast.prefer_dense_masked(q, q, regions=7, topk=25)  # 4×4 windows: from about half routed
    assert not bra_fast.prefer_dense_masked(q, q, regions=4, topk=16)  # 7×7 windows: never
    tiny_windows = torch.zeros(2, 1, 14, 14, 4)  # 2×2 windows: from about an eighth routed
    assert bra_fast.prefer_dense_masked(tiny_windows, tiny_windows, regions=7, topk=8)
    assert not bra_fast.prefer_dense_masked(q, q[..., :3], regions=7, topk=25)  # d_v ≠ d


def test_output_depends_only_on_routed_regions(fast_algorithm):
    (q, k, v), route_idx, regions = make_inputs("topk-1")
    out = region_attention(q, k, v, route_idx, regions, backend="fast")
    # Query region 0 reads only route_idx[0, 0, 0]; perturb K and V everywhere else.
    routed = int(route_idx[0, 0, 0])
    row, col = divmod(routed, regions)
    keep = torch.zeros(q.shape[2:4], dtype=torch.bool)
    keep[2 * row : 2 * row + 2, 2 * col : 2 * col + 2] = True
    noise = torch.where(keep[..., None], 0.0, 10.0)
    out_perturbed = region_attention(q, k + noise, v + noise, route_idx, regions, backend="fast")
    torch.testing.assert_close(out_perturbed[:, :, :2, :2], out[:, :, :2, :2])
    assert not torch.allclose(out_perturbed, out)


@pytest.mark.parametrize("backend", ["fast", pytest.param("triton", marks=needs_triton_cpu)])
def test_duplicate_routes_count_twice_as_in_the_gather_reference(backend, fast_algorithm):
    if backend == "triton" and fast_algorithm == "dense_masked":
        pytest.skip("the fast-path algorithm choice does not apply to triton")
    (q, k, v), _, regions = make_inputs("2x2-windows")
    route_idx = torch.tensor([[[0, 0], [3, 1], [2, 2], [1, 3]]] * q.shape[0])
    expected = fp32_reference(q, k, v, route_idx, regions)
    actual = output_and_grads(
        lambda q, k, v: region_attention(q, k, v, route_idx, regions, backend=backend), q, k, v
    )
    assert_all_close(actual, expected)


# ---------------------------------------------------------------- triton


@needs_triton_cpu
@pytest.mark.parametrize("case", list(CASES))
def test_triton_matches_reference_fp32(case):
    (q, k, v), route_idx, regions = make_inputs(case)
    expected = fp32_reference(q, k, v, route_idx, regions)
    actual = output_and_grads(
        lambda q, k, v: region_attention(q, k, v, route_idx, regions, backend="triton"), q, k, v
    )
    assert_all_close(actual, expected)


@needs_triton_cpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_matches_reference_in_16_bit(dtype):
    (q, k, v), route_idx, regions = make_inputs("3x2-windows-odd-dims", dtype=dtype)
    expected = fp32_reference(q, k, v, route_idx, regions)
    out = region_attention(q, k, v, route_idx, regions, backend="triton")
    assert out.dtype == dtype
    actual = output_and_grads(
        lambda q, k, v: region_attention(q, k, v, route_idx, regions, backend="triton"), q, k, v
    )
    assert_all_close(actual, expected, dtype)


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_on_cuda_matches_reference(dtype):
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 28, 28, 32, generator=generator) for _ in range(3))
    route_idx = route_regions(q, k, 7, 4)
    expected = fp32_reference(q, k, v, route_idx, 7)
    leaves = [t.cuda().to(dtype).requires_grad_() for t in (q, k, v)]
    actual = output_and_grads(
        lambda q, k, v: region_attention(q, k, v, route_idx.cuda(), 7, backend="triton"), *leaves
    )
    assert_all_close([t.cpu() for t in actual], expected, dtype)


# ---------------------------------------------------------------- properties across backends

ALL_BACKENDS = ["reference", "fast", pytest.param("triton", marks=needs_triton_cpu)]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_routing_to_all_regions_equals_dense_attention(backend, fast_algorithm):
    if backend != "fast" and fast_algorithm == "dense_masked":
        pytest.skip("the fast-path algorithm choice applies to backend='fast' only")
    (q, k, v), _, regions = make_inputs("topk-all")
    out = routing_attention(q, k, v, regions, topk=regions**2, backend=backend)
    dense = F.scaled_dot_product_attention(*(t.flatten(2, 3) for t in (q, k, v))).unflatten(2, q.shape[2:4])
    torch.testing.assert_close(out, dense, atol=2e-6, rtol=1e-5)


def test_routing_attention_is_route_then_attend():
    (q, k, v), _, regions = make_inputs("3x2-windows-odd-dims")
    route_idx = route_regions(q, k, regions, 3)
    expected = region_attention(q, k, v, route_idx, regions, scale=0.7, backend="reference")
    torch.testing.assert_close(
        routing_attention(q, k, v, regions, 3, scale=0.7, backend="reference"), expected
    )


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_autocast_runs_in_the_autocast_dtype(backend):
    (q, k, v), route_idx, regions = make_inputs("2x2-windows")
    expected = fp32_reference(q, k, v, route_idx, regions)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = region_attention(q, k, v, route_idx, regions, backend=backend)
    assert out.dtype == torch.bfloat16
    grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    assert all(g.dtype == torch.float32 for g in grads)  # leaves stay fp32; the cast is differentiable
    atol, rtol = TOLERANCES[torch.bfloat16]
    torch.testing.assert_close(out.float(), expected[0], atol=atol, rtol=rtol)


@pytest.mark.parametrize(
    "backend,streaming",
    [
        ("reference", False),
        ("fast", True),
        ("fast", False),
        pytest.param("triton", True, marks=needs_triton_cpu),
    ],
)
def test_compiles_with_torch_compile(backend, streaming, monkeypatch):
    monkeypatch.setattr(bra_fast, "prefer_dense_masked", lambda *args: not streaming)
    torch._dynamo.reset()
    (q, k, v), route_idx, regions = make_inputs("3x2-windows-odd-dims")

    def attend(q, k, v):
        return region_attention(q, k, v, route_idx, regions, backend=backend)

    # aot_eager traces through dynamo, fake tensors and AOT autograd (what the custom-op registration
    # must support) without generating C++; the inductor variant is in the slow suite.
    compiled = torch.compile(attend, backend="aot_eager", fullgraph=True)
    assert_all_close(output_and_grads(compiled, q, k, v), output_and_grads(attend, q, k, v))


@pytest.mark.slow
def test_compiles_with_inductor():
    torch._dynamo.reset()
    (q, k, v), _route_idx, regions = make_inputs("3x2-windows-odd-dims")

    def attend(q, k, v):
        return routing_attention(q, k, v, regions, 2, backend="fast") * 2

    compiled = torch.compile(attend)
    assert_all_close(output_and_grads(compiled, q, k, v), output_and_grads(attend, q, k, v))


@pytest.mark.parametrize("backend", ["fast", pytest.param("triton", marks=needs_triton_cpu)])
def test_custom_op_registration_passes_opcheck(backend):
    (q, k, v), route_idx, regions = make_inputs("2x2-windows")
    torch.library.opcheck(
        routed_attention_op,
        (q, k, v, route_idx, regions, 0.5, backend),
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )


# ---------------------------------------------------------------- arguments and backends


def test_default_scale_is_inverse_sqrt_head_dim():
    (q, k, v), route_idx, regions = make_inputs("3x2-windows-odd-dims")
    torch.testing.assert_close(
        region_attention(q, k, v, route_idx, regions, backend="reference"),
        region_attention(q, k, v, route_idx, regions, scale=1 / math.sqrt(q.shape[-1]), backend="reference"),
    )


def test_bad_arguments_raise():
    (q, k, v), route_idx, regions = make_inputs("2x2-windows")
    with pytest.raises(ValueError, match="backend"):
        region_attention(q, k, v, route_idx, regions, backend="cuda")
    with pytest.raises(ValueError, match="divisible"):
        region_attention(q, k, v, route_idx, 3)
    with pytest.raises(ValueError, match="route_idx"):
        region_attention(q, k, v, route_idx[:, :2], regions)
    with pytest.raises(ValueError, match="dtype"):
        region_attention(q, k, v.double(), route_idx, regions)


def test_triton_backend_without_triton_says_so(monkeypatch):
    monkeypatch.setattr(_dispatch, "TRITON_INSTALLED", False)
    (q, k, v), route_idx, regions = make_inputs("2x2-windows")
    with pytest.raises(RuntimeError, match="triton package"):
        region_attention(q, k, v, route_idx, regions, backend="triton")
    region_attention(q, k, v, route_idx, regions, backend="auto")  # CPU: the fast path


def test_triton_backend_on_cpu_without_interpreter_says_so(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(_dispatch, "TRITON_INSTALLED", True)
    (q, k, v), route_idx, regions = make_inputs("2x2-windows")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        region_attention(q, k, v, route_idx, regions, backend="triton")


def test_ops_import_and_run_without_triton():
    script = (
        "import sys; sys.modules['triton'] = None\n"  # makes `import triton` and find_spec fail
        "import torch, fer_lightning.ops as ops\n"
        "q = torch.randn(1, 1, 4, 4, 2)\n"
        "ops.routing_attention(q, q, q, 2, 1).sum()\n"
        "ops.class_batch_attention(torch.randn(3, 2, 4), torch.randn(3, 2, 4), torch.randn(3, 2)).sum()\n"
        "try:\n"
        "    ops.class_batch_attention(torch.randn(3, 2, 4), torch.randn(3, 2, 4), torch.randn(3, 2), backend='triton')\n"
        "except RuntimeError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "triton package" in result.stdout
