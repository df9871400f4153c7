"""ArcFace IR-SE50: the ``model_ir_se50.pth`` format, strict loading, preprocessing, gradients.

The expected key set is written out here from TreB1eN/InsightFace_Pytorch ``model.py``
(``Backbone(50, 0.6, 'ir_se')``), independently of the module under test; tiny random
checkpoints (a quarter of the channels) in that exact format stand in for the real file.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from faceanonymixer.models.base import Recognizer
from faceanonymixer.models.ir_se50 import (
    ARCFACE_MATCH_THRESHOLD,
    IRSE50,
    ArcFaceRecognizer,
    arcface_preprocess,
    load_arcface_recognizer,
    load_ir_se50,
)
from faceanonymixer.utils.errors import ModelFormatError
from faceanonymixer.utils.files import file_sha256

#: tiny steps: one torch thread (the shared fixture in conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")

Shapes = dict[str, tuple[int, ...]]

#: get_blocks(50): (in_channel, depth, units) per stage; every stage starts with stride 2
REFERENCE_STAGES = ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3))
#: Backbone(50, 0.6, 'ir_se') parameters (buffers excluded), from the shapes below
IR_SE50_PARAMETERS = 43_797_696
TINY = 0.25


def _batch_norm(shapes: Shapes, prefix: str, channels: int) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{prefix}.{name}"] = (channels,)
    shapes[f"{prefix}.num_batches_tracked"] = ()


def reference_trunk_shapes(width: float = 1.0) -> Shapes:
    """``input_layer`` and ``body`` of the reference IR-SE trunk (shared by ArcFace and e4e)."""
    c = [int(channels * width) for channels in (64, 128, 256, 512)]
    scale = dict(zip((64, 128, 256, 512), c, strict=True))
    shapes: Shapes = {"input_layer.0.weight": (c[0], 3, 3, 3)}
    _batch_norm(shapes, "input_layer.1", c[0])
    shapes["input_layer.2.weight"] = (c[0],)
    index = 0
    for in_channel, depth, units in REFERENCE_STAGES:
        for unit in range(units):
            inp, out = scale[in_channel if unit == 0 else depth], scale[depth]
            prefix = f"body.{index}"
            if inp != out:  # else the shortcut is MaxPool2d(1, stride): no tensors
                shapes[f"{prefix}.shortcut_layer.0.weight"] = (out, inp, 1, 1)
                _batch_norm(shapes, f"{prefix}.shortcut_layer.1", out)
            _batch_norm(shapes, f"{prefix}.res_layer.0", inp)
            shapes[f"{prefix}.res_layer.1.weight"] = (out, inp, 3, 3)
            shapes[f"{prefix}.res_layer.2.weight"] = (out,)
            shapes[f"{prefix}.res_layer.3.weight"] = (out, out, 3, 3)
            _batch_norm(shapes, f"{prefix}.res_layer.4", out)
            shapes[f"{prefix}.res_layer.5.fc1.weight"] = (out // 16, out, 1, 1)
            shapes[f"{prefix}.res_layer.5.fc2.weight"] = (out, out // 16, 1, 1)
            index += 1
    return shapes


def reference_ir_se50_shapes(width: float = 1.0) -> Shapes:
    shapes = reference_trunk_shapes(width)
    channels = int(512 * width)
    _batch_norm(shapes, "output_layer.0", channels)
    shapes["output_layer.3.weight"] = (512, channels * 7 * 7)
    shapes["output_layer.3.bias"] = (512,)
    _batch_norm(shapes, "output_layer.4", 512)
    return shapes


def parameter_count(shapes: Shapes) -> int:
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return sum(math.prod(shape) for key, shape in shapes.items() if not key.endswith(buffers))


def random_state(shapes: Shapes, seed: int) -> OrderedDict[str, torch.Tensor]:
    """A state dict with exactly these keys and shapes, values random but numerically tame."""
    generator = torch.Generator().manual_seed(seed)
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000 + seed, dtype=torch.long)
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(shape, generator=generator)
        elif len(shape) > 1:  # convolution / linear weights, roughly He-scaled
            fan_in = math.prod(shape[1:])
            state[key] = torch.randn(shape, generator=generator) / math.sqrt(fan_in)
        elif key.endswith(".weight") and ("res_layer.2" in key or "input_layer.2" in key):
            state[key] = 0.25 + 0.05 * torch.randn(shape, generator=generator)  # PReLU slopes
        elif key.endswith(".weight"):
            state[key] = 1.0 + 0.1 * torch.randn(shape, generator=generator)  # batch-norm scales
        else:
            state[key] = 0.1 * torch.randn(shape, generator=generator)
    return state


def shapes_of(state: dict[str, torch.Tensor]) -> Shapes:
    return {key: tuple(value.shape) for key, value in state.items()}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, OrderedDict[str, torch.Tensor]]:
    """A bare state dict, as ``model_ir_se50.pth`` is, at a quarter of the channels."""
    state = random_state(reference_ir_se50_shapes(TINY), seed=1)
    path = tmp_path_factory.mktemp("arcface") / "model_ir_se50.pth"
    torch.save(state, path)
    return path, state


def face_batch(count: int = 2, size: int = 256, seed: int = 0) -> torch.Tensor:
    """Smooth synthetic RGB images in [0, 255]."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 8, 8, generator=generator)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False) * 255.0


