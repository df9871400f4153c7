"""Put protection in front of a face recognizer you already run.

:class:`ProtectedRecognizer` wraps any callable that takes an image first and returns embeddings or
a decision: each call protects the image on the server with the caller's key, then hands the
protected image (the whole photo, same size, the face replaced) to the wrapped callable::

    from faceanonymixer_client import ProtectionClient
    from faceanonymixer_client.recognizer import ProtectedRecognizer, protected_face_encodings

    client = ProtectionClient("localhost:50051", token="...")
    embed = ProtectedRecognizer(my_model.embed, client, "fk_app...", channel_order="RGB")
    embedding = embed(photo_rgb)  # my_model.embed(protected photo)

    # per-person keys: the resolver maps the enrolled or claimed identity to its key id
    face_encodings = protected_face_encodings(face_recognition.face_encodings, client, keys.get)
    encodings = face_encodings(face_recognition.load_image_file("probe.jpg"), subject="alice")

Adapters keep the calling conventions of the libraries people run, with one more keyword,
``subject``: :func:`protected_face_encodings` (face_recognition), :func:`protected_represent`
(deepface) and :class:`ProtectedFaceAnalysis` (InsightFace). They take the library's function or
object, so this module imports none of them.

Protection errors propagate as the SDK's typed errors (:class:`~faceanonymixer_client.NoFaceError`,
:class:`~faceanonymixer_client.KeyRevokedError`, ...); the wrapped recognizer is then not called.

Arguments left at the library's documented defaults are not passed on: the wrapped function's own
defaults apply (the same, in the versions named below), and versions that lack a newer argument
(deepface's ``anti_spoofing``, InsightFace's ``det_metric``) keep working until it is set.
"""

from __future__ import annotations

import base64
import binascii
import inspect
import io
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
from PIL import Image, ImageOps

from faceanonymixer_client.errors import InvalidImageError, KeyNotFoundError
from faceanonymixer_client.images import ChannelOrder

if TYPE_CHECKING:
    from faceanonymixer_client.aio import AsyncProtectionClient
    from faceanonymixer_client.client import ProtectionClient

__all__ = [
    "AsyncKeyResolver",
    "AsyncProtectedRecognizer",
    "KeyResolver",
    "ProtectedFaceAnalysis",
    "ProtectedRecognizer",
    "protected_face_encodings",
    "protected_represent",
]

R = TypeVar("R")

#: one key id for the whole application, or ``subject -> key id`` (None: no key for this subject)
KeyResolver = str | Callable[[Any], str | None]
#: as :data:`KeyResolver`; the callable may also be a coroutine function
AsyncKeyResolver = str | Callable[[Any], str | Awaitable[str | None] | None]

#: the options of ``ProtectionClient.protect`` that ``protect_options`` may set
PROTECT_OPTIONS = frozenset({"paste_back", "output_size", "output_format", "timeout"})


class _KeyedProtection:
    """What the sync and asyncio recognizers share: the key resolution and the call's options."""

    def __init__(
        self,
        key_resolver: AsyncKeyResolver,
        channel_order: ChannelOrder | None,
        protect_options: Mapping[str, Any] | None,
    ) -> None:
        if isinstance(key_resolver, str):
            if not key_resolver:
                raise ValueError("key_resolver is an empty key id")
        elif not callable(key_resolver):
            raise TypeError(
                "key_resolver must be a key id (str) or a callable subject -> key id, "
                f"not {type(key_resolver).__name__}"
            )
        options = dict(protect_options or {})
        unknown = sorted(set(options) - PROTECT_OPTIONS)
        if unknown:
            raise TypeError(
                f"protect_options may set {', '.join(sorted(PROTECT_OPTIONS))}; not {', '.join(unknown)}"
                + (" (give channel_order as its own argument)" if "channel_order" in unknown else "")
            )
        self.key_resolver = key_resolver
        self.channel_order = channel_order
        self.protect_options = options

    def _resolved(self, subject: Any, key_id: object) -> str:
        if key_id is None or key_id == "":
            raise KeyNotFoundError(f"no key for subject {subject!r}: the key resolver gave {key_id!r}")
        if not isinstance(key_id, str):
            raise TypeError(f"the key resolver must return a key id (str), not {type(key_id).__name__}")
        return key_id

    def _options(self) -> dict[str, Any]:
        return {"channel_order": self.channel_order, **self.protect_options}


