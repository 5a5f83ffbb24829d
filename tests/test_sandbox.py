"""The sandbox against hostile guests: each attack ends in its own BordaError, and a new
sandbox afterwards works normally."""

from __future__ import annotations

import time

import numpy as np
import pytest

import borda
import borda.kernels as bk
from borda import Limits, Sandbox
from conftest import guest_wasm

DEADLINE = 0.5


def assert_fresh_sandbox_works() -> None:
    """A normal call in a new sandbox after an attack."""
    echo = Sandbox(guest_wasm("echo"))
    assert echo.invoke("anything") == ({"n": 7}, {})
    kernels = bk.Kernels()
    x = np.arange(64, dtype=np.float32).reshape(2, 32)
    np.testing.assert_allclose(kernels.softmax(x).sum(axis=1), [1.0, 1.0], rtol=1e-6)


def test_infinite_loop_in_export_times_out_within_twice_the_deadline() -> None:
    box = Sandbox(guest_wasm("loop_export"), Limits(timeout=DEADLINE))
    start = time.monotonic()
    with pytest.raises(borda.SandboxTimeout, match="deadline"):
        box.call("spin")
    assert time.monotonic() - start < 2 * DEADLINE
    assert_fresh_sandbox_works()


def test_infinite_loop_in_start_function_times_out_during_instantiation() -> None:
    start = time.monotonic()
    with pytest.raises(borda.SandboxTimeout, match="instantiation"):
        Sandbox(guest_wasm("loop_start"), Limits(timeout=DEADLINE))
    assert time.monotonic() - start < 2 * DEADLINE
    assert_fresh_sandbox_works()


def test_memory_grow_bomb_hits_the_memory_limit() -> None:
    box = Sandbox(guest_wasm("grow_bomb"), Limits(memory_bytes=8 << 20, timeout=DEADLINE))
    with pytest.raises(borda.SandboxMemoryLimit, match=r"8\.0 MiB"):
        box.call("bomb")
    assert box.memory.size <= 8 << 20
    assert_fresh_sandbox_works()


def test_oversized_initial_memory_is_refused_before_instantiation() -> None:
    with pytest.raises(borda.SandboxMemoryLimit, match=r"2048\.0 MiB of initial memory"):
        Sandbox(guest_wasm("huge_initial_memory"), Limits(memory_bytes=64 << 20))
    assert_fresh_sandbox_works()


def test_unbounded_recursion_is_a_stack_overflow_trap() -> None:
    box = Sandbox(guest_wasm("recursion"), Limits(timeout=DEADLINE))
    with pytest.raises(borda.GuestTrap, match="stack") as info:
        box.call("down", 0)
    assert info.value.trap_code == "stack_overflow"
    assert_fresh_sandbox_works()


@pytest.mark.parametrize("export", ["load", "store"])
def test_out_of_bounds_access_traps(export: str) -> None:
    box = Sandbox(guest_wasm("out_of_bounds"))
    with pytest.raises(borda.GuestTrap) as info:
        box.call(export)
    assert info.value.trap_code == "memory_out_of_bounds"
    assert_fresh_sandbox_works()


def test_response_pointer_outside_memory_is_an_abi_error_not_a_read() -> None:
    box = Sandbox(guest_wasm("bad_response"))
    with pytest.raises(borda.GuestABIError, match="outside its 65536-byte memory"):
        box.invoke("anything")
    assert_fresh_sandbox_works()


def test_response_over_the_size_cap_is_refused() -> None:
    box = Sandbox(guest_wasm("bad_response"), Limits(max_response_bytes=1024))
    with pytest.raises(borda.GuestABIError, match="over the 1024-byte cap"):
        box.invoke("anything")


def test_sandbox_is_closed_after_a_trap() -> None:
    box = Sandbox(guest_wasm("out_of_bounds"))
    with pytest.raises(borda.GuestTrap):
        box.call("load")
    with pytest.raises(borda.BordaError, match="open a new one"):
        box.call("load")


def test_guest_imports_are_refused_with_their_names() -> None:
    import wasmtime

    wasm = wasmtime.wat2wasm('(module (import "env" "steal" (func)))')
    with pytest.raises(borda.GuestABIError, match=r"env\.steal"):
        Sandbox(bytes(wasm))


def test_kernel_module_imports_nothing_and_speaks_abi_1() -> None:
    box = bk.Kernels().sandbox
    assert box.call("borda_abi_version") == 1
    result, _ = box.invoke("info")
    assert result["abi"] == 1
    assert "rmsnorm" in result["functions"]
