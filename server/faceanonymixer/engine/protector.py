"""``Protector``: the engine's Python API for one subject's photos under one key."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from faceanonymixer.engine.batch import SubjectPhotos, protect_batch
from faceanonymixer.engine.profiles import Profile, get_profile
from faceanonymixer.engine.protection import (
    ProtectionEngine,
    ProtectionResult,
    Runtime,
    StepCallback,
    StopCheck,
)
from faceanonymixer.engine.protection_key import ProtectionKey, as_key
from faceanonymixer.faces.imageio import ImageInput
from faceanonymixer.utils.devices import default_device
from faceanonymixer.utils.threads import threads_setting, torch_threads


class Protector:
    """Protect face photos with a key.

    >>> protector = Protector(profile="embedded")
    >>> results = protector.protect(["enroll-1.jpg", "enroll-2.jpg"], key)  # doctest: +SKIP

    All images given in one call are photos of one subject and are optimised together (joint
    enrollment); a single image is the independent probe. ``optimisation`` overrides the
    profile's settings by name (``steps=50``, ``lambda_anon=10``, ...). ``runtime="onnx"`` with
    ``onnx_dir`` runs the gradient-free passes on onnxruntime (:class:`ProtectionEngine`).
    ``profile``: a profile id (its current revision) or a :class:`Profile` (an archived revision:
    ``profiles.served_profiles``). ``threads``: torch CPU threads of each call
    (:mod:`faceanonymixer.utils.threads`; default ``FACEANONYMIXER_THREADS``, else chosen per call:
    every idle core, one while other work runs).
    """

    def __init__(
        self,
        profile: str | Profile = "embedded",
        *,
        device: str | torch.device | None = None,
        runtime: Runtime = "torch",
        onnx_dir: str | Path | None = None,
        threads: int | None = None,
        **optimisation: Any,
    ) -> None:
        self.threads = threads_setting(threads)
        chosen = get_profile(profile) if isinstance(profile, str) else profile
        self.engine = ProtectionEngine(
            chosen,
            optimisation=chosen.optimisation.with_overrides(**optimisation),
            device=device if device is not None else default_device(),
            runtime=runtime,
            onnx_dir=onnx_dir,
        )

    def protect(
        self,
        images: ImageInput | Sequence[ImageInput],
        key: ProtectionKey | bytes,
        *,
        keep_latents: bool = False,
        should_stop: StopCheck | None = None,
        on_photo: Callable[[int, int], object] | None = None,
        on_step: StepCallback | None = None,
    ) -> list[ProtectionResult]:
        """One :class:`ProtectionResult` per image, in input order.

        Raises the typed errors of :mod:`faceanonymixer.utils.errors` (bad image, no face, bad key,
        cancelled), with ``error.input`` naming the image at fault (its path, else ``images[i]``);
        when one photo fails, none is protected. ``on_photo`` hears of each photo aligned (done,
        all) and ``on_step`` of each optimisation step (done, all): progress bars.
        """
        protection_key = as_key(key)
        batch = _as_batch(images)
        if not batch:
            raise ValueError("no images to protect")
        with torch_threads(self.threads):
            [outcomes] = protect_batch(
                self.engine,
                [SubjectPhotos(batch, protection_key)],
                should_stop=should_stop,
                stop_at_first_error=True,
                on_photo=on_photo,
                on_step=on_step,
                keep_latents=keep_latents,
            )
        for index, outcome in enumerate(outcomes):
            if outcome.error is not None:
                outcome.error.input = _input_name(batch[index], index)
                raise outcome.error
        return [outcome.result for outcome in outcomes if outcome.result is not None]


def _input_name(image: ImageInput, index: int) -> str:
    """A path as the caller gave it; an image given as data by its place in the call."""
    if isinstance(image, str | os.PathLike):
        return os.fspath(image)
    return f"images[{index}]"


def _as_batch(images: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
    single = (str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray)
    if isinstance(images, single):
        return [images]
    return list(images)
