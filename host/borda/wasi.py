"""The WASI preview 1 a tenant's module may import, and nothing more.

A guest that imports only from `wasi_snapshot_preview1` gets a WASI context with no
preopened directories, no environment, no arguments and an empty stdin; its stdout and
stderr go to a capped in-memory buffer. `poll_oneoff` (sleep) is replaced by one that
answers ENOTSUP: a guest asleep in a host call cannot be stopped by its deadline
(epoch interruption only fires in Wasm code).
Any other import is refused before instantiation.
"""

from __future__ import annotations

import ctypes
import itertools
import threading
import weakref
from collections.abc import Sequence

import wasmtime
from wasmtime import _ffi

from .errors import GuestABIError

WASI_MODULE = "wasi_snapshot_preview1"
ERRNO_NOTSUP = 58  # WASI preview 1 errno "not supported"

_linkers: dict[wasmtime.Engine, wasmtime.Linker] = {}
_linkers_lock = threading.Lock()
_outputs: weakref.WeakValueDictionary[int, GuestOutput] = weakref.WeakValueDictionary()
_handles = itertools.count(1)  # an output's stdout is handle << 1, its stderr handle << 1 | 1
_NO_FINALIZER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)()  # a null function pointer


def check_imports(imports: Sequence[tuple[str, str]], name: str, *, wasi: bool) -> bool:
    """True when a module with these (module, name) imports needs WASI; GuestABIError
    naming any import Borda does not provide."""
    refused = [f"{m}.{n}" for m, n in imports if not (wasi and m == WASI_MODULE)]
    if refused:
        provides = f"only {WASI_MODULE}" if wasi else "no imports"
        hint = (
            "; WASI needs a sandbox opened with wasi=True"
            if not wasi and any(m == WASI_MODULE for m, _ in imports)
            else ""
        )
        raise GuestABIError(
            f"{name} imports {', '.join(refused)}; Borda's sandbox provides {provides}{hint}"
        )
    return bool(imports)


class GuestOutput:
    """A guest's stdout and stderr, together kept up to `limit` bytes; the rest is dropped."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.truncated = False
        self._streams = (bytearray(), bytearray())

    @property
    def stdout(self) -> bytes:
        return bytes(self._streams[0])

    @property
    def stderr(self) -> bytes:
        return bytes(self._streams[1])

    @property
    def room(self) -> int:
        return max(self.limit - len(self._streams[0]) - len(self._streams[1]), 0)

    def keep(self, stream: int, data: bytes, dropped: int) -> None:
        """Append `data` to stdout (0) or stderr (1), noting that `dropped` bytes did not fit."""
        self._streams[stream].extend(data)
        self.truncated = self.truncated or dropped > 0


def attach_wasi(store: wasmtime.Store, max_output_bytes: int) -> GuestOutput:
    """Give `store` a bare WASI context whose stdout and stderr are captured."""
    output = GuestOutput(max_output_bytes)
    handle = next(_handles)
    _outputs[handle] = output
    cfg = wasmtime.WasiConfig()  # starts with no argv, env or preopens, and empty stdin
    # Not cfg.stdout_custom: its finalizer calls into Python from a wasmtime worker thread
    # when the Store is freed, which aborts the process if that happens at interpreter exit.
    _ffi.wasi_config_set_stdout_custom(cfg.ptr(), _write, handle << 1, _NO_FINALIZER)
    _ffi.wasi_config_set_stderr_custom(cfg.ptr(), _write, handle << 1 | 1, _NO_FINALIZER)
    store.set_wasi(cfg)
    return output


def _write_output(data: int | None, buf: ctypes._Pointer[ctypes.c_ubyte], size: int) -> int:
    """wasmtime's stdout/stderr callback, run on its worker thread while the guest waits.

    Copies only what fits and reports every byte written, so that a guest past the cap
    neither retries nor fails; output whose sandbox is gone is dropped.
    """
    try:
        output = _outputs.get((data or 0) >> 1)
        if output is not None and buf:
            kept = min(size, output.room)
            output.keep((data or 0) & 1, ctypes.string_at(buf, kept), size - kept)
    except Exception:  # never raise into wasmtime: the output is best effort
        pass
    return size


_write = ctypes.CFUNCTYPE(
    ctypes.c_ssize_t, ctypes.c_void_p, ctypes.POINTER(ctypes.c_ubyte), ctypes.c_size_t
)(_write_output)


def wasi_linker(engine: wasmtime.Engine) -> wasmtime.Linker:
    """The process-wide Linker for `engine` that defines WASI (created on first use)."""
    with _linkers_lock:
        linker = _linkers.get(engine)
        if linker is None:
            linker = _linkers[engine] = wasmtime.Linker(engine)
            linker.define_wasi()
            linker.allow_shadowing = True
            i32 = wasmtime.ValType.i32()
            linker.define_func(
                WASI_MODULE,
                "poll_oneoff",
                wasmtime.FuncType([i32, i32, i32, i32], [i32]),
                _poll_oneoff,
            )
        return linker


def _poll_oneoff(subscriptions: int, events: int, count: int, nevents: int) -> int:
    return ERRNO_NOTSUP
