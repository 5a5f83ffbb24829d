"""Tiny models built locally for tests: tokenizers trained here, transformers models with random
weights saved to a directory, and the same model written to GGUF the way llama.cpp's
convert_hf_to_gguf.py would (Q/K permutation, F32 norms, tokenizer metadata). Nothing is
fetched from a hub.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    processors,
    trainers,
)
from tokenizers import pre_tokenizers as pre

# ------------------------------------------------------------------ text

_WORDS = (  # noqa: SIM905 - a sentence is easier to read than a list of words
    "the quick brown fox jumps over a lazy dog while we've been told it's fine and I'll see "
    "model token sandbox WebAssembly memory limit Borda llama qwen mistral SmolLM THE Über "
    "naïve café résumé Straße déjà-vu garçon cœur Ελληνικά русский привет мир שלום مرحبا "
    "日本語 東京 中文 你好 世界 한국어 안녕하세요 ไทย हिन्दी 🚀 😶‍🌫️ 👍🏽 🦙 ✅ 🎉 ∑ ≥ → ½ "
    "def return print(x) {} [] == != -> // /* */ #include <stdio.h> foo_bar camelCase "
    "snake_case https://example.com/a?b=c e-mail@x.org 3.14159 1234567 0x1F 42 2024-05-01"
).split(" ")

_FIXED_LINES = [
    "",
    " ",
    "  leading spaces",
    "trailing spaces   ",
    "\ttab\tseparated\tvalues",
    "line one\nline two\r\nline three\n\n\nend",
    "    def f(x):\n        return x * 2  # doubled\n",
    'if (a && b) { printf("%d\\n", a[i]); }',
    "Hello, World! How's it going? I'd say we're OK.",
    "ALL CAPS SHOUTING 'RE 'VE 'LL",
    "数字 1 22 333 4444 55555 666666 and ١٢٣٤ ۵۶ ⅷ",
    "emoji runs 😀😃😄😁 and flags 🇫🇷🇯🇵 and zwj 👩‍👩‍👧‍👦",
    "rare chars not in training: ℵ ⌘ 🐍 ☃ ᚠᛇᚻ ꙮ \U0001d518\U0001d52b\U0001d526\U0001d520",
    "mixed 中文English한국어 日本語テキスト",
    "whitespace     runs\t\t\tand\n\n\n\nnewlines",
    "<|im_start|>user\nhi<|im_end|>",
    "text with [TOOL] marker and <|endoftext|> inside",
    "<s> literal angle s </s>",
    "a" * 40 + " " + "ab" * 15,
    "ends with newline\n",
    "decomposed accents: cafe\u0301 nai\u0308ve A\u030angstro\u0308m",
]


def corpus(n: int = 240, seed: int = 0) -> list[str]:
    """Varied lines: words in many scripts, emoji, code, numbers, whitespace runs."""
    rng = random.Random(seed)
    seps = [" ", " ", " ", "  ", "\t", "\n", "", ", ", ". ", "   ", " \n "]
    lines = list(_FIXED_LINES)
    while len(lines) < n:
        parts = [rng.choice(_WORDS) + rng.choice(seps) for _ in range(rng.randint(1, 16))]
        line = "".join(parts)
        if rng.random() < 0.2:
            line = " " * rng.randint(1, 8) + line
        if rng.random() < 0.1:
            line += " " * rng.randint(1, 4) + "\n" * rng.randint(1, 3)
        lines.append(line)
    return lines


# ------------------------------------------------------------------ tokenizers

LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass
class TinyTokenizer:
    """A trained tokenizer plus what llama.cpp's converter would write about it."""

    tokenizer: Tokenizer
    model: str  # tokenizer.ggml.model: "gpt2" or "llama"
    pre: str | None  # tokenizer.ggml.pre
    bos: str
    eos: str
    pad: str | None = None
    add_bos: bool = False
    scores: list[float] | None = None  # SentencePiece scores, by id
    extra: dict[str, Any] = field(default_factory=dict)

    def id(self, token: str) -> int:
        i = self.tokenizer.token_to_id(token)
        assert i is not None, token
        return i

    @property
    def size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)


_BYTE_LEVEL_SPECIALS = {
    "gpt-2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "smollm": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "qwen2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "llama-bpe": [
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
    ],
}


