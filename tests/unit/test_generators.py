"""Generators: latent layouts, the DigiFace DCGAN (strict loading, mapping/synthesis split, landmark
template), and the similarity alignment onto a generator's template."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from faceanonymixer.faces.alignment import FaceAligner, crop_to_template, similarity_to_template
from faceanonymixer.faces.datasets import list_identity_images
from faceanonymixer.faces.imageio import load_image
from faceanonymixer.models.dcgan import (
    CENTRE_CELLS,
    DIGIFACE_LANDMARKS,
    IMAGE_SIZE,
    Z_DIM,
    DCGANGenerator,
    DigiFaceDCGAN,
    centre_cells,
    default_weights_path,
    load_digiface_dcgan,
)
from faceanonymixer.models.generator_base import STYLEGAN2_WPLUS_LAYOUT, LatentLayout, LatentRole
from faceanonymixer.models.generators import GENERATORS, load_generator
from faceanonymixer.models.latent_encoder import LatentEncoder, load_latent_encoder, save_latent_encoder
from faceanonymixer.utils.errors import ModelFormatError, NoFaceError
from faceanonymixer.utils.files import file_sha256

KEY, OPT, REAL = LatentRole.KEY, LatentRole.OPTIMISED, LatentRole.REAL


@pytest.fixture(scope="module")
def network() -> DigiFaceDCGAN:
    try:
        default_weights_path()
    except ModelFormatError as error:
        pytest.skip(str(error))
    return load_digiface_dcgan()


@pytest.fixture(scope="module")
def generator(network: DigiFaceDCGAN) -> DCGANGenerator:
    return DCGANGenerator(network)


# ---- latent layouts --------------------------------------------------------------------------


def test_layout_rows_and_shape() -> None:
    layout = LatentLayout(roles=(REAL, KEY, OPT, OPT, REAL, KEY), width=7)
    assert layout.shape == (6, 7)
    assert layout.rows(KEY) == [1, 5]
    assert layout.rows(OPT) == [2, 3]
    assert layout.rows(REAL) == [0, 4]
    assert layout.key_blend == 0.0


def test_layout_from_counts_orders_key_optimised_real() -> None:
    layout = LatentLayout.from_counts(4, key=1, optimised=2, real=3, key_blend=0.25)
    assert layout.roles == (KEY, OPT, OPT, REAL, REAL, REAL)
    assert layout.shape == (6, 4) and layout.key_blend == 0.25


@pytest.mark.parametrize(
    ("roles", "width", "key_blend"),
    [((), 512, 0.0), ((OPT,), 0, 0.0), ((OPT,), -1, 0.0), ((OPT,), 8, -0.1), ((OPT,), 8, 1.5)],
)
def test_layout_validation(roles: tuple[LatentRole, ...], width: int, key_blend: float) -> None:
    with pytest.raises(ValueError):
        LatentLayout(roles=roles, width=width, key_blend=key_blend)


def test_layout_accepts_the_key_blend_bounds() -> None:
    assert LatentLayout(roles=(OPT,), width=1, key_blend=0.0).key_blend == 0.0
    assert LatentLayout(roles=(OPT,), width=1, key_blend=1.0).key_blend == 1.0


def test_layout_key_blend_per_row() -> None:
    layout = LatentLayout(roles=(REAL, OPT, OPT), width=2, key_blend=(0.0, 0.7, 0.2))
    assert layout.key_blend_of([1, 2]) == (0.7, 0.2)
    assert LatentLayout(roles=(OPT, OPT), width=2, key_blend=0.3).key_blend_of([0, 1]) == (0.3, 0.3)


@pytest.mark.parametrize("key_blend", [(0.5,), (0.5, 0.5, 0.5), (0.5, 1.2)])
def test_layout_rejects_a_per_row_blend_of_the_wrong_length_or_range(key_blend: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="key_blend"):
        LatentLayout(roles=(OPT, OPT), width=2, key_blend=key_blend)


def test_stylegan2_layout_is_the_published_mixing() -> None:
    layout = STYLEGAN2_WPLUS_LAYOUT
    assert layout.shape == (18, 512)
    assert layout.rows(KEY) == [0, 1, 2]
    assert layout.rows(OPT) == [3, 4, 5, 6, 7]
    assert layout.rows(REAL) == list(range(8, 18))
    assert layout.key_blend == 0.0


# ---- the DigiFace DCGAN ----------------------------------------------------------------------


def test_package_weights_load_strictly_frozen(network: DigiFaceDCGAN) -> None:
    assert not network.training
    assert all(not parameter.requires_grad for parameter in network.parameters())
    # strict: every tensor of the checkpoint has a home, and the other way round
    state = torch.load(default_weights_path(), map_location="cpu", weights_only=True)["netG_state_dict"]
    assert set(state) == set(network.state_dict())
    for name, tensor in network.state_dict().items():
        torch.testing.assert_close(tensor, state[name], rtol=0, atol=0)


def test_a_checkpoint_without_the_generator_key_is_a_model_format_error(tmp_path: Path) -> None:
    path = tmp_path / "other.tar"
    torch.save({"netD_state_dict": DigiFaceDCGAN().state_dict()}, path)
    with pytest.raises(ModelFormatError, match="netG_state_dict"):
        load_digiface_dcgan(path)


def test_a_checkpoint_with_other_layer_shapes_is_a_model_format_error(tmp_path: Path) -> None:
    state = DigiFaceDCGAN().state_dict()
    state["main.0.weight"] = torch.zeros(100, 256, 4, 4)
    path = tmp_path / "shapes.tar"
    torch.save({"netG_state_dict": state}, path)
    with pytest.raises(ModelFormatError, match="layer shapes"):
        load_digiface_dcgan(path)


def test_a_checkpoint_with_a_missing_layer_is_a_model_format_error(tmp_path: Path) -> None:
    state = DigiFaceDCGAN().state_dict()
    del state["main.12.weight"]
    path = tmp_path / "missing.tar"
    torch.save({"netG_state_dict": state}, path)
    with pytest.raises(ModelFormatError):
        load_digiface_dcgan(path)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04truncated zip"], ids=["empty", "truncated-zip"])
def test_an_empty_or_truncated_file_is_a_model_format_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "weights.tar"
    path.write_bytes(content)
    with pytest.raises(ModelFormatError):
        load_digiface_dcgan(path)


def test_garbage_bytes_are_a_model_format_error(tmp_path: Path) -> None:
    path = tmp_path / "weights.tar"
    path.write_bytes(b"garbage " * 200)
    with pytest.raises(ModelFormatError):
        load_digiface_dcgan(path)


def test_a_missing_weights_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_digiface_dcgan(tmp_path / "nowhere.tar")


def test_default_generator_layout_optimises_all_sixteen_cells(generator: DCGANGenerator) -> None:
    layout = generator.layout
    assert layout.shape == (16, 512)
    assert layout.rows(OPT) == list(range(16))
    assert layout.rows(KEY) == [] and layout.rows(REAL) == []
    assert layout.key_blend == 0.5
    assert generator.z_dim == Z_DIM and generator.image_size == IMAGE_SIZE
    np.testing.assert_array_equal(generator.landmark_template, DIGIFACE_LANDMARKS)
    # a copy: editing one generator's template leaves the constant alone
    assert generator.landmark_template is not DIGIFACE_LANDMARKS


def test_centre_cells_take_their_own_key_blend(network: DigiFaceDCGAN) -> None:
    generator = DCGANGenerator(network, key_blend=0.2, centre_key_blend=0.7)
    weights = generator.layout.key_blend_of(range(16))
    assert [cell for cell, weight in enumerate(weights) if weight == 0.7] == list(CENTRE_CELLS)
    assert [cell for cell, weight in enumerate(weights) if weight == 0.2] == [
        cell for cell in range(16) if cell not in CENTRE_CELLS
    ]
    # row 4 * y + x: the centre cells are (1, 1), (1, 2), (2, 1), (2, 2)
    assert CENTRE_CELLS == (4 * 1 + 1, 4 * 1 + 2, 4 * 2 + 1, 4 * 2 + 2)


def test_chosen_cells_are_optimised_and_the_rest_real(network: DigiFaceDCGAN) -> None:
    generator = DCGANGenerator(network, optimised_cells=(5, 6, 9, 10), key_blend=0.0)
    assert generator.layout.rows(OPT) == [5, 6, 9, 10]
    assert generator.layout.rows(REAL) == [c for c in range(16) if c not in (5, 6, 9, 10)]
    assert generator.layout.key_blend == 0.0


def test_mapping_then_synthesis_is_the_plain_network(generator: DCGANGenerator) -> None:
    z = torch.randn(5, Z_DIM, generator=torch.Generator().manual_seed(3))
    latent = generator.mapping(z)
    assert latent.shape == (5, 16, 512)
    assert bool((latent >= 0).all()), "the latent rows are post-ReLU features"
    images = generator.synthesize(latent)
    assert images.shape == (5, 3, IMAGE_SIZE, IMAGE_SIZE)
    torch.testing.assert_close(images, generator.network(z), rtol=1e-5, atol=1e-5)
    assert float(images.min()) >= -1.0 and float(images.max()) <= 1.0
    # faces, not a constant: every sample uses a good part of the range
    assert bool((images.amax(dim=(1, 2, 3)) - images.amin(dim=(1, 2, 3)) > 1.0).all())


def test_latent_rows_are_the_first_feature_map_cells(generator: DCGANGenerator) -> None:
    z = torch.randn(2, Z_DIM, generator=torch.Generator().manual_seed(4))
    features = generator.network.main[:3](z.reshape(2, Z_DIM, 1, 1))
    latent = generator.mapping(z)
    # row 4 * y + x is the spatial cell (y, x)
    torch.testing.assert_close(latent[:, 4 * 1 + 2], features[:, :, 1, 2])
    torch.testing.assert_close(latent[:, 4 * 3 + 0], features[:, :, 3, 0])


def test_the_second_feature_map_as_latent(network: DigiFaceDCGAN) -> None:
    generator = DCGANGenerator(network, blocks=2, key_blend=0.2, centre_key_blend=0.7)
    assert generator.layout.shape == (64, 256)
    z = torch.randn(3, Z_DIM, generator=torch.Generator().manual_seed(6))
    latent = generator.mapping(z)
    features = network.main[:6](z.reshape(3, Z_DIM, 1, 1))
    # row 8 * y + x is the spatial cell (y, x) of the 8 x 8 map
    torch.testing.assert_close(latent[:, 8 * 5 + 2], features[:, :, 5, 2])
    torch.testing.assert_close(generator.synthesize(latent), network(z), rtol=1e-5, atol=1e-5)
    # the centre half: rows and columns 2 to 5, eyes, nose and mouth as the 4 x 4 map's centre
    centre = centre_cells(8)
    assert centre == tuple(8 * y + x for y in range(2, 6) for x in range(2, 6))
    weights = generator.layout.key_blend_of(range(64))
    assert [cell for cell, weight in enumerate(weights) if weight == 0.7] == list(centre)


def test_only_the_first_two_feature_maps_can_be_the_latent(network: DigiFaceDCGAN) -> None:
    with pytest.raises(ValueError, match="after 1 or 2 blocks"):
        DCGANGenerator(network, blocks=3)


def test_synthesis_is_differentiable_in_the_latent(generator: DCGANGenerator) -> None:
    latent = generator.mapping(torch.randn(1, Z_DIM, generator=torch.Generator().manual_seed(5)))
    latent = latent.clone().requires_grad_(True)
    generator.synthesize(latent).sum().backward()
    assert latent.grad is not None and float(latent.grad.abs().sum()) > 0


def test_blend_is_linear_between_real_and_key(generator: DCGANGenerator) -> None:
    real, key = torch.zeros(1, 16, 512), torch.ones(1, 16, 512)
    torch.testing.assert_close(generator.blend(real, key, 0.0), real)
    torch.testing.assert_close(generator.blend(real, key, 1.0), key)
    torch.testing.assert_close(generator.blend(real, key, 0.25), torch.full((1, 16, 512), 0.25))


def test_blend_takes_one_weight_per_row(generator: DCGANGenerator) -> None:
    real, key = torch.zeros(2, 16, 512), torch.ones(2, 16, 512)
    weights = [0.1 * (cell % 4) for cell in range(16)]
    blended = generator.blend(real, key, weights)
    torch.testing.assert_close(blended[:, :, 0], torch.tensor(weights).expand(2, 16))
    assert bool((blended == blended[:, :, :1]).all()), "one weight for a whole row"
    with pytest.raises(ValueError, match="15 blend weights for 16 rows"):
        generator.blend(real, key, weights[:15])


def test_load_generator_by_name() -> None:
    assert "digiface-dcgan" in GENERATORS.names()
    loaded = load_generator("digiface-dcgan")
    assert isinstance(loaded, DCGANGenerator)
    assert not loaded.training and all(not p.requires_grad for p in loaded.parameters())
    with pytest.raises(ValueError, match="unknown generator"):
        load_generator("no-such-generator")


def _to_256(sample: torch.Tensor) -> np.ndarray:
    pixels = ((sample + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return np.asarray(Image.fromarray(pixels).resize((256, 256), Image.Resampling.BICUBIC))


def test_landmark_template_matches_dlib_on_generated_faces(generator: DCGANGenerator) -> None:
    """Re-measure DIGIFACE_LANDMARKS: dlib's five points on seeded samples, upscaled 4x."""
    z = torch.randn(32, Z_DIM, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        samples = generator.network(z)
    aligner = FaceAligner()
    found = []
    for sample in samples:
        try:
            found.append(aligner.align(_to_256(sample)).landmarks)
        except NoFaceError:
            continue
    assert len(found) >= 0.75 * len(samples), f"dlib found a face in only {len(found)} of {len(samples)}"
    # 256 px -> 64 px with pixel centres at integers: x64 = x256 * s + (s - 1) / 2, s = 1/4
    scale = 64 / 256
    mean = np.mean(found, axis=0) * scale + (scale - 1) / 2
    distances = np.linalg.norm(mean - DIGIFACE_LANDMARKS, axis=1)
    assert distances.max() < 2.5, f"template off by {distances.round(2)} px"


# ---- the latent encoder's file format ---------------------------------------------------------


def test_latent_encoder_round_trips_with_its_sha256(tmp_path: Path) -> None:
    torch.manual_seed(0)
    encoder = LatentEncoder(rows=2, width=8)
    path = tmp_path / "encoder.pt"
    digest = save_latent_encoder(encoder, path)
    assert digest == file_sha256(path) and len(digest) == 64
    loaded = load_latent_encoder(path, sha256=digest)
    assert (loaded.rows, loaded.width, loaded.image_size) == (2, 8, 64)
    assert not loaded.training and all(not p.requires_grad for p in loaded.parameters())
    images = torch.rand(3, 3, 64, 64) * 2 - 1
    assert loaded(images).shape == (3, 2, 8)
    torch.testing.assert_close(loaded(images), encoder.eval()(images))


def test_latent_encoder_with_another_sha256_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "encoder.pt"
    save_latent_encoder(LatentEncoder(), path)
    with pytest.raises(ModelFormatError, match="SHA-256"):
        load_latent_encoder(path, sha256="0" * 64)


def test_a_dcgan_checkpoint_is_not_a_latent_encoder(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"netG_state_dict": {}}, path)
    with pytest.raises(ModelFormatError, match="latent-encoder"):
        load_latent_encoder(path)


