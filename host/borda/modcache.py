"""Compiled-module cache: compile a Wasm module once per process and once per machine.

Compiling a model-sized module takes seconds; deserializing a compiled artifact takes
milliseconds. Artifacts live in a directory Borda owns, keyed by the module's sha256,
the wasmtime version and the engine configuration. `Module.deserialize_file` runs
native code from the file it is given, so it is only called on files this module wrote:
each carries a header with the sha256 of its payload, and the directory must belong to
the current user and be writable by nobody else.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import threading
from importlib.metadata import version
from pathlib import Path

import wasmtime

from .engine import EngineConfig, get_engine
from .errors import GuestABIError

_MAGIC = b"BORDA-CWASM-1\n"
_memo: dict[tuple[str, EngineConfig], wasmtime.Module] = {}
_memo_lock = threading.Lock()


def cache_dir() -> Path:
    """Where compiled artifacts live: $BORDA_CACHE_DIR, else ~/.cache/borda/compiled."""
    root = os.environ.get("BORDA_CACHE_DIR") or Path.home() / ".cache" / "borda"
    return Path(root) / "compiled"


def load_module(wasm: bytes, config: EngineConfig | None = None) -> wasmtime.Module:
    """Return the compiled Module for `wasm`, from memory, from disk, or freshly compiled."""
    config = config or EngineConfig()
    digest = hashlib.sha256(wasm).hexdigest()
    key = (digest, config)
    with _memo_lock:
        module = _memo.get(key)
        if module is None:
            module = _load_or_compile(wasm, digest, config)
            _memo[key] = module
    return module


def _artifact_path(digest: str, config: EngineConfig) -> Path:
    tag = hashlib.sha256(f"{version('wasmtime')}|{config.cache_key()}".encode()).hexdigest()[:16]
    return cache_dir() / f"{digest}-{tag}.cwasm"


def _load_or_compile(wasm: bytes, digest: str, config: EngineConfig) -> wasmtime.Module:
    engine = get_engine(config)
    path = _artifact_path(digest, config)
    payload = _read_artifact(path) if _trusted_dir(path.parent) else None
    if payload is not None:
        try:
            return wasmtime.Module.deserialize(engine, payload)
        except wasmtime.WasmtimeError:
            pass  # written by an incompatible build; recompile and overwrite
    try:
        module = wasmtime.Module(engine, wasm)
    except wasmtime.WasmtimeError as exc:
        raise GuestABIError(f"not a valid Wasm module: {_first_line(exc)}") from None
    _write_artifact(path, bytes(module.serialize()))
    return module


def _read_artifact(path: Path) -> bytes | None:
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    head = len(_MAGIC) + 32
    if len(blob) < head or not blob.startswith(_MAGIC):
        return None
    payload = blob[head:]
    if hashlib.sha256(payload).digest() != blob[len(_MAGIC) : head]:
        return None
    return payload


def _write_artifact(path: Path, payload: bytes) -> None:
    """Best effort: a read-only or foreign cache directory only costs recompiling."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not _trusted_dir(path.parent):
            return
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".cwasm")
        with os.fdopen(fd, "wb") as f:
            f.write(_MAGIC + hashlib.sha256(payload).digest() + payload)
        os.replace(tmp, path)
    except OSError:
        return


def _trusted_dir(directory: Path) -> bool:
    try:
        st = directory.stat()
    except OSError:
        return False
    owned = st.st_uid == os.getuid()
    return owned and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
