"""Decoder sessions: one sandboxed instance of a decoder Model with its own KV cache.

session = borda.load("smollm.wasm").session(max_context=1024, memory_limit="64M")
for piece in session.generate("Once upon a time", max_tokens=32):
    print(piece, end="")
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .checks import flag, whole_number
from .errors import BordaError, ContextOverflow, InvalidInput, SandboxMemoryLimit
from .ropefreq import rope_inv_freq
from .sampling import Sampler, SamplingParams
from .sandbox import SandboxedSession, parse_size
from .tokenizer import StreamDecoder, checked_text

if TYPE_CHECKING:
    from .model import Model

DEFAULT_CONTEXT = 2048
MAX_BATCH = 64  # prefill chunk: tokens per tiled-GEMM pass inside the guest

# borda_forward's error codes (guest/models/llama.c)
FORWARD_ERRORS = {
    -1: "the model runtime was not initialised",
    -3: "the step's arguments are invalid (empty, or a gap in positions)",
    -4: "the sequence does not fit the session's context",
    -5: "a token id is outside the vocabulary",
    -6: "a buffer lies outside the sandbox's memory",
}


def kv_bytes_per_position(c: dict[str, Any]) -> int:
    return int(2 * c["n_layers"] * c["n_kv_heads"] * c["head_dim"] * 4)


def scratch_bytes(c: dict[str, Any]) -> int:
    """An upper bound of the runtime's per-session scratch for MAX_BATCH tokens."""
    width = 4 * c["hidden_size"] + 2 * (c["n_heads"] + 2 * c["n_kv_heads"]) * c["head_dim"]
    width += 3 * c["intermediate_size"] + c["vocab_size"]
    return int(MAX_BATCH * width * 5 + (4 << 20))  # f32 + int8 copies, request buffers


