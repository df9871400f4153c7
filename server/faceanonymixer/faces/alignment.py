"""Face detection and alignment: dlib's HOG detector, its shape predictors, and two crop styles.

``style="dlib"`` (the default) is dlib's own face chip from the 5-point landmarks: with
``size=150, padding=0.25`` it is pixel-identical to ``dlib.get_face_chip``, the input dlib's
face-recognition network was trained on. ``style="ffhq"`` is the FFHQ recipe (eyes and mouth from
the 68-point landmarks, reflected borders) that StyleGAN2 encoders expect.

Every result carries the affine transform from the photo to the crop, so that a protected crop
can be pasted back into the photo (:func:`paste_back`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal, TypeAlias

import dlib
import face_recognition_models
import numpy as np
import numpy.typing as npt
from PIL import Image

from faceanonymixer.faces.imageio import (
    DEFAULT_LIMITS,
    ColorOrder,
    ImageInput,
    ImageLimits,
    RGBImage,
    load_image,
)
from faceanonymixer.utils.errors import MultipleFacesError, NoFaceError

AlignmentStyle: TypeAlias = Literal["dlib", "ffhq"]
#: how a crop was cut: one of the aligner's styles, or onto a generator's landmark template
CropStyle: TypeAlias = Literal["dlib", "ffhq", "template"]
MultipleFacesPolicy: TypeAlias = Literal["largest", "error"]
FloatArray: TypeAlias = npt.NDArray[np.float64]

#: default padding of each style: dlib's face-chip padding, and the plain FFHQ crop
DEFAULT_PADDING: dict[str, float] = {"dlib": 0.25, "ffhq": 0.0}
#: detection runs on a copy no larger than this (pixels per side); landmarks use the full image
MAX_DETECTION_SIDE = 1600
#: upsampled detection passes stop before the upsampled image would exceed this many pixels
MAX_UPSAMPLED_PIXELS = 8_000_000


@dataclass(frozen=True)
class FaceBox:
    """A detected face in photo pixels; ``right`` and ``bottom`` are exclusive, as in slicing.

    dlib's rectangles are inclusive: ``dlib.rectangle(left, top, right - 1, bottom - 1)``.
    """

    left: int
    top: int
    right: int
    bottom: int

    @property
    def area(self) -> int:
        return max(0, self.right - self.left) * max(0, self.bottom - self.top)


@dataclass(frozen=True)
class AlignedFace:
    """An aligned face crop and how it relates to the photo it came from."""

    #: the crop, uint8 (size, size, 3) RGB
    image: RGBImage
    #: landmarks in photo coordinates, (5, 2) for style "dlib", (68, 2) for "ffhq"; x then y
    landmarks: FloatArray
    #: 2x3 affine matrix mapping photo (x, y, 1) to crop (x, y); pixel centres at integers
    transform: FloatArray
    box: FaceBox
    #: (width, height) of the photo
    source_size: tuple[int, int]
    style: CropStyle

    @property
    def inverse_transform(self) -> FloatArray:
        """2x3 affine matrix mapping crop (x, y, 1) back to photo (x, y)."""
        return _invert_affine(self.transform)

    def landmarks_in_crop(self) -> FloatArray:
        return _apply_affine(self.transform, self.landmarks)


class FaceAligner:
    """Finds one face per image and aligns it.

    Detection starts on the image as it is and upsamples (up to ``max_upsample`` times) only
    when no face was found, so large photos stay fast and small faces are still found.
    ``multiple_faces`` decides what happens when several faces are found: ``"largest"`` keeps
    the largest, ``"error"`` raises :class:`MultipleFacesError`. No face raises
    :class:`NoFaceError`. Input images are validated with ``limits`` before decoding. One aligner
    may be shared by several threads.
    """

    def __init__(
        self,
        *,
        multiple_faces: MultipleFacesPolicy = "largest",
        max_upsample: int = 2,
        limits: ImageLimits = DEFAULT_LIMITS,
    ) -> None:
        if multiple_faces not in ("largest", "error"):
            raise ValueError(f"multiple_faces must be 'largest' or 'error', not {multiple_faces!r}")
        if not 0 <= max_upsample <= 3:
            raise ValueError(f"max_upsample must be between 0 and 3, not {max_upsample}")
        self.multiple_faces = multiple_faces
        self.max_upsample = max_upsample
        self.limits = limits
        self._detector = dlib.get_frontal_face_detector()
        self._five_point = dlib.shape_predictor(
            face_recognition_models.pose_predictor_five_point_model_location()
        )
        self._sixty_eight_point: dlib.shape_predictor | None = None
        # dlib's detector keeps scratch state between calls; the shape predictors do not.
        self._detector_lock = threading.Lock()
        self._loading_lock = threading.Lock()

    def detect(self, image: ImageInput, *, color_order: ColorOrder = "RGB") -> list[FaceBox]:
        """All faces in the image, largest first."""
        return self._detect(self._load(image, color_order))

    def align(
        self,
        image: ImageInput,
        size: int = 150,
        padding: float | None = None,
        *,
        style: AlignmentStyle = "dlib",
        color_order: ColorOrder = "RGB",
    ) -> AlignedFace:
        """Detect the face (by the policy) and return it aligned to ``size`` x ``size`` pixels.

        ``padding`` is the margin added on each side, as a fraction of the style's face extent;
        ``None`` takes the style's default (0.25 for "dlib", 0 for "ffhq").
        """
        if style not in DEFAULT_PADDING:
            raise ValueError(f"style must be one of {sorted(DEFAULT_PADDING)}, not {style!r}")
        if not 16 <= size <= 4096:
            raise ValueError(f"size must be between 16 and 4096 pixels, not {size}")
        padding = DEFAULT_PADDING[style] if padding is None else float(padding)
        if not 0.0 <= padding <= 2.0:
            raise ValueError(f"padding must be between 0 and 2, not {padding}")
        return self.align_decoded(self._load(image, color_order), size, padding, style=style)

    def align_decoded(
        self, pixels: RGBImage, size: int, padding: float, *, style: AlignmentStyle
    ) -> AlignedFace:
        """:meth:`align` for a photo :func:`load_image` already decoded and checked (the engine's:
        it keeps the decoded photo for the paste-back), with the padding resolved."""
        box = self._choose(self._detect(pixels))
        rect = dlib.rectangle(box.left, box.top, box.right - 1, box.bottom - 1)
        height, width = pixels.shape[:2]
        if style == "dlib":
            shape = self._five_point(pixels, rect)
            details = dlib.get_face_chip_details(shape, size, padding)
            crop = np.ascontiguousarray(dlib.extract_image_chip(pixels, details), dtype=np.uint8)
            transform = _chip_transform(details)
            landmarks = _points(shape)
        else:
            landmarks = _points(self._sixty_eight_point_predictor()(pixels, rect))
            transform = _ffhq_transform(landmarks, size, padding)
            crop = warp_affine(pixels, _invert_affine(transform), (size, size), border="reflect")
        return AlignedFace(
            image=crop,
            landmarks=landmarks,
            transform=transform,
            box=box,
            source_size=(width, height),
            style=style,
        )

    def _load(self, image: ImageInput, color_order: ColorOrder) -> RGBImage:
        return load_image(image, color_order=color_order, limits=self.limits)

    def _detect(self, pixels: RGBImage) -> list[FaceBox]:
        height, width = pixels.shape[:2]
        scale = min(1.0, MAX_DETECTION_SIDE / max(height, width))
        small = pixels
        if scale < 1.0:
            resized = Image.fromarray(pixels).resize(
                (max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BILINEAR
            )
            small = np.asarray(resized)
        # dlib's HOG window is 80 px: faces smaller than that need the image upsampled, which
        # costs 4x per level, so each level is tried only when the cheaper ones found nothing.
        with self._detector_lock:
            rects = self._detector(small, 0)
            for level in range(1, self.max_upsample + 1):
                if len(rects) or small.shape[0] * small.shape[1] * 4**level > MAX_UPSAMPLED_PIXELS:
                    break
                rects = self._detector(small, level)
        boxes = [
            FaceBox(
                left=round(r.left() / scale),
                top=round(r.top() / scale),
                right=round((r.right() + 1) / scale),
                bottom=round((r.bottom() + 1) / scale),
            )
            for r in rects
        ]
        return sorted(boxes, key=lambda b: b.area, reverse=True)

    def _choose(self, boxes: list[FaceBox]) -> FaceBox:
        if not boxes:
            raise NoFaceError("no face found in the image")
        if len(boxes) > 1 and self.multiple_faces == "error":
            raise MultipleFacesError(f"{len(boxes)} faces found; exactly one is required", count=len(boxes))
        return boxes[0]

    def _sixty_eight_point_predictor(self) -> dlib.shape_predictor:
        with self._loading_lock:
            if self._sixty_eight_point is None:
                self._sixty_eight_point = dlib.shape_predictor(
                    face_recognition_models.pose_predictor_model_location()
                )
            return self._sixty_eight_point


def paste_back(
    photo: ImageInput, aligned: AlignedFace, crop: ImageInput, *, feather: float = 0.1
) -> RGBImage:
    """Put ``crop`` (e.g. the protected face) back where ``aligned`` was cut from ``photo``.

    ``crop`` may have another size than ``aligned.image``; its border is blended over
    ``feather`` x its size so that no seam shows.
    """
    base = load_image(photo)
    if (base.shape[1], base.shape[0]) != aligned.source_size:
        raise ValueError(
            f"photo is {base.shape[1]}x{base.shape[0]}, the alignment was made on {aligned.source_size}"
        )
    face = load_image(crop, limits=ImageLimits(min_side=1))
    size = face.shape[0]
    if face.shape[1] != size:
        raise ValueError(f"the crop must be square, not {face.shape[1]}x{face.shape[0]}")
    # photo -> crop of this size (the alignment crop may have had another size)
    scale = size / aligned.image.shape[0]
    to_crop = _rescale_pixel_grid(aligned.transform, scale)
    corners = _apply_affine(
        _invert_affine(to_crop), np.array([[0, 0], [size, 0], [0, size], [size, size]], float)
    )
    height, width = base.shape[:2]
    left, top = (max(0, int(np.floor(v)) - 1) for v in corners.min(axis=0))
    right = min(width, int(np.ceil(corners[:, 0].max())) + 2)
    bottom = min(height, int(np.ceil(corners[:, 1].max())) + 2)
    if right <= left or bottom <= top:
        return base
    # crop -> photo window [top:bottom, left:right]
    window_to_crop = to_crop.copy()
    window_to_crop[:, 2] += to_crop[:, :2] @ np.array([left, top], float)
    pasted = warp_affine(face, window_to_crop, (right - left, bottom - top), border="constant")
    mask = warp_affine(
        feather_mask(size, feather), window_to_crop, (right - left, bottom - top), border="constant"
    )
    alpha = mask.astype(np.float64)[:, :, :1] / 255.0
    region = base[top:bottom, left:right].astype(np.float64)
    blended = alpha * pasted.astype(np.float64) + (1.0 - alpha) * region
    result = base.copy()
    result[top:bottom, left:right] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return result


def warp_affine(
    image: npt.NDArray[np.uint8],
    output_to_input: FloatArray,
    output_size: tuple[int, int],
    *,
    border: Literal["constant", "reflect"] = "constant",
) -> npt.NDArray[np.uint8]:
    """Bilinear warp: output pixel (x, y) takes the input at ``output_to_input @ (x, y, 1)``.

    Large reductions first shrink the input by an integer box filter, so that bilinear sampling
    does not alias.
    """
    matrix = np.asarray(output_to_input, dtype=np.float64)
    source = image if image.ndim == 3 else image[:, :, None]
    step = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    shrink = int(step // 2)
    if shrink >= 2 and min(source.shape[:2]) >= 2 * shrink:
        # pixel i of the reduced image covers input pixels [i*k, i*k+k-1], centred at i*k+(k-1)/2
        reduced = Image.fromarray(source.squeeze(-1) if source.shape[2] == 1 else source).reduce(shrink)
        source = np.asarray(reduced).reshape(reduced.height, reduced.width, -1)
        matrix = _rescale_pixel_grid(matrix, 1 / shrink)
    width, height = output_size
    grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    x = matrix[0, 0] * grid_x + matrix[0, 1] * grid_y + matrix[0, 2]
    y = matrix[1, 0] * grid_x + matrix[1, 1] * grid_y + matrix[1, 2]
    src_h, src_w = source.shape[:2]
    if border == "reflect":
        x, y = _reflect(x, src_w), _reflect(y, src_h)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    result = np.zeros((height, width, source.shape[2]), dtype=np.float64)
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            xi, yi = x0 + dx, y0 + dy
            inside = (xi >= 0) & (xi < src_w) & (yi >= 0) & (yi < src_h)
            values = source[np.clip(yi, 0, src_h - 1), np.clip(xi, 0, src_w - 1)].astype(np.float64)
            result += np.where(inside[..., None], values, 0.0) * wx * wy
    warped = np.clip(np.rint(result), 0, 255).astype(np.uint8)
    return warped if image.ndim == 3 else warped[:, :, 0]


def _rescale_pixel_grid(matrix: FloatArray, factor: float) -> FloatArray:
    """``matrix`` followed by resizing its target image by ``factor``.

    Pixel edges scale and pixel centres sit at integers, so x becomes x * factor + (factor - 1) / 2.
    """
    return matrix * factor + np.array([[0, 0, (factor - 1) / 2], [0, 0, (factor - 1) / 2]])


def _reflect(coordinate: FloatArray, length: int) -> FloatArray:
    if length == 1:
        return np.zeros_like(coordinate)
    period = 2.0 * (length - 1)
    folded = np.abs(np.mod(coordinate, period))
    return np.where(folded > length - 1, period - folded, folded)


def feather_mask(size: int, feather: float) -> npt.NDArray[np.uint8]:
    """(size, size, 3) uint8 weights: 255 inside, ramping to 0 over ``feather`` x size at the border."""
    ramp = max(1.0, feather * size)
    distance = np.minimum(np.arange(size), np.arange(size)[::-1]).astype(np.float64)
    edge = np.clip((distance + 0.5) / ramp, 0.0, 1.0)
    mask = np.minimum.outer(edge, edge)
    return np.repeat(np.rint(mask * 255).astype(np.uint8)[:, :, None], 3, axis=2)


def _points(shape: dlib.full_object_detection) -> FloatArray:
    return np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], dtype=np.float64)


def _chip_transform(details: dlib.chip_details) -> FloatArray:
    """Photo -> chip, as dlib's get_mapping_to_chip: rotated rect corners onto the chip corners."""
    rect = details.rect
    centre = np.array([(rect.left() + rect.right()) / 2, (rect.top() + rect.bottom()) / 2])
    cos, sin = np.cos(details.angle), np.sin(details.angle)
    rotation = np.array([[cos, -sin], [sin, cos]])
    corners = np.array([[rect.left(), rect.top()], [rect.right(), rect.top()], [rect.right(), rect.bottom()]])
    source = (corners - centre) @ rotation.T + centre
    target = np.array([[0, 0], [details.cols - 1, 0], [details.cols - 1, details.rows - 1]], dtype=np.float64)
    return _affine_from_points(source, target)


