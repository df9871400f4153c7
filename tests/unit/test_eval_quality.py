"""Realism, attributes, labels and per-group tables of ``faceanonymixer eval``, on hand-made cases."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation
from skimage.color import rgb2lab

from faceanonymixer.evaluation.attributes import (
    POSE_LANDMARKS,
    POSE_TEMPLATE,
    FaceAttributes,
    attribute_summary,
    camera_matrix,
    cheek_boxes,
    classifier_accuracy,
    fit_attribute_classifiers,
    head_pose,
    ita_degrees,
    rotation_angle,
    skin_tone_ita,
)
from faceanonymixer.evaluation.cells import cell_table, group_rates, worst_cells
from faceanonymixer.evaluation.harness import EvalConfig, list_photos
from faceanonymixer.evaluation.labels import (
    PhotoLabels,
    age_group,
    label_photo,
    lfw_genders,
    utk_labels,
)
from faceanonymixer.evaluation.realism import (
    FID_MIN_FACES,
    fid,
    kid,
    mmd2_unbiased,
    polynomial_kernel,
    realism_report,
    split_identities,
    tf_bilinear_resize,
)
from faceanonymixer.models.attribute_classifiers import AGE_GROUPS, AttributeClassifiers
from faceanonymixer.utils.errors import ModelFormatError

RNG = np.random.default_rng(37)

# ---- realism -------------------------------------------------------------------------------------


def test_kid_of_a_set_against_itself_is_near_zero_and_of_a_shifted_set_clearly_above() -> None:
    features = RNG.normal(size=(400, 32))
    same = kid(features, features)
    assert same.se is not None and same.blocks == 10 and same.block_size == 40
    assert abs(same.value) < 3 * same.se + 1e-3
    other_draw = kid(features, RNG.normal(size=(400, 32)))
    assert other_draw.se is not None and abs(other_draw.value) < 3 * other_draw.se + 1e-3
    shifted = kid(features, RNG.normal(size=(400, 32)) + 0.5)
    assert shifted.se is not None and shifted.value > 0.05 and shifted.value > 10 * shifted.se


def test_the_unbiased_mmd_is_the_textbook_sum() -> None:
    x, y = RNG.normal(size=(5, 3)), RNG.normal(size=(4, 3))

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return float((a @ b / 3 + 1) ** 3)

    within_x = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / 20
    within_y = sum(k(y[i], y[j]) for i in range(4) for j in range(4) if i != j) / 12
    between = sum(k(a, b) for a in x for b in y) / 20
    assert mmd2_unbiased(x, y) == pytest.approx(within_x + within_y - 2 * between)
    assert polynomial_kernel(x, y).shape == (5, 4)
    with pytest.raises(ValueError, match="two samples"):
        mmd2_unbiased(x[:1], y)


def test_kid_on_a_small_sample_has_one_block_and_no_standard_error() -> None:
    estimate = kid(RNG.normal(size=(6, 4)), RNG.normal(size=(8, 4)))
    assert estimate.blocks == 1 and estimate.se is None and estimate.block_size == 6
    with pytest.raises(ValueError, match="at least two"):
        kid(RNG.normal(size=(1, 4)), RNG.normal(size=(8, 4)))


def test_fid_is_zero_for_one_sample_and_the_squared_shift_for_a_moved_one() -> None:
    x = RNG.normal(size=(300, 4))
    assert fid(x, x) == pytest.approx(0.0, abs=1e-6)
    assert fid(x, x + np.array([1.0, 2.0, 0.0, 0.0])) == pytest.approx(5.0, rel=1e-6)


def test_realism_report_keys_and_fid_only_from_two_thousand_faces() -> None:
    photos = 40
    real = RNG.normal(size=(photos, 8))
    features = {"real": real, "protected": real + 1.0, "reconstruction": real + 0.5}
    candidates, reference = split_identities([f"p{i // 2}" for i in range(photos)], seed=0)
    assert candidates.sum() == reference.sum() == 20 and not np.any(candidates & reference)
    report = realism_report(features, candidates, reference)
    assert set(report["kid"]) >= {"protected", "protected_se", "reconstruction", "real"}
    assert report["kid"]["real"] < report["kid"]["reconstruction"] < report["kid"]["protected"]
    assert report["fid"] is None and f"{FID_MIN_FACES:,}" in report["fid_note"]
    assert report["samples"] == 20 and report["reference_samples"] == 20


def test_the_tf_resize_keeps_a_flat_image_flat() -> None:
    import torch

    flat = torch.full((1, 3, 64, 64), 100.0)
    resized = tf_bilinear_resize(flat, 299)
    assert resized.shape == (1, 3, 299, 299) and torch.allclose(resized, flat.new_full(resized.shape, 100.0))


# ---- attributes ----------------------------------------------------------------------------------


def projected_landmarks(yaw: float, pitch: float, roll: float, size: int = 400) -> np.ndarray:
    """(68, 2) landmarks whose template points are the 3-D template turned by the angles, 60
    units in front of the photo's assumed camera (the other points are unused by the pose)."""
    rotation = Rotation.from_euler("YXZ", (yaw, pitch, roll), degrees=True).as_matrix()
    points = POSE_TEMPLATE @ rotation.T + np.array([0.0, 0.0, 60.0])
    pixels = points @ camera_matrix(size, size).T
    landmarks = np.zeros((68, 2))
    landmarks[list(POSE_LANDMARKS)] = pixels[:, :2] / pixels[:, 2:]
    return landmarks


