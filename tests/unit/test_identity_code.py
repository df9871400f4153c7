"""The map from identities to generator codes: fitting, the codes it gives, its file format, the
committed map of the embedded profile, and the command that fits it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from committed import committed_entry
from typer.testing import CliRunner

from faceanonymixer.cli.main import app
from faceanonymixer.engine.identity_target import synthetic_code
from faceanonymixer.engine.profiles import get_profile
from faceanonymixer.engine.protection_key import ProtectionKey
from faceanonymixer.models.identity_code import (
    IdentityCodeMap,
    IdentityCodeNetwork,
    load_identity_code_map,
    save_identity_code_map,
    save_identity_code_network,
)
from faceanonymixer.models.weights import committed_weights
from faceanonymixer.training.identity_code import fit_identity_code_map
from faceanonymixer.utils.errors import FaceAnonyMixerError, ModelFormatError

runner = CliRunner()
KEY = ProtectionKey(bytes(range(32)))


def linear_data(count: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    slope = rng.normal(size=(10, 16))
    offsets = rng.normal(scale=0.1, size=(count, 16))
    codes = offsets @ slope.T + 2.0 + rng.normal(scale=0.01, size=(count, 10))
    return offsets, codes, slope


def test_fit_recovers_the_slope_and_measures_the_codes_length() -> None:
    offsets, codes, slope = linear_data(2000)
    code_map = fit_identity_code_map(offsets, codes)
    np.testing.assert_allclose(code_map.slope.numpy(), slope, atol=0.05)
    assert code_map.code_norm == pytest.approx(np.linalg.norm(codes, axis=1).mean(), rel=1e-6)
    assert (code_map.z_dim, code_map.embedding_dim) == (10, 16)


def test_fit_refuses_fewer_photos_than_dimensions() -> None:
    offsets, codes, _ = linear_data(16)
    with pytest.raises(FaceAnonyMixerError, match="more photos than embedding dimensions"):
        fit_identity_code_map(offsets, codes)


def test_codes_keep_one_length_and_follow_the_identity_smoothly() -> None:
    code_map = IdentityCodeMap(torch.randn(10, 16, generator=torch.Generator().manual_seed(1)), 6.5)
    person = torch.randn(1, 16, generator=torch.Generator().manual_seed(2))
    nearby = person + 0.05 * torch.randn(1, 16, generator=torch.Generator().manual_seed(3))
    other = torch.randn(1, 16, generator=torch.Generator().manual_seed(4))
    codes = code_map.code(torch.cat([person, nearby, other, 3.0 * person]))
    torch.testing.assert_close(codes.norm(dim=1), torch.full((4,), 6.5))
    assert (codes[0] - codes[1]).norm() < 0.5 * (codes[0] - codes[2]).norm()
    torch.testing.assert_close(codes[0], codes[3])  # only the direction counts
    with pytest.raises(ValueError, match=r"offsets must be \(N, 16\)"):
        code_map.code(torch.zeros(1, 15))


def test_the_identity_code_is_the_subjects_part_of_the_keys_code() -> None:
    identity = torch.randn(1, 100, generator=torch.Generator().manual_seed(5))
    centred = torch.zeros(1, 128)
    torch.testing.assert_close(synthetic_code(KEY, "embedded", 100, centred, 1.0, identity), identity)
    key_only = synthetic_code(KEY, "embedded", 100, centred, 0.0)
    torch.testing.assert_close(synthetic_code(KEY, "embedded", 100, centred, 0.0, identity), key_only)
    half = synthetic_code(KEY, "embedded", 100, centred, 0.5, identity)
    torch.testing.assert_close(half, np.sqrt(0.75) * key_only + 0.5 * identity)
    with pytest.raises(ValueError, match=r"identity_code must be \(1, 100\)"):
        synthetic_code(KEY, "embedded", 100, centred, 0.5, torch.zeros(1, 99))


def test_save_and_load_round_trip_and_bad_files_are_typed_errors(tmp_path: Path) -> None:
    offsets, codes, _ = linear_data(200)
    code_map = fit_identity_code_map(offsets, codes)
    path = tmp_path / "map.npz"
    sha256 = save_identity_code_map(code_map, path)
    loaded = load_identity_code_map(path, sha256=sha256)
    torch.testing.assert_close(loaded.slope, code_map.slope)
    assert loaded.code_norm == code_map.code_norm
    assert [p.name for p in tmp_path.iterdir()] == ["map.npz"]  # no temporary left behind
    with pytest.raises(ModelFormatError, match="SHA-256"):
        load_identity_code_map(path, sha256="0" * 64)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ModelFormatError, match="not an identity code map"):
        load_identity_code_map(truncated)
    other = tmp_path / "other.npz"
    np.savez(other, format=np.array("something else"), slope=np.zeros((2, 2)), code_norm=np.array(1.0))
    with pytest.raises(ModelFormatError, match="not an identity code map"):
        load_identity_code_map(other)


def test_the_embedded_profiles_map_is_committed_and_fits_its_models() -> None:
    profile = get_profile("embedded")
    assert profile.identity_code_map is not None
    entry = committed_entry(profile.identity_code_map, "the embedded profile's identity code map")
    assert "fit-identity-code" in entry.command
    code_map = load_identity_code_map(entry.path, sha256=entry.sha256)
    assert (code_map.z_dim, code_map.embedding_dim) == (100, 128)
    assert 1.0 < code_map.code_norm < 20.0


def test_fit_command_refuses_an_unknown_profile_and_a_missing_folder(tmp_path: Path) -> None:
    result = runner.invoke(app, ["models", "fit-identity-code", "--data", str(tmp_path), "--profile", "nope"])
    assert result.exit_code == 2 and "unknown profile 'nope'" in result.output
    missing = tmp_path / "missing"
    result = runner.invoke(
        app, ["models", "fit-identity-code", "--data", str(missing), "--out-dir", str(tmp_path)]
    )
    assert result.exit_code == 2 and "is not a folder" in result.output
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_fit_command_writes_a_loadable_map(faces_root: Path, tmp_path: Path) -> None:
    if committed_weights().get("lfw-dcgan") is None:
        pytest.skip("the embedded profile's generator is not committed (weights/manifest.json)")
    # a check of the command on a slice of the training photos, not a model
    data = str(faces_root / "lfw_train")
    command = ["models", "fit-identity-code", "--data", data, "--limit", "160", "--out-dir", str(tmp_path)]
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    assert "of 160 photos" in result.output
    code_map = load_identity_code_map(tmp_path / "lfw_dcgan_identity_code.npz")
    assert (code_map.z_dim, code_map.embedding_dim) == (100, 128)


def test_an_untrained_network_gives_the_fitted_maps_codes_and_its_file_round_trips(tmp_path: Path) -> None:
    linear = IdentityCodeMap(torch.randn(10, 16, generator=torch.Generator().manual_seed(1)), 6.5)
    network = IdentityCodeNetwork(linear, hidden=8)
    offsets = torch.randn(5, 16, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(network.code(offsets), linear.code(offsets))
    with torch.no_grad():  # a trained correction moves the codes, never their length
        for parameter in network.correction.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(3)))
    codes = network.code(offsets)
    assert not torch.allclose(codes, linear.code(offsets), atol=1e-3)
    torch.testing.assert_close(codes.norm(dim=1), torch.full((5,), 6.5))
    path = tmp_path / "network.npz"
    sha256 = save_identity_code_network(network, path)
    loaded = load_identity_code_map(path, sha256=sha256)
    assert isinstance(loaded, IdentityCodeNetwork)
    assert (loaded.z_dim, loaded.embedding_dim, loaded.hidden) == (10, 16, 8)
    torch.testing.assert_close(loaded.code(offsets), codes)
    with pytest.raises(ValueError, match=r"offsets must be \(N, 16\)"):
        loaded.code(torch.zeros(2, 15))


def test_a_network_file_without_its_layers_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "network.npz"
    save_identity_code_network(IdentityCodeNetwork(IdentityCodeMap(torch.ones(4, 6), 1.0), hidden=3), path)
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files if name != "state.correction.4.weight"}
    np.savez(path, **arrays)
    with pytest.raises(ModelFormatError, match="not an identity code map"):
        load_identity_code_map(path)
