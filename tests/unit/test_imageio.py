"""Untrusted images are validated before decoding and normalised to uint8 RGB."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faceanonymixer.faces.imageio import ImageLimits, decode_image_bytes, load_image
from faceanonymixer.utils.errors import InvalidImageError


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _gradient(width: int = 64, height: int = 48) -> np.ndarray:
    x = np.linspace(0, 255, width, dtype=np.float64)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float64)[:, None, None]
    return np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2).astype(np.uint8)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "WEBP", "PPM"])
def test_lossless_formats_round_trip(fmt: str) -> None:
    pixels = _gradient()
    params = {"lossless": True} if fmt == "WEBP" else {}
    decoded = decode_image_bytes(_encode(Image.fromarray(pixels), fmt, **params))
    assert decoded.dtype == np.uint8 and decoded.flags.c_contiguous
    np.testing.assert_array_equal(decoded, pixels)


def test_jpeg_decodes_close_to_the_original() -> None:
    pixels = _gradient()
    decoded = decode_image_bytes(_encode(Image.fromarray(pixels), "JPEG", quality=95))
    assert decoded.shape == pixels.shape
    assert np.abs(decoded.astype(int) - pixels).mean() < 3


def test_paths_bytes_pil_and_arrays_agree(tmp_path: Path) -> None:
    pixels = _gradient()
    path = tmp_path / "face.png"
    Image.fromarray(pixels).save(path)
    for source in (
        path,
        str(path),
        path.read_bytes(),
        bytearray(path.read_bytes()),
        Image.open(path),
        pixels,
    ):
        np.testing.assert_array_equal(load_image(source), pixels)


def test_bgr_arrays_are_reordered() -> None:
    pixels = _gradient()
    np.testing.assert_array_equal(load_image(pixels[:, :, ::-1], color_order="BGR"), pixels)


@pytest.mark.parametrize("mode", ["L", "LA", "I;16", "P", "1"])
def test_grey_palette_and_deep_modes_become_rgb(mode: str) -> None:
    grey = Image.fromarray(_gradient()[:, :, 0])
    image = (
        grey.convert(mode)
        if mode != "I;16"
        else Image.fromarray(_gradient()[:, :, 0].astype(np.uint16) * 257)
    )
    decoded = decode_image_bytes(_encode(image, "PNG"))
    assert decoded.shape == (48, 64, 3)
    assert (decoded[:, :, 0] == decoded[:, :, 1]).all() and (decoded[:, :, 1] == decoded[:, :, 2]).all()
    if mode in ("L", "LA", "I;16"):
        np.testing.assert_allclose(decoded[:, :, 0], _gradient()[:, :, 0], atol=1)


def test_grey_arrays_become_rgb() -> None:
    grey = _gradient()[:, :, 0]
    for array in (grey, grey[:, :, None]):
        decoded = load_image(array)
        assert decoded.shape == (48, 64, 3)
        np.testing.assert_array_equal(decoded[:, :, 2], grey)


def test_transparent_pixels_are_composited_on_white() -> None:
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[:, :20] = (255, 0, 0, 255)
    decoded = decode_image_bytes(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert tuple(decoded[0, 0]) == (255, 0, 0)
    assert tuple(decoded[0, 39]) == (255, 255, 255)


def test_exif_orientation_is_applied() -> None:
    pixels = _gradient(64, 48)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = decode_image_bytes(_encode(Image.fromarray(pixels), "JPEG", quality=95, exif=exif))
    assert decoded.shape == (64, 48, 3)


def test_not_an_image_is_rejected() -> None:
    with pytest.raises(InvalidImageError, match="not an image"):
        decode_image_bytes(b"%PDF-1.7 this is certainly not a face photo" * 10)


def test_empty_input_is_rejected() -> None:
    with pytest.raises(InvalidImageError, match="empty"):
        decode_image_bytes(b"")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_is_rejected(fmt: str) -> None:
    data = _encode(Image.fromarray(_gradient(256, 256)), fmt)
    with pytest.raises(InvalidImageError, match="truncated or corrupt"):
        decode_image_bytes(data[: len(data) // 2])


def test_one_pixel_image_is_rejected() -> None:
    with pytest.raises(InvalidImageError, match="at least 32"):
        decode_image_bytes(_encode(Image.new("RGB", (1, 1)), "PNG"))
    with pytest.raises(InvalidImageError, match="at least 32"):
        load_image(np.zeros((1, 1, 3), np.uint8))


def test_decompression_bomb_is_rejected_before_decoding() -> None:
    # A 1-bit PNG of 20,000 x 20,000 pixels compresses to a few kB but would take 1.2 GB as RGB.
    bomb = _encode(Image.new("1", (20_000, 20_000)), "PNG", optimize=True)
    assert len(bomb) < 200_000
    with pytest.raises(InvalidImageError, match="decompression-bomb guard"):
        decode_image_bytes(bomb)


def test_oversized_file_is_rejected_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(_encode(Image.fromarray(_gradient()), "PNG"))
    with pytest.raises(InvalidImageError, match="over the limit"):
        load_image(path, limits=ImageLimits(max_bytes=100))


def test_formats_outside_the_allow_list_are_rejected() -> None:
    with pytest.raises(InvalidImageError, match="not an image in a supported format"):
        decode_image_bytes(
            _encode(Image.fromarray(_gradient()), "BMP"),
            limits=ImageLimits(allowed_formats=frozenset({"PNG"})),
        )


def test_missing_file_and_folder_are_invalid_images(tmp_path: Path) -> None:
    with pytest.raises(InvalidImageError, match="no such file"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(InvalidImageError, match="directory"):
        load_image(tmp_path)


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((64, 64, 2), np.uint8),
        np.zeros((4, 64, 64, 3), np.uint8),
        np.full((64, 64, 3), np.nan),
        np.full((64, 64), 300.0),
    ],
    ids=["two-channels", "batch", "nan", "out-of-range"],
)
def test_bad_arrays_are_rejected(array: np.ndarray) -> None:
    with pytest.raises(InvalidImageError):
        load_image(array)


def test_float_arrays_in_range_are_accepted() -> None:
    pixels = _gradient()
    np.testing.assert_array_equal(load_image(pixels.astype(np.float32)), pixels)


def test_unsupported_source_type_is_rejected() -> None:
    with pytest.raises(InvalidImageError, match="cannot read an image from a int"):
        load_image(42)  # type: ignore[arg-type]
