"""Hugging Face model directories (config.json + safetensors + tokenizer.json) -> ModelSpec.

Also home of the layout both readers check against: which GGUF-named tensors a
DecoderConfig needs and their (rows, K) shapes.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelFormatError, UnsupportedModel
from .spec import ENCODER_ARCHITECTURES, DecoderConfig, ModelSpec, TensorRef

# architectures -> DecoderConfig.arch
SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
}
_MODEL_TYPES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}

# safetensors dtype -> bytes per element (all dtypes of the format, for validation)
_ST_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
}  # fmt: skip
_ST_READABLE = {"F32": "f32", "F16": "f16", "BF16": "bf16"}
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors format's own limit

_LAYER_NAMES = {
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
_GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(.+)")
_IGNORED_RE = re.compile(r"(model\.layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq")


# ---------------------------------------------------------------- shared layout


def expected_tensor_shapes(config: DecoderConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a model with `config` needs, by GGUF name, with its (rows, K) shape."""
    return dict(_expected(config))


def _expected(config: DecoderConfig) -> Iterator[tuple[str, tuple[int, ...]]]:
    h, hd = config.hidden_size, config.head_dim
    q, kv = config.n_heads * hd, config.n_kv_heads * hd
    yield "token_embd.weight", (config.vocab_size, h)
    yield "output_norm.weight", (h,)
    if not config.tie_word_embeddings:
        yield "output.weight", (config.vocab_size, h)
    for i in range(config.n_layers):
        b = f"blk.{i}."
        yield b + "attn_norm.weight", (h,)
        yield b + "attn_q.weight", (q, h)
        yield b + "attn_k.weight", (kv, h)
        yield b + "attn_v.weight", (kv, h)
        if config.attention_bias:
            yield b + "attn_q.bias", (q,)
            yield b + "attn_k.bias", (kv,)
            yield b + "attn_v.bias", (kv,)
        yield b + "attn_output.weight", (h, q)
        yield b + "ffn_norm.weight", (h,)
        yield b + "ffn_gate.weight", (config.intermediate_size, h)
        yield b + "ffn_up.weight", (config.intermediate_size, h)
        yield b + "ffn_down.weight", (h, config.intermediate_size)


def check_tensors(
    tensors: Mapping[str, TensorRef],
    config: DecoderConfig,
    source: str,
    describe: Callable[[str], str],
) -> None:
    """Raise ModelFormatError unless every tensor `config` needs is present with its shape.

    `describe` turns a GGUF name into the name the source file uses, for the message. Names are
    generated lazily, so a corrupt layer count fails at the first missing layer instead of
    enumerating billions of names.
    """
    for name, shape in _expected(config):
        ref = tensors.get(name)
        if ref is None:
            raise ModelFormatError(
                f"{source}: tensor {describe(name)} is missing; the config "
                f"({config.n_layers} layers, arch {config.arch}) needs it: the checkpoint is "
                "incomplete or its config does not match it"
            )
        if tuple(ref.shape) != shape:
            raise ModelFormatError(
                f"{source}: tensor {describe(name)} has shape {tuple(ref.shape)}, expected {shape} "
                "from the model's hyper-parameters: the checkpoint and its config disagree"
            )


