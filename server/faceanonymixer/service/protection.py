"""What one protection call does on an engine worker: decode and align each photo, protect, encode.

Kept free of gRPC so that the same work runs in the service, in benchmarks and in tests; the
servicer turns :class:`ProtectedPhoto` and typed errors into messages and statuses.

Memory: photos arrive encoded and are decoded here, one at a time, on the worker. Once a photo
is aligned only its face crops are kept (the decoded photo is dropped at once); a photo that
fails keeps its typed error without a traceback, so no frame keeps its pixels alive. A reply with
the face pasted back decodes its photo again, one at a time, while encoding. At most one decoded
photo per worker is alive at any moment.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

from faceanonymixer.engine.protection import FEATHER, PreparedFace, ProtectionEngine, StopCheck, Subject
from faceanonymixer.engine.protection_key import ProtectionKey
from faceanonymixer.faces.alignment import AlignedFace, FaceBox, paste_back
from faceanonymixer.faces.imageio import ImageInput, RGBImage, load_image
from faceanonymixer.service.status import without_frames
from faceanonymixer.utils.errors import FaceAnonyMixerError, InvalidImageError, ProtectionCancelledError

#: output encodings by name, with the Pillow arguments that make them
ENCODINGS: dict[str, tuple[str, dict[str, object]]] = {
    "png": ("PNG", {"optimize": False}),
    "jpeg": ("JPEG", {"quality": 95}),
    "webp": ("WEBP", {"quality": 95}),
}
#: what the engine gets instead of a photo it need not paste into: 32 x 32 (the smallest image
#: ``load_image`` takes), so its own paste-back costs nothing
_STAND_IN_SIDE = 32


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
    #: seconds by stage: align (decode and face detection included), optimise, encode
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class WorkStats:
    """Where a call's time went, for the pool's estimates: decoding and alignment grow with the
    megapixels, the optimisation and encoding with the photos."""

    prepare_seconds: float = 0.0
    engine_seconds: float = 0.0
    prepared: int = 0


#: one outcome per photo of a call: its protected image or the typed error it failed with
Outcome = ProtectedPhoto | FaceAnonyMixerError


def protect_photos(
    engine: ProtectionEngine,
    photos: Sequence[ImageInput],
    key: ProtectionKey,
    options: OutputOptions,
    should_stop: StopCheck,
    *,
    fields: Sequence[str] | None = None,
    stats: WorkStats | None = None,
    before_work: Callable[[], None] | None = None,
) -> list[Outcome]:
    """Protect the photos of one subject together (encoded bytes, decoded here one at a time, or
    arrays); a photo that cannot be decoded or aligned fails alone (its error's field is its entry
    of ``fields``). ``should_stop`` is checked before each photo and every optimisation step;
    ``before_work`` runs first (the service checks the key is still active there)."""
    stats = stats if stats is not None else WorkStats()
    if before_work is not None:
        before_work()
    prepared: list[tuple[int, PreparedFace, AlignedFace, float]] = []
    outcomes: list[Outcome | None] = [None] * len(photos)
    for index, photo in enumerate(photos):
        if should_stop():  # alignment of a large photo takes a while: stop between photos
            raise ProtectionCancelledError("protection cancelled")
        started = time.perf_counter()
        try:
            face, crop = _aligned_without_photo(engine, photo)
        except FaceAnonyMixerError as error:
            if isinstance(error, InvalidImageError) and fields is not None:
                error.field = fields[index]
            outcomes[index] = without_frames(error)
        else:
            prepared.append((index, face, crop, time.perf_counter() - started))
        stats.prepare_seconds += time.perf_counter() - started
    if prepared:
        started = time.perf_counter()
        subject = Subject(faces=[face for _, face, _, _ in prepared], key=key)
        [results] = engine.protect([subject], should_stop=should_stop)
        optimise = (time.perf_counter() - started) / len(prepared)
        for (index, _, crop, align), result in zip(prepared, results, strict=True):
            started = time.perf_counter()
            if options.paste_back:
                data = encode_image(
                    _pasted(photos[index], crop, result.face, engine), options.image_format, size=0
                )
            else:
                data = encode_image(result.face, options.image_format, size=options.output_size)
            encode = time.perf_counter() - started
            outcomes[index] = ProtectedPhoto(
                data,
                options.image_format,
                crop.box,
                {"align": align, "optimise": optimise, "encode": encode},
            )
        stats.engine_seconds += time.perf_counter() - started + optimise * len(prepared)
        stats.prepared += len(prepared)
    return [outcome for outcome in outcomes if outcome is not None]


def _aligned_without_photo(engine: ProtectionEngine, photo: ImageInput) -> tuple[PreparedFace, AlignedFace]:
    """The engine's prepared face with a 32 x 32 stand-in for the photo (the decoded photo is
    released when this returns), and the generator crop as aligned on the real photo."""
    face = engine.prepare(photo)
    crop = face.crop
    stand_in = np.zeros((_STAND_IN_SIDE, _STAND_IN_SIDE, 3), np.uint8)
    slim = PreparedFace(
        photo=stand_in,
        chip=face.chip,
        crop=replace(crop, source_size=(_STAND_IN_SIDE, _STAND_IN_SIDE)),
        grid=face.grid,
        decode_seconds=face.decode_seconds,
        align_seconds=face.align_seconds,
    )
    return slim, crop


def _pasted(photo: ImageInput, crop: AlignedFace, protected: RGBImage, engine: ProtectionEngine) -> RGBImage:
    """The photo, decoded once more, with the protected face pasted back where it was cut."""
    decoded = load_image(photo, limits=engine.aligner.limits)
    return paste_back(decoded, crop, protected, feather=FEATHER)


def encode_image(pixels: RGBImage, image_format: str, *, size: int = 0) -> bytes:
    """Encode an RGB array, resized to ``size`` x ``size`` first when ``size`` is not 0."""
    pillow_format, arguments = ENCODINGS[image_format]
    image = Image.fromarray(pixels)
    if size and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format=pillow_format, **arguments)
    return buffer.getvalue()


#: most encoded bytes per pixel of each output format (see :func:`reply_bound`)
BYTES_PER_PIXEL = {"png": 3.0, "jpeg": 1.5, "webp": 1.5}


def reply_bound(width: int, height: int, options: OutputOptions, face_size: int) -> int:
    """The most bytes the encoded image of one reply takes, known before any work: a whole photo
    of ``width`` x ``height`` with the face pasted back, or a ``face_size`` square crop
    (``output_size`` when set). PNG stores at most the raw 3 bytes per pixel plus a filter byte
    per row and deflate's stored-block framing (noise: 1.002 x raw): that bound is sure. JPEG and
    WebP at quality 95 (4:2:0) took 0.4 and 0.3 bytes per pixel on noise, their worst case seen;
    1.5 is four times that. Plus 1 % and 64 KiB for headers and the message's other fields."""
    if options.paste_back:
        side_w, side_h = width, height
    else:
        side_w = side_h = options.output_size or face_size
    raw = side_h * (BYTES_PER_PIXEL[options.image_format] * side_w + 1)
    return int(raw + raw / 100) + 64 * 1024
