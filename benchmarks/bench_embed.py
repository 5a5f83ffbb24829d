"""Embedding benchmark: all-MiniLM-L6-v2, batches of 16 x 128 tokens, one thread.

    python benchmarks/bench_embed.py

Borda Q8_0 and f32 beside transformers/torch fp32 (1 thread) and, when installed,
onnxruntime (1 thread), on the same token ids; printed as sentences/s and ratios. The
runners take turns for REPEAT rounds and each reports its best, so that a drift of the
machine hits all alike.

A ceiling line puts the target in proportion: a sentence's GEMMs alone, at the peak
rate of Wasm's int8 dot (bench_kernels.int8_peak_wat, measured in the same rounds).

A second line measures what a search index does: short texts (the bundled corpus,
~14 tokens each) end to end, tokenization and mean pooling included, batches of 16,
Borda Q8_0 beside transformers/torch.
"""

from __future__ import annotations

import os

for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import borda
from bench_kernels import best_of, int8_peak_runner
from borda import default_model
from borda.pack import pack

BATCH, TOKENS, REPEAT = 16, 128, 5
SHORT_TEXTS = 800


def batch_ids(vocab: int) -> list[list[int]]:
    """16 sequences of exactly 128 ids: [CLS] 126 word pieces [SEP]."""
    rng = np.random.default_rng(0)
    return [[101, *rng.integers(1000, vocab, TOKENS - 2).tolist(), 102] for _ in range(BATCH)]


def gemm_macs_per_sentence(c: dict[str, Any]) -> int:
    """Multiply-accumulates of a sentence's GEMMs (Q, K, V, output; FFN up, down)."""
    h, ff = c["hidden_size"], c["intermediate_size"]
    return c["n_layers"] * TOKENS * (4 * h * h + 2 * h * ff)


def borda_runner(path: Path, ids: list[list[int]]) -> Callable[[], object]:
    session = borda.load(path).session(timeout=None)
    return lambda: session._encode(ids)


def torch_runner(ids: list[list[int]]) -> Callable[[], object]:
    import torch
    from transformers import AutoModel

    torch.set_num_threads(1)
    model = AutoModel.from_pretrained(default_model.source_dir()).eval()
    tensor = torch.tensor(ids)

    def run() -> None:
        with torch.no_grad():
            model(input_ids=tensor, attention_mask=torch.ones_like(tensor))

    return run


def short_texts() -> list[str]:
    """The bundled corpus, repeated to SHORT_TEXTS lines."""
    from importlib import resources

    lines = (resources.files("borda") / "data" / "corpus.txt").read_text().splitlines()
    lines = [line for line in lines if line.strip()]
    return (lines * (SHORT_TEXTS // len(lines) + 1))[:SHORT_TEXTS]


def borda_texts_runner(path: Path, texts: list[str]) -> Callable[[], object]:
    model = borda.load(path)
    return lambda: model.embed(texts, batch_size=BATCH)


def torch_texts_runner(texts: list[str]) -> Callable[[], object]:
    """sentence-transformers' recipe: tokenize a batch with padding, run, mean-pool."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(default_model.source_dir())
    model = AutoModel.from_pretrained(default_model.source_dir()).eval()

    def run() -> None:
        for start in range(0, len(texts), BATCH):
            batch = tokenizer(texts[start : start + BATCH], padding=True, return_tensors="pt")
            with torch.no_grad():
                hidden = model(**batch)[0]
            mask = batch["attention_mask"].unsqueeze(-1)
            torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1)

    return run


def last_hidden_state_module(model: Any) -> Any:
    """The model as a plain (input_ids, attention_mask) -> tensor module: the TorchScript
    exporter cannot trace transformers' keyword-capturing forward directly."""
    import torch

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.model(input_ids=input_ids, attention_mask=attention_mask)[0]

    return Wrapper().eval()


def onnxruntime_runner(ids: list[list[int]], tmp: Path) -> Callable[[], object] | None:
    try:
        import onnxruntime as ort
        import torch
        from transformers import AutoModel
    except ImportError:
        return None
    model = AutoModel.from_pretrained(default_model.source_dir()).eval()
    path = tmp / "minilm.onnx"
    example = torch.tensor(ids)
    torch.onnx.export(
        last_hidden_state_module(model),
        (example, torch.ones_like(example)),
        str(path),
        input_names=["input_ids", "attention_mask"],
        dynamo=False,
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {
        "input_ids": np.array(ids, np.int64),
        "attention_mask": np.ones((BATCH, TOKENS), np.int64),
    }
    return lambda: session.run(None, feed)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        q8, f32 = Path(tmp) / "q8_0.wasm", Path(tmp) / "f32.wasm"
        pack(default_model.source_dir(), q8, "q8_0")
        pack(default_model.source_dir(), f32, "f32")
        model = borda.load(q8)
        ids = batch_ids(model.info.vocab_size)
        peak, peak_macs = int8_peak_runner()
        runners = {
            "borda q8_0": borda_runner(q8, ids),
            "borda f32": borda_runner(f32, ids),
            "torch fp32": torch_runner(ids),
        }
        onnx_runner = onnxruntime_runner(ids, Path(tmp))
        if onnx_runner is not None:
            runners["onnxruntime fp32"] = onnx_runner
        *times, t_peak = best_of(*runners.values(), peak, repeat=REPEAT)
        rates = {name: BATCH / t for name, t in zip(runners, times, strict=True)}
        ceiling = peak_macs / t_peak / gemm_macs_per_sentence(model.config)
        texts = short_texts()
        short = best_of(borda_texts_runner(q8, texts), torch_texts_runner(texts), repeat=3)
    onnx = rates.get("onnxruntime fp32")
    print(f"all-MiniLM-L6-v2, batch {BATCH} x {TOKENS} tokens, 1 thread")
    for name, rate in rates.items():
        print(f"  {name:18s} {rate:7.1f} sentences/s")
    print(
        f"  ratio borda q8_0 / torch fp32: {rates['borda q8_0'] / rates['torch fp32']:.2f}x "
        "(target >= 1.0x)"
    )
    print(
        f"  ceiling: {ceiling:.1f} sentences/s = {ceiling / rates['torch fp32']:.2f}x torch fp32 "
        f"(the GEMMs alone at the Wasm int8 peak, {peak_macs / t_peak / 1e9:.1f} GMAC/s: no "
        "encoder whose GEMMs use Wasm's int8 dot runs faster on this CPU); "
        f"borda q8_0 reaches {rates['borda q8_0'] / ceiling:.0%} of it"
    )
    if onnx is not None:
        print(
            f"  ratio borda q8_0 / onnxruntime fp32: {rates['borda q8_0'] / onnx:.2f}x "
            "(aim >= 1.0x)"
        )
    else:
        print("  onnxruntime: not installed (pip install '.[bench]' to compare)")
    print(f"{SHORT_TEXTS} short texts end to end (tokenize, embed, mean-pool), batch {BATCH}")
    print(f"  borda q8_0 {SHORT_TEXTS / short[0]:7.0f} texts/s")
    print(f"  torch fp32 {SHORT_TEXTS / short[1]:7.0f} texts/s")
    print(f"  ratio borda q8_0 / torch fp32: {short[1] / short[0]:.2f}x")


if __name__ == "__main__":
    main()
