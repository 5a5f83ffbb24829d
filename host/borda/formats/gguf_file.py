"""GGUF files (llama.cpp) -> ModelSpec, for the "llama" and "qwen2" architectures.

The header is walked and bounds-checked here first, because gguf.GGUFReader trusts the
file (absurd counts or lengths make it allocate or index wildly); GGUFReader then maps it.
Named gguf_file so that `import gguf` inside this package still means llama.cpp's package.
"""

from __future__ import annotations

import itertools
import math
import mmap
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelFormatError, UnsupportedModel
from .gguf_tokenizer import tokenizer_json_from_gguf
from .hf import check_tensors, expected_tensor_shapes, sha256_files
from .spec import DecoderConfig, ModelSpec, TensorRef

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
SUPPORTED_ARCHES = ("llama", "qwen2")

# GGUF metadata value types
_T_UINT32, _T_FLOAT32, _T_STRING, _T_ARRAY = 4, 6, 8, 9
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_MAX_ARRAY_DEPTH = 4
# GGUFReader visits array elements one at a time; real models hold well under a million
# (Qwen2: 3 x 151k). A corrupt count in a multi-GB file would otherwise stall it for hours.
_MAX_ARRAY_ELEMENTS = 1 << 23
_MAX_DIMS = 4  # GGML_MAX_DIMS
_HEADER_BYTES = 24  # magic, version, n_tensors, n_kv
_MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, smallest value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 8 + 4 + 8  # name length, n_dims, one dim, type, offset
_DEFAULT_ALIGNMENT = 32

# ggml type -> Borda's source dtype
_READABLE = {"F32": "f32", "F16": "f16", "BF16": "bf16", "Q8_0": "q8_0"}
_GLOBAL_TENSORS = ("token_embd.weight", "output_norm.weight", "output.weight")


@dataclass(frozen=True)
class TensorInfo:
    """A tensor as the GGUF header describes it (dims in GGUF order: ne0 = K first)."""

    name: str
    dims: tuple[int, ...]
    ggml_type: int
    offset: int  # relative to the data section
    nbytes: int
    info_at: int  # byte offset of the tensor-info record, for messages


@dataclass(frozen=True)
class GGUFLayout:
    """What validate_gguf() established about a file before GGUFReader may touch it."""

    version: int
    n_kv: int
    alignment: int
    data_start: int
    tensors: tuple[TensorInfo, ...]


