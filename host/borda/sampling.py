"""Choosing the next token from logits: greedy, or sampled with the usual knobs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .checks import number, whole_number


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 means greedy (deterministic). top_k 0 and top_p 1 disable those filters."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        number("temperature", self.temperature, "a number >= 0", lambda v: v >= 0)
        whole_number("top_k", self.top_k, 0)
        number("top_p", self.top_p, "a number in (0, 1]", lambda v: 0 < v <= 1)
        number("repetition_penalty", self.repetition_penalty, "a number > 0", lambda v: v > 0)
        if self.seed is not None:
            whole_number("seed", self.seed, 0)


class Sampler:
    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self._rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray, history: Sequence[int]) -> int:
        p = self.params
        logits = logits.astype(np.float64)
        if p.repetition_penalty != 1.0 and len(history):
            seen = np.unique(np.asarray(history))
            values = logits[seen]
            # as in transformers: shrink positive logits, push negative ones further down
            logits[seen] = np.where(
                values > 0, values / p.repetition_penalty, values * p.repetition_penalty
            )
        if p.temperature == 0:
            return int(np.argmax(logits))
        logits = logits / p.temperature
        if p.top_k and p.top_k < logits.size:
            kth = np.partition(logits, -p.top_k)[-p.top_k]
            logits[logits < kth] = -np.inf
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        if p.top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            cumulative = np.cumsum(probs[order])
            cut = int(np.searchsorted(cumulative, p.top_p)) + 1  # keep the token crossing top_p
            keep = np.zeros_like(probs, dtype=bool)
            keep[order[:cut]] = True
            probs = np.where(keep, probs, 0.0)
            probs /= probs.sum()
        return int(self._rng.choice(probs.size, p=probs))
