"""One wasmtime Engine per configuration per process, and the epoch ticker behind deadlines."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import wasmtime

EPOCH_TICK = 0.005  # seconds between epoch increments: the deadlines' resolution


@dataclass(frozen=True)
class EngineConfig:
    """What an Engine is compiled for. Modules compiled for one config run only there."""

    deterministic: bool = False  # same results on every CPU: no relaxed-SIMD or NaN variance
    epoch_interruption: bool = True  # deadlines; off only to measure what they cost
    max_wasm_stack: int = 1 << 20  # bytes of native stack a guest may use

    def cache_key(self) -> str:
        return f"d{int(self.deterministic)}e{int(self.epoch_interruption)}s{self.max_wasm_stack}"


_engines: dict[EngineConfig, wasmtime.Engine] = {}
_engines_lock = threading.Lock()


def get_engine(config: EngineConfig | None = None) -> wasmtime.Engine:
    """The process-wide Engine for `config` (created on first use)."""
    config = config or EngineConfig()
    with _engines_lock:
        engine = _engines.get(config)
        if engine is None:
            engine = _engines[config] = wasmtime.Engine(_wasmtime_config(config))
            if config.epoch_interruption:
                _EpochTicker.instance().add(engine)
        return engine


def _wasmtime_config(config: EngineConfig) -> wasmtime.Config:
    cfg = wasmtime.Config()
    cfg.wasm_simd = True
    cfg.wasm_relaxed_simd = True
    cfg.wasm_threads = False
    cfg.wasm_memory64 = False
    cfg.epoch_interruption = config.epoch_interruption
    cfg.max_wasm_stack = config.max_wasm_stack
    if config.deterministic:
        cfg.wasm_relaxed_simd_deterministic = True
        cfg.cranelift_nan_canonicalization = True
    return cfg


class _EpochTicker:
    """One daemon thread that advances every engine's epoch each EPOCH_TICK."""

    _instance: _EpochTicker | None = None

    def __init__(self) -> None:
        self._engines: list[wasmtime.Engine] = []
        self._thread = threading.Thread(target=self._run, name="borda-epoch", daemon=True)
        self._thread.start()

    @classmethod
    def instance(cls) -> _EpochTicker:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def add(self, engine: wasmtime.Engine) -> None:
        self._engines = [*self._engines, engine]

    def _run(self) -> None:
        while True:
            time.sleep(EPOCH_TICK)
            for engine in self._engines:
                engine.increment_epoch()
