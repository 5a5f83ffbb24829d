"""Shared fixtures: hostile and well-behaved guests compiled from tests/guests/*.wat."""

from __future__ import annotations

from pathlib import Path

import pytest
import wasmtime

GUESTS = Path(__file__).parent / "guests"


def guest_wasm(name: str) -> bytes:
    """The Wasm bytes of tests/guests/<name>.wat."""
    return bytes(wasmtime.wat2wasm((GUESTS / f"{name}.wat").read_text()))


@pytest.fixture(autouse=True)
def _private_cache_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compiled-module artifacts go to a per-session temp dir, never the user's cache."""
    monkeypatch.setenv("BORDA_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "borda-cache"))
