"""Decoder benchmark: a random SmolLM2-135M-shaped Q8_0 model, one thread.

    python benchmarks/bench_decode.py

Prints prefill tok/s for a 512-token prompt, decode tok/s for 128 tokens after it, the
effective GB/s of weights read per decode token and the host's share of decode time
(Python + call overhead). With llama-cpp-python installed (the `bench` extra) the same
weights are written to GGUF and llama.cpp runs beside Borda with one thread. The two
take turns for --rounds rounds and each reports its best, so that a drift of the machine
hits both alike.
"""

from __future__ import annotations

import os

for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tokenizers.models import WordLevel

import borda
from borda.formats.spec import DecoderConfig, ModelSpec, TensorRef
from borda.pack import write_model

SMOLLM2_135M = DecoderConfig(
    arch="llama",
    vocab_size=49152,
    hidden_size=576,
    n_layers=30,
    n_heads=9,
    n_kv_heads=3,
    head_dim=64,
    intermediate_size=1536,
    rms_norm_eps=1e-5,
    rope_theta=100000.0,
    max_position_embeddings=8192,
    tie_word_embeddings=True,
    attention_bias=False,
    bos_token_id=0,
    eos_token_ids=(),
)


def random_spec(c: DecoderConfig, seed: int = 0) -> ModelSpec:
    """A model with HF-style random weights (normal, std 0.02), generated tensor by tensor."""
    shapes = {
        "token_embd.weight": (c.vocab_size, c.hidden_size),
        "output_norm.weight": (c.hidden_size,),
    }
    q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    for i in range(c.n_layers):
        shapes |= {
            f"blk.{i}.attn_norm.weight": (c.hidden_size,),
            f"blk.{i}.attn_q.weight": (q, c.hidden_size),
            f"blk.{i}.attn_k.weight": (kv, c.hidden_size),
            f"blk.{i}.attn_v.weight": (kv, c.hidden_size),
            f"blk.{i}.attn_output.weight": (c.hidden_size, q),
            f"blk.{i}.ffn_norm.weight": (c.hidden_size,),
            f"blk.{i}.ffn_gate.weight": (c.intermediate_size, c.hidden_size),
            f"blk.{i}.ffn_up.weight": (c.intermediate_size, c.hidden_size),
            f"blk.{i}.ffn_down.weight": (c.hidden_size, c.intermediate_size),
        }

    def loader(index: int, name: str, shape: tuple[int, ...]) -> TensorRef:
        def load() -> np.ndarray:
            rng = np.random.default_rng([seed, index])
            if len(shape) == 1:
                return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
            return (0.02 * rng.standard_normal(shape)).astype(np.float32)

        return TensorRef(name, shape, "f32", load)

    tensors = {name: loader(i, name, shape) for i, (name, shape) in enumerate(shapes.items())}
    vocab = {f"t{i}": i for i in range(c.vocab_size)}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="t0"))
    return ModelSpec(c, tensors, tokenizer.to_str(), None, "random-smollm2-135m", "0" * 64)


def bench_borda(path: Path, prompt: list[int], n_decode: int) -> dict[str, float]:
    model = borda.load(path)
    session = model.session(max_context=len(prompt) + n_decode + 8, timeout=None)
    session.logits(prompt[:8])  # warm up: page in the weights
    session.reset()
    start = time.perf_counter()
    logits = session._forward_chunk(prompt, False)
    prefill = time.perf_counter() - start
    box = session._box
    calls = 2000
    t0 = time.perf_counter()
    for _ in range(calls):
        box.call("borda_abi_version")
    overhead = (time.perf_counter() - t0) / calls
    in_wasm = 0.0
    start = time.perf_counter()
    token = int(np.argmax(logits[-1]))
    for _ in range(n_decode):
        box.memory.write(session._tokens, np.array([token], np.int32))
        t0 = time.perf_counter()
        box.call("borda_forward", session._tokens, 1, session.position, session._logits, 0)
        in_wasm += time.perf_counter() - t0 - overhead
        session.position += 1
        token = int(
            np.argmax(box.memory.read_array(session._logits, "<f4", (model.info.vocab_size,)))
        )
    decode = time.perf_counter() - start
    return {
        "prefill": len(prompt) / prefill,
        "decode": n_decode / decode,
        "host_share": 1 - in_wasm / decode,
        "weights": model.info.weights_bytes,
    }


