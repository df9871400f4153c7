"""Protection keys: HKDF-SHA256 seeds (RFC 5869), key files, and the key-derived target map."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest
import torch

from faceanonymixer.engine.identity_target import (
    LATENT_PURPOSE,
    TARGET_PURPOSE,
    key_target_map,
    synthetic_code,
    target_identity,
)
from faceanonymixer.engine.protection_key import KEY_BYTES, ProtectionKey, as_key, derive_seed, key_generator
from faceanonymixer.utils.errors import InvalidKeyError

KEY_A = bytes(range(32))
KEY_B = bytes.fromhex("f0e1d2c3b4a5968778695a4b3c2d1e0f" * 2)
#: regression vector: derive_seed(ProtectionKey(KEY_A), "embedded", "synthetic-latent"), version 1;
#: checked against the hand-written RFC 5869 HKDF below (test_seed_matches_an_independent_hkdf)
KEY_A_LATENT_SEED = 8721939535741361356


def rfc5869_hkdf_sha256(ikm: bytes, info: bytes, length: int, salt: bytes | None = None) -> bytes:
    """HKDF-SHA256 written from RFC 5869: extract (an absent salt is HashLen zero bytes), then expand."""
    prk = hmac.new(salt or b"\x00" * hashlib.sha256().digest_size, ikm, hashlib.sha256).digest()
    okm, block = b"", b""
    for counter in range(1, -(-length // 32) + 1):
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
    return okm[:length]


def expected_seed(material: bytes, profile_id: str, version: int, purpose: str) -> int:
    info = f"faceanonymixer/v1|{profile_id}|{version}|{purpose}".encode()
    return int.from_bytes(rfc5869_hkdf_sha256(material, info, 8), "big") >> 1


def test_hand_written_hkdf_matches_rfc5869_test_case_3() -> None:
    """RFC 5869 appendix A.3: SHA-256, zero-length salt and info (the helper itself is right)."""
    okm = rfc5869_hkdf_sha256(b"\x0b" * 22, b"", 42)
    assert okm.hex() == (
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
    )


@pytest.mark.parametrize("material", [KEY_A, KEY_B], ids=["key-a", "key-b"])
@pytest.mark.parametrize(
    ("profile_id", "version", "purpose"),
    [("embedded", 1, "synthetic-latent"), ("embedded", 3, TARGET_PURPOSE), ("ffhq", 1, "synthetic-latent")],
)
def test_seed_matches_an_independent_hkdf(
    material: bytes, profile_id: str, version: int, purpose: str
) -> None:
    key = ProtectionKey(material, version=version)
    seed = derive_seed(key, profile_id, purpose)
    assert seed == expected_seed(material, profile_id, version, purpose)
    assert 0 <= seed < 2**63


def test_seed_regression_vector() -> None:
    assert expected_seed(KEY_A, "embedded", 1, "synthetic-latent") == KEY_A_LATENT_SEED
    assert derive_seed(ProtectionKey(KEY_A), "embedded", "synthetic-latent") == KEY_A_LATENT_SEED
    # stable across calls and across equal key objects
    assert derive_seed(ProtectionKey(bytes(KEY_A)), "embedded", "synthetic-latent") == KEY_A_LATENT_SEED


def test_profile_version_purpose_and_key_each_change_the_seed() -> None:
    base = derive_seed(ProtectionKey(KEY_A), "embedded", "synthetic-latent")
    others = {
        derive_seed(ProtectionKey(KEY_A), "other-profile", "synthetic-latent"),
        derive_seed(ProtectionKey(KEY_A, version=2), "embedded", "synthetic-latent"),
        derive_seed(ProtectionKey(KEY_A), "embedded", TARGET_PURPOSE),
        derive_seed(ProtectionKey(KEY_B), "embedded", "synthetic-latent"),
    }
    assert base not in others
    assert len(others) == 4


def test_key_id_does_not_change_the_seed() -> None:
    assert derive_seed(ProtectionKey(KEY_A, key_id="x"), "embedded", "p") == derive_seed(
        ProtectionKey(KEY_A, key_id="y"), "embedded", "p"
    )


def test_key_generator_repeats_its_draws() -> None:
    key = ProtectionKey(KEY_A)
    first = torch.randn(4, 100, generator=key_generator(key, "embedded", "synthetic-latent"))
    second = torch.randn(4, 100, generator=key_generator(key, "embedded", "synthetic-latent"))
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    other = torch.randn(4, 100, generator=key_generator(ProtectionKey(KEY_B), "embedded", "synthetic-latent"))
    assert not torch.equal(first, other)
    generator = key_generator(key, "embedded", "synthetic-latent")
    assert generator.device.type == "cpu"
    assert generator.initial_seed() == KEY_A_LATENT_SEED


@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_material_of_the_wrong_length_is_refused(length: int) -> None:
    with pytest.raises(InvalidKeyError, match="32 bytes"):
        ProtectionKey(b"k" * length)


def test_material_that_is_not_bytes_is_refused() -> None:
    with pytest.raises(InvalidKeyError):
        ProtectionKey(bytearray(32))  # type: ignore[arg-type]
    with pytest.raises(InvalidKeyError):
        ProtectionKey("k" * 32)  # type: ignore[arg-type]


@pytest.mark.parametrize("version", [0, -1])
def test_version_below_one_is_refused(version: int) -> None:
    with pytest.raises(InvalidKeyError, match="version"):
        ProtectionKey(KEY_A, version=version)


def test_invalid_key_error_is_a_value_error_with_exit_code_4() -> None:
    with pytest.raises(ValueError) as caught:
        ProtectionKey(b"short")
    assert caught.value.exit_code == 4  # type: ignore[attr-defined]


def test_as_key_wraps_bytes_and_passes_keys_through() -> None:
    key = ProtectionKey(KEY_A)
    assert as_key(key) is key
    assert as_key(KEY_A) == key
    with pytest.raises(InvalidKeyError):
        as_key(b"\x00" * 31)


def test_generated_keys_are_random_and_valid() -> None:
    first, second = ProtectionKey.generate(key_id="a"), ProtectionKey.generate()
    assert len(first.material) == KEY_BYTES and first.key_id == "a" and first.version == 1
    assert first.material != second.material


def test_from_file_reads_32_raw_bytes(tmp_path: Path) -> None:
    path = tmp_path / "alice.bin"
    path.write_bytes(KEY_B)
    key = ProtectionKey.from_file(path, version=2)
    assert key.material == KEY_B
    assert key.version == 2
    assert key.key_id == "alice"
    assert derive_seed(key, "embedded", "p") == expected_seed(KEY_B, "embedded", 2, "p")


@pytest.mark.parametrize("length", [31, 33, 0])
def test_from_file_refuses_other_lengths(tmp_path: Path, length: int) -> None:
    path = tmp_path / "key.bin"
    path.write_bytes(b"\x01" * length)
    with pytest.raises(InvalidKeyError, match=f"not {length}"):
        ProtectionKey.from_file(path)


def test_from_file_refuses_a_missing_file_and_a_folder(tmp_path: Path) -> None:
    with pytest.raises(InvalidKeyError, match="cannot read"):
        ProtectionKey.from_file(tmp_path / "missing.bin")
    with pytest.raises(InvalidKeyError, match="cannot read"):
        ProtectionKey.from_file(tmp_path)


def test_from_file_refuses_a_bad_version(tmp_path: Path) -> None:
    path = tmp_path / "key.bin"
    path.write_bytes(KEY_A)
    with pytest.raises(InvalidKeyError, match="version"):
        ProtectionKey.from_file(path, version=0)


def test_material_never_appears_in_repr_or_str() -> None:
    key = ProtectionKey(KEY_B, key_id="k1")
    for text in (repr(key), str(key)):
        assert KEY_B.hex() not in text
        assert repr(KEY_B) not in text
        assert "material" not in text
        assert "k1" in text


# ---- key-derived target map ------------------------------------------------------------------


def test_target_map_is_deterministic_per_key() -> None:
    first = key_target_map(ProtectionKey(KEY_A), "embedded", 128, 64)
    second = key_target_map(ProtectionKey(KEY_A), "embedded", 128, 64)
    assert first.shape == (128, 128) and first.dtype == torch.float32
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_target_map_differs_between_keys_profiles_and_versions() -> None:
    base = key_target_map(ProtectionKey(KEY_A), "embedded", 128, 64)
    for other in (
        key_target_map(ProtectionKey(KEY_B), "embedded", 128, 64),
        key_target_map(ProtectionKey(KEY_A, version=2), "embedded", 128, 64),
        key_target_map(ProtectionKey(KEY_A), "ffhq", 128, 64),
    ):
        # unrelated maps, not small perturbations of one another
        assert (other - base).norm() > 0.5 * base.norm()


@pytest.mark.parametrize("rank", [1, 16, 64, 128])
def test_target_map_has_the_requested_rank(rank: int) -> None:
    mapping = key_target_map(ProtectionKey(KEY_A), "embedded", 128, rank)
    # float32 map: matrix_rank's default float32 tolerance absorbs the rounding of the zero directions
    assert int(torch.linalg.matrix_rank(mapping)) == rank
    # s * B P^T: all non-zero singular values equal s = sqrt(dim / rank), the others vanish
    singular = torch.linalg.svdvals(mapping.double())
    torch.testing.assert_close(
        singular[:rank], torch.full((rank,), (128 / rank) ** 0.5, dtype=torch.float64), atol=1e-5, rtol=1e-5
    )
    assert bool((singular[rank:] < 1e-4).all())


@pytest.mark.parametrize("rank", [0, 129])
def test_target_map_refuses_a_rank_out_of_range(rank: int) -> None:
    with pytest.raises(ValueError, match="rank"):
        key_target_map(ProtectionKey(KEY_A), "embedded", 128, rank)


@pytest.mark.parametrize("rank", [16, 64])
def test_target_map_preserves_expected_squared_distances(rank: int) -> None:
    mapping = key_target_map(ProtectionKey(KEY_B), "embedded", 128, rank).double()
    vectors = torch.randn(4000, 128, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    ratio = ((vectors @ mapping.T).pow(2).sum(dim=1).mean() / vectors.pow(2).sum(dim=1).mean()).item()
    assert ratio == pytest.approx(1.0, abs=0.05)


def _subspace(dim: int, count: int) -> torch.Tensor:
    draw = torch.randn(dim, count, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    return torch.linalg.qr(draw).Q.float()


def test_target_map_in_a_subspace_lands_inside_it_and_keeps_its_scale() -> None:
    subspace = _subspace(128, 80)
    mapping = key_target_map(ProtectionKey(KEY_A), "embedded", 128, 64, subspace).double()
    outside = mapping - subspace.double() @ (subspace.double().T @ mapping)
    assert outside.norm() < 1e-5 * mapping.norm()
    singular = torch.linalg.svdvals(mapping)
    torch.testing.assert_close(
        singular[:64], torch.full((64,), 2**0.5, dtype=torch.float64), atol=1e-5, rtol=1e-5
    )
    assert bool((singular[64:] < 1e-4).all())
    # the source side is the key's own draw either way: the same directions of the photo are kept
    whole = key_target_map(ProtectionKey(KEY_A), "embedded", 128, 64).double()
    kept = torch.linalg.svd(mapping).Vh[:64]
    kept_whole = torch.linalg.svd(whole).Vh[:64]
    torch.testing.assert_close(kept.T @ kept, kept_whole.T @ kept_whole, atol=1e-5, rtol=0)


def test_target_map_in_a_subspace_differs_between_keys() -> None:
    subspace = _subspace(128, 64)
    first = key_target_map(ProtectionKey(KEY_A), "embedded", 128, 64, subspace)
    second = key_target_map(ProtectionKey(KEY_B), "embedded", 128, 64, subspace)
    assert (first - second).norm() > 0.5 * first.norm()


def test_target_map_with_a_source_subspace_reads_the_identity_along_it_only() -> None:
    source = _subspace(128, 48)
    mapping = key_target_map(ProtectionKey(KEY_A), "embedded", 128, 32, source_subspace=source).double()
    # what lies off the source axes does not reach the target
    off_axes = torch.eye(128, dtype=torch.float64) - source.double() @ source.double().T
    assert (mapping @ off_axes).norm() < 1e-5 * mapping.norm()
    singular = torch.linalg.svdvals(mapping)
    torch.testing.assert_close(
        singular[:32], torch.full((32,), 2.0, dtype=torch.float64), atol=1e-5, rtol=1e-5
    )
    assert bool((singular[32:] < 1e-4).all())
    # the target side is the key's own draw either way
    whole = key_target_map(ProtectionKey(KEY_A), "embedded", 128, 32).double()
    reached = torch.linalg.svd(mapping).U[:, :32]
    reached_whole = torch.linalg.svd(whole).U[:, :32]
    torch.testing.assert_close(reached @ reached.T, reached_whole @ reached_whole.T, atol=1e-5, rtol=0)
    other_key = key_target_map(ProtectionKey(KEY_B), "embedded", 128, 32, source_subspace=source).double()
    assert (other_key - mapping).norm() > 0.5 * mapping.norm()


@pytest.mark.parametrize("side", ["target", "source"])
@pytest.mark.parametrize("shape", [(128, 32), (64, 80), (128,)])
def test_target_map_refuses_a_subspace_of_the_wrong_shape(side: str, shape: tuple[int, ...]) -> None:
    axes = {"subspace" if side == "target" else "source_subspace": torch.zeros(shape)}
    with pytest.raises(ValueError, match=f"{side} subspace"):
        key_target_map(ProtectionKey(KEY_A), "embedded", 128, 64, **axes)


def test_target_identity_maps_around_the_centre() -> None:
    mapping = key_target_map(ProtectionKey(KEY_A), "embedded", 8, 4)
    centre = torch.arange(8, dtype=torch.float32)
    embeddings = centre + torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    targets = target_identity(embeddings, centre, mapping)
    torch.testing.assert_close(targets, centre + (embeddings - centre) @ mapping.T)
    # the centre maps onto itself
    torch.testing.assert_close(target_identity(centre[None], centre, mapping), centre[None])


# ---- the key's synthetic code --------------------------------------------------------------------


def _directions(count: int, dim: int = 128) -> torch.Tensor:
    return torch.randn(count, dim, generator=torch.Generator().manual_seed(3))


def test_synthetic_code_without_identity_is_the_keys_seeded_draw() -> None:
    key = ProtectionKey(KEY_A)
    expected = torch.randn(1, 100, generator=key_generator(key, "embedded", LATENT_PURPOSE))
    for direction in _directions(2):
        torch.testing.assert_close(synthetic_code(key, "embedded", 100, direction[None], 0.0), expected)


@pytest.mark.parametrize("z_dim", [100, 512])
def test_synthetic_code_depends_on_the_identity_smoothly_and_keeps_a_gaussian_length(z_dim: int) -> None:
    key = ProtectionKey(KEY_A)
    person, other = _directions(2)
    nearby = person + 0.2 * _directions(3)[2]  # another photo of the same person
    codes = [synthetic_code(key, "embedded", z_dim, e[None], 0.6) for e in (person, nearby, other)]
    assert codes[0].shape == (1, z_dim)
    torch.testing.assert_close(codes[0], synthetic_code(key, "embedded", z_dim, person[None], 0.6))
    assert (codes[0] - codes[1]).norm() < 0.5 * (codes[0] - codes[2]).norm()
    # the length of the identity part matches a draw's, so the mixed code stays in distribution
    assert codes[0].norm().item() == pytest.approx(z_dim**0.5, rel=0.25)
    # only the direction of the centred embedding counts
    torch.testing.assert_close(codes[0], synthetic_code(key, "embedded", z_dim, 3.0 * person[None], 0.6))


def test_synthetic_code_of_one_identity_is_unrelated_under_another_key() -> None:
    person = _directions(1)
    first = synthetic_code(ProtectionKey(KEY_A), "embedded", 100, person, 0.6)
    second = synthetic_code(ProtectionKey(KEY_B), "embedded", 100, person, 0.6)
    assert (first - second).norm() > 0.8 * first.norm()


@pytest.mark.parametrize("weight", [-0.1, 1.5])
def test_synthetic_code_refuses_a_weight_out_of_range(weight: float) -> None:
    with pytest.raises(ValueError, match="identity_weight"):
        synthetic_code(ProtectionKey(KEY_A), "embedded", 100, _directions(1), weight)
