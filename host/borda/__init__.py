"""Borda: small language models inside WebAssembly sandboxes.

The arithmetic runs as Wasm inside Wasmtime, so memory limits and deadlines cover
inference itself. Start with `borda.kernels` (a numpy API over the sandboxed kernels).
"""

from .encoder import EncoderSession
from .engine import EngineConfig
from .errors import (
    BordaError,
    ContextOverflow,
    GuestABIError,
    GuestError,
    GuestTrap,
    InvalidInput,
    ModelFormatError,
    QuotaExceeded,
    SandboxMemoryLimit,
    SandboxTimeout,
    UnsupportedModel,
)
from .model import Model, load
from .sandbox import Limits, Sandbox
from .session import Session

__version__ = "0.1.0"

__all__ = [
    "BordaError",
    "ContextOverflow",
    "EncoderSession",
    "EngineConfig",
    "GuestABIError",
    "GuestError",
    "GuestTrap",
    "InvalidInput",
    "Limits",
    "Model",
    "ModelFormatError",
    "QuotaExceeded",
    "Sandbox",
    "SandboxMemoryLimit",
    "SandboxTimeout",
    "Session",
    "UnsupportedModel",
    "__version__",
    "load",
]
