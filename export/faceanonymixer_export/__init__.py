"""Model export of FaceAnonyMixer: ONNX graphs, onnxruntime sessions and TensorRT engine builds.

Nothing here yet: ONNX/TensorRT export arrives in a later issue (install with the ``[export]``
extra).
"""

from __future__ import annotations

__all__: list[str] = []