class ProtectedRecognizer(_KeyedProtection, Generic[R]):
    """``recognize_fn`` with protection in front: ``recognizer(image, *args, subject=None, **kwargs)``
    protects ``image`` with the subject's key and returns ``recognize_fn(protected, *args, **kwargs)``.

    - ``client``: a :class:`~faceanonymixer_client.ProtectionClient` (blocking); for asyncio see
      :class:`AsyncProtectedRecognizer`.
    - ``key_resolver``: a key id (one key for the whole application), or a callable
      ``(subject) -> key id`` for per-person keys, called with the call's ``subject`` (None when
      not given). A resolver that returns None or "" raises
      :class:`~faceanonymixer_client.KeyNotFoundError` (the server is not called).
    - ``channel_order``: "RGB" or "BGR", needed for colour numpy images; the protected array comes
      back in the same order (and PIL images as PIL images, paths and bytes as encoded bytes).
    - ``protect_options``: more options of ``ProtectionClient.protect`` (``paste_back``,
      ``output_size``, ``output_format``, ``timeout``). The default ``paste_back=True`` hands the
      recognizer the whole photo, same size, with the face replaced, so that it detects and aligns
      it like any photo.

    Protection errors propagate as the SDK's typed errors and ``recognize_fn`` is not called.
    Thread-safe when ``recognize_fn`` and ``key_resolver`` are.
    """

    def __init__(
        self,
        recognize_fn: Callable[..., R],
        client: ProtectionClient,
        key_resolver: KeyResolver,
        *,
        channel_order: ChannelOrder | None = None,
        protect_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(key_resolver, channel_order, protect_options)
        if not callable(recognize_fn):
            raise TypeError(f"recognize_fn must be callable, not {type(recognize_fn).__name__}")
        self.recognize_fn = recognize_fn
        self.client = client

    def key_for(self, subject: Any = None) -> str:
        """The key id protecting ``subject``'s images."""
        if isinstance(self.key_resolver, str):
            return self.key_resolver
        return self._resolved(subject, self.key_resolver(subject))

    def protect(self, image: Any, *, subject: Any = None) -> Any:
        """``image`` protected with ``subject``'s key, in the kind it was given."""
        return self.client.protect(image, self.key_for(subject), **self._options())

    def __call__(self, image: Any, *args: Any, subject: Any = None, **kwargs: Any) -> R:
        return self.recognize_fn(self.protect(image, subject=subject), *args, **kwargs)


class AsyncProtectedRecognizer(_KeyedProtection):
    """:class:`ProtectedRecognizer` for asyncio: ``await recognizer(image, *args, subject=None,
    **kwargs)``. ``client`` is an :class:`~faceanonymixer_client.AsyncProtectionClient`;
    ``key_resolver`` and ``recognize_fn`` may be plain or coroutine functions (an awaitable result
    is awaited). A blocking ``recognize_fn`` runs on the event loop: wrap it yourself (for example
    with ``asyncio.to_thread``) where it is slow."""

    def __init__(
        self,
        recognize_fn: Callable[..., Any],
        client: AsyncProtectionClient,
        key_resolver: AsyncKeyResolver,
        *,
        channel_order: ChannelOrder | None = None,
        protect_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(key_resolver, channel_order, protect_options)
        if not callable(recognize_fn):
            raise TypeError(f"recognize_fn must be callable, not {type(recognize_fn).__name__}")
        self.recognize_fn = recognize_fn
        self.client = client

    async def key_for(self, subject: Any = None) -> str:
        if isinstance(self.key_resolver, str):
            return self.key_resolver
        key_id = self.key_resolver(subject)
        if inspect.isawaitable(key_id):
            key_id = await key_id
        return self._resolved(subject, key_id)

    async def protect(self, image: Any, *, subject: Any = None) -> Any:
        return await self.client.protect(image, await self.key_for(subject), **self._options())

    async def __call__(self, image: Any, *args: Any, subject: Any = None, **kwargs: Any) -> Any:
        result = self.recognize_fn(await self.protect(image, subject=subject), *args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result


# ---- face_recognition -----------------------------------------------------------------------


def protected_face_encodings(
    face_encodings: Callable[..., R],
    client: ProtectionClient,
    key_resolver: KeyResolver,
    *,
    protect_options: Mapping[str, Any] | None = None,
) -> Callable[..., R]:
    """face_recognition's ``face_encodings`` with protection in front.

    Written against face_recognition 1.3.0: ``face_encodings(face_image, known_face_locations=None,
    num_jitters=1, model="small")``, ``face_image`` a uint8 RGB array as from
    ``face_recognition.load_image_file`` (HxWx3, or HxW for ``mode="L"``), returning a list of
    128-d arrays, one per face. The returned function has that signature plus the keyword
    ``subject`` and hands ``face_encodings`` the protected RGB array, same size as the input, so
    ``known_face_locations`` found on the original photo still point at the face.
    """
    recognizer = ProtectedRecognizer(
        face_encodings, client, key_resolver, channel_order="RGB", protect_options=protect_options
    )

    def protected_face_encodings(
        face_image: np.ndarray,
        known_face_locations: Any = None,
        num_jitters: int = 1,
        model: str = "small",
        *,
        subject: Any = None,
    ) -> R:
        arguments = _explicit(
            known_face_locations=(known_face_locations, None),
            num_jitters=(num_jitters, 1),
            model=(model, "small"),
        )
        return recognizer(face_image, subject=subject, **arguments)

    return protected_face_encodings


# ---- deepface -------------------------------------------------------------------------------


def protected_represent(
    represent: Callable[..., R],
    client: ProtectionClient,
    key_resolver: KeyResolver,
    *,
    protect_options: Mapping[str, Any] | None = None,
) -> Callable[..., R]:
    """deepface's ``DeepFace.represent`` with protection in front.

    Written against deepface 0.0.93: ``represent(img_path, model_name="VGG-Face",
    enforce_detection=True, detector_backend="opencv", align=True, expand_percentage=0,
    normalization="base", anti_spoofing=False, max_faces=None)`` returning a list of dicts with
    "embedding", "facial_area" and "face_confidence". The returned function has that signature plus
    the keyword ``subject``. ``img_path`` may be what deepface takes: a file path (str or
    ``os.PathLike``), a numpy array in BGR order, a base64 data URI (``data:image/jpeg;base64,...``)
    or a binary file object (``.read()``); URLs are refused (download the image first). Whatever
    was given, ``represent`` gets the protected photo as a uint8 BGR numpy array of the same size
    (a HxW grey array stays grey).
    """
    recognizer = ProtectedRecognizer(
        lambda protected, **arguments: represent(_as_bgr(protected), **arguments),
        client,
        key_resolver,
        channel_order="BGR",
        protect_options=protect_options,
    )

    def protected_represent(
        img_path: Any,
        model_name: str = "VGG-Face",
        enforce_detection: bool = True,
        detector_backend: str = "opencv",
        align: bool = True,
        expand_percentage: int = 0,
        normalization: str = "base",
        anti_spoofing: bool = False,
        max_faces: int | None = None,
        *,
        subject: Any = None,
    ) -> R:
        image = _deepface_image(img_path)
        arguments = _explicit(
            model_name=(model_name, "VGG-Face"),
            enforce_detection=(enforce_detection, True),
            detector_backend=(detector_backend, "opencv"),
            align=(align, True),
            expand_percentage=(expand_percentage, 0),
            normalization=(normalization, "base"),
            anti_spoofing=(anti_spoofing, False),
            max_faces=(max_faces, None),
        )
        return recognizer(image, subject=subject, **arguments)

    return protected_represent


def _deepface_image(img_path: Any) -> Any:
    """What to send for one of deepface's image kinds: arrays and paths as they are, a data URI or
    a file object as its bytes."""
    if isinstance(img_path, str):
        if img_path.startswith("data:image/"):
            return _data_uri_bytes(img_path)
        if img_path.lower().startswith(("http://", "https://")):
            raise InvalidImageError(
                "the SDK does not fetch URLs: download the image and pass its path or bytes"
            )
        return img_path
    if isinstance(img_path, np.ndarray | os.PathLike | bytes | bytearray | memoryview):
        return img_path
    if callable(getattr(img_path, "read", None)):  # deepface's IO[bytes]
        data = img_path.read()
        if not isinstance(data, bytes):
            raise InvalidImageError("the file object must be opened in binary mode")
        return data
    return img_path  # the SDK says what it cannot send


def _data_uri_bytes(uri: str) -> bytes:
    header, comma, payload = uri.partition(",")
    if not comma or not header.endswith(";base64"):
        raise InvalidImageError("a data URI must read data:image/<type>;base64,<data>")
    try:
        return base64.b64decode(payload)
    except (binascii.Error, ValueError) as error:
        raise InvalidImageError(f"the data URI is not valid base64: {error}") from None


def _as_bgr(protected: Any) -> Any:
    """The protected image as deepface takes it: arrays (already BGR) as they are, encoded bytes
    decoded to a uint8 BGR array."""
    if isinstance(protected, np.ndarray):
        return protected
    if isinstance(protected, Image.Image):  # not a deepface kind, but the SDK takes it
        return np.ascontiguousarray(np.asarray(protected.convert("RGB"))[:, :, ::-1])
    with Image.open(io.BytesIO(protected)) as image:
        rgb = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    return np.ascontiguousarray(rgb[:, :, ::-1])


# ---- InsightFace ----------------------------------------------------------------------------


class ProtectedFaceAnalysis:
    """InsightFace's ``FaceAnalysis`` with protection in front of ``get``.

    Written against insightface 0.7.3: ``FaceAnalysis.get(img, max_num=0, det_metric="default")``,
    ``img`` a uint8 BGR array (as from ``cv2.imread``), returning a list of ``Face`` objects with
    ``.bbox``, ``.kps``, ``.det_score``, ``.embedding`` and ``.normed_embedding``. ``get`` here
    takes the same arguments plus the keyword ``subject`` and hands ``app.get`` the protected BGR
    array, same size, so the boxes are in the caller's photo coordinates. Every other attribute
    (``prepare``, ``models``, ``det_model``, ``draw_on``, ...) is the wrapped app's.
    """

    def __init__(
        self,
        app: Any,
        client: ProtectionClient,
        key_resolver: KeyResolver,
        *,
        protect_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.app = app
        self.recognizer: ProtectedRecognizer[Any] = ProtectedRecognizer(
            lambda protected, **arguments: self.app.get(protected, **arguments),
            client,
            key_resolver,
            channel_order="BGR",
            protect_options=protect_options,
        )

    def get(
        self, img: np.ndarray, max_num: int = 0, det_metric: str = "default", *, subject: Any = None
    ) -> Any:
        arguments = _explicit(max_num=(max_num, 0), det_metric=(det_metric, "default"))
        return self.recognizer(img, subject=subject, **arguments)

    def __getattr__(self, name: str) -> Any:
        # only called for what this wrapper lacks; guard against lookups before __init__ ran
        app = self.__dict__.get("app")
        if app is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(app, name)


# ---- shared ---------------------------------------------------------------------------------


def _explicit(**arguments: tuple[Any, Any]) -> dict[str, Any]:
    """The ``name=(value, documented default)`` whose value is not the default, to pass on."""
    return {name: value for name, (value, default) in arguments.items() if not _is_default(value, default)}


def _is_default(value: Any, default: Any) -> bool:
    if default is None or isinstance(default, bool):
        return value is default
    # the same type first: an array compared with == gives an array, and 1.0 is not 1 here
    return type(value) is type(default) and bool(value == default)
