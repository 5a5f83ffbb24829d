"""Kernel benchmark, one thread, Borda beside numpy float32 in the same run.

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_kernels.py

Prints Q8_0 GEMV bandwidth on a >= 128 MB matrix (decode), Q8_0 GEMM throughput for 64
tokens (prefill), the relaxed-dot vs i16 inner loops, the cost of epoch interruption,
and the overhead of one Python -> Wasm call, each as a ratio against its peer.
"""

from __future__ import annotations

import os

for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"  # numpy's BLAS on one thread, like the sandbox

import argparse
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import wasmtime

from borda import EngineConfig, Limits
from borda.kernels import Kernels, ResidentQ8
from borda.quant import QK
from borda.sandbox import Sandbox


def best_of(*fns: Callable[[], object], repeat: int) -> list[float]:
    """The best time of each fn over `repeat` rounds, the fns taking turns within a round:
    a drift of the machine (memory clocks, neighbours) then hits them all alike, which
    matters most for the memory-bound GEMV."""
    for fn in fns:
        fn()  # warm up: page in, JIT caches
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def random_q8_0(rng: np.random.Generator, rows: int, k: int) -> np.ndarray:
    """GGUF Q8_0 bytes of a random matrix, built directly (quantizing 128M values is slow)."""
    nb = k // QK
    scales = (rng.random((rows * nb, 1), dtype=np.float32) * 0.01 + 0.001).astype(np.float16)
    qs = rng.integers(-127, 128, (rows * nb, QK), dtype=np.int8)
    return np.concatenate([scales.view(np.uint8), qs.view(np.uint8)], axis=1).reshape(rows, nb * 34)


# -- the ceiling: Wasm's int8 multiply peak ---------------------------------------------

PEAK_GROUPS = 16  # k-groups per loop iteration


def int8_peak_wat() -> str:
    """A module whose `peak(n)` runs n x PEAK_GROUPS k-groups of the Q8_0 GEMM tile's inner
    loop and nothing else: per k-group 2 weight + 4 activation loads (always the same
    L1-resident 1.5 KB) and 8 i32x4.relaxed_dot_i8x16_i7x16_add into 8 running sums. No
    packing, no scales, no epilogue: what no GEMM built on Wasm's int8 dot can beat on this
    CPU. Shaped as gemm_q8_0.c is for Cranelift: a never-taken branch after each k-group
    (a basic block's loads are hoisted to its start) and few back-edges (they spill sums)."""
    sums = [f"$a{j}" for j in range(8)]
    body = []
    for g in range(PEAK_GROUPS):
        at = 96 * g
        body += [
            f"(local.set $w{i} (v128.load offset={at + 16 * i} (i32.const 0)))" for i in (0, 1)
        ]
        body += [
            f"(local.set $u{t} (v128.load offset={at + 32 + 16 * t} (i32.const 0)))"
            for t in range(4)
        ]
        body += [
            f"(local.set {sums[4 * i + t]} (i32x4.relaxed_dot_i8x16_i7x16_add_s"
            f" (local.get $w{i}) (local.get $u{t}) (local.get {sums[4 * i + t]})))"
            for i in (0, 1)
            for t in range(4)
        ]
        body.append("(br_if $out (i32.load offset=4092 (i32.const 0)))")  # never taken
    total = "(local.get $a0)"
    for a in sums[1:]:
        total = f"(i32x4.add {total} (local.get {a}))"
    locals_ = " ".join(
        f"(local {v} v128)" for v in [*sums, "$w0", "$w1", "$u0", "$u1", "$u2", "$u3"]
    )
    return f"""(module
  (memory (export "memory") 1)
  (func (export "peak") (param $n i32) {locals_}
    (block $out
      (loop $next {" ".join(body)}
        (br_if $next (local.tee $n (i32.sub (local.get $n) (i32.const 1))))))
    (v128.store offset=4096 (i32.const 0) {total})))"""


