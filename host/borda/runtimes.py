"""Locate Borda's own guest runtimes (wasm_modules/*.wasm) and check them against SHA256SUMS."""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

from .errors import BordaError

_PACKAGE_DIR = Path(__file__).resolve().parent


def modules_dir() -> Path:
    """borda/wasm_modules in an installed wheel; the repository's wasm_modules/ in a checkout."""
    for candidate in (_PACKAGE_DIR / "wasm_modules", _PACKAGE_DIR.parents[1] / "wasm_modules"):
        if (candidate / "SHA256SUMS").is_file():
            return candidate
    raise BordaError("Borda's wasm_modules/ are missing: reinstall Borda or run ./build.sh wasm")


@cache
def runtime_bytes(name: str) -> bytes:
    """The bytes of runtime `name` (e.g. "borda_kernels"), verified against SHA256SUMS."""
    directory = modules_dir()
    sums = {}
    for line in (directory / "SHA256SUMS").read_text().splitlines():
        digest, filename = line.split(maxsplit=1)
        sums[filename.strip()] = digest
    filename = f"{name}.wasm"
    if filename not in sums:
        raise BordaError(f"no runtime named {name!r} in {directory}")
    data = (directory / filename).read_bytes()
    if hashlib.sha256(data).hexdigest() != sums[filename]:
        raise BordaError(f"{directory / filename} does not match SHA256SUMS: reinstall Borda")
    return data


def runtime_digest(name: str) -> str:
    """sha256 of runtime `name`: a model packed with other runtime bytes runs other code."""
    return hashlib.sha256(runtime_bytes(name)).hexdigest()