def byte_level_tokenizer(pre_name: str = "gpt-2", vocab_size: int = 690) -> TinyTokenizer:
    """A byte-level BPE laid out like the Hugging Face family `pre_name` names in llama.cpp."""
    specials = _BYTE_LEVEL_SPECIALS[pre_name]
    model = models.BPE(ignore_merges=pre_name == "llama-bpe")
    tok = Tokenizer(model)
    byte_level = pre.ByteLevel(add_prefix_space=False, use_regex=False)
    if pre_name == "gpt-2":
        tok.pre_tokenizer = pre.ByteLevel(add_prefix_space=False)
    elif pre_name == "smollm":
        tok.pre_tokenizer = pre.Sequence(
            [pre.Digits(individual_digits=True), pre.ByteLevel(add_prefix_space=False)]
        )
    elif pre_name == "llama-bpe":
        tok.pre_tokenizer = pre.Sequence([pre.Split(Regex(LLAMA3_REGEX), "isolated"), byte_level])
    elif pre_name == "qwen2":
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre.Sequence([pre.Split(Regex(QWEN2_REGEX), "isolated"), byte_level])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(400, seed=1), trainer)
    tok.add_tokens([AddedToken("[TOOL]", special=False, normalized=False)])
    if pre_name == "llama-bpe":
        bos, eos = "<|begin_of_text|>", "<|eot_id|>"
        tok.post_processor = processors.Sequence(
            [
                processors.ByteLevel(trim_offsets=False),
                processors.TemplateProcessing(
                    single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1", special_tokens=[(bos, 0)]
                ),
            ]
        )
        return TinyTokenizer(tok, "gpt2", pre_name, bos, eos, add_bos=True)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return TinyTokenizer(tok, "gpt2", pre_name, "<|endoftext|>", "<|im_end|>", pad="<|endoftext|>")


def sentencepiece_tokenizer(vocab_size: int = 700) -> TinyTokenizer:
    """A Llama-2-style tokenizer: BPE trained with the Metaspace pre-tokenizer, byte fallback
    tokens <0x00>..<0xFF>, SentencePiece scores (-merge rank), saved in the tokenizer.json
    layout transformers gives SentencePiece BPE models (normalizer prepends and replaces ▁)."""
    specials = ["<unk>", "<s>", "</s>"]
    trained = Tokenizer(models.BPE(unk_token="<unk>"))
    trained.pre_tokenizer = pre.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False
    )
    trained.train_from_iterator(corpus(400, seed=1), trainer)
    state = json.loads(trained.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
    pieces = [t for t, _ in sorted(state["vocab"].items(), key=lambda kv: kv[1])]

    vocab: dict[str, int] = {s: i for i, s in enumerate(specials)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece in pieces:
        vocab.setdefault(piece, len(vocab))
    rank = {}
    for r, (a, b) in enumerate(merges):
        rank.setdefault(a + b, r)
    scores = [0.0] * len(vocab)
    n_chars = 0
    for piece, i in vocab.items():
        if piece in rank:
            scores[i] = -float(rank[piece])
        elif i >= len(specials) + 256:  # characters score below every merged piece
            scores[i] = -float(len(merges) + n_chars)
            n_chars += 1

    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    )
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    tok.add_special_tokens(specials)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s>:1 $B:1", special_tokens=[("<s>", 1)]
    )
    return TinyTokenizer(tok, "llama", None, "<s>", "</s>", add_bos=True, scores=scores)


# ------------------------------------------------------------------ chat templates

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}"
    "{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)

# exercises trim/lstrip blocks, namespace, loop controls, tojson and raise_exception
TOOLS_TEMPLATE = """{%- set ns = namespace(system=none) %}
{%- for message in messages %}
    {%- if message['role'] == 'system' %}
        {%- set ns.system = message['content'] %}
        {%- continue %}
    {%- endif %}
    {%- if message['role'] not in ['user', 'assistant'] %}
        {{- raise_exception('roles must be user or assistant, got ' + message['role']) }}
    {%- endif %}
    {%- if loop.first and ns.system %}
<|system|>{{ ns.system }}
    {% endif %}
<|{{ message['role'] }}|>
    {{ message['content'] }}
    {% if message.meta is defined %}{{ message.meta | tojson }}{% endif %}
{% endfor %}
{%- if tools %}{{ tools | tojson(indent=2) }}{% endif %}
{%- if add_generation_prompt %}<|assistant|>{% endif %}"""


