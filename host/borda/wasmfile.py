"""Read and write the sections of a Wasm binary, as far as packing a model needs.

A Borda model file is a runtime module with two additions: one active data segment that
holds the weights at a 64 KiB-aligned address above the runtime's initial memory (whose
minimum is raised to cover it), and a custom section "borda.model" with msgpack metadata.
The weights are streamed to disk, never assembled in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from .errors import ModelFormatError

MAGIC = b"\0asm\x01\0\0\0"
PAGE = 65536
CUSTOM, MEMORY, DATA, DATACOUNT = 0, 5, 11, 12
MAX_PAGES = 65536  # wasm32


@dataclass(frozen=True)
class Section:
    id: int
    payload: bytes  # contents after the id and size


def leb_u32(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def leb_i32(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        done = (value == 0 and not byte & 0x40) or (value == -1 and byte & 0x40)
        out.append(byte if done else byte | 0x80)
        if done:
            return bytes(out)


def read_leb_u32(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    """Decode an unsigned LEB128 at pos: (value, position after it)."""
    result = shift = 0
    for _ in range(5):
        if pos >= len(data):
            raise ModelFormatError("Wasm file ends inside a LEB128 number: it is truncated")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
    raise ModelFormatError(f"malformed LEB128 number before byte {pos} of the Wasm file")


def iter_section_headers(f: BinaryIO) -> Iterator[tuple[int, int, int]]:
    """Yield (section id, payload offset, payload size) without reading payloads."""
    f.seek(0, 2)
    end = f.tell()
    f.seek(0)
    if f.read(8) != MAGIC:
        raise ModelFormatError("not a Wasm module (bad magic or version)")
    pos = 8
    while pos < end:
        f.seek(pos)
        head = f.read(6)
        if not head:
            break
        size, after = read_leb_u32(head, 1)
        start = pos + after
        if start + size > end:
            raise ModelFormatError(
                f"Wasm section {head[0]} at byte {pos} runs past the end of the file: "
                "it is truncated"
            )
        yield head[0], start, size
        pos = start + size


def custom_section(f: BinaryIO, name: str) -> bytes | None:
    """The payload of custom section `name` (after its name), or None."""
    encoded = name.encode()
    for section_id, start, size in iter_section_headers(f):
        if section_id != CUSTOM:
            continue
        f.seek(start)
        payload = f.read(size)
        length, pos = read_leb_u32(payload, 0)
        if payload[pos : pos + length] == encoded:
            return payload[pos + length :]
    return None


def parse_sections(wasm: bytes) -> list[Section]:
    if wasm[:8] != MAGIC:
        raise ModelFormatError("not a Wasm module (bad magic or version)")
    sections, pos = [], 8
    while pos < len(wasm):
        size, start = read_leb_u32(wasm, pos + 1)
        if start + size > len(wasm):
            raise ModelFormatError("Wasm module is truncated")
        sections.append(Section(wasm[pos], wasm[start : start + size]))
        pos = start + size
    return sections


def memory_min_pages(sections: list[Section]) -> int:
    """The initial size, in pages, of the module's single memory."""
    memories = [s for s in sections if s.id == MEMORY]
    if len(memories) != 1:
        raise ModelFormatError("runtime module must define exactly one memory")
    memory = memories[0]
    count, pos = read_leb_u32(memory.payload, 0)
    if count != 1 or memory.payload[pos] not in (0, 1):
        raise ModelFormatError("runtime module must define exactly one 32-bit memory")
    minimum, _ = read_leb_u32(memory.payload, pos + 1)
    return minimum


def with_memory_min(section: Section, pages: int) -> Section:
    """The memory section with its minimum raised to `pages` (and no maximum)."""
    return Section(MEMORY, b"\x01\x00" + leb_u32(pages))


def data_segment_header(offset: int, nbytes: int) -> bytes:
    """Header of an active segment for memory 0 at constant `offset`; nbytes follow."""
    return b"\x00\x41" + leb_i32(offset) + b"\x0b" + leb_u32(nbytes)


def section_bytes(section_id: int, payload_size: int) -> bytes:
    return bytes([section_id]) + leb_u32(payload_size)


def custom_payload(name: str, body: bytes) -> bytes:
    encoded = name.encode()
    return leb_u32(len(encoded)) + encoded + body


def plus_one_segment(section: Section) -> tuple[bytes, bytes]:
    """Split a data (or datacount) section into (new count LEB, the rest of its payload)."""
    count, pos = read_leb_u32(section.payload, 0)
    return leb_u32(count + 1), section.payload[pos:]
