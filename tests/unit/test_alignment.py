"""FaceAligner: dlib-exact face chips, FFHQ crops, transforms that paste back, typed errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import EVALUATION_SETS
from faceanonymixer import AlignedFace, FaceAligner
from faceanonymixer.faces.alignment import paste_back, warp_affine
from faceanonymixer.faces.datasets import list_identity_images
from faceanonymixer.faces.imageio import load_image
from faceanonymixer.utils.errors import (
    FaceAnonyMixerError,
    InvalidImageError,
    MultipleFacesError,
    NoFaceError,
)

dlib = pytest.importorskip("dlib")
face_recognition_models = pytest.importorskip("face_recognition_models")


@pytest.fixture(scope="module")
def aligner() -> FaceAligner:
    return FaceAligner()


@pytest.fixture(scope="module")
def photos(faces_root: Path) -> list[Path]:
    """A few colour and grey photos from several sets."""
    chosen: list[Path] = []
    for name in ("lfw", "deepface", "orl", "yale", "fr_examples"):
        chosen += [path for _, path in list_identity_images(faces_root / name, max_images=1)[:3]]
    return chosen


@pytest.fixture(scope="module")
def lfw_photo(faces_root: Path) -> np.ndarray:
    return load_image(list_identity_images(faces_root / "lfw", max_images=1)[0][1])


def test_default_chip_is_pixel_identical_to_dlib_get_face_chip(
    aligner: FaceAligner, photos: list[Path]
) -> None:
    predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())
    compared = 0
    for path in photos:
        pixels = load_image(path)
        aligned = aligner.align(pixels)
        box = aligned.box
        shape = predictor(pixels, dlib.rectangle(box.left, box.top, box.right - 1, box.bottom - 1))
        expected = dlib.get_face_chip(pixels, shape, size=150, padding=0.25)
        np.testing.assert_array_equal(aligned.image, expected, err_msg=str(path))
        compared += 1
    assert compared >= 12


# dlib shrinks through an image pyramid (a smoothing filter) for small chips, hence the looser bound
@pytest.mark.parametrize(
    ("style", "size", "tolerance"), [("dlib", 150, 1.0), ("dlib", 64, 4.0), ("ffhq", 256, 0.5)]
)
def test_transform_maps_the_photo_onto_the_crop(
    aligner: FaceAligner, lfw_photo: np.ndarray, style: str, size: int, tolerance: float
) -> None:
    aligned = aligner.align(lfw_photo, size=size, style=style)  # type: ignore[arg-type]
    assert aligned.image.shape == (size, size, 3) and aligned.image.dtype == np.uint8
    resampled = warp_affine(lfw_photo, aligned.inverse_transform, (size, size), border="reflect")
    assert np.abs(resampled.astype(int) - aligned.image).mean() < tolerance
    composed = np.vstack([aligned.transform, [0, 0, 1]]) @ np.vstack([aligned.inverse_transform, [0, 0, 1]])
    np.testing.assert_allclose(composed, np.eye(3), atol=1e-9)


def test_ffhq_crop_levels_and_centres_the_eyes(aligner: FaceAligner, lfw_photo: np.ndarray) -> None:
    aligned = aligner.align(lfw_photo, size=256, style="ffhq")
    assert aligned.landmarks.shape == (68, 2)
    in_crop = aligned.landmarks_in_crop()
    left_eye, right_eye = in_crop[36:42].mean(axis=0), in_crop[42:48].mean(axis=0)
    assert abs(left_eye[1] - right_eye[1]) < 1.0
    assert abs((left_eye[0] + right_eye[0]) / 2 - 127.5) < 4.0
    assert 0.2 < (right_eye[0] - left_eye[0]) / 256 < 0.35


def test_padding_widens_the_crop(aligner: FaceAligner, lfw_photo: np.ndarray) -> None:
    tight = aligner.align(lfw_photo, size=150, padding=0.0)
    loose = aligner.align(lfw_photo, size=150, padding=0.5)

    def scale(face: AlignedFace) -> float:
        return float(np.sqrt(abs(np.linalg.det(face.transform[:, :2]))))

    assert scale(tight) / scale(loose) == pytest.approx(2.0, rel=0.02)


def test_every_input_kind_gives_the_same_crop(aligner: FaceAligner, photos: list[Path]) -> None:
    path = photos[0]
    rgb = load_image(path)
    expected = aligner.align(rgb).image
    sources: list[object] = [path, str(path), path.read_bytes(), Image.open(path), rgb]
    for source in sources:
        np.testing.assert_array_equal(aligner.align(source).image, expected)  # type: ignore[arg-type]
    np.testing.assert_array_equal(aligner.align(rgb[:, :, ::-1].copy(), color_order="BGR").image, expected)


def test_grey_photos_give_rgb_crops(aligner: FaceAligner, faces_root: Path) -> None:
    path = list_identity_images(faces_root / "orl", max_images=1)[0][1]
    aligned = aligner.align(path)
    assert aligned.image.shape == (150, 150, 3)
    assert (aligned.image[:, :, 0] == aligned.image[:, :, 2]).all()


def test_large_photos_are_detected_on_a_reduced_copy(aligner: FaceAligner, lfw_photo: np.ndarray) -> None:
    big = np.asarray(Image.fromarray(lfw_photo).resize((2000, 2000), Image.Resampling.BICUBIC))
    small_face = aligner.align(lfw_photo)
    big_face = aligner.align(big)
    np.testing.assert_allclose(big_face.landmarks / 8.0, small_face.landmarks, atol=3.0)


def test_boxes_are_dlib_detections_with_exclusive_edges(aligner: FaceAligner, lfw_photo: np.ndarray) -> None:
    (rect,) = dlib.get_frontal_face_detector()(lfw_photo, 0)
    (box,) = aligner.detect(lfw_photo)
    assert (box.left, box.top, box.right, box.bottom) == (
        rect.left(),
        rect.top(),
        rect.right() + 1,
        rect.bottom() + 1,
    )
    assert box.area == rect.width() * rect.height()


def test_one_aligner_serves_several_threads(aligner: FaceAligner, photos: list[Path]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    jobs = photos[:8] * 3
    expected = [aligner.align(path).image for path in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda path: aligner.align(path).image, jobs))
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def _two_faces(photo: np.ndarray) -> np.ndarray:
    """The same face twice, the right one at half size."""
    height, width = photo.shape[:2]
    half = np.asarray(Image.fromarray(photo).resize((width // 2, height // 2)))
    canvas = np.full((height, width + width // 2, 3), 128, np.uint8)
    canvas[:, :width] = photo
    canvas[height // 4 : height // 4 + half.shape[0], width:] = half
    return canvas


def test_several_faces_keep_the_largest_by_default(aligner: FaceAligner, lfw_photo: np.ndarray) -> None:
    canvas = _two_faces(lfw_photo)
    boxes = aligner.detect(canvas)
    assert len(boxes) == 2 and boxes[0].area > boxes[1].area
    assert aligner.align(canvas).box == boxes[0]


def test_several_faces_can_be_an_error(lfw_photo: np.ndarray) -> None:
    strict = FaceAligner(multiple_faces="error")
    with pytest.raises(MultipleFacesError) as raised:
        strict.align(_two_faces(lfw_photo))
    assert raised.value.count == 2 and raised.value.exit_code == 3


def test_no_face_is_a_typed_error(aligner: FaceAligner) -> None:
    rng = np.random.default_rng(0)
    landscape = (rng.random((200, 300, 3)) * 40 + np.linspace(60, 200, 300)[None, :, None]).astype(np.uint8)
    with pytest.raises(NoFaceError):
        aligner.align(landscape)


def test_bad_images_are_typed_errors(aligner: FaceAligner, lfw_photo: np.ndarray) -> None:
    buffer = io.BytesIO()
    Image.fromarray(lfw_photo).save(buffer, format="JPEG")
    jpeg = buffer.getvalue()
    one_pixel = io.BytesIO()
    Image.new("RGB", (1, 1)).save(one_pixel, format="PNG")
    bomb = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(bomb, format="PNG")
    for data, message in (
        (b"GIF89a but not really", "not an image"),
        (jpeg[: len(jpeg) // 2], "truncated"),
        (one_pixel.getvalue(), "at least"),
        (bomb.getvalue(), "decompression-bomb"),
    ):
        with pytest.raises(InvalidImageError, match=message):
            aligner.align(data)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"size": 8}, "size"), ({"padding": -0.1}, "padding"), ({"style": "mtcnn"}, "style")],
)
def test_bad_arguments_are_value_errors(
    aligner: FaceAligner, lfw_photo: np.ndarray, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        aligner.align(lfw_photo, **kwargs)  # type: ignore[arg-type]


def test_pasting_the_crop_back_restores_the_photo(aligner: FaceAligner, lfw_photo: np.ndarray) -> None:
    aligned = aligner.align(lfw_photo, size=256, style="ffhq")
    restored = paste_back(lfw_photo, aligned, aligned.image)
    box = aligned.box
    face_region = (slice(box.top, box.bottom), slice(box.left, box.right))
    assert np.abs(restored[face_region].astype(int) - lfw_photo[face_region]).mean() < 2.0


def test_pasting_a_new_face_changes_only_the_face_region(aligner: FaceAligner, lfw_photo: np.ndarray) -> None:
    aligned = aligner.align(lfw_photo)
    replacement = np.zeros((64, 64, 3), np.uint8)  # another size than the crop on purpose
    pasted = paste_back(lfw_photo, aligned, replacement)
    box = aligned.box
    centre = ((box.top + box.bottom) // 2, (box.left + box.right) // 2)
    assert pasted[centre].max() < 5
    corners = _apply_corners(aligned)
    outside = np.ones(lfw_photo.shape[:2], bool)
    outside[
        max(0, int(corners[:, 1].min()) - 2) : int(corners[:, 1].max()) + 3,
        max(0, int(corners[:, 0].min()) - 2) : int(corners[:, 0].max()) + 3,
    ] = False
    np.testing.assert_array_equal(pasted[outside], lfw_photo[outside])


def _apply_corners(aligned: AlignedFace) -> np.ndarray:
    size = aligned.image.shape[0]
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], float)
    inverse = aligned.inverse_transform
    return corners @ inverse[:, :2].T + inverse[:, 2]


@pytest.mark.slow
@pytest.mark.parametrize("name", EVALUATION_SETS)
def test_a_face_is_found_in_at_least_97_percent_of_each_set(
    aligner: FaceAligner, faces_root: Path, name: str
) -> None:
    items = list_identity_images(faces_root / name)
    assert items, f"no photos in {faces_root / name}"
    failures = []
    for _, path in items:
        try:
            aligner.align(path)
        except FaceAnonyMixerError as error:
            failures.append(f"{path.relative_to(faces_root)}: {error}")
    rate = 1 - len(failures) / len(items)
    assert rate >= 0.97, f"{name}: face found in {rate:.1%} of {len(items)} photos; missed: {failures[:10]}"
