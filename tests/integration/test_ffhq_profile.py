"""The ``ffhq`` profile end to end on a tiny stack of the published formats.

A 64-pixel StyleGAN2 (10 W+ rows of 128), an e4e encoder for 10 styles and an IR-SE50, each at a
quarter of the channels, saved as checkpoints of the published formats and loaded by the real
loaders, stand in for the 1024-pixel models the zoo downloads. With them ``Protector`` runs the
ffhq profile on a real photo: FFHQ alignment, e4e inversion, the published W+ mixing (rows 0-2
from the key, 3-7 optimised, the rest the real face's), the loop, the decode.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from faceanonymixer.engine.profiles import FFHQ
from faceanonymixer.engine.protection import ProtectionEngine, Subject
from faceanonymixer.engine.protection_key import ProtectionKey
from faceanonymixer.engine.protector import Protector
from faceanonymixer.models import generators, inverters, recognizers
from faceanonymixer.models.e4e import load_e4e
from faceanonymixer.models.generator_base import Generator
from faceanonymixer.models.ir_se50 import load_arcface_recognizer
from faceanonymixer.models.stylegan2 import StyleGAN2FaceGenerator, StyleGAN2Generator, load_stylegan2
from faceanonymixer.models.zoo import MODELS_DIR_ENV, ModelMissingError
from unit.test_e4e import e4e_checkpoint
from unit.test_ir_se50 import TINY as IR_TINY
from unit.test_ir_se50 import random_state, reference_ir_se50_shapes
from unit.test_stylegan2 import randomise

SIZE, STYLE, ROWS = 64, 128, 10
KEY = bytes(range(32))


@pytest.fixture(scope="module")
def tiny_stack(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The three checkpoints, written in their published formats."""
    folder = tmp_path_factory.mktemp("ffhq-stack")
    torch.manual_seed(0)
    network = randomise(StyleGAN2Generator(SIZE, STYLE, 8, narrow=64), 0)
    paths = {
        "stylegan2": folder / "stylegan2-ffhq-config-f.pt",
        "e4e": folder / "e4e_ffhq_encode.pt",
        "ir_se50": folder / "model_ir_se50.pth",
    }
    torch.save({"g_ema": network.state_dict(), "latent_avg": torch.randn(STYLE) * 0.1}, paths["stylegan2"])
    torch.save(e4e_checkpoint(n_styles=ROWS), paths["e4e"])
    torch.save(random_state(reference_ir_se50_shapes(IR_TINY), seed=1), paths["ir_se50"])
    return paths


@pytest.fixture
def registered(tiny_stack: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The ffhq profile's registry names, pointed at the tiny checkpoints for this test."""
    monkeypatch.setitem(
        generators.GENERATORS.factories,
        "stylegan2-ffhq",
        lambda: StyleGAN2FaceGenerator(load_stylegan2(tiny_stack["stylegan2"])),
    )
    arcface = tiny_stack["ir_se50"]
    monkeypatch.setitem(
        recognizers.RECOGNIZERS.factories, "arcface-ir-se50", lambda: load_arcface_recognizer(arcface)
    )

    def e4e(_: Generator) -> torch.nn.Module:
        encoder = load_e4e(tiny_stack["e4e"])
        return inverters.WPlusInverter(encoder, encoder.image_size)

    monkeypatch.setitem(inverters.INVERTERS.factories, "e4e-ffhq", e4e)
    yield


@pytest.fixture
def photo(faces_root: Path) -> Path:
    return faces_root / "fr_examples" / "kit_harington" / "john2.jpeg"


def test_protector_runs_the_ffhq_profile_and_keeps_the_frozen_rows(registered: None, photo: Path) -> None:
    protector = Protector("ffhq", device="cpu", steps=3)
    (result,) = protector.protect(photo, KEY, keep_latents=True)
    latents = result.latents
    assert latents is not None and latents["protected"].shape == (ROWS, STYLE)
    # rows 0-2: the key's synthetic latent; 8-9: the real face's; bit for bit
    assert np.array_equal(latents["protected"][:3], latents["synthetic"][:3])
    assert np.array_equal(latents["protected"][8:], latents["real"][8:])
    # rows 3-7 start from the real latent and are the only ones optimised
    assert not np.array_equal(latents["protected"][3:8], latents["real"][3:8])
    assert np.isfinite(latents["protected"]).all()
    assert result.face.shape == (SIZE, SIZE, 3)  # output_size None: the generator's resolution
    assert result.original_face.shape == (SIZE, SIZE, 3)
    assert result.profile_id == "ffhq" and len(result.loss_trace.total) == 3
    with Image.open(photo) as image:
        width, height = image.size
    assert result.photo.shape == (height, width, 3)


def test_the_same_key_gives_the_same_face_and_another_key_another(registered: None, photo: Path) -> None:
    engine = ProtectionEngine("ffhq", device="cpu", optimisation=FFHQ.optimisation.with_overrides(steps=2))
    face = engine.prepare(photo)

    def protect(key: bytes) -> np.ndarray:
        return engine.protect([Subject([face], ProtectionKey(key))])[0][0].face

    assert np.array_equal(protect(KEY), protect(KEY))
    assert not np.array_equal(protect(KEY), protect(bytes(32)))


def test_bfloat16_autocast_runs_on_the_cpu_and_stays_close(registered: None, photo: Path) -> None:
    float32 = Protector("ffhq", device="cpu", steps=2)
    results = float32.protect(photo, KEY, keep_latents=True)
    bf16 = ProtectionEngine("ffhq", device="cpu", precision="bfloat16", optimisation=float32.engine.config)
    assert bf16.precision is torch.bfloat16 and float32.engine.precision is None  # auto: float32 on CPU
    (mixed,) = bf16.protect([Subject([bf16.prepare(photo)], ProtectionKey(KEY))], keep_latents=True)[0]
    assert mixed.latents is not None and results[0].latents is not None
    assert np.isfinite(mixed.latents["protected"]).all()
    # the same frozen rows; the optimised ones move by bfloat16's rounding, not elsewhere
    assert np.array_equal(mixed.latents["protected"][:3], results[0].latents["protected"][:3])
    difference = np.abs(mixed.latents["protected"] - results[0].latents["protected"]).max()
    assert 0 < difference < 0.5


def test_unknown_precision_is_refused(registered: None) -> None:
    with pytest.raises(ValueError, match="precision"):
        ProtectionEngine("ffhq", device="cpu", precision="float16")  # type: ignore[arg-type]


def test_without_pulled_models_the_profile_says_what_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MODELS_DIR_ENV, str(tmp_path))
    with pytest.raises(ModelMissingError, match="models pull"):
        ProtectionEngine("ffhq", device="cpu")