def int8_peak_runner(iterations: int = 500_000) -> tuple[Callable[[], object], int]:
    """A call of the peak loop in a Borda Sandbox (same engine, epoch deadline armed) and
    the multiply-accumulates it does."""
    box = Sandbox(bytes(wasmtime.wat2wasm(int8_peak_wat())), Limits(timeout=600), name="peak")
    return partial(box.call, "peak", iterations), iterations * PEAK_GROUPS * 8 * 16


class KernelCall:
    """Times one kernel export directly: activations quantized once (in one and in two
    digits), weights resident."""

    def __init__(self, kernels: Kernels, w: ResidentQ8, tokens: int, rng: np.random.Generator):
        self.kernels, self.w, self.tokens = kernels, w, tokens
        x = rng.standard_normal((tokens, w.k)).astype(np.float32)
        box = kernels.sandbox
        xp = box.alloc(x.nbytes)
        box.memory.write(xp, x)
        self.act = {}
        for digits in (1, 2):
            u, xd = box.alloc(digits * x.size), box.alloc(x.size // QK * 4)
            box.call("borda_quantize_act", xp, u, xd, tokens, w.k, digits)
            self.act[digits] = (u, xd)
        self.y = box.alloc(tokens * w.rows * 4)

    def gemm(self, digits: int = 1) -> None:
        w = self.w
        args = (w.qs, w.d, w.s, *self.act[digits], self.y, w.rows, w.k)
        self.kernels.sandbox.call("borda_gemm_q8_0", *args, self.tokens, digits)

    def gemv_i16(self) -> None:
        w = self.w
        args = (w.qs, w.d, w.s, *self.act[1], self.y, w.rows, w.k)
        self.kernels.sandbox.call("borda_gemv_q8_0_i16", *args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gemv-rows", type=int, default=16384)
    parser.add_argument("--gemv-k", type=int, default=8192)
    parser.add_argument("--gemm", type=int, default=4096, help="rows = K of the GEMM matrix")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--gemv-copies", type=int, default=3, help="weight copies per engine")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    limits = Limits(memory_bytes=(4 << 30) - (1 << 16), timeout=600)

    # -- GEMV: decode, memory-bound ---------------------------------------------------
    rows, k = args.gemv_rows, args.gemv_k
    w_q8 = random_q8_0(rng, rows, k)
    # Each engine gets several sandboxes, each with its own copy of the weights: how a
    # copy's pages happen to land in DRAM moves this memory-bound GEMV by up to ~20 %,
    # more than the epoch checks cost, so one copy per engine decides nothing.
    copies = args.gemv_copies
    gemvs = [
        KernelCall(kern, kern.upload_q8_0(w_q8), 1, rng)
        for kern in (Kernels(limits) for _ in range(copies))
    ]
    plain = EngineConfig(epoch_interruption=False)
    gemvs_plain = [
        KernelCall(kern, kern.upload_q8_0(w_q8), 1, rng)
        for kern in (Kernels(limits, plain) for _ in range(copies))
    ]
    gemv = gemvs[0]
    del w_q8
    planar_bytes = rows * k + rows * (k // QK) * (4 + 2)
    w_f32 = rng.standard_normal((rows, k), dtype=np.float32)
    x_f32 = rng.standard_normal(k, dtype=np.float32)
    times = best_of(
        *(g.gemm for g in gemvs),
        *(g.gemm for g in gemvs_plain),
        partial(gemv.gemm, 2),
        gemv.gemv_i16,
        lambda: w_f32 @ x_f32,
        repeat=args.repeat,
    )
    t_relaxed, t_no_epoch = min(times[:copies]), min(times[copies : 2 * copies])
    t_two, t_i16, t_numpy = times[2 * copies :]
    del w_f32, gemvs, gemvs_plain
    mb = planar_bytes / 1e6
    print(f"GEMV Q8_0 {rows}x{k}, 1 thread, {mb:.0f} MB of weights read per call")
    print(f"  borda relaxed-dot  {t_relaxed * 1e3:7.2f} ms  {mb / 1e3 / t_relaxed:6.2f} GB/s")
    print(
        f"  borda 2-digit act  {t_two * 1e3:7.2f} ms  {mb / 1e3 / t_two:6.2f} GB/s"
        f"  (12-bit activations, as decoders use; {t_two / t_relaxed:.2f}x the time)"
    )
    print(
        f"  borda i16 dot      {t_i16 * 1e3:7.2f} ms  {mb / 1e3 / t_i16:6.2f} GB/s"
        f"  relaxed/i16 speed-up {t_i16 / t_relaxed:.2f}x"
    )
    print(
        f"  numpy f32 GEMV     {t_numpy * 1e3:7.2f} ms  {rows * k * 4 / t_numpy / 1e9:6.2f} GB/s"
        f" ({rows * k * 4 / 1e6:.0f} MB)"
    )
    print(f"  ratio borda/numpy speed: {t_numpy / t_relaxed:.2f}x (target >= 2.5x)")
    print(
        f"  epoch interruption cost: {(t_relaxed / t_no_epoch - 1) * 100:+.1f}% "
        f"({t_no_epoch * 1e3:.2f} ms without) (target <= 10%)"
    )
    del gemv

    # -- GEMM: prefill, compute-bound -------------------------------------------------
    n, tokens = args.gemm, args.tokens
    kernels = Kernels(limits)
    gemm = KernelCall(kernels, kernels.upload_q8_0(random_q8_0(rng, n, n)), tokens, rng)
    w_f32 = rng.standard_normal((n, n), dtype=np.float32)
    x_f32 = rng.standard_normal((tokens, n), dtype=np.float32)
    peak, peak_macs = int8_peak_runner()
    t_gemm, t_gemm2, t_numpy, t_peak = best_of(
        gemm.gemm, partial(gemm.gemm, 2), lambda: x_f32 @ w_f32.T, peak, repeat=args.repeat
    )
    ops = 2 * n * n * tokens
    print(f"GEMM Q8_0 {n}x{n} x {tokens} tokens, 1 thread")
    print(f"  borda relaxed-dot  {t_gemm * 1e3:7.2f} ms  {ops / t_gemm / 1e9:6.1f} GOP/s")
    print(
        f"  borda 2-digit act  {t_gemm2 * 1e3:7.2f} ms  {ops / t_gemm2 / 1e9:6.1f} GOP/s"
        f"  (12-bit activations, as decoders use; {t_gemm2 / t_gemm:.2f}x the time)"
    )
    print(f"  numpy f32 GEMM     {t_numpy * 1e3:7.2f} ms  {ops / t_numpy / 1e9:6.1f} GFLOP/s")
    print(f"  ratio borda/numpy speed: {t_numpy / t_gemm:.2f}x (target >= 1.0x)")
    peak_ops = 2 * peak_macs / t_peak / 1e9
    print(
        f"  Wasm int8 peak     {peak_ops:6.1f} GOP/s (relaxed dots alone, L1-resident): "
        f"the GEMM runs at {ops / t_gemm / 1e9 / peak_ops:.0%} of it"
    )

    # -- the cost of crossing into the sandbox ----------------------------------------
    calls = 20000
    box = kernels.sandbox
    start = time.perf_counter()
    for _ in range(calls):
        box.call("borda_abi_version")
    t_call = (time.perf_counter() - start) / calls
    start = time.perf_counter()
    for _ in range(calls):
        int(np.int32(1))  # a trivial Python-level call, the floor
    t_floor = (time.perf_counter() - start) / calls
    print(
        f"Python -> Wasm call overhead: {t_call * 1e6:.1f} us per call "
        f"(Sandbox.call with deadline re-armed; {t_call / t_floor:.0f}x a trivial Python call)"
    )


if __name__ == "__main__":
    main()