def test_full_size_keys_and_shapes_are_the_references() -> None:
    with torch.device("meta"):
        model = IRSE50(50, 0.6, "ir_se")
    assert shapes_of(model.state_dict()) == reference_ir_se50_shapes()
    assert list(model.state_dict())[:7] == [
        "input_layer.0.weight",
        "input_layer.1.weight",
        "input_layer.1.bias",
        "input_layer.1.running_mean",
        "input_layer.1.running_var",
        "input_layer.1.num_batches_tracked",
        "input_layer.2.weight",
    ]


def test_full_size_parameter_count() -> None:
    with torch.device("meta"):
        model = IRSE50()
    assert parameter_count(reference_ir_se50_shapes()) == IR_SE50_PARAMETERS
    assert sum(parameter.numel() for parameter in model.parameters()) == IR_SE50_PARAMETERS


def test_full_size_output_shapes_on_meta() -> None:
    with torch.device("meta"):
        recognizer = ArcFaceRecognizer(IRSE50())
        embeddings = recognizer(torch.empty(2, 3, 256, 256))
        direct = recognizer.backbone(torch.empty(3, 3, 112, 112))
    assert embeddings.shape == (2, 512)
    assert direct.shape == (3, 512)


def test_tiny_checkpoint_loads_strictly(tiny_checkpoint: tuple[Path, OrderedDict[str, torch.Tensor]]) -> None:
    path, state = tiny_checkpoint
    model = load_ir_se50(path, sha256=file_sha256(path))
    assert (model.num_layers, model.mode, model.input_size, model.width) == (50, "ir_se", 112, TINY)
    assert not model.training
    assert not any(parameter.requires_grad for parameter in model.parameters())
    fresh = IRSE50(width=TINY)
    result = fresh.load_state_dict(torch.load(path, weights_only=True), strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    loaded = model.state_dict()
    assert list(loaded) == list(state)
    assert all(torch.equal(loaded[key], state[key]) for key in state)


def test_state_dict_round_trip_is_bit_identical(
    tiny_checkpoint: tuple[Path, OrderedDict[str, torch.Tensor]],
) -> None:
    path, _ = tiny_checkpoint
    model = load_ir_se50(path)
    images = face_batch(3, size=112) / 127.5 - 1.0
    with torch.no_grad():
        first = model(images)
        copy = IRSE50(width=TINY).eval()
        copy.load_state_dict(model.state_dict(), strict=True)
        second = copy(images)
        third = load_ir_se50(dict(model.state_dict()))(images)
    assert torch.equal(first, second)
    assert torch.equal(first, third)
    assert first.shape == (3, 512)
    assert torch.allclose(first.norm(dim=1), torch.ones(3), atol=1e-5)


def test_legacy_file_without_num_batches_tracked_loads(tmp_path: Path) -> None:
    """Files saved before PyTorch 0.4.1 have no ``num_batches_tracked``; they still load."""
    state = random_state(reference_ir_se50_shapes(TINY), seed=2)
    legacy = {key: value for key, value in state.items() if not key.endswith("num_batches_tracked")}
    torch.save(legacy, tmp_path / "legacy.pth")
    model = load_ir_se50(tmp_path / "legacy.pth")
    assert torch.equal(model.state_dict()["output_layer.3.weight"], state["output_layer.3.weight"])


@pytest.mark.parametrize("change", ["missing", "unexpected", "wrapped", "wrong_rank"])
def test_format_errors_are_refused(
    change: str, tmp_path: Path, tiny_checkpoint: tuple[Path, OrderedDict[str, torch.Tensor]]
) -> None:
    state = dict(tiny_checkpoint[1])
    if change == "missing":
        del state["body.5.res_layer.5.fc2.weight"]
    elif change == "unexpected":
        state["body.5.res_layer.5.fc3.weight"] = torch.zeros(1)
    elif change == "wrapped":
        state = {"state_dict": state}  # type: ignore[dict-item]
    else:
        state["output_layer.3.bias"] = state["output_layer.3.bias"][None]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ModelFormatError):
        load_ir_se50(tmp_path / "bad.pth")