def test_garbage_bytes_are_not_a_latent_encoder(tmp_path: Path) -> None:
    path = tmp_path / "encoder.pt"
    path.write_bytes(b"garbage " * 200)
    with pytest.raises(ModelFormatError):
        load_latent_encoder(path)


# ---- similarity alignment onto a template ----------------------------------------------------


def _similarity(scale: float, degrees: float, shift: tuple[float, float]) -> np.ndarray:
    theta = np.deg2rad(degrees)
    linear = scale * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    return np.hstack([linear, np.array(shift, dtype=np.float64)[:, None]])


@pytest.mark.parametrize(
    ("scale", "degrees", "shift"),
    [(0.3, 12.0, (-20.0, 7.5)), (2.0, -40.0, (3.0, -1.0)), (1.0, 0.0, (0.0, 0.0))],
)
def test_similarity_recovers_a_known_transform(
    scale: float, degrees: float, shift: tuple[float, float]
) -> None:
    points = np.random.default_rng(0).uniform(0, 300, size=(5, 2))
    known = _similarity(scale, degrees, shift)
    template = points @ known[:, :2].T + known[:, 2]
    np.testing.assert_allclose(similarity_to_template(points, template), known, atol=1e-9)


def test_similarity_is_least_squares_and_never_reflects() -> None:
    points = np.random.default_rng(1).uniform(0, 100, size=(5, 2))
    mirrored = points * np.array([-1.0, 1.0])
    transform = similarity_to_template(points, mirrored)
    assert np.linalg.det(transform[:, :2]) > 0
    # noisy targets: the fit is no worse than the true transform
    known = _similarity(0.5, 20.0, (4.0, 2.0))
    noisy = points @ known[:, :2].T + known[:, 2] + np.random.default_rng(2).normal(0, 1.0, size=(5, 2))
    fitted = similarity_to_template(points, noisy)

    def residual(matrix: np.ndarray) -> float:
        return float(np.sum((points @ matrix[:, :2].T + matrix[:, 2] - noisy) ** 2))

    assert residual(fitted) <= residual(known) + 1e-9