def _ffhq_transform(landmarks: FloatArray, size: int, padding: float) -> FloatArray:
    """Photo -> crop with the FFHQ dataset's recipe (eyes and mouth of the 68-point layout)."""
    eye_left, eye_right = landmarks[36:42].mean(axis=0), landmarks[42:48].mean(axis=0)
    mouth_left, mouth_right = landmarks[48], landmarks[54]
    eye_avg = (eye_left + eye_right) / 2
    eye_to_eye = eye_right - eye_left
    eye_to_mouth = (mouth_left + mouth_right) / 2 - eye_avg
    x = eye_to_eye - np.array([-eye_to_mouth[1], eye_to_mouth[0]])
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8) * (1 + 2 * padding)
    y = np.array([-x[1], x[0]])
    centre = eye_avg + eye_to_mouth * 0.1
    # quad corners (top-left, top-right, bottom-left) onto the crop's pixel-edge corners
    source = np.array([centre - x - y, centre + x - y, centre - x + y])
    target = np.array([[-0.5, -0.5], [size - 0.5, -0.5], [-0.5, size - 0.5]])
    return _affine_from_points(source, target)


def _affine_from_points(source: FloatArray, target: FloatArray) -> FloatArray:
    """The affine map sending three source points onto three target points."""
    homogeneous = np.hstack([source, np.ones((3, 1))])
    return np.asarray(np.linalg.solve(homogeneous, target).T, dtype=np.float64)


