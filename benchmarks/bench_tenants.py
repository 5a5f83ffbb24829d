"""Multi-tenant benchmark: many sessions of one SmolLM2-135M-shaped Q8_0 model on a Host.

    python benchmarks/bench_tenants.py [--sessions 256] [--tokens 64]

Prints the time to open a session, the private memory of an idle session (PSS delta
over --sessions open sessions: the weights are shared copy-on-write), how many idle
sessions fit in 16 GB by that measurement, and aggregate greedy decode tok/s with
1, 2, 8 and 32 tenants generating at once on a Host with one worker per core, against
one plain session alone (no host) in the same run.
"""

from __future__ import annotations

import os

for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import borda
from bench_decode import SMOLLM2_135M, random_spec
from borda import Host, Quota
from borda.pack import write_model
from borda.session import kv_bytes_per_position

CONTEXT = 256  # tokens of context per session (its KV cache)
MEMORY_BUDGET = 16 * 10**9
ADDRESS_SPACE = 1 << 47  # x86-64 user space


def proc_kib(path: str, field: str) -> int:
    for line in Path(path).read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in {path}")


def pss_bytes() -> int:
    return proc_kib("/proc/self/smaps_rollup", "Pss")


def address_space_bytes() -> int:
    return proc_kib("/proc/self/status", "VmSize")


def alone(path: Path, prompt: list[int], tokens: int) -> float:
    """Decode tok/s of one plain session, no host."""
    session = borda.load(path).session(max_context=CONTEXT, timeout=None)
    assert isinstance(session, borda.Session)
    list(session.generate_ids(prompt, 4, stop_at_eos=False))  # warm up
    start = time.perf_counter()
    ids = list(session.generate_ids(prompt, tokens, stop_at_eos=False))
    return len(ids) / (time.perf_counter() - start)


def aggregate(host: Host, n_tenants: int, prompt: list[int], tokens: int) -> float:
    """Decode tok/s summed over n tenants generating at once (prefill included)."""
    names = [f"gen{n_tenants}-{i}" for i in range(n_tenants)]
    for name in names:
        host.add_tenant(name, Quota(memory_per_session="64M"))
    sessions = [host.session(name, "smol", max_context=CONTEXT) for name in names]
    start = time.perf_counter()
    requests = [s.generate_ids(prompt, tokens, stop_at_eos=False) for s in sessions]
    produced = sum(len(r.result()) for r in requests)
    elapsed = time.perf_counter() - start
    for s in sessions:
        s.close()
    return produced / elapsed


def idle_sessions(host: Host, n: int) -> tuple[list[float], float, float]:
    """Open n idle sessions (16 tenants): their open times (s), and PSS and virtual address
    space per session (bytes)."""
    tenants = [f"idle-{i}" for i in range(16)]
    for name in tenants:
        host.add_tenant(name, Quota(memory_per_session="64M", max_sessions=n))
    keep = [host.session(tenants[0], "smol", max_context=CONTEXT)]  # warm up
    keep[0].close()
    before, space = pss_bytes(), address_space_bytes()
    times, keep = [], []
    for i in range(n):
        start = time.perf_counter()
        keep.append(host.session(tenants[i % len(tenants)], "smol", max_context=CONTEXT))
        times.append(time.perf_counter() - start)
    per_session = (pss_bytes() - before) / n
    space_per_session = (address_space_bytes() - space) / n
    for session in keep:
        session.close()
    return times, per_session, space_per_session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    prompt = [int(t) for t in np.random.default_rng(1).integers(1, 49152, 16)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "smollm2-135m-random.wasm"
        write_model(random_spec(SMOLLM2_135M), path, "q8_0")
        with Host(stats_file=Path(tmp) / "stats.json") as host:
            model = host.add_model("smol", path)
            times, per_session, space = idle_sessions(host, args.sessions)
            kv = CONTEXT * kv_bytes_per_position(model.config)
            fit = int((MEMORY_BUDGET - model.base_bytes) // max(per_session, 1))
            fit_space = int(ADDRESS_SPACE // space)
            print(f"SmolLM2-135M-shaped random model, Q8_0, {host.workers} workers")
            print(
                f"  session open: median {statistics.median(times) * 1e6:.0f} us, "
                f"p90 {np.percentile(times, 90) * 1e6:.0f} us (target <= 1000 us)"
            )
            print(
                f"  idle session private memory (PSS delta over {args.sessions}): "
                f"{per_session / 2**20:.2f} MiB; its {CONTEXT}-token KV cache reserves "
                f"{kv / 2**20:.1f} MiB, untouched while idle (target <= 2 MiB + KV)"
            )
            print(
                f"  idle sessions that fit in 16 GB beside the {model.base_bytes / 2**20:.0f} MiB "
                f"of shared model bytes: {fit}; each reserves {space / 2**30:.1f} GiB of "
                f"virtual address space (guard regions), so the 128 TiB address space caps "
                f"a process at {fit_space}: {min(fit, fit_space)} sessions per process"
            )
            single = alone(path, prompt, args.tokens)
            print(f"  one session alone (no host): {single:6.1f} tok/s")
            for n in (1, 2, 8, 32):
                rate = aggregate(host, n, prompt, args.tokens)
                target = " (target with 2 workers >= 1.6x)" if n > 1 else ""
                print(
                    f"  {n:2d} tenants generating at once: {rate:6.1f} tok/s aggregate, "
                    f"{rate / single:.2f}x one session{target}"
                )


if __name__ == "__main__":
    main()
