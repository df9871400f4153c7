"""e4e encoder: the ``e4e_ffhq_encode.pt`` container, strict loading, W+ assembly, latent_avg.

Expected keys are written out from omertov/encoder4editing ``models/encoders/psp_encoders.py``
(``Encoder4Editing(50, 'ir_se', opts)`` with ``stylegan_size`` 1024), independently of the module
under test; tiny random checkpoints (a quarter of the channels, 64-pixel input) stand in for the
real file, in pSp's save-dict format.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from faceanonymixer.models.e4e import E4EEncoder, Encoder4Editing, load_e4e, n_styles_for
from faceanonymixer.utils.errors import ModelFormatError
from faceanonymixer.utils.files import file_sha256
from unit.test_ir_se50 import Shapes, parameter_count, random_state, reference_trunk_shapes, shapes_of

#: tiny steps: one torch thread (the shared fixture in conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")

#: Encoder4Editing(50, 'ir_se') for stylegan_size 1024, parameters only (from the shapes below)
E4E_PARAMETERS = 267_136_704
TINY = 0.25
TINY_SIZE = 64


def reference_e4e_shapes(width: float = 1.0, n_styles: int = 18) -> Shapes:
    shapes = reference_trunk_shapes(width)
    dim = int(512 * width)
    for index in range(n_styles):
        spatial = 16 if index < 3 else 32 if index < 7 else 64
        for conv in range(int(math.log2(spatial))):  # Conv2d then LeakyReLU: weights at even indices
            shapes[f"styles.{index}.convs.{2 * conv}.weight"] = (dim, dim, 3, 3)
            shapes[f"styles.{index}.convs.{2 * conv}.bias"] = (dim,)
        shapes[f"styles.{index}.linear.weight"] = (dim, dim)  # EqualLinear(out_c, out_c)
        shapes[f"styles.{index}.linear.bias"] = (dim,)
    shapes["latlayer1.weight"] = (dim, int(256 * width), 1, 1)
    shapes["latlayer1.bias"] = (dim,)
    shapes["latlayer2.weight"] = (dim, int(128 * width), 1, 1)
    shapes["latlayer2.bias"] = (dim,)
    return shapes


def e4e_checkpoint(seed: int = 1, *, n_styles: int = 18) -> dict[str, Any]:
    """pSp's save dict: prefixed encoder and decoder weights, opts as a dict, latent_avg."""
    encoder = random_state(reference_e4e_shapes(TINY, n_styles), seed=seed)
    dim = int(512 * TINY)
    decoder = {  # a few of rosinality's generator keys; the StyleGAN2 loader owns them
        "decoder.style.1.weight": torch.randn(dim, dim),
        "decoder.input.input": torch.randn(1, dim, 4, 4),
        "decoder.noises.noise_0": torch.randn(1, 1, 4, 4),
    }
    state: OrderedDict[str, torch.Tensor] = OrderedDict(
        (f"encoder.{key}", value) for key, value in encoder.items()
    )
    state.update(decoder)
    opts = {
        "exp_dir": "experiment/ffhq",
        "dataset_type": "ffhq_encode",
        "encoder_type": "Encoder4Editing",
        "stylegan_size": 2 ** ((n_styles + 2) // 2),
        "start_from_latent_avg": True,
        "progressive_steps": [0, 20000, 22000],
        "checkpoint_path": None,
        "lpips_type": "alex",
        "id_lambda": 0.5,
    }
    return {
        "state_dict": state,
        "opts": opts,
        "latent_avg": torch.randn(n_styles, dim, generator=torch.Generator().manual_seed(seed)),
    }


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    checkpoint = e4e_checkpoint()
    path = tmp_path_factory.mktemp("e4e") / "e4e_ffhq_encode.pt"
    torch.save(checkpoint, path)
    return path, checkpoint


def variant(checkpoint: dict[str, Any], *, n_styles: int = 18) -> dict[str, Any]:
    """A copy that can be edited without touching ``checkpoint`` (tensors shared), with fewer styles."""
    dropped = tuple(f"encoder.styles.{index}." for index in range(n_styles, 18))
    state = OrderedDict(
        (key, value) for key, value in checkpoint["state_dict"].items() if not key.startswith(dropped)
    )
    opts = {**checkpoint["opts"], "stylegan_size": 2 ** ((n_styles + 2) // 2)}
    return {
        **checkpoint,
        "state_dict": state,
        "opts": opts,
        "latent_avg": checkpoint["latent_avg"][:n_styles],
    }


def faces(count: int = 2, seed: int = 0, size: int = TINY_SIZE) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 3, size, size, generator=generator) * 2 - 1


def tiny_encoder(model: E4EEncoder) -> Encoder4Editing:
    """The loaded encoder, set to take the tiny 64-pixel test images (no weights change)."""
    model.encoder.image_size = model.image_size = TINY_SIZE
    return model.encoder


def test_full_size_keys_and_shapes_are_the_references() -> None:
    with torch.device("meta"):
        encoder = Encoder4Editing(50, "ir_se", 18)
    assert shapes_of(encoder.state_dict()) == reference_e4e_shapes()
    assert parameter_count(reference_e4e_shapes()) == E4E_PARAMETERS
    assert sum(parameter.numel() for parameter in encoder.parameters()) == E4E_PARAMETERS
    assert (encoder.style_count, encoder.coarse_ind, encoder.middle_ind) == (18, 3, 7)
    assert n_styles_for(1024) == 18 and n_styles_for(256) == 14


def test_full_size_output_shape_on_meta() -> None:
    with torch.device("meta"):
        model = E4EEncoder(Encoder4Editing(), torch.empty(18, 512)).eval()
        codes = model(torch.empty(2, 3, 256, 256))
    assert codes.shape == (2, 18, 512)
    assert model.stylegan_size == 1024


def test_tiny_checkpoint_loads_strictly_and_ignores_the_decoder(
    tiny_file: tuple[Path, dict[str, Any]],
) -> None:
    path, checkpoint = tiny_file
    model = load_e4e(path, sha256=file_sha256(path))
    assert not model.training and not any(parameter.requires_grad for parameter in model.parameters())
    assert (model.n_styles, model.style_dim, model.stylegan_size) == (18, 128, 1024)
    expected = {
        key.removeprefix("encoder."): value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith("encoder.")
    }
    fresh = Encoder4Editing(width=TINY)
    result = fresh.load_state_dict(expected, strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    loaded = model.encoder.state_dict()
    assert list(loaded) == list(expected)
    assert all(torch.equal(loaded[key], expected[key]) for key in expected)
    assert model.latent_avg is not None and torch.equal(model.latent_avg, checkpoint["latent_avg"])


def test_codes_are_the_encoder_plus_latent_avg(tiny_file: tuple[Path, dict[str, Any]]) -> None:
    path, checkpoint = tiny_file
    model = load_e4e(path)
    encoder = tiny_encoder(model)
    images = faces()
    with torch.no_grad():
        codes = model(images)
        offsets = encoder(images)
    assert codes.shape == (2, 18, 128)
    # pSp: codes + latent_avg.repeat(B, 1, 1)
    assert torch.equal(codes, offsets + checkpoint["latent_avg"].repeat(2, 1, 1))


def test_w_plus_is_w0_plus_pyramid_deltas(tiny_file: tuple[Path, dict[str, Any]]) -> None:
    """Rebuild e4e's forward by hand from the submodules: taps 6, 20, 23 and the FPN."""
    encoder = tiny_encoder(load_e4e(tiny_file[0]))
    images = faces(seed=4)
    with torch.no_grad():
        x = encoder.input_layer(images)
        taps = {}
        for index, unit in enumerate(encoder.body):
            x = unit(x)
            taps[index] = x
        c1, c2, c3 = taps[6], taps[20], taps[23]
        assert (c1.shape[-1], c2.shape[-1], c3.shape[-1]) == (16, 8, 4)  # 64 px input
        up = lambda a, b: F.interpolate(a, size=b.shape[-2:], mode="bilinear", align_corners=True) + b  # noqa: E731
        p2 = up(c3, encoder.latlayer1(c2))
        p1 = up(p2, encoder.latlayer2(c1))
        w0 = encoder.styles[0](c3)
        codes = encoder(images)
        assert torch.equal(codes[:, 0], w0)
        for index, features in ((1, c3), (2, c3), (3, p2), (6, p2), (7, p1), (17, p1)):
            assert torch.equal(codes[:, index], w0 + encoder.styles[index](features)), index
        encoder.progressive_stage = 0  # e4e's WTraining stage: w0 on every layer
        assert torch.equal(encoder(images), w0[:, None].expand(2, 18, 128))
        encoder.progressive_stage = 3  # Delta3Training: deltas on layers 1-3 only
        staged = encoder(images)
        assert torch.equal(staged[:, 3], codes[:, 3]) and torch.equal(staged[:, 4], w0)


def test_state_dict_round_trip_is_bit_identical(tiny_file: tuple[Path, dict[str, Any]]) -> None:
    model = load_e4e(tiny_file[0])
    tiny_encoder(model)
    images = faces(seed=7)
    with torch.no_grad():
        first = model(images)
        copy = E4EEncoder(Encoder4Editing(width=TINY, image_size=TINY_SIZE), torch.zeros(18, 128)).eval()
        result = copy.load_state_dict(model.state_dict(), strict=True)
        assert result.missing_keys == [] and result.unexpected_keys == []
        second = copy(images)
    assert torch.equal(first, second)


def test_latent_avg_forms(tiny_file: tuple[Path, dict[str, Any]]) -> None:
    """A (512,) latent_avg broadcasts like pSp's repeat; without start_from_latent_avg none is added."""
    single = variant(tiny_file[1], n_styles=14)
    single["latent_avg"] = single["latent_avg"][0]
    model = load_e4e(single)
    assert (model.n_styles, model.stylegan_size) == (14, 256)
    encoder = tiny_encoder(model)
    images = faces(1, seed=3)
    with torch.no_grad():
        assert torch.equal(model(images), encoder(images) + single["latent_avg"].repeat(1, 1, 1))
    plain = variant(tiny_file[1], n_styles=14)
    plain["opts"]["start_from_latent_avg"] = False
    del plain["latent_avg"]
    model = load_e4e(plain)
    assert model.latent_avg is None
    encoder = tiny_encoder(model)
    with torch.no_grad():
        assert torch.equal(model(images), encoder(images))


@pytest.mark.parametrize(
    "change",
    ["missing", "unexpected", "opts_size", "pSp_encoder", "no_latent_avg", "bad_latent_avg", "no_state"],
)
def test_format_errors_are_refused(change: str, tiny_file: tuple[Path, dict[str, Any]]) -> None:
    checkpoint = variant(tiny_file[1])
    state = checkpoint["state_dict"]
    if change == "missing":
        del state["encoder.styles.17.linear.bias"]
    elif change == "unexpected":
        state["encoder.styles.18.linear.bias"] = torch.zeros(128)
    elif change == "opts_size":
        checkpoint["opts"]["stylegan_size"] = 512
    elif change == "pSp_encoder":
        checkpoint["opts"]["encoder_type"] = "GradualStyleEncoder"
    elif change == "no_latent_avg":
        del checkpoint["latent_avg"]
    elif change == "bad_latent_avg":
        checkpoint["latent_avg"] = torch.zeros(17, 128)
    else:
        checkpoint = {"encoder": state}
    with pytest.raises(ModelFormatError):
        load_e4e(checkpoint)


def test_unreadable_file_and_wrong_digest_are_refused(
    tmp_path: Path, tiny_file: tuple[Path, dict[str, Any]]
) -> None:
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelFormatError):
        load_e4e(tmp_path / "junk.pt")
    with pytest.raises(ModelFormatError, match="SHA-256"):
        load_e4e(tiny_file[0], sha256="0" * 64)


def test_opts_without_stylegan_size_use_the_dataset_type(tiny_file: tuple[Path, dict[str, Any]]) -> None:
    checkpoint = variant(tiny_file[1])
    del checkpoint["opts"]["stylegan_size"]
    assert load_e4e(checkpoint).n_styles == 18
    checkpoint["opts"]["dataset_type"] = "cars_encode"  # 512 px: 16 styles, not the 18 stored
    with pytest.raises(ModelFormatError, match="16 styles"):
        load_e4e(checkpoint)


def test_input_checks() -> None:
    encoder = Encoder4Editing(width=TINY, image_size=TINY_SIZE).eval()
    with pytest.raises(ValueError):
        encoder(torch.zeros(1, 3, 128, 128))
    with pytest.raises(ValueError):
        Encoder4Editing(num_layers=100)
    with pytest.raises(ValueError):
        Encoder4Editing(image_size=1024)