class _Walker:
    """Bounds-checked little-endian reads over a mapped file; errors name the byte offset."""

    def __init__(self, buf: mmap.mmap, path: Path) -> None:
        self.buf, self.path, self.pos, self.size = buf, path, 0, len(buf)
        self.elements = 0  # array elements seen so far

    def fail(self, what: str, at: int | None = None) -> ModelFormatError:
        where = self.pos if at is None else at
        return ModelFormatError(
            f"{self.path}: {what} (at byte offset {where}); the file is corrupt"
        )

    def need(self, n: int, what: str) -> None:
        if self.pos + n > self.size:
            raise ModelFormatError(
                f"{self.path}: {what} at byte offset {self.pos} needs {n} bytes but the file ends "
                f"at {self.size}; the file is truncated or corrupt"
            )

    def u32(self, what: str) -> int:
        self.need(4, what)
        (value,) = struct.unpack_from("<I", self.buf, self.pos)
        self.pos += 4
        return int(value)

    def u64(self, what: str) -> int:
        self.need(8, what)
        (value,) = struct.unpack_from("<Q", self.buf, self.pos)
        self.pos += 8
        return int(value)

    def _string_length(self, what: str) -> int:
        at = self.pos
        length = self.u64(f"length of {what}")
        if length > self.size - self.pos:
            raise ModelFormatError(
                f"{self.path}: {what} at byte offset {at} claims {length} bytes, past the end of "
                f"the file ({self.size} bytes); the file is truncated or corrupt"
            )
        return length

    def string(self, what: str) -> bytes:
        length = self._string_length(what)
        data = bytes(self.buf[self.pos : self.pos + length])
        self.pos += length
        return data

    def skip_string(self, what: str) -> None:
        length = self._string_length(what)  # advances past the length first
        self.pos += length

    def skip_value(self, vtype: int, what: str, depth: int = 0) -> None:
        if vtype in _SCALAR_SIZES:
            self.need(_SCALAR_SIZES[vtype], what)
            self.pos += _SCALAR_SIZES[vtype]
        elif vtype == _T_STRING:
            self.skip_string(what)
        elif vtype == _T_ARRAY:
            if depth >= _MAX_ARRAY_DEPTH:
                raise self.fail(f"{what}: arrays nested deeper than {_MAX_ARRAY_DEPTH}")
            etype = self.u32(f"element type of {what}")
            at = self.pos
            count = self.u64(f"length of {what}")
            smallest = _SCALAR_SIZES.get(etype, 8 if etype == _T_STRING else 12)
            if count * smallest > self.size - self.pos:
                raise ModelFormatError(
                    f"{self.path}: {what} at byte offset {at} claims {count} elements, more than "
                    f"the {self.size - self.pos} bytes left in the file hold; the file is "
                    "truncated or corrupt"
                )
            self.elements += count
            if self.elements > _MAX_ARRAY_ELEMENTS:
                raise self.fail(
                    f"{what}: metadata arrays hold over {_MAX_ARRAY_ELEMENTS} elements in total, "
                    "far more than any model's vocabulary",
                    at,
                )
            if etype in _SCALAR_SIZES:
                self.pos += count * _SCALAR_SIZES[etype]
            elif etype in (_T_STRING, _T_ARRAY):
                for i in range(count):
                    self.skip_value(etype, f"{what}[{i}]", depth + 1)
            else:
                raise self.fail(f"{what}: unknown array element type {etype}", at - 4)
        else:
            raise self.fail(f"{what}: unknown value type {vtype}", self.pos - 4)


