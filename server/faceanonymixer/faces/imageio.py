"""Decode and validate untrusted images before any model sees them.

Everything that reaches the engine (service bytes, CLI paths, SDK arrays) passes through
:func:`load_image`. Limits are checked from the header, before pixels are decoded, so that a
small file that claims a huge canvas (a decompression bomb) costs nothing.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeAlias

import numpy as np
import numpy.typing as npt
from PIL import ExifTags, Image, UnidentifiedImageError

from faceanonymixer.utils.errors import InvalidImageError
from faceanonymixer.utils.files import write_atomic_with

ColorOrder: TypeAlias = Literal["RGB", "BGR"]
ImageInput: TypeAlias = (
    str | os.PathLike[str] | bytes | bytearray | memoryview | Image.Image | npt.NDArray[np.generic]
)
RGBImage: TypeAlias = npt.NDArray[np.uint8]

#: formats we accept from untrusted sources: still photographs that Pillow decodes natively
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "PPM"})


@dataclass(frozen=True)
class ImageLimits:
    """Bounds on what an untrusted image may be. Defaults suit ID photos and camera frames."""

    min_side: int = 32
    max_side: int = 16_384
    max_pixels: int = 40_000_000
    max_bytes: int = 20 * 1024 * 1024
    allowed_formats: frozenset[str] = ALLOWED_FORMATS

    def check_size(self, width: int, height: int) -> None:
        if min(width, height) < self.min_side:
            raise InvalidImageError(
                f"image is {width}x{height} pixels; each side must be at least {self.min_side}"
            )
        if max(width, height) > self.max_side or width * height > self.max_pixels:
            raise InvalidImageError(
                f"image is {width}x{height} pixels, over the limit of {self.max_pixels:,} pixels "
                f"(or {self.max_side} per side); refusing to decode it (decompression-bomb guard)"
            )


DEFAULT_LIMITS = ImageLimits()


def load_image(
    source: ImageInput,
    *,
    color_order: ColorOrder = "RGB",
    limits: ImageLimits = DEFAULT_LIMITS,
) -> RGBImage:
    """Return ``source`` as a C-contiguous uint8 HxWx3 RGB array.

    ``source`` may be a path, encoded bytes, a PIL image or a numpy array (HxW grey, HxWx3 in
    ``color_order``, or HxWx4 with alpha, which is dropped). EXIF orientation is applied.
    Raises :class:`InvalidImageError` for anything that is not a usable image.
    """
    if isinstance(source, np.ndarray):
        return _from_array(source, color_order, limits)
    if isinstance(source, Image.Image):
        limits.check_size(*source.size)
        return _to_rgb_array(source)
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    elif isinstance(source, str | os.PathLike):
        data = _read_file(Path(source), limits)
    else:
        raise InvalidImageError(f"cannot read an image from a {type(source).__name__}")
    return decode_image_bytes(data, limits=limits)


def decode_image_bytes(data: bytes, *, limits: ImageLimits = DEFAULT_LIMITS) -> RGBImage:
    """Validate and decode encoded image bytes (see :func:`load_image`)."""
    with _opened(data, limits) as image:
        image.load()
        return _to_rgb_array(image)


@dataclass(frozen=True)
class Probe:
    """A photo's size from its header, before any decoding."""

    width: int
    height: int

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6


def probe_image(data: bytes, limits: ImageLimits = DEFAULT_LIMITS) -> Probe:
    """Format and size from the header, with the limits :func:`decode_image_bytes` applies; the
    pixels are not decoded (a truncated file is found when they are)."""
    with _opened(data, limits) as image:
        return Probe(*image.size)


@contextmanager
def _opened(data: bytes, limits: ImageLimits) -> Iterator[Image.Image]:
    """The image of ``data``, opened from its header after the byte and size limits; every
    failure, then or while the caller decodes, an :class:`InvalidImageError` (no chained
    error: a kept error must not hold the bytes alive through its cause's frames)."""
    if not data:
        raise InvalidImageError("image data is empty")
    if len(data) > limits.max_bytes:
        raise InvalidImageError(f"image is {len(data):,} bytes, over the limit of {limits.max_bytes:,}")
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check would warn or raise with its own limit; ours comes first.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=sorted(limits.allowed_formats)) as image:
                limits.check_size(*image.size)
                yield image
    except InvalidImageError:
        raise
    except UnidentifiedImageError:
        raise InvalidImageError(
            f"not an image in a supported format ({', '.join(sorted(limits.allowed_formats))})"
        ) from None
    except Image.DecompressionBombError as error:
        raise InvalidImageError(f"refusing to decode the image (decompression-bomb guard): {error}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        # Pillow reports truncated or corrupt data as OSError / SyntaxError / ValueError.
        raise InvalidImageError(f"the image file is truncated or corrupt: {error}") from None


def _read_file(path: Path, limits: ImageLimits) -> bytes:
    try:
        size = path.stat().st_size
        if size > limits.max_bytes:
            raise InvalidImageError(f"{path} is {size:,} bytes, over the limit of {limits.max_bytes:,}")
        return path.read_bytes()
    except FileNotFoundError as error:
        raise InvalidImageError(f"no such file: {path}") from error
    except IsADirectoryError as error:
        raise InvalidImageError(f"{path} is a directory, not an image") from error
    except PermissionError as error:
        raise InvalidImageError(f"cannot read {path}: permission denied") from error


#: EXIF Orientation -> the transpose that shows the photo upright
_ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    """The pixels turned upright by the EXIF Orientation tag.

    Only the pixels are kept, so unlike ``ImageOps.exif_transpose`` this never writes the EXIF block
    back, which raises struct.error / TypeError for untrusted files whose tags have unexpected types.
    """
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    method = _ORIENTATIONS.get(orientation) if isinstance(orientation, int) else None
    return image if method is None else image.transpose(method)


def _to_rgb_array(image: Image.Image) -> RGBImage:
    image = _apply_exif_orientation(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grey: scale to 8 bits instead of clipping.
        wide = np.asarray(image, dtype=np.float64)
        peak = wide.max() if wide.size and wide.max() > 255 else 255.0
        image = Image.fromarray(np.clip(wide * (255.0 / peak), 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Composite transparent pixels on white, the way viewers show them.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def _from_array(array: npt.NDArray[np.generic], color_order: ColorOrder, limits: ImageLimits) -> RGBImage:
    if color_order not in ("RGB", "BGR"):
        raise ValueError(f"color_order must be 'RGB' or 'BGR', not {color_order!r}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise InvalidImageError(f"an image array must be HxW, HxWx3 or HxWx4, not shape {array.shape}")
    limits.check_size(array.shape[1], array.shape[0])
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
            raise InvalidImageError(f"an image array must hold numbers, not {array.dtype}")
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 255:
            raise InvalidImageError("an image array that is not uint8 must hold finite values in [0, 255]")
        array = np.rint(array).astype(np.uint8)
    if array.ndim == 2:
        return np.ascontiguousarray(np.repeat(array[:, :, None], 3, axis=2))
    rgb = array[:, :, :3]
    if color_order == "BGR":
        rgb = rgb[:, :, ::-1]
    return np.ascontiguousarray(rgb)


def write_png_atomic(path: str | Path, pixels: RGBImage) -> Path:
    """Write ``pixels`` as a PNG at ``path`` so that readers never see a partial file."""
    image = Image.fromarray(pixels)
    return write_atomic_with(path, lambda stream: image.save(stream, format="PNG"))
