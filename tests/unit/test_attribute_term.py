"""The protection loop's attribute-classifier term (``engine/attribute_term.py``) on hand-made
classifiers: zero where the protected face reads as the photo does, growing as it reads otherwise,
and in agreement with the numpy classifiers it is loaded from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from faceanonymixer.cli.main import app
from faceanonymixer.engine.attribute_term import AttributeTerm
from faceanonymixer.engine.identity_target import with_attributes_of
from faceanonymixer.engine.profiles import EMBEDDED
from faceanonymixer.models import weights
from faceanonymixer.models.attribute_classifiers import AttributeClassifiers
from faceanonymixer.utils.errors import ModelFormatError

DIM = 4
runner = CliRunner()


def classifiers() -> AttributeClassifiers:
    # female along axis 0; age groups along axis 1 (young to old), with one group per step
    age_coef = np.zeros((4, DIM))
    age_coef[:, 1] = [-3.0, -1.0, 1.0, 3.0]
    return AttributeClassifiers(
        gender_coef=np.array([4.0, 0.0, 0.0, 0.0]),
        gender_intercept=np.asarray(0.0),
        age_coef=age_coef,
        age_intercept=np.array([-3.0, 0.0, 0.0, -3.0]),
    )


def term(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fitted: AttributeClassifiers | None = None
) -> AttributeTerm:
    path = tmp_path / "classifiers.npz"
    sha256 = (fitted or classifiers()).save(path)
    monkeypatch.setattr(weights, "WEIGHTS_DIR", tmp_path)
    monkeypatch.setattr(weights, "MANIFEST", tmp_path / "manifest.json")
    weights.record_weights("hand-made", path.name, sha256, "made by hand")
    return AttributeTerm.load("hand-made", embedding_dim=DIM, device=torch.device("cpu"))


def test_zero_when_the_protected_face_reads_as_the_photo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = term(tmp_path, monkeypatch)
    photos = torch.tensor([[1.0, -1.0, 0.0, 0.0], [-1.0, 1.0, 0.5, 0.0]])
    original = loaded.log_probabilities(photos)
    np.testing.assert_allclose(loaded.divergence(photos, original).numpy(), 0.0, atol=1e-6)
    # another identity (axes 2 and 3) that reads the same: still zero
    moved = photos + torch.tensor([[0.0, 0.0, 3.0, -2.0]])
    np.testing.assert_allclose(loaded.divergence(moved, original).numpy(), 0.0, atol=1e-6)


def test_grows_as_gender_or_age_reads_otherwise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = term(tmp_path, monkeypatch)
    woman = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    original = loaded.log_probabilities(woman)
    towards_a_man = [
        loaded.divergence(woman * torch.tensor([[s, 1, 1, 1]]), original).item() for s in (0.5, 0, -1)
    ]
    assert 0 < towards_a_man[0] < towards_a_man[1] < towards_a_man[2]
    older = [loaded.divergence(woman + torch.tensor([[0, a, 0, 0]]), original).item() for a in (0.5, 1.5)]
    assert 0 < older[0] < older[1]


def test_pulls_the_embedding_back_to_the_photos_gender(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = term(tmp_path, monkeypatch)
    original = loaded.log_probabilities(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    protected = torch.tensor([[-1.0, 0.0, 0.0, 0.0]], requires_grad=True)
    loaded.divergence(protected, original).sum().backward()
    assert protected.grad is not None and protected.grad[0, 0] < 0  # descent raises the female logit


def test_agrees_with_the_numpy_classifiers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fitted = classifiers()
    loaded = term(tmp_path, monkeypatch, fitted)
    rows = np.random.default_rng(0).normal(size=(50, DIM))
    gender, age = loaded.log_probabilities(torch.from_numpy(rows).float())
    np.testing.assert_array_equal(gender.argmax(dim=1).numpy(), fitted.gender(rows))
    np.testing.assert_array_equal(age.argmax(dim=1).numpy(), fitted.age_group(rows))
    np.testing.assert_allclose(gender.exp().sum(dim=1).numpy(), 1.0, rtol=1e-5)


def test_refuses_classifiers_of_another_space(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    term(tmp_path, monkeypatch)
    with pytest.raises(ModelFormatError, match="4-d embeddings, the recognizer's are 128-d"):
        AttributeTerm.load("hand-made", embedding_dim=128, device=torch.device("cpu"))


def test_targets_take_the_photos_attributes_and_keep_the_rest() -> None:
    draws = torch.Generator().manual_seed(0)
    targets, originals = torch.randn(5, 8, generator=draws), torch.randn(5, 8, generator=draws)
    gender = torch.randn(1, 8, generator=draws)
    ages = torch.randn(3, 8, generator=draws)
    # the age rows of a softmax relative to their mean: dependent directions, as AttributeTerm gives them
    directions = torch.cat([gender, ages - ages.mean(dim=0, keepdim=True)])
    kept = with_attributes_of(targets, originals, directions)
    torch.testing.assert_close(kept @ directions.T, originals @ directions.T, atol=1e-4, rtol=1e-4)
    # the smallest change: inside the directions' span, so the rest of each target is untouched
    others = torch.linalg.svd(directions, full_matrices=True).Vh[torch.linalg.matrix_rank(directions) :]
    torch.testing.assert_close(kept @ others.T, targets @ others.T, atol=1e-5, rtol=1e-5)


def test_fit_command_refuses_an_unknown_recognizer(tmp_path: Path) -> None:
    result = runner.invoke(app, ["models", "fit-attributes", "--data", str(tmp_path), "--recognizer", "nope"])
    assert result.exit_code == 2 and "'nope'; available: facenet" in result.output


@pytest.mark.slow
def test_fit_command_writes_classifiers_over_the_loss_recognizer(faces_root: Path, tmp_path: Path) -> None:
    # a check of the command on a slice of the training photos, not a measurement
    data = str(faces_root / "utk_train")
    command = ["models", "fit-attributes", "--data", data, "--recognizer", "dlib", "--per-cell", "12"]
    result = runner.invoke(app, [*command, "--out-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "5-fold accuracy: gender" in result.output
    fitted = AttributeClassifiers.load(tmp_path / "dlib_attribute_classifiers.npz")
    assert fitted.gender_coef.shape == (128,) and fitted.age_coef.shape == (4, 128)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"lambda_attr_classes": -1.0}, "lambda_attr_classes must not be negative"),
        ({"kept_shift": 1.0, "kept_axes": 0}, "needs kept_axes"),
        ({"kept_shift": -0.5}, "kept_shift must not be negative"),
    ],
)
def test_settings_that_mean_nothing_are_refused(settings: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EMBEDDED.optimisation.with_overrides(**settings)
