"""The engine's gradient-free passes on onnxruntime (``runtime="onnx"``), over a folder of
``faceanonymixer export onnx``; imported only for that runtime (onnxruntime is the [export] extra)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from faceanonymixer.engine.profiles import Profile
from faceanonymixer.models.onnx.fingerprint import module_fingerprint
from faceanonymixer.models.onnx.runtime import OnnxExport, OnnxModel
from faceanonymixer.utils.errors import ModelFormatError


class OnnxForwardPasses:
    """The protection engine's gradient-free passes on onnxruntime (``runtime="onnx"``): the
    encoder's starting latent and the recognizer's embeddings of the original and final faces."""

    def __init__(self, recognizer: OnnxModel, encoder: OnnxModel) -> None:
        self.recognizer, self.encoder = recognizer, encoder

    @classmethod
    def open(
        cls,
        folder: str | Path,
        profile: Profile,
        *,
        recognizer: nn.Module,
        inverter: nn.Module,
        device: str | torch.device,
    ) -> OnnxForwardPasses:
        """The export of ``profile`` in ``folder``, checked against the engine's own modules: a
        graph exported from other weights would silently change every protection."""
        export = OnnxExport(folder, device=device)
        if export.manifest.profile != profile.profile_id:
            raise ModelFormatError(
                f"{folder} holds profile {export.manifest.profile!r}, not {profile.profile_id!r}"
            )
        for name, module in ((profile.recognizer, recognizer), (profile.inverter, inverter)):
            if export.manifest.model(name).source_fingerprint != module_fingerprint(module):
                raise ModelFormatError(f"{folder}: {name} was exported from other weights; export it again")
        return cls(export[profile.recognizer], export[profile.inverter])

    def invert(self, crops: torch.Tensor) -> torch.Tensor:
        return self.encoder(crops)

    def embed(self, chips: torch.Tensor) -> torch.Tensor:
        return self.recognizer(chips)