def test_unreadable_file_and_wrong_digest_are_refused(
    tmp_path: Path, tiny_checkpoint: tuple[Path, OrderedDict[str, torch.Tensor]]
) -> None:
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelFormatError):
        load_ir_se50(tmp_path / "junk.pth")
    with pytest.raises(ModelFormatError, match="SHA-256"):
        load_ir_se50(tiny_checkpoint[0], sha256="0" * 64)


def _adaptive_pool_matrix(source: int, target: int) -> np.ndarray:
    """Row i averages source[floor(i*s/t) : ceil((i+1)*s/t)], AdaptiveAvgPool's windows."""
    matrix = np.zeros((target, source))
    for i in range(target):
        start, end = (i * source) // target, -((-(i + 1) * source) // target)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def test_preprocessing_matches_a_hand_computation() -> None:
    generator = np.random.default_rng(3)
    image = generator.uniform(-1.0, 1.0, size=(1, 3, 256, 256))
    crop = image[0, :, 35:223, 32:220]  # 188 x 188
    pool = _adaptive_pool_matrix(188, 112)
    expected = np.stack([pool @ channel @ pool.T for channel in crop])
    actual = arcface_preprocess(torch.from_numpy(image).float())
    assert actual.shape == (1, 3, 112, 112)
    np.testing.assert_allclose(actual[0].numpy(), expected, atol=1e-5)
    # the window pattern itself: 188 / 112 gives windows of 2 and 3 pixels
    assert {int(np.count_nonzero(row)) for row in pool} == {2, 3}


def test_preprocessing_resizes_and_centre_crops_like_torchvision() -> None:
    wide = torch.rand(1, 3, 256, 300) * 2 - 1  # Resize(256) keeps it; CenterCrop takes columns 22:278
    assert torch.equal(arcface_preprocess(wide), arcface_preprocess(wide[:, :, :, 22:278]))
    large = torch.rand(2, 3, 512, 512) * 2 - 1
    resized = F.interpolate(large, size=(256, 256), mode="bilinear", align_corners=False, antialias=True)
    assert torch.equal(arcface_preprocess(large), arcface_preprocess(resized))
    with pytest.raises(ValueError):
        arcface_preprocess(torch.zeros(3, 256, 256))


def test_recognizer_interface_and_range(tiny_checkpoint: tuple[Path, OrderedDict[str, torch.Tensor]]) -> None:
    recognizer = load_arcface_recognizer(tiny_checkpoint[0])
    assert isinstance(recognizer, Recognizer)
    assert recognizer.input_size == (256, 256)
    assert recognizer.embedding_dim == 512
    assert recognizer.match_threshold == pytest.approx(math.sqrt(1.54)) == ARCFACE_MATCH_THRESHOLD
    images = face_batch(2)
    with torch.no_grad():
        embeddings = recognizer(images)
        signed = recognizer.embed_signed(images / 127.5 - 1.0)
        by_hand = recognizer.backbone(arcface_preprocess(images / 127.5 - 1.0))
    assert embeddings.shape == (2, 512)
    assert torch.equal(embeddings, signed) and torch.equal(embeddings, by_hand)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(2), atol=1e-5)
    with pytest.raises(ValueError):
        recognizer(torch.zeros(2, 1, 256, 256))


def test_gradients_reach_the_images_not_the_weights(
    tiny_checkpoint: tuple[Path, OrderedDict[str, torch.Tensor]],
) -> None:
    recognizer = load_arcface_recognizer(tiny_checkpoint[0])
    images = face_batch(2).requires_grad_(True)
    target = recognizer(face_batch(2, seed=5)).detach()
    loss = (recognizer(images) * target).sum(dim=1).mean()  # the identity loss: cosine of unit vectors
    loss.backward()
    assert images.grad is not None
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    # only the face crop reaches the network
    assert images.grad[:, :, :35].abs().sum() == 0 and images.grad[:, :, :, 220:].abs().sum() == 0
    assert all(parameter.grad is None for parameter in recognizer.parameters())
