"""Model-format readers: Hugging Face directories, GGUF files, GGUF tokenizers, chat templates.

Every model here is built locally (tests/model_factory.py); nothing comes from a hub.
"""

from __future__ import annotations

import json
import logging
import shutil
import struct
from functools import cache
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

import model_factory as mf
from borda.errors import BordaError, InvalidInput, ModelFormatError, UnsupportedModel
from borda.formats import (
    ChatTemplateError,
    ModelSpec,
    read_gguf_model,
    read_hf_model,
    read_model,
    render_chat,
    rope_freq_factors,
)
from borda.formats.gguf_file import read_gguf_metadata, unpermute_qk_rows
from borda.formats.gguf_tokenizer import tokenizer_from_gguf
from borda.quant import quantize_q8_0

QT = gguf.GGMLQuantizationType

# ------------------------------------------------------------------ fixtures


@cache
def tokenizer(kind: str) -> mf.TinyTokenizer:
    return mf.sentencepiece_tokenizer() if kind == "spm" else mf.byte_level_tokenizer(kind)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """HF directories: untied Llama (GQA 4:1), tied Llama (SentencePiece), Qwen2 (biases)."""
    base = tmp_path_factory.mktemp("hf")
    return {
        "llama": mf.make_hf_model(
            base / "llama", tokenizer("llama-bpe"), chat_template=mf.LLAMA3_TEMPLATE
        ),
        "llama_tied": mf.make_hf_model(
            base / "llama_tied", tokenizer("spm"), tied=True, hidden=128, heads=4, kv_heads=4
        ),
        "qwen2": mf.make_hf_model(base / "qwen2", tokenizer("qwen2"), "qwen2", kv_heads=2),
    }


