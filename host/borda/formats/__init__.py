"""Model-format readers: a Hugging Face directory or a GGUF file in, a ModelSpec out.

read_model() picks the reader; every reader returns GGUF tensor names, (rows, K) matrices
with Q/K rows in Hugging Face order, a `tokenizers` JSON and the chat template.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelFormatError
from .bert import is_encoder_dir, read_bert_model
from .chat import ChatTemplateError, render_chat
from .gguf_file import GGUF_MAGIC, read_gguf_model, rope_freq_factors
from .hf import expected_tensor_shapes, read_hf_model
from .spec import DecoderConfig, ModelSpec, TensorRef

__all__ = [
    "ChatTemplateError",
    "DecoderConfig",
    "ModelSpec",
    "TensorRef",
    "expected_tensor_shapes",
    "read_gguf_model",
    "read_hf_model",
    "read_model",
    "render_chat",
    "rope_freq_factors",
]


def read_model(path: str | Path) -> ModelSpec:
    """Read a Hugging Face model directory (config.json) or a GGUF file (by its magic)."""
    p = Path(path)
    if p.is_dir():
        if (p / "config.json").is_file():
            return read_bert_model(p) if is_encoder_dir(p) else read_hf_model(p)
    elif p.is_file():
        with p.open("rb") as f:
            magic = f.read(4)
        if magic == GGUF_MAGIC:
            return read_gguf_model(p)
        if p.suffix.lower() == ".gguf":
            raise ModelFormatError(
                f"{p}: has a .gguf name but starts with {magic!r}, not the GGUF magic b'GGUF'; "
                "the file is corrupt or not a GGUF file"
            )
    elif not p.exists():
        raise ModelFormatError(f"{p} does not exist")
    raise ModelFormatError(
        f"{p} is neither a Hugging Face model directory (config.json) nor a GGUF file; "
        "pass a directory saved with transformers' save_pretrained or a llama.cpp .gguf file"
    )
