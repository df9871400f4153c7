"""A reader for dlib's binary serialization format, as far as its DNN files need it.

dlib writes integers as one header byte (low nibble: byte count, bit 7: sign) followed by
that many little-endian bytes; floats as an integer mantissa and exponent
(``value = mantissa * 2**exponent``); strings as a length and the bytes; tensors (version 2)
as four dimensions followed by raw little-endian float32 data. A network is written as
nested layer wrappers whose types are not in the stream, so reading one needs the network's
layer stack (see :mod:`faceanonymixer.models.dlib_resnet`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from faceanonymixer.utils.errors import ModelFormatError

# Special exponents of dlib's float_details for non-finite values.
_EXPONENT_INF, _EXPONENT_NINF, _EXPONENT_NAN = 32000, 32001, 32002


@dataclass(frozen=True)
class Tensor4:
    """A dlib tensor: (num_samples, k, nr, nc) with its float32 data."""

    shape: tuple[int, int, int, int]
    data: np.ndarray


@dataclass
class LayerRecord:
    """One computational layer as stored: its type tag and its fields in file order."""

    kind: str
    fields: dict[str, object] = field(default_factory=dict)


class DlibReader:
    """Sequential reader over an in-memory dlib stream; every read checks bounds."""

    def __init__(self, data: bytes, *, source: str = "<bytes>") -> None:
        self._data = memoryview(data)
        self._pos = 0
        self.source = source

    @property
    def position(self) -> int:
        return self._pos

    def at_end(self) -> bool:
        return self._pos == len(self._data)

    def fail(self, message: str) -> ModelFormatError:
        return ModelFormatError(f"{self.source}: {message} (at byte {self._pos})")

    def _take(self, count: int) -> memoryview:
        if count < 0 or self._pos + count > len(self._data):
            raise self.fail(f"unexpected end of data while reading {count} bytes")
        chunk = self._data[self._pos : self._pos + count]
        self._pos += count
        return chunk

    def read_int(self) -> int:
        header = self._take(1)[0]
        size = header & 0x0F
        if size > 8 or header & 0x70:
            raise self.fail(f"invalid integer header 0x{header:02x}")
        value = int.from_bytes(self._take(size), "little")
        return -value if header & 0x80 else value

    def read_bool(self) -> bool:
        # dlib writes bools as the characters '0' and '1'.
        char = bytes(self._take(1))
        if char not in (b"0", b"1"):
            raise self.fail(f"invalid bool {char!r}")
        return char == b"1"

    def read_float(self) -> float:
        mantissa = self.read_int()
        exponent = self.read_int()
        if exponent == _EXPONENT_INF:
            return float("inf")
        if exponent == _EXPONENT_NINF:
            return float("-inf")
        if exponent == _EXPONENT_NAN:
            return float("nan")
        return float(mantissa) * 2.0**exponent

    def read_string(self) -> str:
        length = self.read_int()
        if length < 0 or length > 1 << 20:
            raise self.fail(f"implausible string length {length}")
        try:
            return bytes(self._take(length)).decode("ascii")
        except UnicodeDecodeError as exc:
            raise self.fail("string is not ASCII") from exc

    def expect_string(self, *allowed: str) -> str:
        value = self.read_string()
        if value not in allowed:
            raise self.fail(f"expected {' or '.join(map(repr, allowed))}, found {value!r}")
        return value

    def expect_int(self, *allowed: int, what: str = "version") -> int:
        value = self.read_int()
        if value not in allowed:
            raise self.fail(f"unexpected {what} {value}, expected one of {allowed}")
        return value

    def read_dims(self) -> tuple[int, int, int, int]:
        dims = (self.read_int(), self.read_int(), self.read_int(), self.read_int())
        if any(d < 0 for d in dims):
            raise self.fail(f"negative tensor dimension {dims}")
        return dims

    def read_tensor(self) -> Tensor4:
        self.expect_int(2, what="tensor version")
        dims = self.read_dims()
        count = dims[0] * dims[1] * dims[2] * dims[3]
        raw = self._take(4 * count)
        data = np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(dims)
        return Tensor4(dims, data)

    def read_alias_tensor(self) -> tuple[int, int, int, int]:
        self.expect_int(1, what="alias_tensor version")
        return self.read_dims()