def validate_gguf(path: Path) -> GGUFLayout:
    """Walk a GGUF header and tensor table, rejecting anything GGUFReader would trust blindly.

    Checks the magic and version, n_kv / n_tensors against the file size, every string and
    array length, tensor dims and types, and that tensor data lies inside the data section,
    aligned and without overlaps.
    """
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    size = path.stat().st_size
    if size < _HEADER_BYTES:
        raise ModelFormatError(f"{path}: {size} bytes is too short for a GGUF header (24 bytes)")
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        w = _Walker(buf, path)
        magic = bytes(buf[:4])
        if magic != GGUF_MAGIC:
            raise ModelFormatError(f"{path}: not a GGUF file (magic {magic!r}, expected b'GGUF')")
        w.pos = 4
        version = w.u32("version")
        if version & 0xFFFF == 0 and version >> 16:
            raise UnsupportedModel(f"{path}: a big-endian GGUF file; Borda reads little-endian")
        if version not in SUPPORTED_VERSIONS:
            raise UnsupportedModel(
                f"{path}: GGUF version {version}; Borda reads versions 2 and 3 (re-convert the "
                "model with a current llama.cpp)"
            )
        n_tensors = w.u64("tensor count")
        n_kv = w.u64("metadata count")
        room = size - _HEADER_BYTES
        if n_kv > room // _MIN_KV_BYTES:
            raise ModelFormatError(
                f"{path}: the header claims {n_kv} metadata entries (byte offset 16) but a "
                f"{size}-byte file cannot hold that many; the file is corrupt"
            )
        if n_tensors > room // _MIN_TENSOR_INFO_BYTES:
            raise ModelFormatError(
                f"{path}: the header claims {n_tensors} tensors (byte offset 8) but a "
                f"{size}-byte file cannot hold that many; the file is corrupt"
            )

        alignment = _DEFAULT_ALIGNMENT
        for i in range(n_kv):
            key_at = w.pos
            raw_key = w.string(f"key of metadata entry {i}")
            try:
                key = raw_key.decode("utf-8")
            except UnicodeDecodeError:
                raise w.fail(f"metadata key {raw_key[:40]!r} is not UTF-8", key_at) from None
            vtype = w.u32(f"value type of {key}")
            if key == "general.alignment":
                if vtype != _T_UINT32:
                    raise w.fail("general.alignment must be a uint32", key_at)
                alignment = w.u32(key)
                if alignment == 0 or alignment & (alignment - 1):
                    raise w.fail(f"general.alignment {alignment} is not a power of two", key_at)
            else:
                w.skip_value(vtype, f"value of {key}")

        infos: list[TensorInfo] = []
        for i in range(n_tensors):
            info_at = w.pos
            raw_name = w.string(f"name of tensor {i}")
            name = raw_name.decode("utf-8", errors="replace")
            n_dims = w.u32(f"dimension count of tensor {name}")
            if not 1 <= n_dims <= _MAX_DIMS:
                raise w.fail(f"tensor {name} has {n_dims} dimensions (1..{_MAX_DIMS})", info_at)
            dims = tuple(w.u64(f"dimensions of tensor {name}") for _ in range(n_dims))
            ggml_type = w.u32(f"type of tensor {name}")
            offset = w.u64(f"data offset of tensor {name}")
            try:
                qtype = GGMLQuantizationType(ggml_type)
                block, type_size = GGML_QUANT_SIZES[qtype]
            except (ValueError, KeyError):
                raise w.fail(f"tensor {name} has unknown ggml type {ggml_type}", info_at) from None
            if dims[0] % block:
                raise w.fail(
                    f"tensor {name} is {qtype.name} but its row length {dims[0]} is not a "
                    f"multiple of the block size {block}",
                    info_at,
                )
            if offset % alignment:
                raise w.fail(f"tensor {name} offset {offset} is not {alignment}-aligned", info_at)
            nbytes = math.prod(dims) // block * type_size
            infos.append(TensorInfo(name, dims, ggml_type, offset, nbytes, info_at))

    data_start = -(-w.pos // alignment) * alignment
    data_size = size - data_start
    names: set[str] = set()
    for t in infos:
        if t.name in names:
            raise ModelFormatError(f"{path}: tensor {t.name} appears twice in the tensor table")
        names.add(t.name)
        if t.offset + t.nbytes > data_size:
            raise ModelFormatError(
                f"{path}: tensor {t.name} (info at byte offset {t.info_at}) has data at bytes "
                f"{data_start + t.offset}..{data_start + t.offset + t.nbytes}, outside the data "
                f"section {data_start}..{size}; the file is truncated or corrupt"
            )
    spans = sorted(infos, key=lambda t: (t.offset, t.nbytes))
    for a, b in itertools.pairwise(spans):
        if b.offset < a.offset + a.nbytes:
            raise ModelFormatError(
                f"{path}: tensors {a.name} and {b.name} overlap in the data section (bytes "
                f"{data_start + b.offset}..{data_start + a.offset + a.nbytes}); the file is corrupt"
            )
    return GGUFLayout(version, n_kv, alignment, data_start, tuple(infos))


# ---------------------------------------------------------------- RoPE


def llama3_freq_factors(
    theta: float,
    head_dim: int,
    factor: float,
    low_freq_factor: float,
    high_freq_factor: float,
    original_max_position_embeddings: int,
) -> np.ndarray:
    """Per-frequency divisors of RoPE's inverse frequencies for Llama 3's rope scaling.

    Long wavelengths are divided by `factor`, short ones kept, the band between blended:
    what llama.cpp stores as `rope_freqs.weight` and transformers computes on the fly.
    """
    inv_freq = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * np.pi / inv_freq
    orig = float(original_max_position_embeddings)
    smooth = (orig / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = 1.0 / ((1.0 - smooth) / factor + smooth)
    out = np.where(
        wavelen < orig / high_freq_factor,
        1.0,
        np.where(wavelen > orig / low_freq_factor, factor, blended),
    )
    return out.astype(np.float32)


def rope_freq_factors(config: DecoderConfig) -> np.ndarray | None:
    """Divisors of each RoPE inverse frequency (head_dim/2 values) implied by the config's
    rope scaling, or None without scaling; UnsupportedModel for types Borda cannot express."""
    s = config.rope_scaling
    if not s:
        return None
    kind = s.get("rope_type")
    half = config.head_dim // 2
    try:
        if kind == "linear":
            return np.full(half, float(s["factor"]), dtype=np.float32)
        if kind == "llama3":
            return llama3_freq_factors(
                config.rope_theta,
                config.head_dim,
                float(s["factor"]),
                float(s["low_freq_factor"]),
                float(s["high_freq_factor"]),
                int(s["original_max_position_embeddings"]),
            )
        if kind == "freq_factors":
            factors = np.asarray(s["freq_factors"], dtype=np.float32)
            if factors.shape != (half,):
                raise ModelFormatError(
                    f"rope freq_factors has {factors.size} values, expected head_dim/2 = {half}"
                )
            return factors
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFormatError(f"rope scaling {s!r} is malformed: {e}") from None
    raise UnsupportedModel(
        f"rope scaling type {kind!r} is not supported; Borda supports linear and llama3"
    )


def _scaling_from_rope_freqs(factors: np.ndarray, theta: float, head_dim: int) -> dict[str, Any]:
    """HF's llama3 dict when `rope_freqs` matches Llama 3.x's parameters, else the raw factors."""
    factor = float(factors.max())
    if factor > 1.0:
        expected = llama3_freq_factors(theta, head_dim, factor, 1.0, 4.0, 8192)
        if np.allclose(expected, factors, rtol=1e-5, atol=0.0):
            return {
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            }
    return {"rope_type": "freq_factors", "freq_factors": [float(x) for x in factors]}


# ---------------------------------------------------------------- reading


def unpermute_qk_rows(a: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation for arch "llama" (rows only; works on Q8_0 bytes).

    convert_hf_to_gguf interleaves each head's two rotary halves for ggml's RoPE: GGUF row
    h*hd + 2*i + j holds HF row h*hd + j*hd/2 + i (i < hd/2, j in {0, 1}). Inverting is a
    reshape to (heads, hd/2, 2, ...) and a swap of the last two head axes.
    """
    rows = a.shape[0]
    if rows % (2 * n_heads):
        raise ModelFormatError(f"cannot un-permute {rows} rows into {n_heads} heads")
    hd = rows // n_heads
    out: np.ndarray = a.reshape(n_heads, hd // 2, 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape)
    return out


def _field_value(field: Any) -> Any:
    """A GGUFReader field as plain Python; float32 scalars become their shortest decimal."""
    from gguf.constants import GGUFValueType

    value = field.contents()
    if field.types == [GGUFValueType.FLOAT32]:
        value = float(str(np.float32(value)))  # 1e-05 stays 1e-05, not 9.99999974737875e-06
    return value


def read_gguf_metadata(reader: Any) -> dict[str, Any]:
    """All key/value metadata of a GGUFReader as plain Python values."""
    return {
        name: _field_value(field)
        for name, field in reader.fields.items()
        if not name.startswith("GGUF.")
    }


class _Meta:
    """Typed access to GGUF metadata with messages naming the missing or bad key."""

    def __init__(self, meta: Mapping[str, Any], path: Path, arch: str) -> None:
        self.meta, self.path, self.arch = meta, path, arch

    def get(self, key: str) -> Any:
        return self.meta.get(key.format(arch=self.arch))

    def int(self, key: str, default: int | None = None) -> int:
        value = self.get(key)
        if isinstance(value, list) and value and all(v == value[0] for v in value):
            value = value[0]  # per-layer arrays with one value
        if value is None:
            value = default
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            full = key.format(arch=self.arch)
            what = "is missing" if value is None else f"is {value!r}, expected a positive integer"
            raise ModelFormatError(f"{self.path}: metadata {full} {what}")
        return value

    def float(self, key: str, default: float | None = None) -> float:
        value = self.get(key)
        if value is None:
            value = default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            full = key.format(arch=self.arch)
            what = "is missing" if value is None else f"is {value!r}, expected a number"
            raise ModelFormatError(f"{self.path}: metadata {full} {what}")
        return float(value)


def _rope_scaling(m: _Meta, theta: float, head_dim: int, freqs: np.ndarray | None) -> Any:
    """HF-style rope scaling dict from `{arch}.rope.scaling.*` keys or a rope_freqs tensor."""
    kind = m.get("{arch}.rope.scaling.type")
    if kind in (None, "none") and m.get("{arch}.rope.scale_linear") is not None:
        linear = m.float("{arch}.rope.scale_linear")  # pre-2024 files
        if linear != 1.0:
            return {"rope_type": "linear", "factor": linear}
    if kind == "linear":
        return {"rope_type": "linear", "factor": m.float("{arch}.rope.scaling.factor")}
    if kind == "yarn":
        scaling: dict[str, Any] = {
            "rope_type": "yarn",
            "factor": m.float("{arch}.rope.scaling.factor"),
            "original_max_position_embeddings": m.int(
                "{arch}.rope.scaling.original_context_length"
            ),
        }
        for key, hf in (
            ("attn_factor", "attention_factor"),
            ("yarn_beta_fast", "beta_fast"),
            ("yarn_beta_slow", "beta_slow"),
        ):
            if m.get("{arch}.rope.scaling." + key) is not None:
                scaling[hf] = m.float("{arch}.rope.scaling." + key)
        return scaling
    if kind not in (None, "none"):
        raise UnsupportedModel(f"{m.path}: rope scaling type {kind!r} is not supported")
    if freqs is not None and not np.all(freqs == 1.0):
        return _scaling_from_rope_freqs(freqs, theta, head_dim)
    return None


def _config(m: _Meta, tensors: Mapping[str, Any], n_vocab_tokens: int | None) -> DecoderConfig:
    """DecoderConfig from `{arch}.*` metadata; `tensors` are GGUFReader tensors by name."""
    hidden = m.int("{arch}.embedding_length")
    n_heads = m.int("{arch}.attention.head_count")
    n_kv = m.int("{arch}.attention.head_count_kv", n_heads)
    head_dim = m.int("{arch}.attention.key_length", hidden // n_heads)
    if m.int("{arch}.attention.value_length", head_dim) != head_dim:
        raise UnsupportedModel(f"{m.path}: key and value head sizes differ")
    if m.int("{arch}.rope.dimension_count", head_dim) != head_dim:
        raise UnsupportedModel(f"{m.path}: partial rotary embeddings are not supported")
    if n_heads % n_kv or head_dim % 2:
        raise ModelFormatError(f"{m.path}: {n_heads} heads, {n_kv} KV heads, head_dim {head_dim}")
    if m.get("{arch}.expert_count") not in (None, 0):
        raise UnsupportedModel(f"{m.path}: mixture-of-experts models are not supported")
    theta = m.float("{arch}.rope.freq_base", 10000.0)

    embd = tensors.get("token_embd.weight")
    rows = int(embd.shape[-1]) if embd is not None and len(embd.shape) == 2 else None
    vocab = m.get("{arch}.vocab_size") or n_vocab_tokens or rows
    if not isinstance(vocab, int) or vocab <= 0:
        raise ModelFormatError(f"{m.path}: cannot tell the vocabulary size (no token list)")

    freqs = None
    if "rope_freqs.weight" in tensors:
        t = tensors["rope_freqs.weight"]
        if t.tensor_type.name != "F32" or int(t.n_elements) != head_dim // 2:
            raise ModelFormatError(f"{m.path}: rope_freqs.weight must be F32 of head_dim/2 values")
        freqs = np.array(t.data, dtype=np.float32).reshape(-1)

    tok = m.meta
    bos = tok.get("tokenizer.ggml.bos_token_id")
    eos = [
        v
        for key in ("eos_token_id", "eot_token_id", "eom_token_id")
        if isinstance(v := tok.get("tokenizer.ggml." + key), int)
    ]
    return DecoderConfig(
        arch=m.arch,
        vocab_size=vocab,
        hidden_size=hidden,
        n_layers=m.int("{arch}.block_count"),
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        intermediate_size=m.int("{arch}.feed_forward_length"),
        rms_norm_eps=m.float("{arch}.attention.layer_norm_rms_epsilon"),
        rope_theta=theta,
        max_position_embeddings=m.int("{arch}.context_length"),
        tie_word_embeddings="output.weight" not in tensors,
        attention_bias="blk.0.attn_q.bias" in tensors,
        rope_scaling=_rope_scaling(m, theta, head_dim, freqs),
        bos_token_id=bos if isinstance(bos, int) else None,
        eos_token_ids=tuple(dict.fromkeys(eos)),
    )


def _loader(
    t: Any, dtype: str, shape: tuple[int, ...], unpermute_heads: int | None
) -> Callable[[], np.ndarray]:
    """A load() for one GGUFReader tensor: float32 for f32/f16/bf16, Q8_0 block bytes as-is."""

    def load() -> np.ndarray:
        data = np.asarray(t.data)
        out: np.ndarray
        if dtype == "q8_0":
            out = np.array(data, dtype=np.uint8).reshape(*shape[:-1], -1)
        elif dtype == "bf16":
            bits = np.ascontiguousarray(data).view("<u2").astype(np.uint32) << 16
            out = bits.view(np.float32).reshape(shape)
        else:
            out = np.array(data, dtype=np.float32).reshape(shape)
        if unpermute_heads is not None:
            out = np.ascontiguousarray(unpermute_qk_rows(out, unpermute_heads))
        return out

    return load


def read_gguf_model(path: str | Path) -> ModelSpec:
    """Read a GGUF file; tensors stay memory-mapped until loaded one at a time."""
    path = Path(path)
    validate_gguf(path)
    try:
        from gguf import GGUFReader

        reader = GGUFReader(path, "r")
        meta = read_gguf_metadata(reader)
        by_name = {t.name: t for t in reader.tensors}
    except Exception as e:  # GGUFReader raises bare ValueError/KeyError on bad files
        raise ModelFormatError(f"{path}: gguf could not parse the file: {e}") from e

    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHES:
        raise UnsupportedModel(
            f"{path}: architecture {arch!r} is not supported; Borda runs "
            f"{', '.join(SUPPORTED_ARCHES)} GGUF files"
        )
    tokens = meta.get("tokenizer.ggml.tokens")
    m = _Meta(meta, path, arch)
    config = _config(m, by_name, len(tokens) if isinstance(tokens, list) else None)

    tensors: dict[str, TensorRef] = {}
    unexpected = []
    for name, t in by_name.items():
        if name == "rope_freqs.weight":  # folded into config.rope_scaling
            continue
        if not (name.startswith("blk.") or name in _GLOBAL_TENSORS):
            unexpected.append(name)
            continue
        type_name = t.tensor_type.name
        if type_name not in _READABLE:
            raise UnsupportedModel(
                f"{path}: {name} is {type_name}; Borda reads F32, F16, BF16 and Q8_0 (convert with "
                "llama.cpp's --outtype q8_0, or llama-quantize to Q8_0)"
            )
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))  # (rows, K)
        heads = None
        if arch == "llama" and name.split(".")[-2] in ("attn_q", "attn_k"):
            heads = config.n_heads if ".attn_q." in name else config.n_kv_heads
        dtype = _READABLE[type_name]
        tensors[name] = TensorRef(name, shape, dtype, _loader(t, dtype, shape, heads))

    check_tensors(tensors, config, str(path), lambda n: n)  # first: bounds the layer count
    unexpected += sorted(set(tensors) - set(expected_tensor_shapes(config)))
    if unexpected:
        raise UnsupportedModel(
            f"{path}: unexpected tensors for {arch}: {', '.join(unexpected[:5])}"
            f"{' ...' if len(unexpected) > 5 else ''}; Borda would ignore weights the model uses"
        )

    tokenizer_json = tokenizer_json_from_gguf(meta, str(path))
    special = {}
    if isinstance(tokens, list):
        for key, meta_key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding")):
            i = meta.get(f"tokenizer.ggml.{meta_key}_token_id")
            if isinstance(i, int) and 0 <= i < len(tokens):
                special[key] = tokens[i]
    template = meta.get("tokenizer.chat_template")
    return ModelSpec(
        config=config,
        tensors=tensors,
        tokenizer_json=tokenizer_json,
        chat_template=template if isinstance(template, str) else None,
        source_name=path.name,
        source_sha256=sha256_files([path]),
        special_tokens=special,
    )
