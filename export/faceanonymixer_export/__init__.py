"""Model export of FaceAnonyMixer: ONNX graphs, onnxruntime sessions and TensorRT engine builds.

* :mod:`~faceanonymixer_export.onnx_export`: ``export_profile`` writes a profile's recognizer,
  encoder and generator (synthesis, mapping) as ONNX graphs with a dynamic batch axis, and
  ``manifest.json`` (:mod:`~faceanonymixer.models.onnx.manifest`) describing them;
* :mod:`~faceanonymixer.models.onnx.runtime`: onnxruntime sessions over such a folder, called like the
  PyTorch modules (``ProtectionEngine(runtime="onnx", onnx_dir=...)`` uses them).

Needs the ``[export]`` extra (onnx, onnxscript, onnxruntime). Nothing is imported here, so that
reading a manifest stays light.
"""

from __future__ import annotations

__all__: list[str] = []
