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

from faceanonymixer.engine.batch import SubjectPhotos, protect_batch
from faceanonymixer.engine.protection import FEATHER, PreparedFace, ProtectionEngine, StopCheck
from faceanonymixer.engine.protection_key import ProtectionKey
from faceanonymixer.faces.alignment import AlignedFace, FaceBox, paste_back
from faceanonymixer.faces.imageio import ImageInput, RGBImage, load_image
from faceanonymixer.service.status import without_frames
from faceanonymixer.utils.errors import FaceAnonyMixerError, InvalidImageError

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

    def prepare(photo: ImageInput) -> PreparedFace:
        try:
            return _without_photo(engine.prepare(photo))
        except FaceAnonyMixerError as error:
            # without the frames that hold the decoded photo, before the next photo is decoded
            raise without_frames(error) from None

    [row] = protect_batch(engine, [SubjectPhotos(photos, key)], prepare=prepare, should_stop=should_stop)
    outcomes: list[Outcome] = []
    for index, outcome in enumerate(row):
        stats.prepare_seconds += outcome.align_seconds
        if outcome.error is not None:
            if isinstance(outcome.error, InvalidImageError) and fields is not None:
                outcome.error.field = fields[index]
            outcomes.append(without_frames(outcome.error))
            continue
        assert outcome.prepared is not None and outcome.result is not None  # protected with its batch
        started = time.perf_counter()
        crop = outcome.prepared.crop
        if options.paste_back:
            pasted = _pasted(photos[index], crop, outcome.result.face, engine)
            data = encode_image(pasted, options.image_format)
        else:
            data = encode_image(outcome.result.face, options.image_format, size=options.output_size)
        encode = time.perf_counter() - started
        timings = {"align": outcome.align_seconds, "optimise": outcome.optimise_seconds, "encode": encode}
        outcomes.append(ProtectedPhoto(data, options.image_format, crop.box, timings))
        stats.engine_seconds += outcome.optimise_seconds + encode
        stats.prepared += 1
    return outcomes


def _without_photo(face: PreparedFace) -> PreparedFace:
    """The prepared face with a 32 x 32 stand-in for its photo, so that the decoded photo is
    released at once; the engine's own paste-back then costs nothing (the reply pastes into the
    photo decoded again, :func:`_pasted`)."""
    stand_in = np.zeros((_STAND_IN_SIDE, _STAND_IN_SIDE, 3), np.uint8)
    crop = replace(face.crop, source_size=(_STAND_IN_SIDE, _STAND_IN_SIDE))
    return replace(face, photo=stand_in, crop=crop)


def _pasted(photo: ImageInput, crop: AlignedFace, protected: RGBImage, engine: ProtectionEngine) -> RGBImage:
    """The photo, decoded once more, with the protected face pasted back where it was cut (the
    crop was made on this photo: its size is the decoded photo's)."""
    decoded = load_image(photo, limits=engine.aligner.limits)
    placed = replace(crop, source_size=(decoded.shape[1], decoded.shape[0]))
    return paste_back(decoded, placed, protected, feather=FEATHER)


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
