"""Numpy references of Borda's quantization formats: the scalar twins of guest/kernels.

Q8_0 is GGUF's format: blocks of 32 int8 along K with one f16 scale (34 bytes).
Inside the guest a Q8_0 matrix is repacked into planar arrays (int8 weights, f32 scales,
int16 block sums) and activations are quantized per token in blocks of 32 to integers
v in [-vmax, vmax], written as one digit in [-63, 63] or two base-63 digits in [-31, 31], offset
by digit max + 1 so that Wasm's relaxed int8 dot product is exact (see borda.h).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .errors import InvalidInput

QK = 32  # values per block
Q8_0_BLOCK_BYTES = 34  # f16 scale + 32 int8
ACT_RADIX = 63
ACT_DIGIT_MAX = {1: 63, 2: 31}  # by number of digits
ACT_VMAX = {1: 63, 2: (ACT_RADIX + 1) * ACT_DIGIT_MAX[2]}  # 7 or 12 bits: 63 hi + lo


def _round_half_away(x: np.ndarray) -> np.ndarray:
    """C's roundf, computed without the +0.5 rounding error (as ggml's reference does)."""
    a = np.abs(x)
    floored = np.floor(a)
    rounded: np.ndarray = np.sign(x) * (floored + np.floor(2 * (a - floored)))
    return rounded


def _blocks(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 0 or x.shape[-1] % QK:
        raise InvalidInput(
            f"{what}: the last dimension ({x.shape[-1] if x.ndim else 0}) must be a multiple of "
            f"{QK}; Q8_0 quantizes blocks of {QK} values along K (pad K or keep the tensor f32)"
        )
    return x.reshape(-1, QK)


def quantize_q8_0(w: np.ndarray) -> np.ndarray:
    """GGUF Q8_0 bytes of `w`, shape (..., K/32*34): bit-identical to ggml's reference."""
    blocks = _blocks(w, "quantize_q8_0")
    d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    qs = _round_half_away(blocks * inv).astype(np.int8)
    out = np.concatenate([d.astype(np.float16).view(np.uint8), qs.view(np.uint8)], axis=1)
    return out.reshape(*np.shape(w)[:-1], -1)


def _q8_0_fields(q: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    q = np.asarray(q)
    if q.dtype != np.uint8 or q.ndim == 0 or q.shape[-1] % Q8_0_BLOCK_BYTES:
        raise InvalidInput(
            f"{what}: expected uint8 Q8_0 blocks whose last dimension is a multiple of "
            f"{Q8_0_BLOCK_BYTES}, got dtype {q.dtype} and shape {q.shape}"
        )
    blocks = np.ascontiguousarray(q).reshape(-1, Q8_0_BLOCK_BYTES)
    scales = blocks[:, :2].copy().view(np.float16).astype(np.float32).reshape(-1)
    return scales, blocks[:, 2:].copy().view(np.int8)


def dequantize_q8_0(q: np.ndarray) -> np.ndarray:
    """float32 values of Q8_0 bytes, shape (..., K)."""
    scales, qs = _q8_0_fields(q, "dequantize_q8_0")
    values: np.ndarray = qs.astype(np.float32) * scales[:, None]
    return values.reshape(*np.shape(q)[:-1], -1)


class PlanarQ8(NamedTuple):
    """A (rows, K) Q8_0 matrix as the guest stores it."""

    qs: np.ndarray  # int8 (rows, K)
    d: np.ndarray  # float32 (rows, K/32)
    s: np.ndarray  # int16 (rows, K/32): sum of each block's int8 values


def repack_q8_0(q: np.ndarray) -> PlanarQ8:
    """Split GGUF Q8_0 rows into the guest's planar layout."""
    scales, qs = _q8_0_fields(q, "repack_q8_0")
    rows = int(np.prod(np.shape(q)[:-1], dtype=np.int64))
    nb = np.shape(q)[-1] // Q8_0_BLOCK_BYTES
    sums = qs.astype(np.int16).sum(axis=1, dtype=np.int16)
    return PlanarQ8(qs.reshape(rows, nb * QK), scales.reshape(rows, nb), sums.reshape(rows, nb))


class QuantizedActivations(NamedTuple):
    u: np.ndarray  # int8 (tokens, digits, K): digit + digit max + 1 >= 1, most significant first
    d: np.ndarray  # float32 (tokens, K/32)

    def values(self) -> np.ndarray:
        """The quantized integers v (tokens, K) that the digits spell."""
        n = self.u.shape[1]
        digits = self.u.astype(np.int32) - (ACT_DIGIT_MAX[n] + 1)
        v: np.ndarray = digits[:, 0] if n == 1 else ACT_RADIX * digits[:, 0] + digits[:, 1]
        return v


def quantize_act(x: np.ndarray, digits: int = 2) -> QuantizedActivations:
    """Per-token activations in blocks of 32: v = round(x / d), d = amax / vmax, as digits."""
    if digits not in ACT_VMAX:
        raise InvalidInput(f"quantize_act: digits must be 1 or 2, got {digits}")
    x = np.atleast_2d(np.asarray(x, dtype=np.float32))
    blocks = _blocks(x, "quantize_act")
    vmax = np.float32(ACT_VMAX[digits])
    d = np.abs(blocks).max(axis=1, keepdims=True) / vmax
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    # half to even, unlike Q8_0 weights: the guest rounds with one add (quant.c)
    v = np.clip(np.rint(blocks * inv), -vmax, vmax).astype(np.float32)
    if digits == 1:
        planes = [v]
    else:  # v = 63 hi + lo, hi rounded to nearest (never a tie): both in [-31, 31]
        hi = np.rint(v * np.float32(1 / ACT_RADIX)).astype(np.float32)
        planes = [hi, v - hi * np.float32(ACT_RADIX)]
    offset = ACT_DIGIT_MAX[digits] + 1
    u = np.stack([(p + offset).astype(np.int8).reshape(x.shape) for p in planes], axis=1)
    return QuantizedActivations(u, d.reshape(x.shape[0], -1))


def block_dots(w: PlanarQ8, x: QuantizedActivations) -> np.ndarray:
    """Exact integer dot products per (token, row, block): the guest's int8 inner loop."""
    rows, k = w.qs.shape
    wq = w.qs.astype(np.int64).reshape(rows, k // QK, QK)
    xq = x.values().astype(np.int64).reshape(x.u.shape[0], k // QK, QK)
    dots: np.ndarray = np.einsum("rbj,tbj->trb", wq, xq)
    return dots


def matmul_q8_0(x: np.ndarray, w: PlanarQ8, digits: int = 2) -> np.ndarray:
    """Reference of the guest's Q8_0 GEMM: y[t, r] = sum_b d_w d_x dot_b, in float64."""
    act = quantize_act(x, digits)
    dots = block_dots(w, act).astype(np.float64)
    y: np.ndarray = np.einsum(
        "trb,rb,tb->tr", dots, w.d.astype(np.float64), act.d.astype(np.float64)
    )
    return y