# ------------------------------------------------------------------ transformers models


def make_hf_model(
    root: Path,
    tok: TinyTokenizer,
    arch: str = "llama",
    *,
    tied: bool = False,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 1,
    layers: int = 2,
    intermediate: int = 96,
    extra_vocab: int = 3,
    dtype: str = "float32",
    shard_size: str | None = None,
    rope_scaling: dict[str, Any] | None = None,
    rope_theta: float = 10000.0,
    max_position: int = 256,
    chat_template: str = CHATML_TEMPLATE,
    seed: int = 0,
    init: str = "wide",
) -> Path:
    """Save a randomly initialized LlamaForCausalLM / Qwen2ForCausalLM with `tok` to `root`.

    The embedding has `extra_vocab` rows past the tokenizer (so vocab is not a multiple of 32);
    every parameter, norms included, is random so mix-ups between tensors show. `init`
    "wide" draws all from N(0, 0.5^2) (chaotic: small errors grow through the layers);
    "trained" uses fan-in-scaled matrices and norms near 1 (stable, but flatter logits).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    vocab = tok.size + extra_vocab
    common: dict[str, Any] = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_position,
        tie_word_embeddings=tied,
        rms_norm_eps=1e-5,
        rope_theta=rope_theta,
        bos_token_id=tok.id(tok.bos),
        eos_token_id=tok.id(tok.eos),
    )
    if rope_scaling is not None:
        common["rope_scaling"] = dict(rope_scaling)  # transformers edits it in place
    torch.manual_seed(seed)
    if arch == "llama":
        model: Any = LlamaForCausalLM(LlamaConfig(**common))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if init == "wide":  # large activations, decisive logits
                p.copy_(torch.randn_like(p) * 0.5)
            elif name.endswith("norm.weight"):  # "trained": fan-in scaled, norms near 1
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif p.ndim == 1:
                p.copy_(0.2 * torch.randn_like(p))
            elif "embed_tokens" in name or name.startswith("lm_head"):
                p.copy_(torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p.shape[1] ** 0.5)
    model = model.to(getattr(torch, dtype))
    root.mkdir(parents=True, exist_ok=True)
    kwargs = {"max_shard_size": shard_size} if shard_size else {}
    model.save_pretrained(root, **kwargs)
    save_tokenizer(root, tok, chat_template)
    return root


def save_tokenizer(root: Path, tok: TinyTokenizer, chat_template: str | None) -> None:
    """tokenizer.json + tokenizer_config.json as transformers saves a fast tokenizer."""
    tok.tokenizer.save(str(root / "tokenizer.json"))
    cfg: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tok.bos,
        "eos_token": tok.eos,
        "model_max_length": 256,
    }
    if tok.pad:
        cfg["pad_token"] = {"__type": "AddedToken", "content": tok.pad, "special": True}
    if chat_template is not None:
        cfg["chat_template"] = chat_template
    (root / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")


# ------------------------------------------------------------------ GGUF, as llama.cpp converts

_HF_TO_GGUF = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf_name: str) -> str:
    if hf_name in _HF_TO_GGUF:
        return _HF_TO_GGUF[hf_name]
    _, _, i, rest = hf_name.split(".", 3)
    return f"blk.{i}.{_LAYER[rest]}"


def permute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's permutation of Q/K rows (rotate-half -> interleaved pairs)."""
    return (
        w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def hf_tensors(root: Path) -> dict[str, np.ndarray]:
    """All tensors of a saved HF checkpoint as float32 numpy arrays, by HF name."""
    import torch
    from safetensors.torch import load_file

    out = {}
    for f in sorted(root.glob("*.safetensors")):
        for name, t in load_file(str(f)).items():
            out[name] = t.to(torch.float32).numpy()
    return out


def llama3_rope_factors(theta: float, dim: int, scaling: dict[str, Any]) -> np.ndarray:
    """rope_freqs.weight as llama.cpp's converter computes it for rope_type llama3."""
    freqs = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old = scaling["original_max_position_embeddings"]
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / float(freq)
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


QT = gguf.GGMLQuantizationType
_FILE_TYPES = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}
_QTYPES = {"f32": QT.F32, "f16": QT.F16, "bf16": QT.BF16, "q8_0": QT.Q8_0}