def test_similarity_refuses_mismatched_shapes() -> None:
    with pytest.raises(ValueError):
        similarity_to_template(np.zeros((5, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError):
        similarity_to_template(np.zeros((5, 3)), np.zeros((5, 3)))


def test_crop_to_template_puts_marked_points_on_the_template() -> None:
    """Bright dots drawn at landmark positions of a synthetic photo land on the template pixels."""
    known = _similarity(4.0, 15.0, (60.0, 40.0))
    landmarks = DIGIFACE_LANDMARKS @ known[:, :2].T + known[:, 2]
    photo = np.zeros((400, 400, 3), dtype=np.uint8)
    ys, xs = np.mgrid[0:400, 0:400]
    for x, y in landmarks:
        photo[(xs - x) ** 2 + (ys - y) ** 2 <= 5.0**2] = 255
    crop, transform = crop_to_template(photo, landmarks, DIGIFACE_LANDMARKS, 64)
    assert crop.shape == (64, 64, 3) and crop.dtype == np.uint8
    np.testing.assert_allclose(
        landmarks @ transform[:, :2].T + transform[:, 2], DIGIFACE_LANDMARKS, atol=1e-9
    )
    for x, y in DIGIFACE_LANDMARKS:
        assert crop[round(y), round(x)].min() > 150, (x, y)
    assert crop.mean() < 30


def test_crop_to_template_aligns_real_photos(faces_root: Path) -> None:
    """dlib finds the landmarks of a 256 px template crop of a real photo where the transform put them."""
    aligner = FaceAligner()
    template = DIGIFACE_LANDMARKS * 4 + 1.5  # the 64 px template on a 256 px grid
    photos = [path for _, path in list_identity_images(faces_root / "fr_examples", max_images=1)]
    photos += [path for _, path in list_identity_images(faces_root / "deepface", max_images=1)[:3]]
    assert len(photos) >= 6
    for path in photos:
        pixels = load_image(path)
        landmarks = aligner.align(pixels).landmarks
        crop, transform = crop_to_template(pixels, landmarks, template, 256)
        mapped = landmarks @ transform[:, :2].T + transform[:, 2]
        redetected = aligner.align(crop).landmarks
        assert np.linalg.norm(redetected - mapped, axis=1).max() < 3.0, path
        # the least-squares fit leaves each face within a few pixels of the template (1.5 px at 64)
        assert np.linalg.norm(mapped - template, axis=1).mean() < 6.0, path
