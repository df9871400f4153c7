"""dlib's face descriptor in PyTorch: format reading, exact parity with dlib, gradients, accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from faceanonymixer.faces.datasets import list_identity_images
from faceanonymixer.faces.embedding import chips_to_tensor
from faceanonymixer.models.dlib_face_resnet import (
    default_weights_path,
    face_resnet_stack,
    load_dlib_face_resnet,
)
from faceanonymixer.models.dlib_format import DlibReader
from faceanonymixer.models.dlib_network import _add_zero_padded, read_network
from faceanonymixer.models.recognizers import RECOGNIZERS, load_recognizer
from faceanonymixer.utils.errors import ModelFormatError

dlib = pytest.importorskip("dlib")


@pytest.fixture(scope="module")
def recognizer() -> torch.nn.Module:
    return load_recognizer("dlib", device="cpu")


@pytest.fixture(scope="module")
def dlib_reference() -> object:
    return dlib.face_recognition_model_v1(str(default_weights_path()))


@pytest.fixture(scope="module")
def weights_bytes() -> bytes:
    return default_weights_path().read_bytes()


# ---- the format reader -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoded", "value"),
    [(b"\x01\x05", 5), (b"\x81\x11", -17), (b"\x02\x80\x12", 4736), (b"\x00", 0), (b"\x01\x96", 150)],
)
def test_reads_dlib_packed_integers(encoded: bytes, value: int) -> None:
    assert DlibReader(encoded).read_int() == value


def test_reads_dlib_floats_as_mantissa_and_exponent() -> None:
    # 0.6 as dlib writes it: mantissa 10066330, exponent -24
    assert DlibReader(b"\x03\x9a\x99\x99\x81\x18").read_float() == pytest.approx(0.6, abs=1e-7)


def test_truncated_weights_are_a_format_error(weights_bytes: bytes) -> None:
    with pytest.raises(ModelFormatError, match="unexpected end of data"):
        read_network(weights_bytes[: len(weights_bytes) // 2], face_resnet_stack())


def test_wrong_layer_stack_is_a_format_error(weights_bytes: bytes) -> None:
    with pytest.raises(ModelFormatError):
        read_network(weights_bytes, face_resnet_stack()[:-3])


def test_corrupted_layer_tag_is_a_format_error(weights_bytes: bytes) -> None:
    corrupted = weights_bytes.replace(b"affine_", b"affinX_", 1)
    with pytest.raises(ModelFormatError, match="affinX_"):
        read_network(corrupted, face_resnet_stack())


def test_trailing_bytes_are_a_format_error(weights_bytes: bytes) -> None:
    with pytest.raises(ModelFormatError, match="trailing data"):
        read_network(weights_bytes + b"\x00", face_resnet_stack())


def test_missing_weights_file_is_a_format_error(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match="cannot read"):
        load_dlib_face_resnet(tmp_path / "missing.dat")


def test_shortcut_addition_zero_pads_like_dlib() -> None:
    # dlib's residual_down adds a 3x3 block output to a 4x4 shortcut: the sum is 4x4,
    # the smaller tensor padded with zeros at the bottom/right (and in the extra channels).
    block = torch.ones(1, 2, 3, 3)
    shortcut = torch.full((1, 1, 4, 4), 10.0)
    total = _add_zero_padded(block, shortcut)
    assert total.shape == (1, 2, 4, 4)
    assert total[0, 0, :3, :3].eq(11).all() and total[0, 0, 3, :].eq(10).all()
    assert total[0, 1, :3, :3].eq(1).all() and total[0, 1, 3, :].eq(0).all()


# ---- the network --------------------------------------------------------------------------


def test_registry_lists_dlib_and_rejects_unknown_names() -> None:
    assert "dlib" in RECOGNIZERS.names()
    with pytest.raises(ValueError, match="unknown recognizer"):
        load_recognizer("no-such-model")


def test_shape_and_contract(recognizer: torch.nn.Module) -> None:
    assert recognizer.input_size == (150, 150)
    assert recognizer.embedding_dim == 128
    assert recognizer.match_threshold == pytest.approx(0.6)
    assert not any(p.requires_grad for p in recognizer.parameters())
    out = recognizer(torch.rand(2, 3, 150, 150) * 255)
    assert out.shape == (2, 128) and out.dtype == torch.float32


def test_rejects_non_rgb_input(recognizer: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="RGB"):
        recognizer(torch.zeros(1, 1, 150, 150))


def _chips_from_sets(faces_root: Path, sets: tuple[str, ...], per_set: int) -> list[np.ndarray]:
    from faceanonymixer import FaceAligner

    aligner = FaceAligner()
    chips: list[np.ndarray] = []
    for name in sets:
        items = list_identity_images(faces_root / name, max_images=1)[:per_set]
        chips.extend(aligner.align(path).image for _, path in items)
    return chips


@pytest.fixture(scope="module")
def real_chips(faces_root: Path) -> list[np.ndarray]:
    return _chips_from_sets(faces_root, ("lfw", "deepface", "orl", "yale", "fr_examples"), per_set=5)


def test_parity_with_dlib_on_real_faces(
    recognizer: torch.nn.Module, dlib_reference: object, real_chips: list[np.ndarray]
) -> None:
    assert len(real_chips) >= 20
    ours = recognizer(chips_to_tensor(real_chips)).numpy()
    theirs = np.array([np.array(dlib_reference.compute_face_descriptor(chip)) for chip in real_chips])  # type: ignore[attr-defined]
    differences = np.linalg.norm(ours - theirs, axis=1)
    assert np.linalg.norm(theirs, axis=1).min() > 0.5  # real descriptors, not zeros
    assert differences.max() <= 1e-3, f"max L2 difference {differences.max():.2e}"


def test_batched_equals_one_at_a_time(recognizer: torch.nn.Module, real_chips: list[np.ndarray]) -> None:
    batch = recognizer(chips_to_tensor(real_chips[:16]))
    single = torch.cat([recognizer(chips_to_tensor([chip])) for chip in real_chips[:16]])
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=0)


def test_gradients_reach_the_input_image(recognizer: torch.nn.Module, real_chips: list[np.ndarray]) -> None:
    images = chips_to_tensor(real_chips[:2]).requires_grad_(True)
    target = recognizer(chips_to_tensor(real_chips[2:4]))
    loss = (recognizer(images) - target).norm(dim=1).sum()
    loss.backward()
    assert images.grad is not None
    assert torch.isfinite(images.grad).all()
    assert images.grad.abs().sum() > 0


@pytest.mark.slow
def test_orl_verification_eer(recognizer: torch.nn.Module, faces_root: Path) -> None:
    """All pairs of ORL, Euclidean distance (also: python benchmarks/verification.py ../shared/faces/orl)."""
    from faceanonymixer import FaceAligner
    from faceanonymixer.evaluation.verification import equal_error_rate, pair_distances
    from faceanonymixer.faces.embedding import embed_images

    faces = embed_images(
        list_identity_images(faces_root / "orl"), aligner=FaceAligner(), recognizer=recognizer
    )
    assert len(faces.labels) >= 0.97 * 400
    genuine, impostor = pair_distances(faces.embeddings, faces.labels)
    eer, _ = equal_error_rate(genuine, impostor)
    assert eer <= 0.01, f"EER {eer:.4f} on {len(genuine)} genuine / {len(impostor)} impostor pairs"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda_like_on_cpu(recognizer: torch.nn.Module) -> None:
    images = torch.rand(4, 3, 150, 150) * 255
    on_gpu = load_recognizer("dlib", device="cuda")(images.cuda()).cpu()
    torch.testing.assert_close(on_gpu, recognizer(images), atol=1e-4, rtol=0)
