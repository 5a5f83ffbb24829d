"""Text <-> token ids with a `tokenizers` Tokenizer, and decoding that streams valid UTF-8."""

from __future__ import annotations

from tokenizers import Tokenizer

from .errors import InvalidInput


def checked_text(text: object, what: str) -> str:
    """text, if a tokenizer can take it: a str that encodes as UTF-8 (no lone surrogate,
    as str(bytes) decoded with "surrogateescape" may hold)."""
    if not isinstance(text, str):
        raise InvalidInput(f"{what} is not a string but {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(
            f"{what} is not valid Unicode: a lone surrogate {text[exc.start]!r} at "
            f"character {exc.start}; decode the bytes with errors='replace'"
        ) from None
    return text


class StreamDecoder:
    """Turns token ids into text pieces as they arrive; never splits a UTF-8 character.

    Byte-level tokenizers emit a character's bytes across several tokens: a piece is
    released only when the decoded text no longer ends in U+FFFD (an incomplete sequence).
    Decoding a short window, not the whole history, keeps each step O(1).
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._prefix = 0  # start of the decode window
        self._read = 0  # ids before this have been released as text

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip)

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        if len(text) > len(prefix_text) and not text.endswith("\ufffd"):
            piece = text[len(prefix_text) :]
            self._prefix, self._read = self._read, len(self._ids)
            return piece
        return ""

    def flush(self) -> str:
        """Whatever is left (possibly an incomplete character, rendered as U+FFFD)."""
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return text[len(prefix_text) :]
