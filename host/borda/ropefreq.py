"""RoPE inverse frequencies as Hugging Face computes them, scaling included."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .errors import UnsupportedModel


def rope_inv_freq(config: dict[str, Any]) -> np.ndarray:
    """float32 (head_dim / 2,): 1 / theta^(2i/d), rescaled per config["rope_scaling"]."""
    inv_freq = default_inv_freq(config["head_dim"], float(config["rope_theta"]))
    scaling = config.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "linear":
        inv_freq = inv_freq / float(scaling["factor"])
    elif kind == "llama3":
        inv_freq = _llama3(inv_freq, scaling)
    elif kind != "default":
        raise UnsupportedModel(
            f"RoPE scaling {kind!r} is not supported; Borda supports default, linear and llama3"
        )
    return inv_freq.astype(np.float32)


def default_inv_freq(head_dim: int, theta: float) -> np.ndarray:
    """HF's inverse frequencies: 1 / theta ** (arange(0, d, 2) / d), in float32."""
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv_freq: np.ndarray = (1.0 / (np.float32(theta) ** exponents)).astype(np.float32)
    return inv_freq


def _llama3(inv_freq: np.ndarray, s: dict[str, Any]) -> np.ndarray:
    """Llama 3.1's frequency-dependent scaling (transformers' _compute_llama3_parameters)."""
    factor = float(s["factor"])
    low, high = float(s["low_freq_factor"]), float(s["high_freq_factor"])
    old_context = float(s["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_context / low, old_context / high
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    result: np.ndarray = np.where(medium, smoothed, scaled)
    return result
