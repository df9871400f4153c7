"""The interfaces every model profile implements."""

from __future__ import annotations

from torch import nn


class Recognizer(nn.Module):
    """A differentiable face-identity embedding.

    ``forward`` maps float32 (N, 3, H, W) RGB images in [0, 255], with (H, W) = ``input_size``,
    to (N, ``embedding_dim``) embeddings, with gradients to the input. Two embeddings closer than
    ``match_threshold`` (Euclidean) are called the same person; None where the model has no
    published threshold.
    """

    input_size: tuple[int, int]
    embedding_dim: int
    match_threshold: float | None