def add_tokenizer(
    w: gguf.GGUFWriter, tok: TinyTokenizer, n_vocab: int, template: str | None
) -> None:
    """Tokenizer metadata as convert_hf_to_gguf.py writes it (tokens padded to n_vocab)."""
    t = tok.tokenizer
    by_id = {i: s for s, i in t.get_vocab(with_added_tokens=True).items()}
    added = t.get_added_tokens_decoder()
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif tok.model == "llama":
            s = by_id[i]
            tokens.append(s)
            if s == "<unk>":
                types.append(gguf.TokenType.UNKNOWN)
            elif i in added:
                types.append(gguf.TokenType.CONTROL)
            elif s.startswith("<0x") and len(s) == 6:
                types.append(gguf.TokenType.BYTE)
            else:
                types.append(gguf.TokenType.NORMAL)
        else:
            tokens.append(by_id[i])
            if i in added:
                special = added[i].special
                types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
            else:
                types.append(gguf.TokenType.NORMAL)
    w.add_tokenizer_model(tok.model)
    if tok.pre is not None:
        w.add_tokenizer_pre(tok.pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    if tok.model == "llama":
        assert tok.scores is not None
        w.add_token_scores(tok.scores + [-1000.0] * (n_vocab - len(tok.scores)))
        w.add_add_space_prefix(True)
        w.add_unk_token_id(tok.id("<unk>"))
    else:
        merges = json.loads(t.to_str())["model"]["merges"]
        w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    w.add_bos_token_id(tok.id(tok.bos))
    w.add_eos_token_id(tok.id(tok.eos))
    if tok.pad:
        w.add_pad_token_id(tok.id(tok.pad))
    w.add_add_bos_token(tok.add_bos)
    if template is not None:
        w.add_chat_template(template)


def write_gguf(
    hf_dir: Path,
    out: Path,
    tok: TinyTokenizer,
    tensor_type: str = "f32",
    *,
    type_overrides: dict[str, gguf.GGMLQuantizationType] | None = None,
    arch_override: str | None = None,
    mutate: Callable[[gguf.GGUFWriter], None] | None = None,
) -> Path:
    """Write the HF model in `hf_dir` to GGUF as convert_hf_to_gguf.py --outtype `tensor_type`."""
    cfg = json.loads((hf_dir / "config.json").read_text())
    arch = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}[cfg["architectures"][0]]
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    rope = cfg.get("rope_parameters") or {}
    theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))

    w = gguf.GGUFWriter(out, arch_override or arch)
    w.add_name(hf_dir.name)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(theta)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_file_type(_FILE_TYPES[tensor_type])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_rope_dimension_count(head_dim)
    if rope.get("rope_type") == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope["factor"])
    add_tokenizer(w, tok, cfg["vocab_size"], cfg_template(hf_dir))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if mutate is not None:
        mutate(w)

    tensors = hf_tensors(hf_dir)
    if cfg.get("tie_word_embeddings"):
        tensors.pop("lm_head.weight", None)
    if rope.get("rope_type") == "llama3":
        w.add_tensor("rope_freqs.weight", llama3_rope_factors(theta, head_dim, rope))
    for name, data in tensors.items():
        gname = gguf_name(name)
        if arch == "llama" and ("q_proj" in name or "k_proj" in name):
            data = permute_qk(data, heads if "q_proj" in name else kv_heads)
        qtype = QT.F32 if data.ndim == 1 else _QTYPES[tensor_type]
        qtype = (type_overrides or {}).get(gname, qtype)
        if qtype == QT.F32:
            w.add_tensor(gname, data.astype(np.float32))
        elif qtype == QT.F16:
            w.add_tensor(gname, data.astype(np.float16))
        else:
            w.add_tensor(gname, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def cfg_template(hf_dir: Path) -> str | None:
    cfg = json.loads((hf_dir / "tokenizer_config.json").read_text())
    template = cfg.get("chat_template")
    return template if isinstance(template, str) else None


def write_tokenizer_gguf(out: Path, tok: TinyTokenizer) -> Path:
    """A GGUF holding only tokenizer metadata (no tensors)."""
    w = gguf.GGUFWriter(out, "llama")
    add_tokenizer(w, tok, tok.size, None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out
