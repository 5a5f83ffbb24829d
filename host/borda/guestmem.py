"""Bounds-checked access to a guest's linear memory, and the msgpack codec with limits.

Two invariants: every pointer and length a guest hands back is checked against the
memory's current size before anything is read, and no numpy view of linear memory
outlives the statement that made it (memory can grow, and move, during any call).
"""

from __future__ import annotations

import ctypes
import re
from typing import Any

import msgpack
import numpy as np
import wasmtime

from .errors import GuestABIError

DTYPES: dict[str, np.dtype[Any]] = {
    "f32": np.dtype("<f4"),
    "f16": np.dtype("<f2"),
    "i32": np.dtype("<i4"),
    "i16": np.dtype("<i2"),
    "i8": np.dtype("i1"),
    "u8": np.dtype("u1"),
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
MAX_DIMS = 4


class GuestMemory:
    """Copying reads and writes of one instance's linear memory."""

    def __init__(self, store: wasmtime.Store, memory: wasmtime.Memory) -> None:
        self._store = store
        self._memory = memory

    @property
    def size(self) -> int:
        return int(self._memory.data_len(self._store))

    def _base(self) -> int:
        address = ctypes.cast(self._memory.data_ptr(self._store), ctypes.c_void_p).value
        return int(address or 0)

    def check(self, ptr: int, nbytes: int, what: str = "buffer") -> None:
        """Raise GuestABIError unless [ptr, ptr + nbytes) lies inside linear memory."""
        size = self.size
        if ptr < 0 or nbytes < 0 or ptr + nbytes > size:
            raise GuestABIError(
                f"guest returned a {what} at [{ptr}, {ptr + nbytes}) outside its {size}-byte memory"
            )

    def read_bytes(self, ptr: int, nbytes: int, what: str = "buffer") -> bytes:
        self.check(ptr, nbytes, what)
        return ctypes.string_at(self._base() + ptr, nbytes)

    def read_array(
        self, ptr: int, dtype: np.dtype[Any] | str, shape: tuple[int, ...]
    ) -> np.ndarray:
        out = np.empty(shape, dtype=np.dtype(dtype))
        self.check(ptr, out.nbytes, "tensor")
        if out.nbytes:
            ctypes.memmove(out.ctypes.data, self._base() + ptr, out.nbytes)
        return out

    def write(self, ptr: int, data: np.ndarray | bytes) -> None:
        src = np.ascontiguousarray(
            np.frombuffer(data, np.uint8) if isinstance(data, bytes) else data
        )
        self.check(ptr, src.nbytes, "destination")
        if src.nbytes:
            ctypes.memmove(self._base() + ptr, src.ctypes.data, src.nbytes)


# -- msgpack --------------------------------------------------------------------------


def pack(message: Any) -> bytes:
    return bytes(msgpack.packb(message, use_bin_type=True))


def unpack(data: bytes, max_bytes: int) -> Any:
    """Decode a guest's message with no ext types, and no length or count its bytes cannot hold.

    Bounding every declared length by len(data) means a forged header (a 4 GiB string in
    7 bytes) fails before anything is allocated for it; msgpack bounds nesting depth.
    """
    if len(data) > max_bytes:
        raise GuestABIError(f"guest response of {len(data)} bytes exceeds the {max_bytes}-byte cap")
    size = len(data)
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=size,
            max_bin_len=size,
            max_array_len=min(size, 1 << 20),
            max_map_len=min(size // 2, 1 << 16),
            max_ext_len=0,
            ext_hook=_reject_ext,
        )
    except GuestABIError:
        raise
    except (msgpack.StackError, RecursionError):
        reason = "it nests containers deeper than the decoder allows"
    except msgpack.FormatError:
        reason = "it uses a byte msgpack reserves"
    except Exception as exc:  # msgpack raises several types, all meaning "malformed"
        reason = str(exc)
        forged = re.match(r"(\d+) exceeds max_(\w+)_len", reason)
        if forged:
            reason = (
                f"its {forged[2]} header declares length {forged[1]}, "
                f"more than the response's {size} bytes can hold"
            )
        elif "incomplete input" in reason:
            reason = "it ends before the lengths its headers declare"
    raise GuestABIError(f"guest response is not valid msgpack: {reason}")


def _reject_ext(code: int, data: bytes) -> Any:
    raise GuestABIError(f"guest response uses msgpack ext type {code}, which Borda does not accept")


def tensor_message(array: np.ndarray) -> dict[str, Any]:
    """An inline tensor for a request: {"dtype", "shape", "data"}."""
    array = np.ascontiguousarray(array)
    name = DTYPE_NAMES.get(
        array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    )
    if name is None:
        raise GuestABIError(
            f"dtype {array.dtype} cannot be sent to a guest; use one of {sorted(DTYPES)}"
        )
    return {"dtype": name, "shape": list(array.shape), "data": array.tobytes()}


# A tensor name a guest may return: also a safe file name (`borda run --output-dir`
# saves NAME.npy), so no path separators and no leading dot.
TENSOR_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def read_tensors(message: Any, memory: GuestMemory) -> dict[str, np.ndarray]:
    """Decode a guest response's "tensors" map, names and tensors validated."""
    if not isinstance(message, dict):
        raise GuestABIError("'tensors' in the guest response is not a map")
    tensors = {}
    for name, tensor in message.items():
        if not isinstance(name, str) or not TENSOR_NAME.fullmatch(name):
            raise GuestABIError(
                f"the guest returned a tensor named {name!r}: a name is 1 to 128 letters, "
                "digits, '_', '.' or '-', and starts with a letter, digit or '_'"
            )
        tensors[name] = read_tensor(tensor, memory, name)
    return tensors


def read_tensor(message: Any, memory: GuestMemory, name: str) -> np.ndarray:
    """Decode a guest's tensor, inline ("data") or by reference ("ptr"), after validating it."""
    if not isinstance(message, dict):
        raise GuestABIError(f"tensor {name!r} in the guest response is not a map")
    dtype = DTYPES.get(message.get("dtype"))  # type: ignore[arg-type]
    shape = message.get("shape")
    if dtype is None:
        raise GuestABIError(f"tensor {name!r} has unknown dtype {message.get('dtype')!r}")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(isinstance(d, int) and 0 <= d < 1 << 32 for d in shape)
    ):
        raise GuestABIError(f"tensor {name!r} has an invalid shape {shape!r}")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if "data" in message:
        data = message["data"]
        if not isinstance(data, bytes) or len(data) != nbytes:
            raise GuestABIError(f"tensor {name!r} data does not hold {nbytes} bytes")
        return np.frombuffer(data, dtype=dtype).reshape(shape).copy()
    ptr = message.get("ptr")
    if not isinstance(ptr, int):
        raise GuestABIError(f"tensor {name!r} has neither 'data' nor an integer 'ptr'")
    memory.check(ptr, nbytes, f"tensor {name!r}")
    return memory.read_array(ptr, dtype, tuple(shape))
