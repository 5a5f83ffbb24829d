"""RoPE frequencies, scaling included, against transformers' own rope initialisers."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

import borda
from borda.ropefreq import rope_inv_freq

SCALINGS = {
    "linear": {"rope_type": "linear", "factor": 4.0},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
}


@pytest.mark.parametrize("kind", list(SCALINGS))
def test_scaled_inverse_frequencies_match_transformers(kind: str) -> None:
    scaling = SCALINGS[kind]
    hf = LlamaConfig(
        hidden_size=256,
        num_attention_heads=4,
        rope_theta=500000.0,
        max_position_embeddings=131072,
        rope_scaling=dict(scaling),
    )
    expected, _ = ROPE_INIT_FUNCTIONS[kind](hf, "cpu")
    ours = rope_inv_freq({"head_dim": 64, "rope_theta": 500000.0, "rope_scaling": scaling})
    np.testing.assert_allclose(ours, expected.numpy(), rtol=1e-6)


def test_unknown_rope_scaling_is_unsupported() -> None:
    with pytest.raises(borda.UnsupportedModel, match="yarn"):
        rope_inv_freq({"head_dim": 64, "rope_theta": 1e4, "rope_scaling": {"rope_type": "yarn"}})
