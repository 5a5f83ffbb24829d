"""GGUF tokenizer metadata -> a `tokenizers` Tokenizer (JSON) that tokenizes like llama.cpp.

Two llama.cpp tokenizer models are supported:
- "gpt2": byte-level BPE; tokens and merges are stored as-is, and `tokenizer.ggml.pre` names
  the pre-tokenizer, mapped to the Hugging Face pipeline of the model family it came from.
- "llama": SentencePiece-style BPE; there are no merges, llama.cpp merges any adjacent pair
  whose concatenation is a token, highest score first. The equivalent BPE lists every split
  of every token into two tokens, ranked by the joined token's score; spaces become "▁",
  "<0xXX>" tokens give byte fallback.
CONTROL/UNKNOWN tokens become special added tokens, USER_DEFINED ones plain added tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, processors
from tokenizers import pre_tokenizers as pre

from ..errors import ModelFormatError, UnsupportedModel

log = logging.getLogger(__name__)

# llama.cpp token types (gguf.TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# The splitting regexes of the Hugging Face tokenizer.json files these pre-types come from
# (llama.cpp's llama-vocab.cpp carries the same ones, rewritten for its own regex engine).
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class _PreTokenization:
    """How one llama.cpp pre-type splits text, as a Hugging Face pipeline."""

    kind: str  # "gpt2", "llama3", "qwen2", "digits"
    ignore_merges: bool = False  # llama.cpp (and HF Llama 3) emit whole-word tokens directly
    add_bos: bool = False  # llama.cpp's default when tokenizer.ggml.add_bos_token is absent


_PRE_TYPES: dict[str, _PreTokenization] = {
    # GPT-2's byte-level regex
    **dict.fromkeys(("gpt-2", "default", "phi-2", "mpt", "olmo", "jais"), _PreTokenization("gpt2")),
    # Llama 3's regex (digits in runs of up to 3)
    **dict.fromkeys(
        ("llama-bpe", "llama3", "llama-v3", "falcon3", "pixtral", "lfm2", "midm-2.0"),
        _PreTokenization("llama3", ignore_merges=True, add_bos=True),
    ),
    **dict.fromkeys(("dbrx", "smaug-bpe"), _PreTokenization("llama3")),
    # Qwen2's regex (single digits), with Qwen2's NFC normalizer
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "megrez"), _PreTokenization("qwen2")),
    # single digits, then GPT-2's regex (SmolLM, StarCoder)
    **dict.fromkeys(("smollm", "starcoder", "refact"), _PreTokenization("digits")),
}

SUPPORTED_PRE_TYPES = tuple(sorted(_PRE_TYPES))
_MAX_PIECE_CHARS = 1024  # SentencePiece's own limit is 16 by default


def _pipeline(tok: Tokenizer, p: _PreTokenization) -> None:
    """Set normalizer and pre-tokenizer for a byte-level BPE of pre-type `p`."""
    byte_level = pre.ByteLevel(add_prefix_space=False, use_regex=False)
    if p.kind == "gpt2":
        tok.pre_tokenizer = pre.ByteLevel(add_prefix_space=False, use_regex=True)
    elif p.kind == "digits":
        tok.pre_tokenizer = pre.Sequence(
            [pre.Digits(individual_digits=True), pre.ByteLevel(add_prefix_space=False)]
        )
    else:
        regex = LLAMA3_REGEX if p.kind == "llama3" else QWEN2_REGEX
        tok.pre_tokenizer = pre.Sequence([pre.Split(Regex(regex), "isolated"), byte_level])
        if p.kind == "qwen2":
            tok.normalizer = normalizers.NFC()
    tok.decoder = decoders.ByteLevel()


def _strings(meta: Mapping[str, Any], key: str, source: str) -> list[str]:
    value = meta.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ModelFormatError(f"{source}: {key} is missing or not a list of strings")
    return value


def _numbers(meta: Mapping[str, Any], key: str, n: int, default: float, source: str) -> list[Any]:
    value = meta.get(key)
    if value is None:
        return [default] * n
    if not isinstance(value, list) or len(value) != n:
        got = len(value) if isinstance(value, list) else type(value).__name__
        raise ModelFormatError(f"{source}: {key} has {got} entries, expected one per token ({n})")
    if not all(isinstance(v, (int, float)) for v in value):
        raise ModelFormatError(f"{source}: {key} must hold numbers")
    return value


def _vocab(tokens: Sequence[str]) -> dict[str, int]:
    """token -> id; a text repeated later in the list keeps its first id."""
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    return vocab


def _byte_level_bpe(meta: Mapping[str, Any], tokens: list[str], source: str) -> Tokenizer:
    pre_name = meta.get("tokenizer.ggml.pre") or "default"
    p = _PRE_TYPES.get(str(pre_name))
    if p is None:
        log.warning(
            "%s: unknown tokenizer.ggml.pre %r; using GPT-2's byte-level pre-tokenizer, which may "
            "split some text differently from the original tokenizer",
            source,
            pre_name,
        )
        p = _PreTokenization("gpt2")
    merges: list[tuple[str, str]] = []
    for line in _strings(meta, "tokenizer.ggml.merges", source):
        cut = line.find(" ", 1)  # as llama.cpp: a part may itself start with a space
        if cut < 0:
            raise ModelFormatError(f"{source}: BPE merge {line!r} has no space between its parts")
        merges.append((line[:cut], line[cut + 1 :]))
    try:
        model = models.BPE(vocab=_vocab(tokens), merges=merges, ignore_merges=p.ignore_merges)
    except Exception as e:
        raise ModelFormatError(f"{source}: inconsistent BPE vocabulary and merges: {e}") from None
    tok = Tokenizer(model)
    _pipeline(tok, p)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _sentencepiece_merges(
    tokens: Sequence[str], types: Sequence[int], scores: Sequence[float]
) -> list[tuple[str, str]]:
    """BPE merges reproducing llama.cpp's SPM: every (left, right) split of a NORMAL token into
    two NORMAL tokens, best joined-token score first."""
    ids = {t: i for i, t in enumerate(tokens) if types[i] == NORMAL}
    ranked: list[tuple[float, int, int, str, str]] = []
    for i, t in enumerate(tokens):
        if types[i] != NORMAL or len(t) < 2 or ids.get(t) != i:
            continue
        if len(t) > _MAX_PIECE_CHARS:  # splitting is quadratic in length; pieces are short
            log.warning("token %d (%d characters) is left out of the merges", i, len(t))
            continue
        for k in range(1, len(t)):
            left, right = t[:k], t[k:]
            if left in ids and right in ids:
                ranked.append((-float(scores[i]), ids[left], ids[right], left, right))
    ranked.sort(key=lambda r: r[:3])
    return [(left, right) for *_, left, right in ranked]


def _sentencepiece_bpe(
    meta: Mapping[str, Any], tokens: list[str], types: list[int], source: str
) -> Tokenizer:
    scores = _numbers(meta, "tokenizer.ggml.scores", len(tokens), 0.0, source)
    unk_id = meta.get("tokenizer.ggml.unknown_token_id")
    if not isinstance(unk_id, int) or not 0 <= unk_id < len(tokens):
        unk_id = next((i for i, t in enumerate(types) if t == UNKNOWN), None)
    has_bytes = any(t == BYTE for t in types)
    try:
        model = models.BPE(
            vocab=_vocab(tokens),
            merges=_sentencepiece_merges(tokens, types, scores),
            unk_token=tokens[unk_id] if unk_id is not None else None,
            byte_fallback=has_bytes,
            fuse_unk=True,
        )
    except Exception as e:
        raise ModelFormatError(f"{source}: bad SentencePiece vocabulary: {e}") from None
    tok = Tokenizer(model)
    add_prefix = meta.get("tokenizer.ggml.add_space_prefix", True)
    steps: list[normalizers.Normalizer] = [normalizers.Replace(" ", "▁")]
    if add_prefix:
        # llama.cpp prefixes a space to text at the start and after each special token;
        # the normalizer runs on exactly those fragments.
        steps.insert(0, normalizers.Prepend("▁"))
    tok.normalizer = normalizers.Sequence(steps)
    dec = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix:
        dec.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(dec)
    return tok


def _special_ids(meta: Mapping[str, Any], n: int) -> dict[str, int]:
    out = {}
    for name in ("bos", "eos"):
        i = meta.get(f"tokenizer.ggml.{name}_token_id")
        if isinstance(i, int) and 0 <= i < n:
            out[name] = i
    return out


def _template(tok: Tokenizer, meta: Mapping[str, Any], tokens: list[str], add_bos: bool) -> None:
    """Add BOS/EOS around encodings when the file asks for it (llama.cpp's add_special)."""
    ids = _special_ids(meta, len(tokens))
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", add_bos)) and "bos" in ids
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False)) and "eos" in ids
    if not (add_bos or add_eos):
        return
    specials = [(tokens[ids[k]], ids[k]) for k, on in (("bos", add_bos), ("eos", add_eos)) if on]
    if any(" " in text or ":" in text for text, _ in specials):
        log.warning("BOS/EOS token text cannot be templated; BOS/EOS are not added automatically")
        return
    bos = [f"{tokens[ids['bos']]}:0"] if add_bos else []
    eos = [f"{tokens[ids['eos']]}:0"] if add_eos else []
    bos1 = [f"{tokens[ids['bos']]}:1"] if add_bos else []
    eos1 = [f"{tokens[ids['eos']]}:1"] if add_eos else []
    template = processors.TemplateProcessing(
        single=[*bos, "$A:0", *eos],
        pair=[*bos, "$A:0", *eos, *bos1, "$B:1", *eos1],
        special_tokens=list(dict.fromkeys(specials)),
    )
    if tok.post_processor is not None:
        tok.post_processor = processors.Sequence([tok.post_processor, template])
    else:
        tok.post_processor = template


