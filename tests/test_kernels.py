"""Every guest kernel against an oracle nobody here wrote: gguf (llama.cpp's own Python
package) for Q8_0 bytes, torch / transformers for the float kernels, and exact integer
numpy dot products for the int8 inner loops."""

from __future__ import annotations

from functools import cache

import gguf
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

import borda
import borda.kernels as bk
from borda import quant

torch.set_num_threads(1)
SETTINGS = settings(max_examples=40, deadline=None)


@cache
def kernels() -> bk.Kernels:
    return bk.Kernels()


def rng_for(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def weights(seed: int, rows: int, k: int, style: str) -> np.ndarray:
    """Matrices that stress quantization: plain normals, wide ranges, zero and tiny blocks."""
    rng = rng_for(seed)
    w = rng.standard_normal((rows, k)).astype(np.float32)
    if style == "wide":
        w *= np.exp(rng.uniform(-12, 12, (rows, k // 32, 1))).repeat(32, axis=2).reshape(rows, k)
    elif style == "sparse":
        w[:, : k // 2] = 0.0
        w[:, -32:] *= 1e-7  # f16-subnormal scales
    return w.astype(np.float32)


STYLES = st.sampled_from(["normal", "wide", "sparse"])
SEEDS = st.integers(0, 2**31 - 1)


@SETTINGS
@given(seed=SEEDS, rows=st.integers(1, 9), blocks=st.integers(1, 12), style=STYLES)
def test_quantize_q8_0_is_bit_identical_to_gguf(
    seed: int, rows: int, blocks: int, style: str
) -> None:
    w = weights(seed, rows, blocks * 32, style)
    expected = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0)
    np.testing.assert_array_equal(kernels().quantize_q8_0(w), expected)
    np.testing.assert_array_equal(quant.quantize_q8_0(w), expected)


@SETTINGS
@given(seed=SEEDS, rows=st.integers(1, 9), blocks=st.integers(1, 12), style=STYLES)
def test_dequantize_q8_0_matches_gguf(seed: int, rows: int, blocks: int, style: str) -> None:
    q = gguf.quants.quantize(
        weights(seed, rows, blocks * 32, style), gguf.GGMLQuantizationType.Q8_0
    )
    expected = gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0)
    np.testing.assert_array_equal(kernels().dequantize_q8_0(q), expected)


def q8_0_bytes(scales: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """Hand-made GGUF Q8_0 rows from f16 scales (rows, nb) and int8 values (rows, nb*32)."""
    rows, nb = scales.shape
    blocks = np.concatenate(
        [
            scales.astype(np.float16).reshape(-1, 1).view(np.uint8),
            qs.reshape(-1, 32).view(np.uint8),
        ],
        axis=1,
    )
    return blocks.reshape(rows, nb * 34)


@SETTINGS
@given(
    seed=SEEDS, tokens=st.integers(1, 5), blocks=st.integers(1, 6), digits=st.sampled_from([1, 2])
)
def test_activation_digits_equal_their_numpy_twin(
    seed: int, tokens: int, blocks: int, digits: int
) -> None:
    rng = rng_for(seed)
    x = (rng.standard_normal((tokens, blocks * 32)) * 4).astype(np.float32)
    # ties: a block maximum of vmax makes d = 1, so halves round (to even) exactly
    vmax = quant.ACT_VMAX[digits]
    x[0, :32] = rng.integers(-2 * vmax, 2 * vmax + 1, 32) / np.float32(2)
    x[0, 0] = vmax
    x[-1, -32:] = 0  # an all-zero block
    got, expected = kernels().quantize_act(x, digits), quant.quantize_act(x, digits)
    np.testing.assert_array_equal(got.u, expected.u)
    np.testing.assert_array_equal(got.d, expected.d)


@SETTINGS
@given(
    seed=SEEDS,
    rows=st.integers(1, 13),
    blocks=st.integers(1, 8),
    tokens=st.integers(1, 9),
    digits=st.sampled_from([1, 2]),
)
def test_q8_0_matmul_integer_dot_products_are_exact(
    seed: int, rows: int, blocks: int, tokens: int, digits: int
) -> None:
    # Unit scales and integer activations whose block maximum is exactly vmax (63 for one
    # digit, 1984 for two) quantize without rounding (d = 1), so every output is an integer
    # dot product, exact in f32 (here |y| <= 8 * 128 * (31 * 248 + 1984) < 2**24).
    assert_exact_integer_matmul(
        rng_for(seed), rows, blocks, tokens, digits, 1 if digits == 1 else 8
    )


def assert_exact_integer_matmul(
    rng: np.random.Generator, rows: int, blocks: int, tokens: int, digits: int, shrink: int
) -> None:
    """Unit scales, int8 weights, integer activations (divided by `shrink`) whose block
    maximum is vmax: the product must equal the exact integer one."""
    k = blocks * 32
    vmax = quant.ACT_VMAX[digits]
    qs = rng.integers(-127, 128, (rows, k), dtype=np.int8)
    qs[0, :2] = -128  # GGUF allows it; the kernels must too
    w = q8_0_bytes(np.ones((rows, blocks)), qs)
    x = (rng.integers(-vmax, vmax + 1, (tokens, k)) // shrink).astype(np.float32)
    x[:, ::32] = vmax
    expected = x.astype(np.int64) @ qs.astype(np.int64).T
    got = kernels().matmul_q8_0(x, w, digits=digits)
    np.testing.assert_array_equal(got, expected.astype(np.float32))


@pytest.mark.parametrize("digits", [1, 2])
def test_q8_0_matmul_is_exact_across_k_chunks_and_row_groups(digits: int) -> None:
    # The tiled GEMM works in K chunks of 32 blocks and row groups of at most 1638 // nb
    # // 2 * 8 rows, 200 for a full chunk (gemm_q8_0.c): 33 blocks and 205 rows cross both
    # boundaries and leave ragged tails, 7 tokens a partial token tile. Exact as above:
    # |y| <= 1056 * 127 * 62 + 33 * 127 * 1984 < 2**24 with two digits (activations in
    # [-62, 62] off the block maxima).
    assert_exact_integer_matmul(rng_for(7), 205, 33, 7, digits, 1 if digits == 1 else 32)


@SETTINGS
@given(
    seed=SEEDS,
    rows=st.integers(1, 70),
    blocks=st.integers(1, 10),
    tokens=st.integers(1, 20),
    digits=st.sampled_from([1, 2]),
)
def test_q8_0_matmul_matches_its_numpy_twin(
    seed: int, rows: int, blocks: int, tokens: int, digits: int
) -> None:
    rng = rng_for(seed)
    w = quant.quantize_q8_0(rng.standard_normal((rows, blocks * 32)).astype(np.float32))
    x = rng.standard_normal((tokens, blocks * 32)).astype(np.float32)
    expected = quant.matmul_q8_0(x, quant.repack_q8_0(w), digits)
    got = kernels().matmul_q8_0(x, w, digits)
    scale = np.abs(x).sum(axis=1, keepdims=True) * 0.05  # |w| <~ 4 for normals
    assert np.all(np.abs(got - expected) <= 1e-5 * scale + 1e-6)


def test_q8_0_matmul_approximates_the_float_product() -> None:
    rng = rng_for(1)
    w = rng.standard_normal((96, 256)).astype(np.float32)
    x = rng.standard_normal((5, 256)).astype(np.float32)
    w_q8 = kernels().quantize_q8_0(w)
    exact = x.astype(np.float64) @ w.T.astype(np.float64)
    assert np.abs(kernels().matmul_q8_0(x, w_q8) - exact).max() / np.abs(exact).max() < 0.02
    # against the dequantized weights only the activations' rounding is left: 7 or 12 bits
    dequantized = x.astype(np.float64) @ quant.dequantize_q8_0(w_q8).T.astype(np.float64)
    for digits, bound in ((1, 0.02), (2, 0.001)):
        got = kernels().matmul_q8_0(x, w_q8, digits)
        assert np.abs(got - dequantized).max() / np.abs(dequantized).max() < bound


def test_resident_matrix_gives_the_same_result_as_a_one_off_matmul() -> None:
    rng = rng_for(2)
    ks = bk.Kernels()
    w = ks.quantize_q8_0(rng.standard_normal((40, 128)).astype(np.float32))
    resident = ks.upload_q8_0(w)
    for tokens in (1, 3, 8):
        x = rng.standard_normal((tokens, 128)).astype(np.float32)
        np.testing.assert_array_equal(ks.matmul_q8_0(x, resident), ks.matmul_q8_0(x, w))


def test_k_not_a_multiple_of_32_is_rejected_with_a_clear_error() -> None:
    with pytest.raises(borda.InvalidInput, match="multiple of 32"):
        kernels().quantize_q8_0(np.ones((4, 48), np.float32))
    w = kernels().quantize_q8_0(np.ones((4, 64), np.float32))
    with pytest.raises(borda.InvalidInput, match="K=48"):
        kernels().matmul_q8_0(np.ones((1, 48), np.float32), w)


@SETTINGS
@given(
    seed=SEEDS,
    tokens=st.integers(1, 9),
    rows=st.integers(1, 40),
    k=st.integers(1, 70),
    bias=st.booleans(),
)
def test_f32_matmul_matches_torch(seed: int, tokens: int, rows: int, k: int, bias: bool) -> None:
    rng = rng_for(seed)
    x, w = rng.standard_normal((tokens, k)), rng.standard_normal((rows, k))
    b = rng.standard_normal(rows) if bias else None
    expected = F.linear(torch.tensor(x), torch.tensor(w), None if b is None else torch.tensor(b))
    got = kernels().matmul_f32(x, w, b)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-4 * np.sqrt(k))


def test_f32_matmul_across_k_chunks_and_row_groups() -> None:
    """Past the tiled kernel's 256-wide K chunks (3, the last partial and not a multiple
    of 4) and its 256-row groups, with a bias and a token tile of 1."""
    rng = rng_for(11)
    x, w, b = (
        rng.standard_normal((9, 601)),
        rng.standard_normal((300, 601)),
        rng.standard_normal(300),
    )
    expected = F.linear(torch.tensor(x), torch.tensor(w), torch.tensor(b)).numpy()
    got = kernels().matmul_f32(x, w, b)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.sqrt(601))


@SETTINGS
@given(seed=SEEDS, tokens=st.integers(1, 7), dim=st.integers(1, 300))
def test_rmsnorm_matches_transformers(seed: int, tokens: int, dim: int) -> None:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    rng = rng_for(seed)
    x, w = (
        rng.standard_normal((tokens, dim)).astype(np.float32),
        rng.standard_normal(dim).astype(np.float32),
    )
    norm = LlamaRMSNorm(dim, eps=1e-5)
    norm.weight.data = torch.tensor(w)
    expected = norm(torch.tensor(x)).detach().numpy()
    np.testing.assert_allclose(kernels().rmsnorm(x, w, 1e-5), expected, rtol=1e-5, atol=1e-5)


@SETTINGS
@given(seed=SEEDS, tokens=st.integers(1, 7), dim=st.integers(1, 300))
def test_layernorm_matches_torch(seed: int, tokens: int, dim: int) -> None:
    rng = rng_for(seed)
    x = (rng.standard_normal((tokens, dim)) * 3 + 1).astype(np.float32)
    w, b = rng.standard_normal(dim).astype(np.float32), rng.standard_normal(dim).astype(np.float32)
    expected = F.layer_norm(torch.tensor(x), (dim,), torch.tensor(w), torch.tensor(b), eps=1e-12)
    np.testing.assert_allclose(
        kernels().layernorm(x, w, b, 1e-12), expected.numpy(), rtol=1e-4, atol=1e-5
    )


@SETTINGS
@given(
    seed=SEEDS, rows=st.integers(1, 5), n=st.integers(1, 200), spread=st.sampled_from([1.0, 30.0])
)
def test_softmax_matches_torch(seed: int, rows: int, n: int, spread: float) -> None:
    x = (rng_for(seed).standard_normal((rows, n)) * spread).astype(np.float32)
    expected = torch.softmax(torch.tensor(x), dim=-1).numpy()
    np.testing.assert_allclose(kernels().softmax(x), expected, rtol=1e-5, atol=1e-7)


@SETTINGS
@given(seed=SEEDS, n=st.integers(1, 300))
def test_activations_match_torch(seed: int, n: int) -> None:
    x = (rng_for(seed).standard_normal(n) * 6).astype(np.float32)
    up = rng_for(seed + 1).standard_normal(n).astype(np.float32)
    t = torch.tensor(x, dtype=torch.float64)  # exact: torch's f32 gelu itself errs by ~8e-7
    np.testing.assert_allclose(kernels().silu(x), F.silu(t).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(kernels().gelu(x), F.gelu(t).numpy(), rtol=1e-5, atol=1e-6)
    expected = (F.silu(t) * torch.tensor(up, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(kernels().swiglu(x, up), expected, rtol=1e-5, atol=1e-6)


def test_gelu_is_accurate_across_its_range() -> None:
    """A dense grid, both tails included: the erfc approximation's error peaks mid-range."""
    x = np.linspace(-40, 40, 400_001, dtype=np.float32)
    exact = F.gelu(torch.tensor(x, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(kernels().gelu(x), exact, rtol=1e-5, atol=1e-6)


def torch_rope_interleaved(
    x: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray
) -> np.ndarray:
    """Meta's original formulation: rotate adjacent pairs as complex numbers."""
    angles = torch.outer(torch.tensor(positions, dtype=torch.float32), torch.tensor(inv_freq))
    rot = torch.polar(torch.ones_like(angles), angles)[:, None, :]
    pairs = torch.view_as_complex(torch.tensor(x).reshape(*x.shape[:2], -1, 2))
    return torch.view_as_real(pairs * rot).reshape(x.shape).numpy()


@SETTINGS
@given(
    seed=SEEDS,
    tokens=st.integers(1, 6),
    heads=st.integers(1, 5),
    half=st.integers(1, 40),
    pos0=st.integers(0, 40000),
    theta=st.sampled_from([10000.0, 500000.0, 1000000.0]),
)
def test_rope_matches_transformers_and_metas_pairs(
    seed: int, tokens: int, heads: int, half: int, pos0: int, theta: float
) -> None:
    x = rng_for(seed).standard_normal((tokens, heads, 2 * half)).astype(np.float32)
    inv_freq = bk.default_inv_freq(2 * half, theta)
    positions = np.arange(pos0, pos0 + tokens)
    freqs = torch.outer(torch.tensor(positions, dtype=torch.float32), torch.tensor(inv_freq))
    emb = torch.cat([freqs, freqs], dim=-1)
    q = torch.tensor(x).transpose(0, 1)[None]  # (1, heads, tokens, d)
    expected, _ = apply_rotary_pos_emb(q, q, emb.cos()[None], emb.sin()[None])
    got = kernels().rope(x, pos0, theta)
    np.testing.assert_allclose(got, expected[0].transpose(0, 1).numpy(), rtol=1e-4, atol=1e-4)
    got = kernels().rope(x, pos0, theta, interleaved=True)
    np.testing.assert_allclose(
        got, torch_rope_interleaved(x, positions, inv_freq), rtol=1e-4, atol=1e-4
    )


@SETTINGS
@given(
    seed=SEEDS,
    tokens=st.integers(1, 6),
    past=st.integers(0, 40),
    kv_heads=st.integers(1, 3),
    group=st.sampled_from([1, 2, 3, 4, 8]),
    dim=st.sampled_from([4, 8, 32, 64, 128]),
    causal=st.booleans(),
)
def test_attention_matches_torch_sdpa(
    seed: int, tokens: int, past: int, kv_heads: int, group: int, dim: int, causal: bool
) -> None:
    rng = rng_for(seed)
    heads, kv_len = kv_heads * group, tokens + past
    q = rng.standard_normal((tokens, heads, dim)).astype(np.float32)
    k, v = (rng.standard_normal((kv_len, kv_heads, dim)).astype(np.float32) for _ in range(2))
    allowed = np.arange(kv_len)[None, :] <= (past + np.arange(tokens))[:, None] if causal else None
    expected = F.scaled_dot_product_attention(
        *(torch.tensor(a).transpose(0, 1)[None] for a in (q, k, v)),
        attn_mask=None if allowed is None else torch.tensor(allowed),
        enable_gqa=True,
    )[0].transpose(0, 1)
    got = kernels().attention(q, k, v, causal=causal)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("tokens", "past", "kv_heads", "group", "dim", "causal"),
    [
        (300, 0, 1, 3, 64, True),  # prefill: 4-query tiles across two 256-position blocks
        (40, 242, 1, 1, 32, True),  # 4-query tiles whose first queries see none of a block
        (130, 0, 2, 1, 32, False),  # encoder: a 2-position tail past the 16-row V chunks
        (37, 0, 1, 2, 80, True),  # generic head_dim
    ],
)
def test_attention_of_many_queries_matches_torch_sdpa(
    tokens: int, past: int, kv_heads: int, group: int, dim: int, causal: bool
) -> None:
    rng = rng_for(tokens)
    kv_len = tokens + past
    q = rng.standard_normal((tokens, kv_heads * group, dim)).astype(np.float32)
    k, v = (rng.standard_normal((kv_len, kv_heads, dim)).astype(np.float32) for _ in range(2))
    allowed = np.arange(kv_len)[None, :] <= (past + np.arange(tokens))[:, None]
    expected = F.scaled_dot_product_attention(
        *(torch.tensor(a).transpose(0, 1)[None] for a in (q, k, v)),
        attn_mask=torch.tensor(allowed) if causal else None,
        enable_gqa=True,
    )[0].transpose(0, 1)
    got = kernels().attention(q, k, v, causal=causal)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)


def test_embedding_rows_match_gguf_dequantization() -> None:
    rng = rng_for(3)
    table = gguf.quants.quantize(
        rng.standard_normal((50, 96)).astype(np.float32), gguf.GGMLQuantizationType.Q8_0
    )
    ids = np.array([0, 49, 7, 7, 13])
    expected = gguf.quants.dequantize(table, gguf.GGMLQuantizationType.Q8_0)[ids]
    np.testing.assert_array_equal(kernels().embed_q8_0(table, ids), expected)
    with pytest.raises(borda.InvalidInput, match=r"\[0, 50\)"):
        kernels().embed_q8_0(table, np.array([50]))


def test_generic_invoke_agrees_with_the_direct_export() -> None:
    rng = rng_for(4)
    x, w = (
        rng.standard_normal((3, 64)).astype(np.float32),
        rng.standard_normal(64).astype(np.float32),
    )
    box = bk.Kernels().sandbox
    _, out = box.invoke("rmsnorm", {"eps": 1e-6}, {"x": x, "w": w})
    np.testing.assert_array_equal(out["y"], kernels().rmsnorm(x, w, 1e-6))
    with pytest.raises(borda.GuestError, match="'w'"):
        box.invoke("rmsnorm", {"eps": 1e-6}, {"x": x, "w": w[:63]})


def test_module_level_api_runs_in_a_sandbox_per_thread() -> None:
    import threading

    x = np.ones((2, 32), np.float32)
    results: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: results.append(bk.softmax(x))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2
    np.testing.assert_allclose(results[0], np.full((2, 32), 1 / 32), rtol=1e-6)


def test_deterministic_engine_gives_the_same_q8_0_products() -> None:
    # The int8 dot products are exact on every engine, so the deterministic-relaxed-SIMD
    # engine must agree bit for bit with the default one.
    rng = rng_for(5)
    w = quant.quantize_q8_0(rng.standard_normal((33, 96)).astype(np.float32))
    x = rng.standard_normal((3, 96)).astype(np.float32)
    det = bk.Kernels(config=borda.EngineConfig(deterministic=True))
    np.testing.assert_array_equal(det.matmul_q8_0(x, w), kernels().matmul_q8_0(x, w))


@settings(max_examples=12, deadline=None)
@given(
    seed=SEEDS,
    tokens=st.integers(1, 3),
    past=st.integers(200, 900),
    group=st.sampled_from([1, 3, 4]),
    dim=st.sampled_from([32, 64, 80, 128]),
)
def test_attention_over_long_caches_matches_torch_sdpa(
    seed: int, tokens: int, past: int, group: int, dim: int
) -> None:
    # past several 256-position blocks of the kernel's KV tiling
    rng = rng_for(seed)
    kv_heads, kv_len = 2, tokens + past
    q = rng.standard_normal((tokens, kv_heads * group, dim)).astype(np.float32)
    k, v = (rng.standard_normal((kv_len, kv_heads, dim)).astype(np.float32) for _ in range(2))
    allowed = np.arange(kv_len)[None, :] <= (past + np.arange(tokens))[:, None]
    expected = F.scaled_dot_product_attention(
        *(torch.tensor(a).transpose(0, 1)[None] for a in (q, k, v)),
        attn_mask=torch.tensor(allowed),
        enable_gqa=True,
    )[0].transpose(0, 1)
    got = kernels().attention(q, k, v, causal=True)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)