def bench_llama_cpp(gguf_path: Path, prompt: list[int], n_decode: int) -> dict[str, float] | None:
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    llm = Llama(
        str(gguf_path),
        n_ctx=len(prompt) + n_decode + 8,
        n_threads=1,
        n_threads_batch=1,
        n_batch=512,
        n_ubatch=512,
        verbose=False,
    )
    llm.eval(prompt)  # warm up: page in, allocate compute graphs
    llm.reset()
    start = time.perf_counter()
    llm.eval(prompt)
    prefill = time.perf_counter() - start
    # llama-cpp-python keeps no logits without logits_all: decode a fixed token stream
    tokens = prompt[:n_decode]
    start = time.perf_counter()
    for token in tokens:
        llm.eval([token])
    decode = time.perf_counter() - start
    return {"prefill": len(prompt) / prefill, "decode": n_decode / decode}


def write_gguf(spec: ModelSpec, path: Path) -> None:
    """The same weights as a llama.cpp GGUF (Q8_0 matrices, f32 norms, permuted Q/K)."""
    import gguf

    c = spec.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.n_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.n_heads)
    writer.add_head_count_kv(c.n_kv_heads)
    writer.add_rope_dimension_count(c.head_dim)
    writer.add_rope_freq_base(c.rope_theta)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_vocab_size(c.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(c.vocab_size)])
    writer.add_token_types([1] * c.vocab_size)
    writer.add_token_merges(["t 0"])  # llama.cpp insists on a merges list
    for name, ref in spec.tensors.items():
        data = ref.load()
        heads = {"attn_q": c.n_heads, "attn_k": c.n_kv_heads}.get(name.split(".")[-2])
        if heads:  # llama.cpp's interleaved-RoPE row order
            data = data.reshape(heads, 2, -1, data.shape[1]).swapaxes(1, 2).reshape(data.shape)
        if data.ndim == 2:
            q8 = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(
                name, q8, raw_shape=q8.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0
            )
        else:
            writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def best(runs: list[dict[str, float]]) -> dict[str, float]:
    """The best of each figure over the rounds (rates: highest; host share: lowest)."""
    return {k: (min if k == "host_share" else max)(r[k] for r in runs) for k in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--decode", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    spec = random_spec(SMOLLM2_135M)
    prompt = [
        int(t) for t in np.random.default_rng(1).integers(1, SMOLLM2_135M.vocab_size, args.prompt)
    ]
    try:
        import llama_cpp  # noqa: F401

        have_peer = True
    except ImportError:
        have_peer = False
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "smollm2-135m-random.wasm"
        gguf_path = Path(tmp) / "smollm2-135m-random.gguf"
        write_model(spec, path, "q8_0")
        if have_peer:
            write_gguf(spec, gguf_path)
        ours_runs, peer_runs = [], []
        for _ in range(args.rounds):
            ours_runs.append(bench_borda(path, prompt, args.decode))
            if have_peer:
                peer = bench_llama_cpp(gguf_path, prompt, args.decode)
                assert peer is not None
                peer_runs.append(peer)
    ours = best(ours_runs)
    gb = ours["weights"] / 1e9
    print(f"SmolLM2-135M-shaped random model, Q8_0, 1 thread, best of {args.rounds} rounds")
    print(f"  borda prefill {args.prompt} tokens: {ours['prefill']:7.1f} tok/s")
    print(
        f"  borda decode {args.decode} tokens:  {ours['decode']:7.1f} tok/s "
        f"({gb * ours['decode']:.1f} GB/s of weights)"
    )
    print(
        f"  host share of decode time (Python + call overhead): {ours['host_share']:.1%} "
        "(target < 3%)"
    )
    if not have_peer:
        print("  llama.cpp: not installed (pip install '.[bench]' to compare)")
        return
    peer = best(peer_runs)
    print(
        f"  llama.cpp prefill: {peer['prefill']:7.1f} tok/s   ratio borda/llama.cpp "
        f"{ours['prefill'] / peer['prefill']:.2f}x (target >= 0.4x)"
    )
    print(
        f"  llama.cpp decode:  {peer['decode']:7.1f} tok/s   ratio borda/llama.cpp "
        f"{ours['decode'] / peer['decode']:.2f}x (target >= 0.8x)"
    )


if __name__ == "__main__":
    main()
