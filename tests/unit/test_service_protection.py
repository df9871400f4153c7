"""What a protection call does on a worker (``service/protection.py``), with a stand-in engine: no
models, so these run in a fraction of a second. The real engine runs in the end-to-end tests.

* A photo that fails (NO_FACE) leaves no reference to its decoded pixels: a weak reference to
  them dies without ``gc.collect()`` (issue 39: the stored error's traceback kept every decoded
  photo of the request alive until a full garbage collection).
* A photo that aligns is released once aligned: none is alive while the engine optimises.
* The stop check runs between photos, so a call can be stopped during a long alignment.
* The reply-size bound of a photo is known before the work and holds for every format.
"""

from __future__ import annotations

import gc
import io
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from PIL import Image

from faceanonymixer.engine.protection import PreparedFace
from faceanonymixer.engine.protection_key import ProtectionKey
from faceanonymixer.faces.alignment import AlignedFace, FaceBox
from faceanonymixer.faces.imageio import DEFAULT_LIMITS, load_image
from faceanonymixer.service.protection import OutputOptions, ProtectedPhoto, protect_photos, reply_bound
from faceanonymixer.utils.errors import NoFaceError, ProtectionCancelledError

KEY = ProtectionKey(bytes(32), version=1, key_id="fk_test")


def png(width: int, height: int, value: int = 128) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (value, value, value)).save(buffer, format="PNG")
    return buffer.getvalue()


@contextmanager
def no_automatic_gc() -> Iterator[None]:
    """What the server sees between its rare full collections."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@dataclass
class Aligner:
    limits: Any = DEFAULT_LIMITS


class StandInEngine:
    """Decodes like the engine (``load_image``), keeps weak references to every decoded photo,
    finds a face only in photos brighter than 200, and "protects" with a grey square."""

    def __init__(self) -> None:
        self.aligner = Aligner()
        self.decoded: list[weakref.ref[np.ndarray]] = []
        self.alive_while_optimising: list[int] = []
        self.prepared = 0

    def prepare(self, image: Any) -> PreparedFace:
        self.prepared += 1
        photo = load_image(image)
        self.decoded.append(weakref.ref(photo))
        if photo.mean() < 200:
            raise NoFaceError("no face found in the image")  # raised while `photo` is a local
        height, width = photo.shape[:2]
        box = FaceBox(left=0, top=0, right=width // 2, bottom=height // 2)
        transform = np.array([[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]])
        face = AlignedFace(photo[:64, :64].copy(), np.zeros((5, 2)), transform, box, (width, height), "dlib")
        return PreparedFace(photo, face, face, grid=None, decode_seconds=0.0, align_seconds=0.0)  # type: ignore[arg-type]

    def protect(self, subjects: list[Any], **_: Any) -> list[list[Any]]:  # the engine's keywords
        self.alive_while_optimising.append(sum(ref() is not None for ref in self.decoded))
        return [[_Result(np.full((64, 64, 3), 7, np.uint8)) for _ in subject.faces] for subject in subjects]


@dataclass
class _Result:
    face: np.ndarray


def test_a_failed_photo_leaves_no_reference_to_its_pixels() -> None:
    engine = StandInEngine()
    with no_automatic_gc():
        outcomes = protect_photos(engine, [png(300, 200)], KEY, OutputOptions(), lambda: False)  # type: ignore[arg-type]
        assert [type(outcome) for outcome in outcomes] == [NoFaceError]
        assert len(engine.decoded) == 1 and engine.decoded[0]() is None  # while the error is held
        assert outcomes[0].__traceback__ is None


def test_aligned_photos_are_released_before_the_optimisation() -> None:
    engine = StandInEngine()
    photos = [png(300, 200, 230), png(200, 300, 10), png(320, 240, 250)]
    with no_automatic_gc():
        outcomes = protect_photos(engine, photos, KEY, OutputOptions(), lambda: False)  # type: ignore[arg-type]
        assert [type(outcome) for outcome in outcomes] == [ProtectedPhoto, NoFaceError, ProtectedPhoto]
        assert engine.alive_while_optimising == [0]
        assert all(ref() is None for ref in engine.decoded)


def test_the_stop_check_runs_between_photos() -> None:
    engine = StandInEngine()
    stop = False

    def should_stop() -> bool:
        return stop

    original = engine.prepare

    def prepare_then_stop(image: Any) -> PreparedFace:
        nonlocal stop
        stop = True  # the caller goes away while the first photo aligns
        return original(image)

    engine.prepare = prepare_then_stop  # type: ignore[method-assign]
    with pytest.raises(ProtectionCancelledError):
        protect_photos(engine, [png(300, 200, 230)] * 3, KEY, OutputOptions(), should_stop)  # type: ignore[arg-type]
    assert engine.prepared == 1


def test_a_revoked_key_stops_the_work_before_any_photo() -> None:
    from faceanonymixer.utils.errors import KeyRevokedError

    engine = StandInEngine()

    def revoked() -> None:
        raise KeyRevokedError("key fk_test was revoked")

    with pytest.raises(KeyRevokedError):
        protect_photos(engine, [png(300, 200, 230)], KEY, OutputOptions(), lambda: False, before_work=revoked)  # type: ignore[arg-type]
    assert engine.prepared == 0


@pytest.mark.parametrize("image_format", ["png", "jpeg", "webp"])
@pytest.mark.parametrize(("width", "height"), [(512, 384), (33, 900), (1500, 40)])
def test_the_reply_bound_holds_for_noise(image_format: str, width: int, height: int) -> None:
    from faceanonymixer.service.protection import encode_image

    noise = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    options = OutputOptions(image_format=image_format, paste_back=True)
    assert len(encode_image(noise, image_format)) <= reply_bound(width, height, options, 256)
    crop = OutputOptions(image_format=image_format)
    face = noise[:256, :256] if min(width, height) >= 256 else np.resize(noise, (256, 256, 3))
    assert len(encode_image(face, image_format)) <= reply_bound(width, height, crop, 256)
