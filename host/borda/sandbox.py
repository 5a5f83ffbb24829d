"""The sandbox core: one Store + Instance per Sandbox, under a memory budget and deadlines.

A Sandbox runs one guest instance; every trap or failure leaves as a BordaError subclass
that says what happened and what to do. Engines live in engine.py, compiled modules
in modcache.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import wasmtime

from .engine import EPOCH_TICK, EngineConfig, get_engine
from .errors import (
    BordaError,
    GuestABIError,
    GuestError,
    GuestTrap,
    InvalidInput,
    SandboxMemoryLimit,
    SandboxTimeout,
)
from .guestmem import GuestMemory, pack, read_tensor, tensor_message, unpack
from .modcache import load_module

PAGE = 65536
NO_DEADLINE = 1 << 62
WASM32_MAX_MEMORY = 1 << 32
ABI_VERSION = 1
INVOKE_OUT_OF_MEMORY = -2  # borda_invoke's code for "the arena could not allocate"


@dataclass(frozen=True)
class Limits:
    """A sandbox's budget.

    memory_bytes caps the guest's whole linear memory: for a model that is
    "model bytes + private budget" (model.wasm's weights live in linear memory).
    timeout is seconds of wall time per call, instantiation included; None = no deadline.
    """

    memory_bytes: int = 1 << 30
    timeout: float | None = 30.0
    table_elements: int = 10_000
    max_response_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        if not PAGE <= self.memory_bytes <= WASM32_MAX_MEMORY:
            raise ValueError(
                f"memory_bytes must be between 64 KiB and 4 GiB, got {self.memory_bytes}"
            )
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"timeout must be positive seconds or None, got {self.timeout}")


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string such as '512M', '2G', '64KiB'."""
    if isinstance(size, int):
        return size
    text = size.strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError:
        raise InvalidInput(f"cannot read {size!r} as a size; write e.g. 512M or 2G") from None


class Sandbox:
    """One guest instance in its own Store, under `limits`.

    Not thread-safe: use one Sandbox per thread (separate Sandboxes run in parallel).
    After a trap or timeout the sandbox is closed; open a new one to continue.
    """

    def __init__(
        self,
        module: wasmtime.Module | bytes,
        limits: Limits | None = None,
        *,
        config: EngineConfig | None = None,
        name: str = "guest",
    ) -> None:
        self.limits = limits or Limits()
        self.name = name
        self._config = config or EngineConfig()
        self._broken: str | None = None
        self._abi_checked = False
        if isinstance(module, bytes):
            module = load_module(module, self._config)
        _check_imports(module, name)
        _check_initial_memory(module, self.limits, name)
        self._store = wasmtime.Store(get_engine(self._config))
        self._store.set_limits(
            memory_size=self.limits.memory_bytes,
            table_elements=self.limits.table_elements,
            instances=1,
            tables=4,
            memories=1,
        )
        self._arm_deadline()
        instance = self._guarded("instantiation", wasmtime.Instance, self._store, module, [])
        self._exports = instance.exports(self._store)
        memory = self._exports.get("memory") if "memory" in _export_names(module) else None
        if not isinstance(memory, wasmtime.Memory):
            raise GuestABIError(f"{name} does not export its linear memory as 'memory'")
        self.memory = GuestMemory(self._store, memory)

    # -- the guest ABI -----------------------------------------------------------------

    def alloc(self, nbytes: int) -> int:
        """Allocate nbytes in the guest's arena; SandboxMemoryLimit when the budget is spent."""
        self._check_abi()
        ptr = int(self.call("borda_alloc", nbytes))
        if ptr == 0 and nbytes > 0:
            raise SandboxMemoryLimit(
                f"{self.name}: cannot allocate {_mib(nbytes)} within its memory budget of "
                f"{_mib(self.limits.memory_bytes)}; raise the memory limit or give it less work"
            )
        self.memory.check(ptr & 0xFFFFFFFF, nbytes, "allocation")
        return ptr & 0xFFFFFFFF

    def reset(self) -> None:
        """Free every arena allocation (guests without borda_reset keep theirs)."""
        if self.has_export("borda_reset"):
            self.call("borda_reset")

    def invoke(
        self,
        fn: str,
        args: dict[str, Any] | None = None,
        tensors: dict[str, np.ndarray] | None = None,
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The generic msgpack call: returns the guest's (result, tensors)."""
        request = pack(
            {
                "fn": fn,
                "args": args or {},
                "tensors": {k: tensor_message(v) for k, v in (tensors or {}).items()},
            }
        )
        try:
            ptr = self.alloc(len(request))
            self.memory.write(ptr, request)
            packed = int(self.call("borda_invoke", ptr, len(request)))
            response = self._read_response(fn, packed)
            out = {
                k: read_tensor(v, self.memory, k) for k, v in response.get("tensors", {}).items()
            }
        finally:
            if not self._broken:
                self.reset()
        if response.get("ok") is not True:
            message = response.get("error", f"{fn} failed without a message")
            raise GuestError(f"{self.name}: {message}")
        result = response.get("result", {})
        if not isinstance(result, dict):
            raise GuestABIError(f"{self.name}: {fn}: 'result' in the response is not a map")
        return result, out

    def _read_response(self, fn: str, packed: int) -> dict[str, Any]:
        if packed < 0:
            if packed == INVOKE_OUT_OF_MEMORY:
                raise SandboxMemoryLimit(
                    f"{self.name}: {fn} ran out of its {_mib(self.limits.memory_bytes)} memory "
                    "budget; raise the memory limit or give it less work"
                )
            raise GuestABIError(f"{self.name}: {fn} failed with error code {packed}")
        ptr, nbytes = (packed >> 32) & 0xFFFFFFFF, packed & 0xFFFFFFFF
        if nbytes > self.limits.max_response_bytes:
            raise GuestABIError(
                f"{self.name}: {fn} returned a {nbytes}-byte response, over the "
                f"{self.limits.max_response_bytes}-byte cap"
            )
        message = unpack(
            self.memory.read_bytes(ptr, nbytes, "response"), self.limits.max_response_bytes
        )
        if not isinstance(message, dict):
            raise GuestABIError(f"{self.name}: {fn} returned a response that is not a map")
        return message

    def _check_abi(self) -> None:
        if self._abi_checked:
            return
        if not self.has_export("borda_abi_version"):
            raise GuestABIError(f"{self.name} does not export borda_abi_version: not a Borda guest")
        version = self.call("borda_abi_version")
        if version != ABI_VERSION:
            raise GuestABIError(
                f"{self.name} speaks guest ABI {version}; Borda speaks {ABI_VERSION}"
            )
        self._abi_checked = True

    # -- calls -----------------------------------------------------------------------

    @property
    def broken(self) -> bool:
        """True after a trap or timeout: the instance's state can no longer be trusted."""
        return self._broken is not None

    def has_export(self, export: str) -> bool:
        return self._exports.get(export) is not None

    def call(self, export: str, *args: int | float) -> Any:
        """Call an exported function under the deadline; traps become BordaErrors."""
        if self._broken:
            raise BordaError(
                f"{self.name}: sandbox is unusable after: {self._broken}; open a new one"
            )
        func = self._exports.get(export)
        if not isinstance(func, wasmtime.Func):
            raise GuestABIError(f"{self.name} does not export a function named {export!r}")
        self._arm_deadline()
        return self._guarded(f"call to {export}", func, self._store, *args)

    def _arm_deadline(self) -> None:
        if not self._config.epoch_interruption:
            return
        timeout = self.limits.timeout
        ticks = NO_DEADLINE if timeout is None else math.ceil(timeout / EPOCH_TICK) + 1
        self._store.set_epoch_deadline(ticks)

    def _guarded(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except wasmtime.Trap as exc:
            error = self._trap_error(what, exc)
        except wasmtime.WasmtimeError as exc:
            error = self._instantiation_error(what, exc)
        self._broken = str(error)
        raise error

    def _trap_error(self, what: str, exc: wasmtime.Trap) -> BordaError:
        code = exc.trap_code
        where = f"{self.name}: {what}"
        if code == wasmtime.TrapCode.INTERRUPT:
            return SandboxTimeout(
                f"{where} ran past its {self.limits.timeout} s deadline and was stopped; "
                "raise the timeout or give it less work"
            )
        if self._memory_exhausted():
            return SandboxMemoryLimit(
                f"{where} failed after using all {_mib(self.limits.memory_bytes)} of its memory "
                f"budget ({_trap_name(code)}); raise the memory limit or give it less work"
            )
        if code == wasmtime.TrapCode.STACK_OVERFLOW:
            return GuestTrap(
                f"{where} overflowed its stack (unbounded recursion?)", "stack_overflow"
            )
        return GuestTrap(f"{where} trapped: {_trap_name(code)}", _trap_name(code))

    def _instantiation_error(self, what: str, exc: wasmtime.WasmtimeError) -> BordaError:
        text = str(exc)
        if "memory" in text and "limit" in text:
            return SandboxMemoryLimit(
                f"{self.name}: {what} needs more memory than its budget of "
                f"{_mib(self.limits.memory_bytes)}; raise the memory limit"
            )
        return GuestABIError(f"{self.name}: {what} failed: {text.strip().splitlines()[0]}")

    def _memory_exhausted(self) -> bool:
        """True when the guest cannot grow by one more page: its budget is spent."""
        try:
            return self.memory.size + PAGE > self.limits.memory_bytes
        except AttributeError:  # trapped during instantiation, before memory was bound
            return False


def _export_names(module: wasmtime.Module) -> set[str]:
    return {e.name for e in module.exports}


def _check_imports(module: wasmtime.Module, name: str) -> None:
    imports = [f"{i.module}.{i.name}" for i in module.imports]
    if imports:
        raise GuestABIError(
            f"{name} imports {', '.join(imports)}; Borda's sandbox provides no imports"
        )


def _check_initial_memory(module: wasmtime.Module, limits: Limits, name: str) -> None:
    for export in module.exports:
        if isinstance(export.type, wasmtime.MemoryType):
            initial = export.type.limits.min * PAGE
            if initial > limits.memory_bytes:
                raise SandboxMemoryLimit(
                    f"{name} declares {_mib(initial)} of initial memory, more than its budget "
                    f"of {_mib(limits.memory_bytes)}; raise the memory limit"
                )


def _trap_name(code: wasmtime.TrapCode | None) -> str:
    return code.name.lower() if code is not None else "trap"


def _mib(nbytes: int) -> str:
    return f"{nbytes / (1 << 20):.1f} MiB"
