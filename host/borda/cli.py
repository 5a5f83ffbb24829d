"""The `borda` command line. Each verb is one click command; user errors print one line
and exit with status 2."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click
import numpy as np

from .errors import BordaError

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
