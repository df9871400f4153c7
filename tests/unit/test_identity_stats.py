"""Statistics of real faces in the recognizer's space: the principal axes of identities (where
key-derived targets are drawn), their file format, the committed axes, and the command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from committed import committed_entry
from typer.testing import CliRunner

from faceanonymixer.cli.main import app
from faceanonymixer.engine.profiles import get_profile
from faceanonymixer.models.identity_stats import IdentityBasis, load_identity_basis, save_identity_basis
from faceanonymixer.training.identity_stats import identity_basis, identity_mean
from faceanonymixer.utils.errors import FaceAnonyMixerError, ModelFormatError

runner = CliRunner()


def elongated_cloud(count: int = 3000, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Points around (1, ..., 1) with standard deviations 3, 2, 1, 0.1, ... along a rotated basis."""
    rng = np.random.default_rng(seed)
    axes = np.linalg.qr(rng.normal(size=(8, 8)))[0]
    scales = np.array([3.0, 2.0, 1.0] + [0.1] * 5)
    points = 1.0 + (rng.normal(size=(count, 8)) * scales) @ axes.T
    return points.astype(np.float32), axes


def test_axes_are_the_principal_directions_largest_first() -> None:
    points, axes = elongated_cloud()
    basis = identity_basis(points)
    assert basis.dim == 8
    np.testing.assert_allclose(basis.variances.numpy()[:3], [9.0, 4.0, 1.0], rtol=0.08)
    assert bool((basis.variances[3:] < 0.02).all())
    for found, true in zip(basis.top(3).T.numpy(), axes[:, :3].T, strict=True):
        assert abs(float(found @ true)) > 0.99  # the same line, either sign
    torch.testing.assert_close(basis.axes.T @ basis.axes, torch.eye(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(identity_mean(points), torch.ones(8), atol=0.15, rtol=0)


def test_axes_need_more_photos_than_dimensions() -> None:
    points, _ = elongated_cloud(8)
    with pytest.raises(FaceAnonyMixerError, match="more photos than embedding dimensions"):
        identity_basis(points)


@pytest.mark.parametrize("count", [0, 9])
def test_top_refuses_a_count_out_of_range(count: int) -> None:
    basis = identity_basis(elongated_cloud()[0])
    with pytest.raises(ValueError, match="between 1 and 8"):
        basis.top(count)


def test_basis_file_round_trips_and_refuses_other_files(tmp_path: Path) -> None:
    basis = identity_basis(elongated_cloud()[0])
    path = tmp_path / "basis.npz"
    sha256 = save_identity_basis(basis, path)
    loaded = load_identity_basis(path, sha256=sha256)
    torch.testing.assert_close(loaded.axes, basis.axes)
    torch.testing.assert_close(loaded.variances, basis.variances)
    with pytest.raises(ModelFormatError, match="SHA-256"):
        load_identity_basis(path, sha256="0" * 64)
    other = tmp_path / "other.npz"
    np.savez(other, format=np.array("something/else"), axes=np.eye(2), variances=np.ones(2))
    with pytest.raises(ModelFormatError, match="not an identity basis"):
        load_identity_basis(other)
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip")
    with pytest.raises(ModelFormatError, match="not an identity basis"):
        load_identity_basis(broken)
    with pytest.raises(ModelFormatError, match="dim, dim"):
        IdentityBasis(torch.eye(3), torch.ones(2))


def test_the_committed_axes_span_most_of_the_variance_of_real_faces() -> None:
    profile = get_profile("embedded")
    assert profile.identity_basis is not None
    entry = committed_entry(profile.identity_basis, "the embedded profile's identity basis")
    assert "identity-stats" in entry.command
    basis = load_identity_basis(entry.path, sha256=entry.sha256)
    assert basis.dim == 128
    # the subspace of docs/decisions/2026-12-06-targets-where-real-faces-vary.md
    share = basis.variances[:64].sum() / basis.variances.sum()
    assert 0.9 < float(share) < 1.0


def test_stats_command_refuses_a_missing_folder(tmp_path: Path) -> None:
    result = runner.invoke(app, ["models", "identity-stats", "--data", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "is not a folder" in result.output


@pytest.mark.slow
def test_stats_command_writes_a_loadable_pair(faces_root: Path, tmp_path: Path) -> None:
    # a check of the command on a slice of the training photos, not a measurement
    data = str(faces_root / "lfw_train")
    command = ["models", "identity-stats", "--data", data, "--limit", "160", "--out-dir", str(tmp_path)]
    result = runner.invoke(app, [*command, "--name", "dlib-identity-slice"])
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "dlib_identity_slice_basis.npz",
        "dlib_identity_slice_mean.npy",
    ]
    basis = load_identity_basis(tmp_path / "dlib_identity_slice_basis.npz")
    assert basis.dim == 128 and bool((basis.variances[:-1] >= basis.variances[1:]).all())
    assert np.load(tmp_path / "dlib_identity_slice_mean.npy").shape == (128,)


def test_what_the_default_profile_fitted_on_real_faces_names_its_data_and_terms() -> None:
    """The model card: every file of the default profile fitted on UTKFace photos says so, with
    UTKFace's non-commercial terms, in the manifest."""
    profile = get_profile("embedded")
    for name in (profile.identity_mean, profile.identity_basis, profile.identity_code_map):
        assert name is not None
        entry = committed_entry(name, f"the embedded profile's {name}")
        assert "utk_train" in entry.data and "lfw_train" in entry.data, entry
        assert "UTKFace" in entry.terms and "non-commercial" in entry.terms, entry
        assert "--data ../shared/faces/utk_train" in entry.command
    assert profile.attribute_classifiers is not None
    entry = committed_entry(profile.attribute_classifiers, "the embedded profile's attribute classifiers")
    assert "utk_train" in entry.data and "--recognizer dlib" in entry.command, entry
    assert "UTKFace" in entry.terms and "non-commercial" in entry.terms, entry
