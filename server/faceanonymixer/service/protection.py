"""What one protection call does on an engine worker: align, protect, encode.

Kept free of gRPC so that the same work runs in the service, in benchmarks and in tests; the
servicer turns :class:`ProtectedPhoto` and typed errors into messages and statuses.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field

from PIL import Image

from faceanonymixer.alignment import FaceBox
from faceanonymixer.engine import PreparedFace, ProtectionEngine, StopCheck, Subject
from faceanonymixer.errors import FaceAnonyMixerError
from faceanonymixer.imageio import RGBImage
from faceanonymixer.protection_key import ProtectionKey

#: output encodings by name, with the Pillow arguments that make them
ENCODINGS: dict[str, tuple[str, dict[str, object]]] = {
    "png": ("PNG", {"optimize": False}),
    "jpeg": ("JPEG", {"quality": 95}),
    "webp": ("WEBP", {"quality": 95}),
}


@dataclass(frozen=True)
class OutputOptions:
    """How results are returned: the format, the side of the face crop (0: the profile's), or the
    whole photo with the face pasted back."""

    image_format: str = "png"
    output_size: int = 0
    paste_back: bool = False


@dataclass
class ProtectedPhoto:
    image: bytes
    image_format: str
    face_box: FaceBox
    #: seconds by stage: align, optimise, encode
    timings: dict[str, float] = field(default_factory=dict)


#: one outcome per photo of a call: its protected image or the typed error it failed with
Outcome = ProtectedPhoto | FaceAnonyMixerError


def protect_photos(
    engine: ProtectionEngine,
    photos: list[RGBImage],
    key: ProtectionKey,
    options: OutputOptions,
    should_stop: StopCheck,
) -> list[Outcome]:
    """Protect decoded photos of one subject together; a photo that cannot be aligned fails alone."""
    prepared: list[tuple[int, PreparedFace, float]] = []
    outcomes: list[Outcome | None] = [None] * len(photos)
    for index, photo in enumerate(photos):
        started = time.perf_counter()
        try:
            prepared.append((index, engine.prepare(photo), time.perf_counter() - started))
        except FaceAnonyMixerError as error:
            outcomes[index] = error
    if prepared:
        started = time.perf_counter()
        subject = Subject(faces=[face for _, face, _ in prepared], key=key)
        [results] = engine.protect([subject], should_stop=should_stop)
        optimise = (time.perf_counter() - started) / len(prepared)
        for (index, face, align), result in zip(prepared, results, strict=True):
            started = time.perf_counter()
            pixels = result.photo if options.paste_back else result.face
            size = 0 if options.paste_back else options.output_size
            data = encode_image(pixels, options.image_format, size=size)
            encode = time.perf_counter() - started
            outcomes[index] = ProtectedPhoto(
                data,
                options.image_format,
                face.chip.box,
                {"align": align, "optimise": optimise, "encode": encode},
            )
    return [outcome for outcome in outcomes if outcome is not None]


def encode_image(pixels: RGBImage, image_format: str, *, size: int = 0) -> bytes:
    """Encode an RGB array, resized to ``size`` x ``size`` first when ``size`` is not 0."""
    pillow_format, arguments = ENCODINGS[image_format]
    image = Image.fromarray(pixels)
    if size and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format=pillow_format, **arguments)
    return buffer.getvalue()