class Session(SandboxedSession):
    """One sandboxed instance of a Model: a KV cache, a memory budget and a deadline."""

    def __init__(
        self,
        model: Model,
        max_context: int | None,
        memory_limit: int | str | None,
        timeout: float | None,
        deterministic: bool,
    ) -> None:
        self.model = model
        c = model.config
        per_position, scratch = kv_bytes_per_position(c), scratch_bytes(c)
        model_limit = c["max_position_embeddings"]
        if max_context is not None:
            max_context = whole_number("max_context", max_context, 1)
        if memory_limit is None:
            if max_context is None:
                max_context = min(model_limit, DEFAULT_CONTEXT)
            private = max_context * per_position + scratch
        else:
            private = parse_size(memory_limit)
            fits = (private - scratch) // per_position
            if max_context is None:
                max_context = min(model_limit, max(fits, 1))
            if fits < max_context:
                need = max_context * per_position + scratch
                raise SandboxMemoryLimit(
                    f"a {max_context}-token context needs about {need / 2**20:.1f} MiB "
                    f"of private memory (KV cache and scratch) but the budget is "
                    f"{private / 2**20:.1f} MiB; raise memory_limit or lower max_context"
                )
        self.max_context = max_context
        self._box = model.open_sandbox(private, timeout, deterministic)
        self._box.invoke_packed("init", self._init_request())
        self._tokens = self._box.alloc(4 * max_context)
        self._logits = self._box.alloc(4 * c["vocab_size"] * MAX_BATCH)
        self._box.call("borda_keep")  # the token and logit buffers live as long as the session
        self.position = 0
        self.history: list[int] = []
        self.starts = 0  # fresh starts (reset) so far: a request's steps run only while current
        self.prompt_tokens = 0  # of the last generation
        self.new_tokens = 0  # sampled so far by the last generation

    def _init_request(self) -> bytes:
        c = self.model.config
        config = {
            k: c[k]
            for k in (
                "vocab_size",
                "hidden_size",
                "n_layers",
                "n_heads",
                "n_kv_heads",
                "head_dim",
                "intermediate_size",
                "rms_norm_eps",
            )
        }
        config.update(max_context=self.max_context, max_batch=MAX_BATCH)
        return self.model.init_request(config, lambda: {"rope_inv_freq": rope_inv_freq(c)})

    # -- running the model ------------------------------------------------------------

    def reset(self) -> None:
        """Forget the conversation: the next call starts at position 0."""
        self.position = 0
        self.history = []
        self.starts += 1

    def _forward_chunk(self, ids: Sequence[int], all_logits: bool) -> np.ndarray:
        n = len(ids)
        if n == 0:
            raise InvalidInput("no tokens to run")
        if self.position + n > self.max_context:
            raise ContextOverflow(
                f"{self.position + n} tokens do not fit this session's {self.max_context}-token "
                "context; open a session with a larger max_context (and memory_limit) or shorten "
                "the prompt"
            )
        vocab = self.model.config["vocab_size"]
        ids_array = np.asarray(ids, dtype=np.int32)
        if ids_array.min() < 0 or ids_array.max() >= vocab:
            raise InvalidInput(f"token ids must be in [0, {vocab})")
        with self._box.exclusive():
            self._box.memory.write(self._tokens, ids_array)
            code = int(
                self._box.call(
                    "borda_forward", self._tokens, n, self.position, self._logits, int(all_logits)
                )
            )
            if code != 0:
                raise InvalidInput(
                    f"model runtime refused the step: {FORWARD_ERRORS.get(code, code)}"
                )
            self.position += n
            self.history.extend(int(i) for i in ids)
            rows = n if all_logits else 1
            return self._box.memory.read_array(self._logits, "<f4", (rows, vocab))

    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        """Logits (len(token_ids), vocab) at every position of token_ids, from a fresh start."""
        self.reset()
        ids = list(token_ids)
        chunks = [ids[i : i + MAX_BATCH] for i in range(0, len(ids), MAX_BATCH)] or [ids]
        return np.concatenate([self._forward_chunk(chunk, True) for chunk in chunks])

    def encode(self, prompt: str | list[dict[str, str]]) -> list[int]:
        """Token ids of a prompt, or of chat messages rendered with the model's template."""
        from .formats.chat import render_chat

        if isinstance(prompt, str):
            return list(self.model.tokenizer.encode(checked_text(prompt, "the prompt")).ids)
        if not isinstance(prompt, list):
            raise InvalidInput(
                f"the prompt must be a string or a list of chat messages, "
                f"not {type(prompt).__name__}"
            )
        for i, message in enumerate(prompt):
            if not isinstance(message, Mapping):
                raise InvalidInput(f"chat message {i} is not a dict but {type(message).__name__}")
        template = self.model.meta.get("chat_template")
        if not template:
            raise InvalidInput(f"{self.model.path.name} has no chat template; pass a plain prompt")
        special = self.model.meta.get("special_tokens", {})
        text = render_chat(
            template,
            prompt,
            add_generation_prompt=True,
            bos_token=special.get("bos", ""),
            eos_token=special.get("eos", ""),
        )
        text = checked_text(text, "the rendered chat")
        return list(self.model.tokenizer.encode(text, add_special_tokens=False).ids)

    def generate(
        self,
        prompt: str | list[dict[str, str]],
        max_tokens: int = 128,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
        stream: bool = True,
    ) -> Iterator[str] | str:
        """Continue a prompt (or chat messages). stream=True yields text pieces as they come."""
        stream = flag("stream", stream)
        pieces = self._generate(
            prompt,
            max_tokens,
            SamplingParams(temperature, top_k, top_p, repetition_penalty, seed),
            tuple(stop),
        )
        return pieces if stream else "".join(pieces)

    def generate_ids(
        self,
        prompt_ids: Sequence[int],
        max_tokens: int,
        params: SamplingParams | None = None,
        stop_at_eos: bool = True,
    ) -> Iterator[int]:
        """Continue from token ids (a fresh start), yielding up to max_tokens new ids."""
        steps = self.steps(prompt_ids, max_tokens, params, stop_at_eos)
        return (token for token in steps if token is not None)

    def steps(
        self,
        prompt_ids: Sequence[int],
        max_tokens: int,
        params: SamplingParams | None = None,
        stop_at_eos: bool = True,
    ) -> Iterator[int | None]:
        """generate_ids one model call at a time: None after each prefill chunk, then each
        new id. A scheduler interleaves sessions at these boundaries."""
        max_tokens = whole_number("max_tokens", max_tokens, 0)
        self.reset()
        start_number = self.starts
        sampler = Sampler(params or SamplingParams())
        eos = set(self.model.config.get("eos_token_ids") or ()) if stop_at_eos else set()
        prompt = list(prompt_ids)
        if not prompt:
            raise InvalidInput("no tokens to run")
        self.prompt_tokens, self.new_tokens = len(prompt), 0
        for start in range(0, len(prompt), MAX_BATCH):
            if start:
                yield None
                self._check_current(start_number)
            logits = self._forward_chunk(prompt[start : start + MAX_BATCH], False)[-1]
        for produced in range(max_tokens):
            token = sampler(logits, self.history)
            self.new_tokens += 1
            yield token
            last = produced + 1 == max_tokens or self.position >= self.max_context
            if token in eos or last:
                return
            self._check_current(start_number)
            logits = self._forward_chunk([token], False)[-1]

    def _check_current(self, start_number: int) -> None:
        if self.starts != start_number:
            raise BordaError(
                "this generation was overtaken: a newer request (or reset) started on the same "
                "session, which runs one request at a time; open a session per conversation"
            )

    def _generate(
        self,
        prompt: str | list[dict[str, str]],
        max_tokens: int,
        params: SamplingParams,
        stop: tuple[str, ...],
    ) -> Iterator[str]:
        pieces = self.text_steps(prompt, max_tokens, params, stop)
        return (piece for piece in pieces if piece is not None)

    def text_steps(
        self,
        prompt: str | list[dict[str, str]],
        max_tokens: int,
        params: SamplingParams,
        stop: tuple[str, ...] = (),
    ) -> Iterator[str | None]:
        """generate's text, one model call at a time: None after a call that added no text."""
        ids = self.encode(prompt)
        if len(ids) >= self.max_context:
            raise ContextOverflow(
                f"the prompt has {len(ids)} tokens but this session's context holds "
                f"{self.max_context}; shorten it or open a session with a larger max_context"
            )
        decoder = StreamDecoder(self.model.tokenizer)
        eos = set(self.model.config.get("eos_token_ids") or ())
        text = ""
        emitted = 0
        for token in self.steps(ids, max_tokens, params):
            if token is None:
                yield None
                continue
            if token in eos:
                break
            text += decoder.push(token)
            cut = _stop_index(text, stop)
            if cut is not None:
                if cut > emitted:
                    yield text[emitted:cut]
                return
            safe = len(text) - _held_back(text, stop)
            if safe > emitted:
                yield text[emitted:safe]
                emitted = safe
            else:
                yield None
        text += decoder.flush()
        cut = _stop_index(text, stop)
        end = len(text) if cut is None else cut
        if end > emitted:
            yield text[emitted:end]


def _stop_index(text: str, stop: tuple[str, ...]) -> int | None:
    hits = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return min(hits) if hits else None


def _held_back(text: str, stop: tuple[str, ...]) -> int:
    """How many trailing characters could still become a stop string."""
    held = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                held = max(held, n)
                break
    return held