def _invert_affine(matrix: FloatArray) -> FloatArray:
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def _apply_affine(matrix: FloatArray, points: FloatArray) -> FloatArray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def similarity_to_template(landmarks: FloatArray, template: FloatArray) -> FloatArray:
    """The least-squares similarity (rotation, uniform scale, shift) taking ``landmarks`` onto
    ``template`` (Umeyama without reflection), as a 2x3 photo -> crop matrix."""
    source, target = np.asarray(landmarks, np.float64), np.asarray(template, np.float64)
    if source.shape != target.shape or source.ndim != 2 or source.shape[1] != 2:
        raise ValueError(f"landmarks {source.shape} and template {target.shape} must both be (K, 2)")
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    source_centred, target_centred = source - source_mean, target - target_mean
    covariance = target_centred.T @ source_centred / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rotation = u @ sign @ vt
    scale = np.trace(np.diag(singular) @ sign) / source_centred.var(axis=0).sum()
    linear = scale * rotation
    return np.hstack([linear, (target_mean - linear @ source_mean)[:, None]])


def crop_to_template(
    pixels: RGBImage, landmarks: FloatArray, template: FloatArray, size: int
) -> tuple[RGBImage, FloatArray]:
    """The ``size`` x ``size`` crop whose landmarks sit on ``template``, and its photo -> crop map."""
    transform = similarity_to_template(landmarks, template)
    return warp_affine(pixels, _invert_affine(transform), (size, size), border="reflect"), transform


def ffhq_crop(
    pixels: RGBImage, landmarks: FloatArray, size: int, padding: float = DEFAULT_PADDING["ffhq"]
) -> tuple[RGBImage, FloatArray]:
    """The ``size`` x ``size`` FFHQ crop from 68-point ``landmarks``, and its photo -> crop map."""
    transform = _ffhq_transform(landmarks, size, padding)
    return warp_affine(pixels, _invert_affine(transform), (size, size), border="reflect"), transform