def sha256_files(paths: Iterable[Path], root: Path | None = None) -> str:
    """sha256 over (relative name, size, bytes) of each file in order, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    for path in paths:
        if root is not None:
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(struct.pack("<Q", path.stat().st_size))
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------- safetensors


@dataclass(frozen=True)
class _StEntry:
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute byte offsets in the file
    end: int


def read_safetensors_header(path: Path) -> dict[str, _StEntry]:
    """Parse and validate a safetensors header: what each tensor is and where its bytes lie.

    Catches what would otherwise surface as an opaque error (or garbage) mid-load: a header
    length past the file, bad JSON, unknown dtypes, byte counts that do not match the shape,
    offsets outside the data section (a truncated file) and overlapping tensors.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ModelFormatError(
                f"{path}: {size} bytes is too short for a safetensors file (8-byte header length "
                "missing); the file is truncated"
            )
        (n,) = struct.unpack("<Q", prefix)
        if n > size - 8:
            raise ModelFormatError(
                f"{path}: the header length ({n} bytes) runs past the end of the file "
                f"({size} bytes); the file is truncated or not a safetensors file"
            )
        if n > _MAX_HEADER:
            raise ModelFormatError(f"{path}: header of {n} bytes exceeds the 100 MB limit")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFormatError(f"{path}: the header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise ModelFormatError(f"{path}: the header is not a JSON object")
    data_start, data_size = 8 + n, size - 8 - n
    entries: dict[str, _StEntry] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        entries[name] = _parse_st_entry(path, name, info, data_start, data_size)
    spans = sorted(entries.items(), key=lambda kv: (kv[1].begin, kv[1].end))
    for (a, ea), (b, eb) in itertools.pairwise(spans):
        if eb.begin < ea.end:
            raise ModelFormatError(
                f"{path}: tensors {a!r} (bytes {ea.begin}..{ea.end}) and {b!r} "
                f"(bytes {eb.begin}..{eb.end}) overlap; the file is corrupt"
            )
    return entries


def _parse_st_entry(path: Path, name: str, info: Any, data_start: int, data_size: int) -> _StEntry:
    """Validate one header entry; offsets are returned absolute."""
    if not isinstance(info, dict):
        raise ModelFormatError(f"{path}: header entry for tensor {name!r} is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in _ST_ITEMSIZE:
        raise ModelFormatError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ModelFormatError(f"{path}: tensor {name!r} has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
    ):
        raise ModelFormatError(f"{path}: tensor {name!r} has invalid data_offsets {offsets!r}")
    begin, end = offsets
    if not 0 <= begin <= end:
        raise ModelFormatError(f"{path}: tensor {name!r} has data_offsets [{begin}, {end}]")
    if end > data_size:
        raise ModelFormatError(
            f"{path}: tensor {name!r} data [{begin}, {end}) lies outside the data section "
            f"({data_size} bytes); the file is truncated or corrupt"
        )
    expected = math.prod(shape) * _ST_ITEMSIZE[dtype]
    if end - begin != expected:
        raise ModelFormatError(
            f"{path}: tensor {name!r} is {dtype} {tuple(shape)} ({expected} bytes) but its "
            f"data_offsets span {end - begin} bytes; the file is corrupt"
        )
    return _StEntry(dtype, tuple(shape), data_start + begin, data_start + end)


def st_loader(path: Path, name: str, entry: _StEntry) -> Callable[[], np.ndarray]:
    """A load() reading one tensor as float32: safetensors for F32/F16, raw bytes for BF16."""

    def load() -> np.ndarray:
        try:
            if entry.dtype == "BF16":  # numpy has no bfloat16: widen the raw bits
                count = math.prod(entry.shape)
                bits = np.fromfile(path, dtype="<u2", count=count, offset=entry.begin)
                if bits.size != count:
                    raise ModelFormatError(f"{path}: tensor {name!r} is truncated")
                wide = bits.astype(np.uint32) << 16
                return wide.view(np.float32).reshape(entry.shape)
            from safetensors import safe_open

            with safe_open(str(path), framework="np") as f:
                array = f.get_tensor(name)
            return np.ascontiguousarray(array, dtype=np.float32).reshape(entry.shape)
        except ModelFormatError:
            raise
        except Exception as e:  # safetensors / OS errors on a file changed since validation
            raise ModelFormatError(f"{path}: cannot read tensor {name!r}: {e}") from e

    return load


# ---------------------------------------------------------------- the reader


def hf_to_gguf_name(name: str) -> str | None:
    """The GGUF name of a Hugging Face tensor name, or None when Borda has no use for it."""
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    m = _LAYER_RE.fullmatch(name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"blk.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}"
    return None


def gguf_to_hf_name(name: str) -> str:
    """Inverse of hf_to_gguf_name, for messages."""
    for hf, gg in _GLOBAL_NAMES.items():
        if gg == name:
            return hf
    m = re.fullmatch(r"blk\.(\d+)\.(.+)", name)
    if m:
        for hf, gg in _LAYER_NAMES.items():
            if gg == m.group(2):
                return f"model.layers.{m.group(1)}.{hf}"
    return name


def load_json(path: Path, what: str) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFormatError(f"{path}: cannot read {what}: {e}") from None
    if not isinstance(value, dict):
        raise ModelFormatError(f"{path}: {what} is not a JSON object")
    return value


def weight_files(root: Path) -> list[Path]:
    """The safetensors files of a checkpoint: single, or the shards its index names."""
    index = root / "model.safetensors.index.json"
    if index.is_file():
        weight_map = load_json(index, "the shard index").get("weight_map")
        if not isinstance(weight_map, dict) or not all(
            isinstance(v, str) for v in weight_map.values()
        ):
            raise ModelFormatError(f"{index}: 'weight_map' must map tensor names to file names")
        files = []
        for fname in sorted(set(weight_map.values())):
            shard = root / fname
            if Path(fname).name != fname or not shard.is_file():
                raise ModelFormatError(
                    f"{index}: shard {fname!r} is missing from {root}; download all the shards"
                )
            files.append(shard)
        return files
    if (root / "model.safetensors").is_file():
        return [root / "model.safetensors"]
    shards = sorted(root.glob("model-*-of-*.safetensors"))
    if shards:
        return shards
    raise ModelFormatError(
        f"{root}: no model.safetensors (or model-0000x-of-0000y.safetensors shards); Borda reads "
        "safetensors weights only: convert pytorch_model.bin with transformers' save_pretrained"
    )


def _int_or_none(value: Any, what: str, path: Path) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelFormatError(f"{path}: {what} must be an integer, got {value!r}")
    return value


def _eos_ids(value: Any, path: Path) -> list[int]:
    if isinstance(value, list):
        return [i for v in value if (i := _int_or_none(v, "eos_token_id", path)) is not None]
    i = _int_or_none(value, "eos_token_id", path)
    return [] if i is None else [i]


def _rope(cfg: Mapping[str, Any], path: Path) -> tuple[float, dict[str, Any] | None]:
    """rope_theta and HF's rope-scaling dict, from old (rope_theta/rope_scaling) or new
    (rope_parameters) transformers configs."""
    params = cfg.get("rope_parameters")
    scaling = cfg.get("rope_scaling")
    theta = cfg.get("rope_theta")
    if isinstance(params, dict):
        if "full_attention" in params and isinstance(params["full_attention"], dict):
            params = params["full_attention"]  # per-layer-type form; these models have one type
        theta = params.get("rope_theta", theta)
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    if theta is None:
        theta = 10000.0
    if not isinstance(theta, (int, float)) or isinstance(theta, bool) or theta <= 0:
        raise ModelFormatError(f"{path}: rope_theta must be a positive number, got {theta!r}")
    if scaling is not None and not isinstance(scaling, dict):
        raise ModelFormatError(f"{path}: rope_scaling must be an object or null")
    if scaling:
        scaling = dict(scaling)
        rope_type = scaling.pop("rope_type", None) or scaling.pop("type", None) or "default"
        scaling.pop("type", None)
        scaling = None if rope_type == "default" else {"rope_type": rope_type, **scaling}
    return float(theta), scaling or None


def _architecture(root: Path, cfg: Mapping[str, Any]) -> str:
    """The supported decoder architecture named by config.json, else UnsupportedModel."""
    archs = cfg.get("architectures") or [_MODEL_TYPES.get(str(cfg.get("model_type")), "")]
    name = str(archs[0]) if isinstance(archs, list) and archs else str(archs)
    if name in SUPPORTED_ARCHITECTURES:
        return name
    if not name and cfg.get("model_type") is None:
        raise ModelFormatError(
            f"{root}: config.json names no model architecture ('architectures' or "
            "'model_type'); pass the model's own directory, the one with its weights"
        )
    raise UnsupportedModel(
        f"{root}: architecture {name or cfg.get('model_type')!r} is not supported; Borda runs "
        f"the decoders {', '.join(sorted(SUPPORTED_ARCHITECTURES))} and the encoders "
        f"{', '.join(ENCODER_ARCHITECTURES)}"
    )


def read_hf_config(root: Path, has_lm_head: bool = False) -> tuple[DecoderConfig, str]:
    """DecoderConfig of a Hugging Face directory, and its architecture name.

    Without tie_word_embeddings in config.json, the head is tied when `has_lm_head` is false.
    """
    path = root / "config.json"
    cfg = load_json(path, "the model config")
    arch_name = _architecture(root, cfg)
    arch = SUPPORTED_ARCHITECTURES[arch_name]
    if cfg.get("hidden_act", "silu") != "silu":
        raise UnsupportedModel(f"{path}: hidden_act {cfg['hidden_act']!r}; Borda's MLP is SiLU")
    if cfg.get("mlp_bias"):
        raise UnsupportedModel(f"{path}: mlp_bias is set; Borda's MLP has no biases")
    if arch == "llama" and cfg.get("attention_bias"):
        raise UnsupportedModel(f"{path}: attention_bias on a Llama model is not supported")
    if cfg.get("use_sliding_window"):
        raise UnsupportedModel(f"{path}: sliding-window attention is not supported")

    def need_int(key: str, default: int | None = None) -> int:
        value = _int_or_none(cfg.get(key), key, path)
        value = default if value is None else value
        if value is None or value <= 0:
            raise ModelFormatError(f"{path}: {key} must be a positive integer, got {value!r}")
        return value

    hidden, n_heads = need_int("hidden_size"), need_int("num_attention_heads")
    head_dim = _int_or_none(cfg.get("head_dim"), "head_dim", path) or hidden // n_heads
    n_kv = need_int("num_key_value_heads", n_heads)
    if n_heads % n_kv:
        raise ModelFormatError(f"{path}: {n_heads} heads is not a multiple of {n_kv} KV heads")
    if head_dim % 2:
        raise ModelFormatError(f"{path}: head_dim {head_dim} must be even for RoPE")
    if cfg.get("partial_rotary_factor", 1.0) != 1.0:
        raise UnsupportedModel(f"{path}: partial_rotary_factor is not supported")
    max_pos = need_int("max_position_embeddings")
    window = _int_or_none(cfg.get("sliding_window"), "sliding_window", path)
    if arch_name == "MistralForCausalLM" and window is not None:
        # Within the window, sliding-window attention is full attention: cap the context there.
        max_pos = min(max_pos, window)
    theta, scaling = _rope(cfg, path)
    eps = cfg.get("rms_norm_eps", 1e-6)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or eps <= 0:
        raise ModelFormatError(f"{path}: rms_norm_eps must be a positive number, got {eps!r}")

    bos = _int_or_none(cfg.get("bos_token_id"), "bos_token_id", path)
    eos = _eos_ids(cfg.get("eos_token_id"), path)
    gen_path = root / "generation_config.json"
    if gen_path.is_file():
        gen = load_json(gen_path, "the generation config")
        gen_bos = _int_or_none(gen.get("bos_token_id"), "bos_token_id", gen_path)
        bos = bos if gen_bos is None else gen_bos
        eos += [i for i in _eos_ids(gen.get("eos_token_id"), gen_path) if i not in eos]

    config = DecoderConfig(
        arch=arch,
        vocab_size=need_int("vocab_size"),
        hidden_size=hidden,
        n_layers=need_int("num_hidden_layers"),
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        intermediate_size=need_int("intermediate_size"),
        rms_norm_eps=float(eps),
        rope_theta=theta,
        max_position_embeddings=max_pos,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", not has_lm_head)),
        attention_bias=arch == "qwen2",
        rope_scaling=scaling,
        bos_token_id=bos,
        eos_token_ids=tuple(eos),
    )
    return config, arch_name


def _chat_template(root: Path, tok_cfg: Mapping[str, Any]) -> str | None:
    """The chat template: chat_template.jinja, else tokenizer_config.json's (named 'default')."""
    jinja = root / "chat_template.jinja"
    if jinja.is_file():
        try:
            return jinja.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ModelFormatError(f"{jinja}: cannot read the chat template: {e}") from None
    template = tok_cfg.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default", next(iter(named.values())) if len(named) == 1 else None)
    return template if isinstance(template, str) else None


def token_string(value: Any) -> str | None:
    """A special token from tokenizer_config.json: a string or a serialized AddedToken."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def read_hf_model(path: str | Path) -> ModelSpec:
    """Read a Hugging Face model directory; tensors are loaded lazily, one at a time."""
    root = Path(path)
    _architecture(root, load_json(root / "config.json", "the model config"))  # fail fast
    headers = {file: read_safetensors_header(file) for file in weight_files(root)}
    has_head = any("lm_head.weight" in header for header in headers.values())
    config, arch_name = read_hf_config(root, has_lm_head=has_head)

    tok_path = root / "tokenizer.json"
    if not tok_path.is_file():
        raise ModelFormatError(
            f"{root}: tokenizer.json is missing; Borda needs the fast-tokenizer file (save the "
            "tokenizer with transformers' save_pretrained to produce it)"
        )
    try:
        from tokenizers import Tokenizer

        tokenizer_json = tok_path.read_text(encoding="utf-8")
        Tokenizer.from_str(tokenizer_json)
    except Exception as e:
        raise ModelFormatError(f"{tok_path}: not a valid tokenizers file: {e}") from None
    tok_cfg_path = root / "tokenizer_config.json"
    tok_cfg = load_json(tok_cfg_path, "tokenizer config") if tok_cfg_path.is_file() else {}
    map_path = root / "special_tokens_map.json"  # where older transformers put them
    token_map = load_json(map_path, "special tokens map") if map_path.is_file() else {}
    special = {  # "bos" / "eos" / "pad" -> token text
        key[:3]: text
        for key in ("bos_token", "eos_token", "pad_token")
        if (text := token_string(tok_cfg.get(key, token_map.get(key)))) is not None
    }

    tensors: dict[str, TensorRef] = {}
    unknown: list[str] = []
    for file, header in headers.items():
        for name, entry in header.items():
            gguf_name = hf_to_gguf_name(name)
            if gguf_name is None:
                if not _IGNORED_RE.fullmatch(name):
                    unknown.append(name)
                continue
            if gguf_name == "output.weight" and config.tie_word_embeddings:
                continue  # tied: the head is the embedding
            if gguf_name in tensors:
                raise ModelFormatError(f"{file}: tensor {name!r} appears in more than one file")
            if entry.dtype not in _ST_READABLE:
                raise UnsupportedModel(
                    f"{file}: tensor {name!r} is {entry.dtype}; Borda reads F32, F16 and BF16"
                )
            tensors[gguf_name] = TensorRef(
                gguf_name, entry.shape, _ST_READABLE[entry.dtype], st_loader(file, name, entry)
            )
    if unknown:
        raise UnsupportedModel(
            f"{root}: unexpected tensors for {arch_name}: {', '.join(sorted(unknown)[:5])}"
            f"{' ...' if len(unknown) > 5 else ''}; Borda would ignore weights the model uses"
        )
    check_tensors(tensors, config, str(root), gguf_to_hf_name)
    extra = sorted(set(tensors) - set(expected_tensor_shapes(config)))
    if extra:  # e.g. layers past num_hidden_layers, or biases the config does not declare
        raise UnsupportedModel(
            f"{root}: tensors the config does not account for: "
            f"{', '.join(gguf_to_hf_name(n) for n in extra[:5])}; Borda would ignore them"
        )

    files = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    return ModelSpec(
        config=config,
        tensors=tensors,
        tokenizer_json=tokenizer_json,
        chat_template=_chat_template(root, tok_cfg),
        source_name=root.resolve().name,
        source_sha256=sha256_files(files, root),
        special_tokens=special,
    )
