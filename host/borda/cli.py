"""The `borda` command line. Each verb is one click command; user errors print one line
and exit with status 2."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
import numpy as np

from .errors import BordaError, InvalidInput

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Turn a BordaError into one line on stderr and exit code 2."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BordaError as exc:
            click.echo(f"borda: {exc}", err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


@click.group()
@click.version_option(package_name="borda")
def main() -> None:
    """Borda runs small language models inside WebAssembly sandboxes."""


@main.command()
@click.argument("src", type=click.Path(exists=True, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The .wasm model file to write.",
)
@click.option(
    "--quant",
    type=click.Choice(["q8_0", "f32"]),
    default="q8_0",
    show_default=True,
    help="Weight format: int8 blocks (4x smaller) or float32.",
)
@user_errors
def pack(src: Path, output: Path, quant: str) -> None:
    """Pack a Hugging Face model directory or a GGUF file into one .wasm model."""
    from .formats import read_model
    from .pack import total_weight_bytes, write_model

    spec = read_model(src)
    total = total_weight_bytes(spec, quant)
    with click.progressbar(length=total, label=f"packing {src.name}", file=sys.stderr) as bar:
        meta = write_model(spec, output, quant, progress=bar.update)
    size = output.stat().st_size
    click.echo(f"wrote {output} ({size / 2**20:.1f} MiB, {meta['arch']}, {quant})")


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-p", "--prompt", required=True, help="The prompt (a user message with --chat).")
@click.option("--chat", is_flag=True, help="Wrap the prompt in the model's chat template.")
@click.option("--max-tokens", default=128, show_default=True)
@click.option("--temperature", default=0.0, show_default=True, help="0 = greedy.")
@click.option("--top-k", default=0, show_default=True)
@click.option("--top-p", default=1.0, show_default=True)
@click.option("--seed", type=int, default=None)
@click.option("--max-context", type=int, default=None, help="Context length of the session.")
@click.option("--memory-limit", default=None, help="Private memory budget, e.g. 256M.")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds per sandbox call.")
@user_errors
def run(
    model: Path,
    prompt: str,
    chat: bool,
    max_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int | None,
    max_context: int | None,
    memory_limit: str | None,
    timeout: float,
) -> None:
    """Generate text with a packed .wasm model, streaming to stdout."""
    from .model import load
    from .session import Session

    loaded = load(model)
    if loaded.is_encoder:
        raise InvalidInput(
            f"{model.name} is an encoder: it embeds text rather than generating it; "
            "use `borda embed` or `borda search`"
        )
    session = loaded.session(max_context=max_context, memory_limit=memory_limit, timeout=timeout)
    assert isinstance(session, Session)
    request = [{"role": "user", "content": prompt}] if chat else prompt
    start = time.perf_counter()
    count = 0
    pieces = session.generate(
        request, max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed
    )
    for piece in pieces:
        click.echo(piece, nl=False)
        count += 1
    elapsed = time.perf_counter() - start
    click.echo()
    click.echo(f"{count} pieces in {elapsed:.2f} s ({count / elapsed:.1f} tokens/s)", err=True)


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@user_errors
def inspect(model: Path) -> None:
    """Show what a packed .wasm model contains."""
    from .model import read_metadata

    meta = read_metadata(model)
    config = meta["config"]
    click.echo(f"{model}: {meta['arch']} ({meta['quant']}), runtime {meta['runtime']}")
    click.echo(f"source: {meta['source']['name']} (sha256 {meta['source']['sha256'][:16]}...)")
    for key in sorted(config):
        click.echo(f"  {key}: {config[key]}")
    weights = meta["weights"]
    click.echo(
        f"weights: {(weights['end'] - weights['offset']) / 2**20:.1f} MiB in "
        f"{len(meta['tensors'])} tensors at offset {weights['offset']}"
    )
    click.echo(f"chat template: {'yes' if meta.get('chat_template') else 'no'}")


@main.command()
@click.option("--rows", default=1536, show_default=True, help="Output rows of the matrix.")
@click.option("--k", default=576, show_default=True, help="Inner dimension (a multiple of 32).")
@user_errors
def demo(rows: int, k: int) -> None:
    """Quantize a matrix to Q8_0, multiply it inside the sandbox, compare with numpy."""
    from . import kernels

    rng = np.random.default_rng(0)
    w = rng.standard_normal((rows, k)).astype(np.float32)
    x = rng.standard_normal((1, k)).astype(np.float32)
    ks = kernels.Kernels()
    q = ks.quantize_q8_0(w)
    click.echo(f"quantized a {rows}x{k} float32 matrix to Q8_0: {w.nbytes:,} -> {q.nbytes:,} bytes")
    resident = ks.upload_q8_0(q)
    ks.matmul_q8_0(x, resident)  # warm up
    start = time.perf_counter()
    y = ks.matmul_q8_0(x, resident)
    elapsed = time.perf_counter() - start
    exact = x.astype(np.float64) @ w.T.astype(np.float64)
    rel = float(np.abs(y - exact).max() / np.abs(exact).max())
    click.echo(f"matrix-vector product inside the Wasm sandbox: {elapsed * 1e3:.2f} ms")
    click.echo(f"max error against numpy float64, relative to the largest output: {rel:.2e}")
