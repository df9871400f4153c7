"""What a caller hands the SDK, as bytes for the wire, and the protected image back in its kind.

- a numpy ``uint8`` array ``HxWx3`` (its ``channel_order``, "RGB" or "BGR", must be said) or
  ``HxW`` grey: sent as PNG, returned as an array of the same layout and channel order;
- a ``PIL.Image.Image``: sent as PNG, returned as a PIL image (mode "L" for an "L" input, else
  "RGB");
- ``bytes`` / ``bytearray`` / ``memoryview`` (an encoded PNG, JPEG, WebP, ...): sent as they are,
  returned as encoded bytes: JPEG for a JPEG, WebP for a WebP, else PNG;
- a ``str`` or ``os.PathLike`` file path: its bytes are sent; returned as encoded bytes, as above.

Arrays and PIL images travel as lossless PNG. The server answers with the whole photo, the
protected face pasted back at its place, unless ``paste_back=False`` asks for the aligned face.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from faceanonymixer_client.errors import InvalidImageError
from faceanonymixer_proto.v1 import protection_pb2

ChannelOrder = Literal["RGB", "BGR"]
#: what ``protect`` accepts
ImageInput = np.ndarray | Image.Image | bytes | bytearray | memoryview | str | os.PathLike[str]

_FORMATS_BY_MAGIC = (
    (b"\xff\xd8\xff", protection_pb2.IMAGE_FORMAT_JPEG),
    (b"\x89PNG\r\n\x1a\n", protection_pb2.IMAGE_FORMAT_PNG),
)


@dataclass(frozen=True)
class WireImage:
    """One image ready to send, and how to give the protected one back in the caller's kind."""

    data: bytes
    #: the output format to ask for (PNG, or the input's own JPEG/WebP)
    output_format: protection_pb2.ImageFormat
    restore: Callable[[bytes], Any]


def to_wire(image: Any, channel_order: ChannelOrder | None = None) -> WireImage:
    """Encode ``image`` for the wire. Raises :class:`InvalidImageError` (before any call) for a kind
    or array the SDK cannot send, and ``ValueError`` for a missing or unknown ``channel_order``."""
    if isinstance(image, np.ndarray):
        return _from_array(image, channel_order)
    if isinstance(image, Image.Image):
        mode = "L" if image.mode == "L" else "RGB"
        return WireImage(
            _png(image.convert(mode)), protection_pb2.IMAGE_FORMAT_PNG, lambda d: _decode(d, mode)
        )
    if isinstance(image, bytes | bytearray | memoryview):
        return _from_encoded(bytes(image))
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        try:
            data = path.read_bytes()
        except OSError as error:
            raise InvalidImageError(f"cannot read {path}: {error.strerror or error}") from None
        return _from_encoded(data)
    raise InvalidImageError(
        f"cannot protect a {type(image).__name__}: pass a numpy uint8 array, a PIL image, "
        "encoded image bytes or a file path"
    )


def _from_array(array: np.ndarray, channel_order: ChannelOrder | None) -> WireImage:
    if array.dtype != np.uint8:
        raise InvalidImageError(f"a numpy image must be uint8, not {array.dtype}")
    if array.ndim == 2:
        return WireImage(
            _png(Image.fromarray(array, "L")),
            protection_pb2.IMAGE_FORMAT_PNG,
            lambda data: np.asarray(_decode(data, "L")),
        )
    if array.ndim != 3 or array.shape[2] != 3:
        raise InvalidImageError(f"a numpy image must be HxWx3 (or HxW grey), not shape {array.shape}")
    if channel_order not in ("RGB", "BGR"):
        raise ValueError(
            f"say the channel order of a colour array: channel_order='RGB' or 'BGR' (got {channel_order!r})"
        )
    flip = channel_order == "BGR"
    rgb = np.ascontiguousarray(array[:, :, ::-1] if flip else array)

    def restore(data: bytes) -> np.ndarray:
        protected = np.asarray(_decode(data, "RGB"))
        return np.ascontiguousarray(protected[:, :, ::-1]) if flip else protected

    return WireImage(_png(Image.fromarray(rgb, "RGB")), protection_pb2.IMAGE_FORMAT_PNG, restore)


def _from_encoded(data: bytes) -> WireImage:
    output_format = next(
        (fmt for magic, fmt in _FORMATS_BY_MAGIC if data.startswith(magic)),
        protection_pb2.IMAGE_FORMAT_WEBP if data[8:12] == b"WEBP" else protection_pb2.IMAGE_FORMAT_PNG,
    )
    return WireImage(data, output_format, lambda protected: protected)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # fast; it only crosses the wire
    return buffer.getvalue()


def _decode(data: bytes, mode: str) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert(mode)