def tokenizer_from_gguf(meta: Mapping[str, Any], source: str = "GGUF file") -> Tokenizer:
    """A `tokenizers` Tokenizer equivalent to the one llama.cpp builds from `meta`."""
    model = meta.get("tokenizer.ggml.model")
    if model is None:
        raise ModelFormatError(
            f"{source}: no tokenizer.ggml.model; the file carries no tokenizer (re-convert it "
            "with llama.cpp's convert_hf_to_gguf.py, which embeds one)"
        )
    tokens = _strings(meta, "tokenizer.ggml.tokens", source)
    raw_types = _numbers(meta, "tokenizer.ggml.token_type", len(tokens), NORMAL, source)
    types = [int(t) for t in raw_types]
    if model == "gpt2":
        tok = _byte_level_bpe(meta, tokens, source)
        pre_name = str(meta.get("tokenizer.ggml.pre") or "default")
        default_bos = _PRE_TYPES.get(pre_name, _PreTokenization("gpt2")).add_bos
    elif model == "llama":
        tok = _sentencepiece_bpe(meta, tokens, types, source)
        default_bos = True
    else:
        raise UnsupportedModel(
            f"{source}: tokenizer model {model!r} is not supported; Borda reads 'gpt2' "
            "(byte-level BPE) and 'llama' (SentencePiece BPE) tokenizers"
        )
    added = [
        AddedToken(t, special=types[i] != USER_DEFINED, normalized=False)
        for i, t in enumerate(tokens)
        if types[i] in (CONTROL, UNKNOWN, USER_DEFINED) and t
    ]
    tok.add_tokens(added)
    _template(tok, meta, tokens, default_bos)
    return tok


def tokenizer_json_from_gguf(meta: Mapping[str, Any], source: str = "GGUF file") -> str:
    """tokenizer_from_gguf(), serialized as a tokenizer.json string."""
    return tokenizer_from_gguf(meta, source).to_str()
