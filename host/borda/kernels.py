"""Borda's kernels as a numpy API. Every function runs its arithmetic inside a Wasm sandbox.

    >>> import numpy as np, borda.kernels as bk
    >>> w = bk.quantize_q8_0(np.random.randn(64, 128).astype(np.float32))  # GGUF Q8_0 bytes
    >>> y = bk.matmul_q8_0(np.random.randn(4, 128).astype(np.float32), w)  # (4, 64) float32

Module-level functions use one Kernels sandbox per thread; create your own Kernels to
choose its memory limit and deadline. Arrays are copied into the sandbox's linear
memory, the kernel runs there, and results are copied out.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import quant
from .engine import EngineConfig
from .errors import InvalidInput
from .ropefreq import default_inv_freq
from .runtimes import runtime_bytes
from .sandbox import Limits, Sandbox

F32 = np.float32


@dataclass(frozen=True)
class ResidentQ8:
    """A Q8_0 matrix repacked once inside a Kernels sandbox, for repeated matmuls."""

    owner: int  # id() of the Kernels that holds it
    qs: int
    d: int
    s: int
    rows: int
    k: int


class Kernels:
    """A sandbox running borda_kernels.wasm, with one method per kernel."""

    def __init__(self, limits: Limits | None = None, config: EngineConfig | None = None) -> None:
        limits = limits or Limits(memory_bytes=2 << 30, timeout=60.0)
        self.sandbox = Sandbox(
            runtime_bytes("borda_kernels"), limits, config=config, name="borda_kernels"
        )
        self._floor = int(self.sandbox.call("borda_mark"))  # scratch is freed down to here

    # -- plumbing --------------------------------------------------------------------

    def _put(self, array: np.ndarray, dtype: Any = F32) -> int:
        array = np.ascontiguousarray(array, dtype=dtype)
        ptr = self.sandbox.alloc(max(array.nbytes, 1))
        self.sandbox.memory.write(ptr, array)
        return ptr

    def _run(self, export: str, *args: int | float) -> None:
        self.sandbox.call(export, *args)

    def _get(self, ptr: int, shape: tuple[int, ...], dtype: Any = F32) -> np.ndarray:
        return self.sandbox.memory.read_array(ptr, np.dtype(dtype), shape)

    def _release(self) -> None:
        if not self.sandbox.broken:  # a failed call already closed the sandbox
            self.sandbox.call("borda_release", self._floor)

    def _scratch(self, nbytes: int) -> int:
        return self.sandbox.alloc(max(nbytes, 1))

    # -- quantization ----------------------------------------------------------------

    def quantize_q8_0(self, w: np.ndarray) -> np.ndarray:
        """GGUF Q8_0 bytes of w (..., K), shape (..., K/32*34); K must be a multiple of 32."""
        w = np.asarray(w, dtype=F32)
        n = quant._blocks(w, "quantize_q8_0").size
        try:
            x, out = self._put(w), self._scratch(n // quant.QK * quant.Q8_0_BLOCK_BYTES)
            self._run("borda_quantize_q8_0", x, out, n)
            shape = (*w.shape[:-1], w.shape[-1] // quant.QK * quant.Q8_0_BLOCK_BYTES)
            return self._get(out, shape, np.uint8)
        finally:
            self._release()

    def quantize_act(self, x: np.ndarray, digits: int = 2) -> quant.QuantizedActivations:
        """x (tokens, K) as the GEMM's activations: per token, blocks of 32, 1 or 2 digits."""
        if digits not in quant.ACT_VMAX:
            raise InvalidInput(f"quantize_act: digits must be 1 or 2, got {digits}")
        x2 = _as_2d(x, "quantize_act")
        quant._blocks(x2, "quantize_act")
        n_tokens, k = x2.shape
        try:
            xp = self._put(x2)
            u, xd = self._scratch(digits * x2.size), self._scratch(x2.size // quant.QK * 4)
            self._run("borda_quantize_act", xp, u, xd, n_tokens, k, digits)
            return quant.QuantizedActivations(
                self._get(u, (n_tokens, digits, k), np.int8),
                self._get(xd, (n_tokens, k // quant.QK)),
            )
        finally:
            self._release()

    def dequantize_q8_0(self, q: np.ndarray) -> np.ndarray:
        """float32 values of Q8_0 bytes (..., K/32*34), shape (..., K)."""
        quant._q8_0_fields(q, "dequantize_q8_0")  # validates
        n = q.size // quant.Q8_0_BLOCK_BYTES * quant.QK
        try:
            src, out = self._put(q, np.uint8), self._scratch(n * 4)
            self._run("borda_dequantize_q8_0", src, out, n)
            return self._get(out, (*q.shape[:-1], q.shape[-1] // quant.Q8_0_BLOCK_BYTES * 32))
        finally:
            self._release()

    def upload_q8_0(self, w_q8: np.ndarray) -> ResidentQ8:
        """Copy a (rows, K/32*34) Q8_0 matrix into the sandbox once and repack it there."""
        resident = self._repack(np.asarray(w_q8), "upload_q8_0")
        self._floor = int(self.sandbox.call("borda_mark"))  # kept below per-call scratch
        return resident

    def free_resident(self) -> None:
        """Forget every uploaded matrix and free its memory."""
        self.sandbox.reset()
        self._floor = int(self.sandbox.call("borda_mark"))

    # -- matmuls ---------------------------------------------------------------------

    def matmul_q8_0(self, x: np.ndarray, w: np.ndarray | ResidentQ8, digits: int = 2) -> np.ndarray:
        """x (tokens, K) float32 times a Q8_0 matrix (rows, K) transposed: (tokens, rows).

        Activations are quantized per token in blocks of 32 inside the sandbox, to two
        base-63 digits (12 bits, the default) or one (7 bits, faster): see quantize_act.
        """
        if digits not in quant.ACT_VMAX:
            raise InvalidInput(f"matmul_q8_0: digits must be 1 or 2, got {digits}")
        x2 = _as_2d(x, "matmul_q8_0")
        resident = w if isinstance(w, ResidentQ8) else None
        try:
            if resident is None:
                resident = self._repack(np.asarray(w), "matmul_q8_0")
            elif resident.owner != id(self):
                raise InvalidInput("matmul_q8_0: that ResidentQ8 belongs to another Kernels")
            if x2.shape[1] != resident.k:
                raise InvalidInput(
                    f"matmul_q8_0: x has K={x2.shape[1]} but the matrix has K={resident.k}"
                )
            n_tokens = x2.shape[0]
            quant._blocks(x2, "matmul_q8_0")
            xp = self._put(x2)
            u, xd = self._scratch(digits * x2.size), self._scratch(x2.size // quant.QK * 4)
            y = self._scratch(n_tokens * resident.rows * 4)
            self._run("borda_quantize_act", xp, u, xd, n_tokens, resident.k, digits)
            self._run(
                "borda_gemm_q8_0",
                resident.qs,
                resident.d,
                resident.s,
                u,
                xd,
                y,
                resident.rows,
                resident.k,
                n_tokens,
                digits,
            )
            return self._get(y, (n_tokens, resident.rows)).reshape(*np.shape(x)[:-1], resident.rows)
        finally:
            self._release()

    def _repack(self, w_q8: np.ndarray, what: str) -> ResidentQ8:
        """Repack GGUF Q8_0 rows into planar arrays in the arena; the GGUF copy is freed."""
        quant._q8_0_fields(w_q8, what)
        if w_q8.ndim != 2:
            raise InvalidInput(f"{what}: expected a 2-D Q8_0 matrix, got shape {w_q8.shape}")
        rows, nb = w_q8.shape[0], w_q8.shape[1] // quant.Q8_0_BLOCK_BYTES
        qs, d, s = (self._scratch(rows * nb * size) for size in (quant.QK, 4, 2))
        mark = int(self.sandbox.call("borda_mark"))
        self._run("borda_repack_q8_0", self._put(w_q8, np.uint8), qs, d, s, rows * nb)
        self.sandbox.call("borda_release", mark)
        return ResidentQ8(id(self), qs, d, s, rows, nb * quant.QK)

    def matmul_f32(
        self, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None
    ) -> np.ndarray:
        """x (tokens, K) @ w (rows, K).T (+ bias), all float32."""
        x2 = _as_2d(x, "matmul_f32")
        w = np.asarray(w, dtype=F32)
        if w.ndim != 2 or w.shape[1] != x2.shape[1]:
            raise InvalidInput(f"matmul_f32: w must be (rows, {x2.shape[1]}), got {w.shape}")
        if bias is not None and np.shape(bias) != (w.shape[0],):
            raise InvalidInput(f"matmul_f32: bias must have shape ({w.shape[0]},)")
        try:
            b = self._put(bias) if bias is not None else 0
            y = self._scratch(x2.shape[0] * w.shape[0] * 4)
            args = (self._put(x2), self._put(w), b, y, x2.shape[0], w.shape[0], x2.shape[1])
            self._run("borda_gemm_f32", *args)
            return self._get(y, (x2.shape[0], w.shape[0])).reshape(*np.shape(x)[:-1], w.shape[0])
        finally:
            self._release()

    # -- row and element-wise kernels --------------------------------------------------

    def rmsnorm(self, x: np.ndarray, w: np.ndarray, eps: float = 1e-6) -> np.ndarray:
        """x / sqrt(mean(x^2) + eps) * w over the last axis."""
        x2 = _as_2d(x, "rmsnorm")
        _check_vector(w, x2.shape[1], "rmsnorm", "w")
        try:
            xp = self._put(x2)
            self._run("borda_rmsnorm", xp, self._put(w), xp, *x2.shape, float(eps))
            return self._get(xp, x2.shape).reshape(np.shape(x))
        finally:
            self._release()

    def layernorm(
        self, x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = 1e-12
    ) -> np.ndarray:
        """(x - mean) / sqrt(var + eps) * w + b over the last axis."""
        x2 = _as_2d(x, "layernorm")
        _check_vector(w, x2.shape[1], "layernorm", "w")
        _check_vector(b, x2.shape[1], "layernorm", "b")
        try:
            xp = self._put(x2)
            self._run("borda_layernorm", xp, self._put(w), self._put(b), xp, *x2.shape, float(eps))
            return self._get(xp, x2.shape).reshape(np.shape(x))
        finally:
            self._release()

    def rope(
        self,
        x: np.ndarray,
        pos0: int = 0,
        theta: float = 10000.0,
        interleaved: bool = False,
        inv_freq: np.ndarray | None = None,
    ) -> np.ndarray:
        """Rotary embedding of x (tokens, heads, head_dim); token t is at position pos0 + t.

        interleaved=False rotates halves (HF Llama/Qwen2); True rotates adjacent pairs.
        inv_freq overrides the default theta ** (-2i / head_dim) (e.g. Llama-3 scaling).
        """
        x = np.asarray(x, dtype=F32)
        if x.ndim != 3 or x.shape[2] % 2:
            raise InvalidInput(f"rope: x must be (tokens, heads, even head_dim), got {x.shape}")
        half = x.shape[2] // 2
        if inv_freq is None:
            inv_freq = default_inv_freq(x.shape[2], theta)
        _check_vector(inv_freq, half, "rope", "inv_freq")
        if pos0 < 0:
            raise InvalidInput(f"rope: pos0 must be >= 0, got {pos0}")
        try:
            xp = self._put(x)
            self._run("borda_rope", xp, *x.shape, pos0, self._put(inv_freq), int(interleaved))
            return self._get(xp, x.shape)
        finally:
            self._release()

    def _unary(self, export: str, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=F32)
        try:
            xp = self._put(x)
            self._run(export, xp, x.size)
            return self._get(xp, x.shape)
        finally:
            self._release()

    def silu(self, x: np.ndarray) -> np.ndarray:
        """x * sigmoid(x)."""
        return self._unary("borda_silu", x)

    def gelu(self, x: np.ndarray) -> np.ndarray:
        """GELU, erf form: 0.5 x (1 + erf(x / sqrt 2))."""
        return self._unary("borda_gelu", x)

    def swiglu(self, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
        """silu(gate) * up."""
        gate, up = np.asarray(gate, dtype=F32), np.asarray(up, dtype=F32)
        if gate.shape != up.shape:
            raise InvalidInput(f"swiglu: gate {gate.shape} and up {up.shape} differ in shape")
        try:
            g, u = self._put(gate), self._put(up)
            self._run("borda_swiglu", g, u, g, gate.size)
            return self._get(g, gate.shape)
        finally:
            self._release()

    def softmax(self, x: np.ndarray) -> np.ndarray:
        """Softmax over the last axis."""
        x2 = _as_2d(x, "softmax")
        try:
            xp = self._put(x2)
            self._run("borda_softmax", xp, *x2.shape)
            return self._get(xp, x2.shape).reshape(np.shape(x))
        finally:
            self._release()

    def attention(
        self,
        q: np.ndarray,
        k: np.ndarray,
        v: np.ndarray,
        causal: bool = True,
        scale: float | None = None,
    ) -> np.ndarray:
        """Scaled dot-product attention with grouped KV heads.

        q is (tokens, heads, head_dim); k and v are (kv_len, kv_heads, head_dim), heads a
        multiple of kv_heads. With causal=True the queries are the last `tokens` positions
        of the kv_len (query t sees keys 0 .. kv_len - tokens + t), as in a KV cache.
        """
        q, k, v = (np.asarray(a, dtype=F32) for a in (q, k, v))
        if q.ndim != 3 or k.ndim != 3 or k.shape != v.shape or k.shape[2] != q.shape[2]:
            raise InvalidInput(
                f"attention: expected q (tokens, heads, d) and k, v (kv_len, kv_heads, d); "
                f"got {q.shape}, {k.shape}, {v.shape}"
            )
        tokens, heads, dim = q.shape
        kv_len, kv_heads = k.shape[:2]
        if kv_heads == 0 or heads % kv_heads or dim % 4:
            raise InvalidInput(
                f"attention: heads ({heads}) must be a multiple of kv_heads ({kv_heads}) and "
                f"head_dim ({dim}) a multiple of 4"
            )
        if causal and tokens > kv_len:
            raise InvalidInput(f"attention: {tokens} causal queries need kv_len >= {tokens}")
        scale = float(dim**-0.5 if scale is None else scale)
        try:
            # the guest's KV cache layout is [kv_heads][position][head_dim]
            kp, vp = (self._put(np.ascontiguousarray(a.transpose(1, 0, 2))) for a in (k, v))
            qp, out = self._put(q), self._scratch(q.nbytes)
            pos0 = kv_len - tokens if causal else 0
            self._run(
                "borda_attention",
                qp,
                kp,
                vp,
                out,
                tokens,
                heads,
                kv_heads,
                dim,
                kv_len,
                pos0,
                kv_len,
                int(causal),
                scale,
            )
            return self._get(out, q.shape)
        finally:
            self._release()

    def embed_q8_0(self, table_q8: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Rows `ids` of a Q8_0 embedding table (vocab, dim/32*34), as float32 (n, dim)."""
        ids = np.asarray(ids)
        table_q8 = np.asarray(table_q8)
        quant._q8_0_fields(table_q8, "embed_q8_0")
        vocab, dim = table_q8.shape[0], table_q8.shape[1] // quant.Q8_0_BLOCK_BYTES * quant.QK
        if ids.ndim != 1 or (ids.size and (ids.min() < 0 or ids.max() >= vocab)):
            raise InvalidInput(f"embed_q8_0: ids must be a 1-D array of values in [0, {vocab})")
        try:
            table = self._repack(table_q8, "embed_q8_0")
            out = self._scratch(ids.size * dim * 4)
            self._run(
                "borda_embed_q8_0", table.qs, table.d, self._put(ids, np.int32), out, ids.size, dim
            )
            return self._get(out, (ids.size, dim))
        finally:
            self._release()


def _as_2d(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=F32)
    if x.ndim == 0:
        raise InvalidInput(f"{what}: expected an array with at least one dimension")
    return np.ascontiguousarray(x.reshape(-1, x.shape[-1]))


def _check_vector(v: np.ndarray, n: int, what: str, name: str) -> None:
    if np.shape(v) != (n,):
        raise InvalidInput(f"{what}: {name} must have shape ({n},), got {np.shape(v)}")


# -- module-level API: one Kernels per thread -------------------------------------------

_local = threading.local()


def default_kernels() -> Kernels:
    """This thread's Kernels sandbox (created on first use)."""
    kernels = getattr(_local, "kernels", None)
    if kernels is None or kernels.sandbox.broken:
        kernels = _local.kernels = Kernels()
    return kernels


def quantize_q8_0(w: np.ndarray) -> np.ndarray:
    return default_kernels().quantize_q8_0(w)


def dequantize_q8_0(q: np.ndarray) -> np.ndarray:
    return default_kernels().dequantize_q8_0(q)


def matmul_q8_0(x: np.ndarray, w: np.ndarray, digits: int = 2) -> np.ndarray:
    return default_kernels().matmul_q8_0(x, w, digits)


def matmul_f32(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    return default_kernels().matmul_f32(x, w, bias)


def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    return default_kernels().rmsnorm(x, w, eps)


def layernorm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    return default_kernels().layernorm(x, w, b, eps)


def rope(
    x: np.ndarray, pos0: int = 0, theta: float = 10000.0, interleaved: bool = False
) -> np.ndarray:
    return default_kernels().rope(x, pos0, theta, interleaved)


def softmax(x: np.ndarray) -> np.ndarray:
    return default_kernels().softmax(x)


def silu(x: np.ndarray) -> np.ndarray:
    return default_kernels().silu(x)


def swiglu(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    return default_kernels().swiglu(gate, up)


def gelu(x: np.ndarray) -> np.ndarray:
    return default_kernels().gelu(x)


def attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool = True, scale: float | None = None
) -> np.ndarray:
    return default_kernels().attention(q, k, v, causal, scale)


def embed_q8_0(table_q8: np.ndarray, ids: np.ndarray) -> np.ndarray:
    return default_kernels().embed_q8_0(table_q8, ids)
