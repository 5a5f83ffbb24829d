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


@pytest.fixture(scope="session")
def host_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Llama packed to Q8_0: big enough that a generation spans many steps."""
    from borda.pack import pack
    from model_factory import byte_level_tokenizer, make_hf_model

    root = tmp_path_factory.mktemp("host-llama")
    make_hf_model(
        root,
        byte_level_tokenizer("gpt-2"),
        "llama",
        hidden=256,
        heads=4,
        kv_heads=2,
        layers=4,
        intermediate=512,
        max_position=1024,
        init="trained",
    )
    out = root.parent / "host-llama-q8_0.wasm"
    pack(root, out, "q8_0")
    return out