def test_pose_of_the_frontal_template_is_zero_and_of_a_turned_one_the_turn() -> None:
    frontal = head_pose(projected_landmarks(0, 0, 0), 400, 400)
    assert frontal is not None
    assert max(abs(frontal.yaw), abs(frontal.pitch), abs(frontal.roll)) < 0.1
    for yaw, pitch, roll in ((20, 0, 0), (0, 15, 0), (0, 0, 10), (-30, 10, -5)):
        pose = head_pose(projected_landmarks(yaw, pitch, roll), 400, 400)
        assert pose is not None
        assert (pose.yaw, pose.pitch, pose.roll) == pytest.approx((yaw, pitch, roll), abs=0.1)
        assert rotation_angle(frontal.rotation, pose.rotation) == pytest.approx(
            math.degrees(Rotation.from_euler("YXZ", (yaw, pitch, roll), degrees=True).magnitude()), abs=0.1
        )


def face_landmarks(size: int = 200) -> np.ndarray:
    """A plausible frontal 68-point layout: only the jaw ends, jaw and nostril points matter to ITA."""
    landmarks = np.full((68, 2), size / 2)
    landmarks[0], landmarks[16] = (30, 80), (170, 80)
    landmarks[2], landmarks[14] = (35, 120), (165, 120)
    landmarks[31], landmarks[35] = (85, 125), (115, 125)
    return landmarks


def test_ita_of_a_flat_colour_patch_is_its_formula() -> None:
    assert ita_degrees(50.0, 10.0) == 0.0
    assert ita_degrees(100.0, 50.0) == pytest.approx(45.0)
    assert ita_degrees(70.0, 0.0) is None
    landmarks = face_landmarks()
    for colour in ((224, 172, 150), (141, 85, 36), (90, 56, 37)):
        image = np.zeros((200, 200, 3), np.uint8)
        for top, bottom, left, right in cheek_boxes(landmarks, 200, 200):
            image[top:bottom, left:right] = colour
        lightness, _, b = rgb2lab(np.array([[colour]], np.uint8))[0, 0]
        expected = math.degrees(math.atan((lightness - 50) / b))
        assert skin_tone_ita(image, landmarks) == pytest.approx(expected, abs=1e-6)
    grey = np.full((200, 200, 3), 128, np.uint8)
    assert skin_tone_ita(grey, landmarks) is None


def test_cheek_patches_lie_between_jaw_and_nostril() -> None:
    (top, bottom, left, right), (_, _, left2, right2) = cheek_boxes(face_landmarks(), 200, 200)
    assert 17 <= right - left <= 18 and 17 <= bottom - top <= 18  # a jaw 140 wide: patches of 17.5
    assert 35 < left < 60 < right < 85 and 115 < left2 < 140 < right2 < 165