@pytest.fixture(scope="module")
def ggufs(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("gguf")
    toks = {"llama": "llama-bpe", "llama_tied": "spm", "qwen2": "qwen2"}
    out = {}
    for name, root in models.items():
        for ttype in ("f32", "q8_0"):
            out[f"{name}-{ttype}"] = mf.write_gguf(
                root, base / f"{name}-{ttype}.gguf", tokenizer(toks[name]), ttype
            )
    for ttype in ("f16", "bf16"):
        out[f"llama-{ttype}"] = mf.write_gguf(
            models["llama"], base / f"llama-{ttype}.gguf", tokenizer("llama-bpe"), ttype
        )
    return out


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def load_all(spec: ModelSpec) -> dict[str, np.ndarray]:
    return {name: ref.load() for name, ref in spec.tensors.items()}


# ------------------------------------------------------------------ dispatch


def test_read_model_dispatches_directory_to_hf_and_gguf_by_magic(
    models: dict[str, Path], ggufs: dict[str, Path], tmp_path: Path
) -> None:
    assert read_model(models["qwen2"]).config.arch == "qwen2"
    renamed = tmp_path / "model.bin"  # the magic decides, not the extension
    shutil.copy(ggufs["qwen2-f32"], renamed)
    assert read_model(renamed).config.arch == "qwen2"


def test_read_model_rejects_what_is_neither(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    for path in (tmp_path, tmp_path / "notes.txt"):
        with pytest.raises(ModelFormatError, match="neither a Hugging Face model directory"):
            read_model(path)
    with pytest.raises(ModelFormatError, match="does not exist"):
        read_model(tmp_path / "missing")


# ------------------------------------------------------------------ Hugging Face


@pytest.mark.parametrize("name", ["llama", "llama_tied", "qwen2"])
def test_hf_reader_tensors_match_safetensors_by_name(models: dict[str, Path], name: str) -> None:
    spec = read_hf_model(models[name])
    hf = mf.hf_tensors(models[name])
    tied = spec.config.tie_word_embeddings
    expected = {mf.gguf_name(k): v for k, v in hf.items() if not (tied and k == "lm_head.weight")}
    assert set(spec.tensors) == set(expected)
    for gname, ref in spec.tensors.items():
        array = ref.load()
        assert ref.dtype == "f32" and array.dtype == np.float32
        assert ref.shape == array.shape == expected[gname].shape
        np.testing.assert_array_equal(array, expected[gname], err_msg=gname)


def test_hf_reader_config_tokenizer_and_template(models: dict[str, Path], tmp_path: Path) -> None:
    spec = read_hf_model(models["llama"])
    tok = tokenizer("llama-bpe")
    c = spec.config
    assert (c.arch, c.hidden_size, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim) == (
        "llama", 64, 2, 4, 1, 16,
    )  # fmt: skip
    assert c.vocab_size == tok.size + 3 and c.vocab_size % 32
    assert (c.intermediate_size, c.rms_norm_eps, c.rope_theta) == (96, 1e-5, 10000.0)
    assert not c.tie_word_embeddings and not c.attention_bias and c.rope_scaling is None
    assert c.bos_token_id == tok.id(tok.bos) and c.eos_token_ids == (tok.id(tok.eos),)
    assert spec.chat_template == mf.LLAMA3_TEMPLATE
    assert spec.special_tokens == {"bos": tok.bos, "eos": tok.eos}
    assert Tokenizer.from_str(spec.tokenizer_json).encode("hi there").ids == (
        tok.tokenizer.encode("hi there").ids
    )
    assert spec.source_name == "llama" and len(spec.source_sha256) == 64

    legacy = copy_model(models["llama"], tmp_path / "legacy")  # special_tokens_map.json only
    tok_cfg = json.loads((legacy / "tokenizer_config.json").read_text())
    token_map = {k: tok_cfg.pop(k) for k in ("bos_token", "eos_token")}
    (legacy / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    (legacy / "special_tokens_map.json").write_text(json.dumps(token_map))
    assert read_hf_model(legacy).special_tokens == spec.special_tokens

    qwen = read_hf_model(models["qwen2"])
    assert qwen.config.attention_bias and qwen.config.arch == "qwen2"
    assert qwen.special_tokens["pad"] == "<|endoftext|>"  # serialized AddedToken form
    assert read_hf_model(models["llama_tied"]).config.tie_word_embeddings


def test_hf_source_hash_is_stable_and_covers_every_file(
    models: dict[str, Path], tmp_path: Path
) -> None:
    root = copy_model(models["qwen2"], tmp_path / "m")
    first = read_hf_model(root).source_sha256
    assert read_hf_model(root).source_sha256 == first
    (root / "README.md").write_text("changed")
    assert read_hf_model(root).source_sha256 != first


def test_hf_sharded_checkpoint_reads_the_same(models: dict[str, Path], tmp_path: Path) -> None:
    sharded = mf.make_hf_model(
        tmp_path / "sharded", tokenizer("qwen2"), "qwen2", kv_heads=2, shard_size="40KB"
    )
    assert len(list(sharded.glob("model-*-of-*.safetensors"))) > 1
    assert (sharded / "model.safetensors.index.json").is_file()
    a, b = read_hf_model(models["qwen2"]), read_hf_model(sharded)
    assert a.config == b.config
    one, many = load_all(a), load_all(b)
    assert one.keys() == many.keys()
    for name in one:
        np.testing.assert_array_equal(one[name], many[name], err_msg=name)


def test_hf_bf16_and_f16_checkpoints_widen_exactly(tmp_path: Path) -> None:
    import torch

    for dtype, tag in (("bfloat16", "bf16"), ("float16", "f16")):
        root = mf.make_hf_model(tmp_path / tag, tokenizer("gpt-2"), dtype=dtype)
        spec = read_hf_model(root)
        from safetensors.torch import load_file

        raw = load_file(str(root / "model.safetensors"))
        for hf_name, t in raw.items():
            ref = spec.tensors[mf.gguf_name(hf_name)]
            assert ref.dtype == tag
            expected = t.to(torch.float32).numpy()
            np.testing.assert_array_equal(ref.load(), expected, err_msg=hf_name)


def test_hf_reads_legacy_and_new_rope_config_keys(models: dict[str, Path], tmp_path: Path) -> None:
    root = copy_model(models["llama"], tmp_path / "m")
    cfg = json.loads((root / "config.json").read_text())
    cfg.pop("rope_parameters")
    cfg["rope_theta"] = 50000.0
    cfg["rope_scaling"] = {"type": "linear", "factor": 2.0}
    (root / "config.json").write_text(json.dumps(cfg))
    legacy = read_hf_model(root).config
    cfg.pop("rope_theta")
    cfg.pop("rope_scaling")
    cfg["rope_parameters"] = {"rope_type": "linear", "factor": 2.0, "rope_theta": 50000.0}
    (root / "config.json").write_text(json.dumps(cfg))
    new = read_hf_model(root).config
    assert legacy == new
    assert new.rope_theta == 50000.0 and new.rope_scaling == {"rope_type": "linear", "factor": 2.0}
    factors = rope_freq_factors(new)
    assert factors is not None and np.all(factors == 2.0) and factors.shape == (8,)


def test_hf_chat_template_from_named_list_or_jinja_file(
    models: dict[str, Path], tmp_path: Path
) -> None:
    root = copy_model(models["qwen2"], tmp_path / "m")
    cfg = json.loads((root / "tokenizer_config.json").read_text())
    cfg["chat_template"] = [
        {"name": "tool_use", "template": "TOOLS"},
        {"name": "default", "template": "DEFAULT"},
    ]
    (root / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert read_hf_model(root).chat_template == "DEFAULT"
    (root / "chat_template.jinja").write_text("FROM FILE")
    assert read_hf_model(root).chat_template == "FROM FILE"


# ------------------------------------------------------------------ GGUF


@pytest.mark.parametrize("name", ["llama", "llama_tied", "qwen2"])
def test_gguf_f32_matches_hf_reader_including_unpermuted_qk(
    models: dict[str, Path], ggufs: dict[str, Path], name: str
) -> None:
    hf = read_hf_model(models[name])
    gg = read_gguf_model(ggufs[f"{name}-f32"])
    assert gg.config == hf.config
    assert gg.chat_template == hf.chat_template
    assert gg.special_tokens == hf.special_tokens
    assert gg.source_name == f"{name}-f32.gguf"
    assert set(gg.tensors) == set(hf.tensors)
    for tname, ref in gg.tensors.items():
        assert ref.dtype == "f32" and ref.shape == hf.tensors[tname].shape
        np.testing.assert_array_equal(ref.load(), hf.tensors[tname].load(), err_msg=tname)


def test_gguf_llama_qk_rows_are_stored_permuted_and_read_back_in_hf_order(
    models: dict[str, Path], ggufs: dict[str, Path]
) -> None:
    reader = gguf.GGUFReader(ggufs["llama-f32"])
    stored = {t.name: np.array(t.data) for t in reader.tensors}
    hf = mf.hf_tensors(models["llama"])
    q_hf = hf["model.layers.1.self_attn.q_proj.weight"]
    k_hf = hf["model.layers.1.self_attn.k_proj.weight"]
    assert not np.array_equal(stored["blk.1.attn_q.weight"], q_hf)  # the file is interleaved
    spec = read_gguf_model(ggufs["llama-f32"])
    np.testing.assert_array_equal(spec.tensors["blk.1.attn_q.weight"].load(), q_hf)
    np.testing.assert_array_equal(spec.tensors["blk.1.attn_k.weight"].load(), k_hf)
    # Qwen2 is not permuted by llama.cpp: stored rows are HF rows
    qwen = gguf.GGUFReader(ggufs["qwen2-f32"])
    q = next(t for t in qwen.tensors if t.name == "blk.0.attn_q.weight")
    q_hf = mf.hf_tensors(models["qwen2"])["model.layers.0.self_attn.q_proj.weight"]
    np.testing.assert_array_equal(np.array(q.data), q_hf)


@settings(max_examples=40, deadline=None)
@given(
    heads=st.integers(1, 8),
    half=st.integers(1, 8),
    k=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_unpermute_inverts_llama_cpp_permutation(heads: int, half: int, k: int, seed: int) -> None:
    w = np.random.default_rng(seed).standard_normal((heads * 2 * half, k)).astype(np.float32)
    np.testing.assert_array_equal(unpermute_qk_rows(mf.permute_qk(w, heads), heads), w)
    b = w[:, 0].copy()  # biases permute the same way
    np.testing.assert_array_equal(unpermute_qk_rows(mf.permute_qk(b, heads), heads), b)


@pytest.mark.parametrize("name", ["llama", "qwen2", "llama_tied"])
def test_gguf_q8_0_tensors_are_byte_identical_to_quantize_of_hf_tensor(
    models: dict[str, Path], ggufs: dict[str, Path], name: str
) -> None:
    spec = read_gguf_model(ggufs[f"{name}-q8_0"])
    hf = {mf.gguf_name(k): v for k, v in mf.hf_tensors(models[name]).items()}
    for tname, ref in spec.tensors.items():
        data = ref.load()
        if len(ref.shape) == 1:
            assert ref.dtype == "f32"
            np.testing.assert_array_equal(data, hf[tname])
            continue
        rows, k = ref.shape
        assert ref.dtype == "q8_0" and (rows, k) == hf[tname].shape
        assert data.dtype == np.uint8 and data.shape == (rows, k // 32 * 34)
        expected = gguf.quants.quantize(hf[tname], QT.Q8_0)
        np.testing.assert_array_equal(data, expected, err_msg=tname)
        np.testing.assert_array_equal(data, quantize_q8_0(hf[tname]), err_msg=tname)


def test_gguf_f16_and_bf16_tensors_read_as_rounded_hf_values(
    models: dict[str, Path], ggufs: dict[str, Path]
) -> None:
    hf = {mf.gguf_name(k): v for k, v in mf.hf_tensors(models["llama"]).items()}
    f16 = read_gguf_model(ggufs["llama-f16"])
    bf16 = read_gguf_model(ggufs["llama-bf16"])
    for tname, ref in f16.tensors.items():
        two_d = len(ref.shape) == 2
        assert ref.dtype == ("f16" if two_d else "f32")
        expected = hf[tname].astype(np.float16).astype(np.float32) if two_d else hf[tname]
        np.testing.assert_array_equal(ref.load(), expected, err_msg=tname)
    for tname, ref in bf16.tensors.items():
        two_d = len(ref.shape) == 2
        assert ref.dtype == ("bf16" if two_d else "f32")
        bits = gguf.quants.quantize(hf[tname], QT.BF16) if two_d else None
        expected = gguf.quants.dequantize(bits, QT.BF16) if bits is not None else hf[tname]
        np.testing.assert_array_equal(ref.load(), expected, err_msg=tname)


def test_gguf_llama3_rope_scaling_round_trips(tmp_path: Path) -> None:
    tok = tokenizer("gpt-2")
    scaling = {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    root = mf.make_hf_model(
        tmp_path / "l3", tok, rope_scaling=scaling, rope_theta=500000.0, max_position=16384
    )
    hf = read_hf_model(root).config
    assert hf.rope_scaling == scaling
    gg = read_gguf_model(mf.write_gguf(root, tmp_path / "l3.gguf", tok)).config
    assert gg == hf  # rope_freqs.weight recognised as Llama 3.x's parameters
    # parameters that are not Llama 3.x's standard ones come back as raw factors
    odd = dict(scaling, original_max_position_embeddings=64, factor=8.0)
    root = mf.make_hf_model(tmp_path / "odd", tok, rope_scaling=odd, rope_theta=500000.0)
    hf = read_hf_model(root).config
    gg = read_gguf_model(mf.write_gguf(root, tmp_path / "odd.gguf", tok)).config
    assert gg.rope_scaling is not None and gg.rope_scaling["rope_type"] == "freq_factors"
    want, got = rope_freq_factors(hf), rope_freq_factors(gg)
    assert want is not None and got is not None and not np.all(want == 1.0)
    np.testing.assert_allclose(got, want, rtol=1e-6)


# ------------------------------------------------------------------ GGUF tokenizers

TOKENIZER_KINDS = ["gpt-2", "llama-bpe", "smollm", "qwen2", "spm"]


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_gguf_tokenizer_conversion_is_exact(kind: str, tmp_path: Path) -> None:
    tok = tokenizer(kind)
    path = mf.write_tokenizer_gguf(tmp_path / "tok.gguf", tok)
    converted = tokenizer_from_gguf(read_gguf_metadata(gguf.GGUFReader(path)))
    lines = mf.corpus(260, seed=11)
    assert len(lines) >= 200
    for line in lines:
        for specials in (True, False):
            want = tok.tokenizer.encode(line, add_special_tokens=specials).ids
            got = converted.encode(line, add_special_tokens=specials).ids
            assert got == want, (line, specials)
        for skip in (True, False):
            assert converted.decode(want, skip_special_tokens=skip) == tok.tokenizer.decode(
                want, skip_special_tokens=skip
            ), line


def test_gguf_model_carries_an_equivalent_tokenizer(
    models: dict[str, Path], ggufs: dict[str, Path]
) -> None:
    for name in ("llama", "llama_tied"):
        hf = Tokenizer.from_str(read_hf_model(models[name]).tokenizer_json)
        gg = Tokenizer.from_str(read_model(ggufs[f"{name}-q8_0"]).tokenizer_json)
        for line in mf.corpus(60, seed=3):
            assert gg.encode(line).ids == hf.encode(line).ids, line


def test_gguf_unknown_pre_tokenizer_falls_back_to_gpt2_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    meta = read_gguf_metadata(
        gguf.GGUFReader(mf.write_tokenizer_gguf(tmp_path / "t.gguf", tokenizer("gpt-2")))
    )
    meta["tokenizer.ggml.pre"] = "some-future-model"
    with caplog.at_level(logging.WARNING):
        converted = tokenizer_from_gguf(meta)
    assert "some-future-model" in caplog.text
    line = "plain text, 123 words"
    assert converted.encode(line).ids == tokenizer("gpt-2").tokenizer.encode(line).ids


def test_gguf_tokenizer_errors_are_clear() -> None:
    with pytest.raises(ModelFormatError, match=r"no tokenizer\.ggml\.model"):
        tokenizer_from_gguf({})
    with pytest.raises(UnsupportedModel, match="'bert'"):
        tokenizer_from_gguf({"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": ["a"]})
    bad_merge = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": ["a", "b"],
        "tokenizer.ggml.merges": ["a c"],
    }
    with pytest.raises(ModelFormatError, match="merges"):
        tokenizer_from_gguf(bad_merge)


# ------------------------------------------------------------------ chat templates

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": 'Hi <b>there</b> & "friends" — 你好 🚀'},
    {"role": "assistant", "content": "  Hello!  "},
    {"role": "user", "content": "Again?", "meta": {"lang": "fr", "note": "<é>"}},
]
TOOLS = [{"type": "function", "function": {"name": "get_time", "parameters": {"tz": "str"}}}]


@pytest.mark.parametrize(
    ("template", "kind"),
    [
        (mf.CHATML_TEMPLATE, "qwen2"),
        (mf.LLAMA3_TEMPLATE, "llama-bpe"),
        (mf.TOOLS_TEMPLATE, "gpt-2"),
    ],
    ids=["chatml", "llama3", "tools"],
)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_render_chat_matches_transformers_apply_chat_template(
    template: str, kind: str, add_generation_prompt: bool
) -> None:
    from transformers import PreTrainedTokenizerFast

    tok = tokenizer(kind)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok.tokenizer, bos_token=tok.bos, eos_token=tok.eos
    )
    hf.chat_template = template
    extra: dict[str, Any] = {"tools": TOOLS} if template == mf.TOOLS_TEMPLATE else {}
    want = hf.apply_chat_template(
        MESSAGES, tokenize=False, add_generation_prompt=add_generation_prompt, **extra
    )
    got = render_chat(
        template,
        MESSAGES,
        add_generation_prompt=add_generation_prompt,
        bos_token=tok.bos,
        eos_token=tok.eos,
        **extra,
    )
    assert got == want


def test_render_chat_supports_generation_blocks_and_extra_variables() -> None:
    template = (
        "{% for m in messages %}{% generation %}[{{ m.content }}]{% endgeneration %}{% endfor %}"
        "{{ pad_token }}{{ tools is none }}"
    )
    assert render_chat(template, MESSAGES[:2], pad_token="<pad>") == (
        "[You are terse.][" + MESSAGES[1]["content"] + "]<pad>True"
    )


def test_render_chat_raise_exception_is_invalid_input() -> None:
    with pytest.raises(ChatTemplateError, match="roles must be user or assistant") as e:
        render_chat(mf.TOOLS_TEMPLATE, [{"role": "tool", "content": "x"}])
    assert isinstance(e.value, InvalidInput)


def test_render_chat_sandbox_and_syntax_errors_are_model_format_errors() -> None:
    escape = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(ModelFormatError, match="chat template failed"):
        render_chat(escape, MESSAGES)
    with pytest.raises(ModelFormatError, match="namespace attribute"):
        render_chat("{% set ns = namespace(_x=1) %}", MESSAGES)
    with pytest.raises(ModelFormatError, match="not valid Jinja"):
        render_chat("{% for m in messages %}", MESSAGES)


# ------------------------------------------------------------------ bad input: safetensors


def rewrite_safetensors(path: Path, mutate: Any) -> None:
    """Re-serialize a safetensors header after `mutate(header)`, keeping the data bytes."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    mutate(header)
    new = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])


@pytest.fixture
def hf_copy(models: dict[str, Path], tmp_path: Path) -> Path:
    return copy_model(models["llama"], tmp_path / "m")


def test_truncated_safetensors_is_rejected_naming_file_and_tensor(hf_copy: Path) -> None:
    st = hf_copy / "model.safetensors"
    st.write_bytes(st.read_bytes()[:-1000])
    with pytest.raises(ModelFormatError, match=r"model\.safetensors: tensor .* truncated"):
        read_model(hf_copy)


def test_safetensors_header_length_past_the_file_is_rejected(hf_copy: Path) -> None:
    st = hf_copy / "model.safetensors"
    raw = st.read_bytes()
    st.write_bytes(struct.pack("<Q", len(raw) * 2) + raw[8:])
    with pytest.raises(ModelFormatError, match=r"header length .* runs past the end of the file"):
        read_model(hf_copy)
    st.write_bytes(raw[:5])
    with pytest.raises(ModelFormatError, match="too short"):
        read_model(hf_copy)


def test_safetensors_overlapping_tensors_are_rejected(hf_copy: Path) -> None:
    def overlap(header: dict[str, Any]) -> None:
        a, b = "model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.gate_proj.weight"
        header[a]["data_offsets"] = header[b]["data_offsets"]

    rewrite_safetensors(hf_copy / "model.safetensors", overlap)
    with pytest.raises(ModelFormatError, match="overlap"):
        read_model(hf_copy)


def test_safetensors_byte_count_and_dtype_mismatches_are_rejected(hf_copy: Path) -> None:
    st = hf_copy / "model.safetensors"
    original = st.read_bytes()

    def reshape(header: dict[str, Any]) -> None:
        header["model.norm.weight"]["shape"] = [63]

    rewrite_safetensors(st, reshape)
    with pytest.raises(ModelFormatError, match=r"'model\.norm\.weight' is F32 \(63,\)"):
        read_model(hf_copy)
    st.write_bytes(original)

    def to_f64(header: dict[str, Any]) -> None:
        header["model.norm.weight"]["dtype"] = "F64"
        header["model.norm.weight"]["shape"] = [32]

    rewrite_safetensors(st, to_f64)
    with pytest.raises(UnsupportedModel, match="is F64; Borda reads F32, F16 and BF16"):
        read_model(hf_copy)


def test_missing_tensor_and_wrong_shape_are_named(hf_copy: Path) -> None:
    cfg_path = hf_copy / "config.json"
    cfg = json.loads(cfg_path.read_text())
    missing = r"model\.layers\.2\.input_layernorm\.weight is missing"
    cfg["num_hidden_layers"] = 3
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ModelFormatError, match=missing):
        read_model(hf_copy)
    cfg["num_hidden_layers"] = 10**12  # fails at the first missing layer, not after enumerating
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ModelFormatError, match=missing):
        read_model(hf_copy)
    cfg["num_hidden_layers"] = 1
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModel, match=r"does not account for: model\.layers\.1\."):
        read_model(hf_copy)
    cfg["num_hidden_layers"], cfg["intermediate_size"] = 2, 128
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ModelFormatError, match=r"gate_proj\.weight has shape \(96, 64\)"):
        read_model(hf_copy)


def test_unsupported_hf_architecture_is_named(hf_copy: Path) -> None:
    cfg = json.loads((hf_copy / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (hf_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        UnsupportedModel, match=r"'GPT2LMHeadModel' is not supported.*Qwen2ForCausalLM.*BertModel"
    ):
        read_model(hf_copy)


def test_a_config_without_an_architecture_is_not_taken_for_a_model(tmp_path: Path) -> None:
    # e.g. a sentence-transformers model's 1_Pooling/ directory, given instead of the model's
    pooling = tmp_path / "1_Pooling"
    pooling.mkdir()
    (pooling / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    with pytest.raises(ModelFormatError, match=r"names no model architecture.*own directory"):
        read_model(pooling)


def test_missing_tokenizer_is_reported(hf_copy: Path) -> None:
    (hf_copy / "tokenizer.json").unlink()
    with pytest.raises(ModelFormatError, match=r"tokenizer\.json is missing"):
        read_model(hf_copy)


def test_missing_weights_and_shards_are_reported(hf_copy: Path, tmp_path: Path) -> None:
    (hf_copy / "model.safetensors").unlink()
    with pytest.raises(ModelFormatError, match=r"no model\.safetensors"):
        read_model(hf_copy)
    (hf_copy / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors"}})
    )
    with pytest.raises(
        ModelFormatError, match=r"shard 'model-00001-of-00002\.safetensors' is missing"
    ):
        read_model(hf_copy)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_corrupted_safetensors_header_never_escapes_as_a_raw_error(
    models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    root = tmp_path_factory.mktemp("fuzz-st")
    shutil.copy(models["qwen2"] / "config.json", root)
    shutil.copy(models["qwen2"] / "tokenizer.json", root)
    raw = bytearray((models["qwen2"] / "model.safetensors").read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, 8 + n - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    (root / "model.safetensors").write_bytes(bytes(raw))
    try:
        spec = read_model(root)
        for ref in spec.tensors.values():
            ref.load()
    except BordaError:
        pass


# ------------------------------------------------------------------ bad input: GGUF


@pytest.fixture
def gguf_copy(ggufs: dict[str, Path], tmp_path: Path) -> Path:
    dst = tmp_path / "m.gguf"
    shutil.copy(ggufs["qwen2-f32"], dst)
    return dst


def patch(path: Path, offset: int, data: bytes) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset : offset + len(data)] = data
    path.write_bytes(bytes(raw))


def tensor_info_offset_field(path: Path, name: str) -> int:
    """Byte offset of a tensor's data-offset field in its tensor-info record."""
    t = next(t for t in gguf.GGUFReader(path).tensors if t.name == name)
    return t.field.offset + sum(int(p.nbytes) for p in t.field.parts) - 8


def test_gguf_wrong_magic_is_rejected(gguf_copy: Path) -> None:
    patch(gguf_copy, 0, b"GGML")
    with pytest.raises(ModelFormatError, match="not the GGUF magic"):
        read_model(gguf_copy)
    with pytest.raises(ModelFormatError, match=r"magic b'GGML'"):
        read_gguf_model(gguf_copy)


def test_gguf_unsupported_version_is_rejected(gguf_copy: Path) -> None:
    patch(gguf_copy, 4, struct.pack("<I", 1))
    with pytest.raises(UnsupportedModel, match="version 1"):
        read_model(gguf_copy)


@pytest.mark.parametrize(("offset", "what"), [(8, "tensors"), (16, "metadata entries")])
def test_gguf_absurd_counts_are_rejected(gguf_copy: Path, offset: int, what: str) -> None:
    patch(gguf_copy, offset, struct.pack("<Q", 2**40))
    with pytest.raises(ModelFormatError, match=f"claims {2**40} {what}"):
        read_model(gguf_copy)


def test_gguf_absurd_string_length_is_rejected(gguf_copy: Path) -> None:
    patch(gguf_copy, 24, struct.pack("<Q", 2**50))  # the first key's length
    with pytest.raises(ModelFormatError, match=r"at byte offset 24 claims .* past the end"):
        read_model(gguf_copy)


def test_gguf_absurd_array_length_is_rejected(gguf_copy: Path) -> None:
    field = gguf.GGUFReader(gguf_copy).fields["tokenizer.ggml.tokens"]
    count_at = field.offset + sum(int(p.nbytes) for p in field.parts[:4])  # klen key type etype
    patch(gguf_copy, count_at, struct.pack("<Q", 2**40))
    with pytest.raises(ModelFormatError, match="claims 1099511627776 elements"):
        read_model(gguf_copy)


def test_gguf_absurd_layer_count_fails_fast_naming_a_missing_tensor(gguf_copy: Path) -> None:
    field = gguf.GGUFReader(gguf_copy).fields["qwen2.block_count"]
    value_at = field.offset + sum(int(p.nbytes) for p in field.parts[:-1])
    patch(gguf_copy, value_at, struct.pack("<I", 2**32 - 1))
    with pytest.raises(ModelFormatError, match=r"blk\.2\.attn_norm\.weight is missing"):
        read_model(gguf_copy)


def test_gguf_metadata_array_budget_is_enforced(
    gguf_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import borda.formats.gguf_file as gguf_file

    monkeypatch.setattr(gguf_file, "_MAX_ARRAY_ELEMENTS", 100)
    with pytest.raises(ModelFormatError, match="arrays hold over 100 elements"):
        read_model(gguf_copy)


def test_gguf_tensor_outside_the_data_section_is_rejected(gguf_copy: Path) -> None:
    at = tensor_info_offset_field(gguf_copy, "blk.0.ffn_up.weight")
    patch(gguf_copy, at, struct.pack("<Q", 2**30))
    with pytest.raises(
        ModelFormatError, match=r"blk\.0\.ffn_up\.weight .* outside the data section"
    ):
        read_model(gguf_copy)


def test_gguf_truncated_file_is_rejected(gguf_copy: Path) -> None:
    gguf_copy.write_bytes(gguf_copy.read_bytes()[:-100])
    with pytest.raises(ModelFormatError, match=r"outside the data section.*truncated"):
        read_model(gguf_copy)
    gguf_copy.write_bytes(gguf_copy.read_bytes()[:2000])
    with pytest.raises(ModelFormatError, match="truncated or corrupt"):
        read_model(gguf_copy)


def test_gguf_overlapping_tensors_are_rejected(gguf_copy: Path) -> None:
    reader = gguf.GGUFReader(gguf_copy)
    first = reader.tensors[0]
    at = tensor_info_offset_field(gguf_copy, reader.tensors[1].name)
    patch(gguf_copy, at, struct.pack("<Q", first.data_offset - reader.data_offset))
    with pytest.raises(ModelFormatError, match="overlap"):
        read_model(gguf_copy)


def test_gguf_reader_errors_are_wrapped(models: dict[str, Path], tmp_path: Path) -> None:
    def two_keys(w: gguf.GGUFWriter) -> None:
        w.add_string("test.aaaa", "x")
        w.add_string("test.bbbb", "y")

    path = mf.write_gguf(
        models["qwen2"], tmp_path / "dup.gguf", tokenizer("qwen2"), mutate=two_keys
    )
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b"test.bbbb", b"test.aaaa"))  # a duplicate key
    with pytest.raises(ModelFormatError, match="gguf could not parse the file"):
        read_model(path)


def test_gguf_unsupported_tensor_type_is_named(models: dict[str, Path], tmp_path: Path) -> None:
    path = mf.write_gguf(
        models["llama"],
        tmp_path / "q4.gguf",
        tokenizer("llama-bpe"),
        type_overrides={"blk.0.ffn_down.weight": QT.Q4_0},
    )
    with pytest.raises(
        UnsupportedModel,
        match=r"blk\.0\.ffn_down\.weight is Q4_0; Borda reads F32, F16, BF16 and Q8_0",
    ):
        read_model(path)


def test_gguf_unsupported_architecture_is_named(models: dict[str, Path], tmp_path: Path) -> None:
    path = mf.write_gguf(
        models["llama"], tmp_path / "x.gguf", tokenizer("llama-bpe"), arch_override="phi3"
    )
    with pytest.raises(UnsupportedModel, match="architecture 'phi3' is not supported"):
        read_model(path)


def test_gguf_missing_tokenizer_is_reported(tmp_path: Path) -> None:
    w = gguf.GGUFWriter(tmp_path / "t.gguf", "llama")
    for key, value in (("embedding_length", 64), ("block_count", 1), ("feed_forward_length", 64)):
        w.add_uint32(f"llama.{key}", value)
    w.add_head_count(4)
    w.add_context_length(64)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(32)
    names = ["token_embd.weight", "output_norm.weight", "blk.0.attn_norm.weight"]
    names += [f"blk.0.{n}.weight" for n in ("attn_q", "attn_k", "attn_v", "attn_output")]
    for name in [*names, "blk.0.ffn_norm.weight"]:
        shape = (32, 64) if name == "token_embd.weight" else (64,) if "norm" in name else (64, 64)
        w.add_tensor(name, np.zeros(shape, np.float32))
    for name in ("ffn_gate", "ffn_up", "ffn_down"):
        w.add_tensor(f"blk.0.{name}.weight", np.zeros((64, 64), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelFormatError, match="carries no tokenizer"):
        read_model(tmp_path / "t.gguf")


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_corrupted_gguf_header_never_escapes_as_a_raw_error(
    ggufs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    src = ggufs["qwen2-q8_0"]
    raw = bytearray(src.read_bytes())
    header_end = gguf.GGUFReader(src).data_offset
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, header_end - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    path = tmp_path_factory.mktemp("fuzz-gguf") / "m.gguf"
    path.write_bytes(bytes(raw))
    try:
        spec = read_model(path)
        for ref in spec.tensors.values():
            ref.load()
        Tokenizer.from_str(spec.tokenizer_json)
    except BordaError:
        pass