def synthetic_embeddings(count: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit rows whose first axis carries gender and second the age group, plus noise."""
    rng = np.random.default_rng(seed)
    genders = rng.integers(0, 2, count)
    ages = rng.integers(0, len(AGE_GROUPS), count)
    rows = rng.normal(scale=0.05, size=(count, 16))
    rows[:, 0] += np.where(genders == 1, 1.0, -1.0)
    rows[:, 1] += ages - 1.5
    return rows / np.linalg.norm(rows, axis=1, keepdims=True), genders, ages


def test_classifiers_fit_predict_and_round_trip_without_pickle(tmp_path: Path) -> None:
    rows, genders, ages = synthetic_embeddings(400, seed=1)
    classifiers, accuracy = fit_attribute_classifiers(rows, genders, ages)
    assert accuracy["gender_cv_accuracy"] > 0.95 and accuracy["age_group_cv_accuracy"] > 0.8
    test_rows, test_genders, _ = synthetic_embeddings(100, seed=2)
    assert np.mean(classifiers.gender(test_rows) == test_genders) > 0.95
    path = tmp_path / "classifiers.npz"
    classifiers.save(path)
    with np.load(path, allow_pickle=False) as stored:
        assert set(stored.files) >= {"gender_coef", "age_coef", "format"}
    loaded = AttributeClassifiers.load(path)
    assert np.array_equal(loaded.age_group(test_rows), classifiers.age_group(test_rows))
    missing = test_rows.copy()
    missing[0] = np.nan
    assert loaded.gender(missing)[0] == -1 and loaded.age_group(missing)[0] == -1
    path.write_bytes(b"not an npz")
    with pytest.raises(ModelFormatError):
        AttributeClassifiers.load(path)


def faces(gender: list[int], age: list[int], ita: list[float], yaw: list[float]) -> FaceAttributes:
    rotation = np.stack([Rotation.from_euler("Y", angle, degrees=True).as_matrix() for angle in yaw])
    angles = np.stack([[angle, 0.0, 0.0] for angle in yaw])
    return FaceAttributes(np.array(gender), np.array(age), np.array(ita, dtype=float), rotation, angles)


def test_attribute_summary_and_the_classifier_ceiling() -> None:
    original = faces([0, 1, 1, 0], [0, 1, 2, 3], [40.0, 20.0, np.nan, -10.0], [0.0, 10.0, 20.0, -5.0])
    protected = faces([0, 0, 1, -1], [0, 3, 1, 3], [35.0, 30.0, 10.0, -4.0], [2.0, 10.0, 26.0, -5.0])
    summary = attribute_summary(original, protected, np.ones(4, dtype=bool))
    assert summary["gender_agreement"] == pytest.approx(2 / 3)  # the missing call is left out
    assert summary["age_group_agreement"] == 0.5 and summary["age_group_within_one"] == 0.75
    assert summary["ita_abs_diff_median"] == pytest.approx(6.0)  # |5|, |10|, |6|: grey photo left out
    assert summary["pose_error_median_deg"] == pytest.approx(1.0)  # 2, 0, 6, 0
    assert summary["photos"] == {"classified": 3, "ita": 3, "pose": 4}
    labels = [
        PhotoLabels("white-male", "male", "white", 20),
        PhotoLabels("white-female", "female", "white", 50),
        None,
        PhotoLabels("black-male", "male", "black", 70),
    ]
    ceiling = classifier_accuracy(original, labels, np.ones(4, dtype=bool))
    assert ceiling["gender"] == 1.0 and ceiling["age_group"] == pytest.approx(2 / 3)
    assert ceiling["age_group_within_one"] == 1.0 and ceiling["gender_photos"] == 3


# ---- labels and groups ---------------------------------------------------------------------------


def test_labels_from_utk_file_names_and_the_lfw_list() -> None:
    labels = utk_labels("utk_dev", "x", Path("45_1_1_20170116204334206.jpg.chip.jpg"))
    assert labels == PhotoLabels("black-female", "female", "black", 45) and labels.age_group == 2
    assert utk_labels("utk_dev", "x", Path("Al_Sharpton_0001.jpg")) is None
    assert [age_group(a) for a in (15, 16, 29, 30, 44, 45, 59, 60, 99)] == [None, 0, 0, 1, 1, 2, 2, 3, 3]
    genders = lfw_genders()
    assert len(genders) == 120 and set(genders.values()) == {"male", "female"}
    assert label_photo("lfw", "Venus_Williams", Path("Venus_Williams_0001.jpg")) == PhotoLabels(
        "female", "female"
    )
    assert label_photo("lfw", "Nobody_Listed", Path("a.jpg")) is None
    assert label_photo("orl", "s1", Path("1.pgm")) is None


def utk_folder(root: Path, cells: dict[str, int]) -> Path:
    """A synthetic one-photo-per-folder set with UTKFace-style names (flat grey images, no faces)."""
    races, genders = ("white", "black", "asian", "indian", "others"), ("male", "female")
    for cell, count in cells.items():
        race, gender = cell.split("-")
        for index in range(count):
            name = f"{20 + index}_{genders.index(gender)}_{races.index(race)}_2017010{index:08d}"
            (root / name).mkdir(parents=True)
            Image.new("RGB", (8, 8), (128, 100, 90)).save(root / name / f"{name}.jpg.chip.jpg")
    return root


def test_listing_draws_at_most_per_cell_per_group_and_names_sets_by_folder(tmp_path: Path) -> None:
    root = utk_folder(tmp_path / "utk_like", {"white-male": 6, "black-female": 3, "asian-male": 1})
    listed = list_photos(EvalConfig(datasets=(root,), per_cell=2, seed=0))
    counts: dict[str, int] = {}
    for photo in listed:
        assert photo.set_name == "utk_like" and photo.labels is not None
        counts[photo.labels.cell] = counts.get(photo.labels.cell, 0) + 1
    assert counts == {"white-male": 2, "black-female": 2, "asian-male": 1}
    assert listed == list_photos(EvalConfig(datasets=(root,), per_cell=2, seed=0))  # the seed fixes it
    assert len(list_photos(EvalConfig(datasets=(root,)))) == 10
    twin = tmp_path / "other" / "utk_like"
    twin.mkdir(parents=True)
    with pytest.raises(ValueError, match="different folder names"):
        list_photos(EvalConfig(datasets=(root, twin)))


def test_per_cell_tables_on_a_synthetic_labelled_folder(tmp_path: Path) -> None:
    """Two groups of one-photo identities: in one the 'recognizer' separates everyone, in the other
    two of its three people look alike unprotected, and a shared key makes the whole group alike."""
    root = utk_folder(tmp_path / "utk_like", {"white-male": 3, "black-female": 3})
    listed = list_photos(EvalConfig(datasets=(root,)))
    labels = [photo.label for photo in listed]
    cells = [photo.labels.cell if photo.labels else None for photo in listed]
    female = np.array([cell == "black-female" for cell in cells])
    original = np.eye(6) * 2.0
    twins = np.flatnonzero(female)[:2]
    original[twins[1]] = original[twins[0]] + 0.1  # two black women alike before protection
    shared = original.copy()
    shared[female] = 0.05 * np.arange(3)[:, None]  # under one key all three collapse together
    embeddings = {"dlib": {"original": original, "A": original + 5, "B": original - 5, "S": shared}}
    table = cell_table(cells, labels, embeddings, {"dlib": 0.6}, prefix="utk_like/")
    assert set(table) == {"utk_like/black-female", "utk_like/white-male"}
    women, men = table["utk_like/black-female"], table["utk_like/white-male"]
    assert women["count"] == men["count"] == 3 and women["identities"] == 3
    assert women["dlib"]["pairs"]["unprotected_impostor_nonmatch"] == 3  # pairs within the cell only
    assert women["dlib"]["unprotected_impostor_nonmatch"] == pytest.approx(2 / 3)
    assert women["dlib"]["shared_key_impostor_nonmatch"] == 0.0
    assert men["dlib"]["unprotected_impostor_nonmatch"] == men["dlib"]["shared_key_impostor_nonmatch"] == 1.0
    assert women["dlib"]["anonymity"] == 1.0 and women["dlib"]["same_key_genuine_match"] is None
    assert women["detection"] == {"dlib": 1.0}
    worst = worst_cells(table, ["dlib"], min_count=3)
    assert worst["dlib.shared_key_impostor_nonmatch"] == {
        "cell": "utk_like/black-female",
        "value": 0.0,
        "count": 3,
        "unprotected": pytest.approx(2 / 3),
    }
    # cells under the minimum are ranked only when no cell reaches it
    assert worst_cells(table, ["dlib"], min_count=10) == worst
    table["utk_like/white-male"]["count"] = 10
    assert worst_cells(table, ["dlib"], min_count=10)["dlib.shared_key_impostor_nonmatch"]["cell"] == (
        "utk_like/white-male"
    )


def test_group_rates_count_genuine_pairs_where_there_are_some() -> None:
    labels = ["a", "a", "b"]
    rows = np.array([[0.0, 0.0], [0.1, 0.0], [3.0, 0.0]])
    rates = group_rates(labels, {"original": rows, "A": rows, "B": rows + 10, "S": rows}, 0.6)
    assert rates["unprotected_genuine_match"] == rates["same_key_genuine_match"] == 1.0
    assert rates["cross_key_nonmatch"] == 1.0 and rates["pairs"]["cross_key_nonmatch"] == 5
    assert rates["pairs"]["unprotected_impostor_nonmatch"] == 2


# ---- on real photos: the reading of a face, the generator's reconstruction --------------------------


@pytest.fixture(scope="module")
def lfw_photo(faces_root: Path) -> Path:
    path = faces_root / "lfw" / "Venus_Williams" / "Venus_Williams_0001.jpg"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


def test_a_real_face_is_read_and_the_reading_follows_a_mirror(lfw_photo: Path) -> None:
    from faceanonymixer.evaluation.attributes import FaceReader
    from faceanonymixer.faces.imageio import load_image

    reader = FaceReader()
    photo = load_image(lfw_photo)
    reading, mirrored = reader(photo), reader(np.ascontiguousarray(photo[:, ::-1]))
    assert reading is not None and mirrored is not None
    assert reading.landmarks.shape == (68, 2) and np.linalg.norm(reading.embedding) == pytest.approx(1.0)
    pose, flipped = (head_pose(r.landmarks, photo.shape[1], photo.shape[0]) for r in (reading, mirrored))
    assert pose is not None and flipped is not None
    # a mirror turns the head the other way: yaw and roll change sign, pitch stays
    assert pose.yaw == pytest.approx(-flipped.yaw, abs=3) and pose.pitch == pytest.approx(
        flipped.pitch, abs=3
    )
    assert skin_tone_ita(photo, reading.landmarks) is not None
    assert reader(np.full((120, 120, 3), 200, np.uint8)) is None


def test_the_reconstruction_is_the_generators_own_rendering_of_the_photo(
    lfw_photo: Path, weights: None
) -> None:
    """No key, no optimisation: nearer the photo's crop than the photo protected under a key, and
    the same on every call."""
    import torch

    from faceanonymixer.engine.protection import ProtectionEngine, Subject
    from faceanonymixer.engine.protection_key import ProtectionKey

    torch.set_num_threads(1)
    engine = ProtectionEngine("embedded")
    face = engine.prepare(lfw_photo)
    first, again = engine.reconstruct([face])[0], engine.reconstruct([face])[0]
    assert first.dtype == np.uint8 and first.shape == (256, 256, 3) and np.array_equal(first, again)
    (protected,) = engine.protect(
        [Subject([face], ProtectionKey(bytes(32), version=1))],
        optimisation=engine.config.with_overrides(steps=2),
    )[0]
    original = protected.original_face.astype(np.float64)
    assert np.abs(first - original).mean() < np.abs(protected.face.astype(np.float64) - original).mean()


def test_the_report_names_the_revision_that_ran() -> None:
    from types import SimpleNamespace

    from faceanonymixer.engine.profiles import get_profile, profile_revision, with_optimisation_overrides
    from faceanonymixer.evaluation.report import _settings

    run: Any = SimpleNamespace(threads_per_job=1)  # only its threads_per_job is read
    plain = _settings(EvalConfig(datasets=(Path("x"),)), run)
    assert plain["profile_revision"] == profile_revision(get_profile("embedded"))
    overrides = {"lambda_attr_classes": 2.0, "attribute_targets": True, "kept_shift": 1.0}
    opted_in = _settings(EvalConfig(datasets=(Path("x"),), optimisation=overrides), run)
    assert opted_in["profile_revision"] == profile_revision(
        with_optimisation_overrides(get_profile("embedded"), overrides)
    )
    assert opted_in["profile_revision"] != plain["profile_revision"]
