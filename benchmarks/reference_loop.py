"""The reference protection loop: the paper's algorithm, written plainly, one face at a time.

The speed baseline of issue 9. It uses the engine's models (generator, loss recognizer, inverter,
identity centre) and the profile's :class:`~faceanonymixer.engine.profiles.OptimisationConfig`, and
computes the engine's loss term by term, but with none of the engine's work-saving: one face per
call, float32 eager, and everything that does not change between steps (the original embedding,
the key's synthetic latent and target, the mask grid, the pooled real crop, the latent layout)
recomputed inside every step, as a first transcription of the paper would. Its protected photo
is produced like the engine's (decode, round, resize, paste back), so a judge can score both.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from faceanonymixer.engine.profiles import OptimisationConfig
from faceanonymixer.engine.protection import (
    ATTRIBUTE_POOL,
    FEATHER,
    PreparedFace,
    ProtectionEngine,
    _resize,
    set_memory_format,
    view_transforms,
    views_at_step,
)
from faceanonymixer.engine.protection_key import ProtectionKey
from faceanonymixer.faces.alignment import feather_mask, paste_back
from faceanonymixer.faces.embedding import chips_to_tensor
from faceanonymixer.faces.imageio import RGBImage
from faceanonymixer.models.generator_base import LatentRole

__all__ = ["ReferenceResult", "reference_protect"]


@dataclass
class ReferenceResult:
    photo: RGBImage
    face: RGBImage
    latent: torch.Tensor


class _Inputs:
    """Everything the loss needs, derived from scratch (called once per step on purpose)."""

    def __init__(
        self, engine: ProtectionEngine, face: PreparedFace, key: ProtectionKey, config: OptimisationConfig
    ) -> None:
        generator, recognizer = engine.generator, engine.recognizer
        self.chip = chips_to_tensor([face.chip.image])
        self.crop = chips_to_tensor([face.crop.image]) / 127.5 - 1.0
        size = generator.image_size
        mask = torch.from_numpy(feather_mask(size, FEATHER)[:, :, 0].astype(np.float32) / 255.0)
        self.grid = face.grid[None]
        self.mask = F.grid_sample(mask[None, None], self.grid, align_corners=False)
        with torch.no_grad():
            self.original = recognizer(self.chip)
            if config.original_views == 2:  # the photo and its mirror image, as the profile says
                self.original = (self.original + recognizer(self.chip.flip(-1))) / 2
            self.synthetic, self.target = engine.key_start_and_target(key, self.original, config)
        self.pooled_real = F.adaptive_avg_pool2d(self.crop, ATTRIBUTE_POOL)

    def composite(self, generated: torch.Tensor) -> torch.Tensor:
        pixels = F.grid_sample(
            (generated + 1.0) * 127.5, self.grid, align_corners=False, padding_mode="border"
        )
        return self.mask * pixels + (1.0 - self.mask) * self.chip


def _invert(
    engine: ProtectionEngine, face: PreparedFace, key: ProtectionKey, config: OptimisationConfig
) -> torch.Tensor:
    """Encoder, then ``inversion_steps`` of pixel L1 + distance to the original embedding."""
    with torch.no_grad():
        latent = engine.inverter(_Inputs(engine, face, key, config).crop).float()
    if config.inversion_steps == 0:
        return latent
    latent = latent.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([latent], lr=config.inversion_learning_rate)
    for _ in range(config.inversion_steps):
        inputs = _Inputs(engine, face, key, config)
        generated = engine.generator.synthesize(latent)
        embedded = engine.recognizer(inputs.composite(generated))
        pixel = (generated - inputs.crop).abs().mean()
        identity = (embedded - inputs.original).norm()
        optimiser.zero_grad(set_to_none=True)
        (pixel + identity).backward()
        optimiser.step()
    return latent.detach()


def reference_step(
    engine: ProtectionEngine,
    face: PreparedFace,
    key: ProtectionKey,
    real: torch.Tensor,
    variable: torch.Tensor,
    config: OptimisationConfig,
    step: int,
) -> torch.Tensor:
    """The loss of optimisation step ``step``, every input rebuilt first; returns the scalar loss."""
    inputs = _Inputs(engine, face, key, config)
    layout = engine.generator.layout
    latent = real.clone()
    for row in layout.rows(LatentRole.KEY):
        latent[:, row] = inputs.synthetic[:, row]
    for column, row in enumerate(layout.rows(LatentRole.OPTIMISED)):
        latent[:, row] = variable[:, column]
    generated = engine.generator.synthesize(latent)
    chips = inputs.composite(generated)
    views = views_at_step(view_transforms(config.views, chips.device), step, config.views_per_step)
    embeddings = [engine.recognizer(view(chips)) for view in views]
    centre = engine.identities.centre
    anonymity = F.relu(
        F.cosine_similarity(embeddings[0] - centre, inputs.original - centre, dim=1) - config.margin
    )
    identity = torch.stack([(e - inputs.target).norm(dim=1) for e in embeddings]).mean(dim=0)
    attributes = (F.adaptive_avg_pool2d(generated, ATTRIBUTE_POOL) - inputs.pooled_real).abs().mean()
    loss = config.lambda_anon * anonymity + config.lambda_id * identity + config.lambda_attr * attributes
    if config.lambda_attr_classes:
        loss = loss + config.lambda_attr_classes * _attribute_divergence(
            engine, inputs.original, embeddings[0]
        )
    return loss.sum()


def _attribute_divergence(
    engine: ProtectionEngine, original: torch.Tensor, protected: torch.Tensor
) -> torch.Tensor:
    """KL(photo || protected face) of the classifiers' gender and age-group distributions, written
    out from the coefficients."""
    classes = engine.identities.attributes
    assert classes is not None, "the profile has no attribute classifiers"
    female_photo = torch.sigmoid(original @ classes.gender_coef + classes.gender_intercept)
    female_face = torch.sigmoid(protected @ classes.gender_coef + classes.gender_intercept)
    gender = female_photo * torch.log(female_photo / female_face) + (1 - female_photo) * torch.log(
        (1 - female_photo) / (1 - female_face)
    )
    age_photo = torch.softmax(original @ classes.age_coef.T + classes.age_intercept, dim=1)
    age_face = torch.softmax(protected @ classes.age_coef.T + classes.age_intercept, dim=1)
    age = (age_photo * torch.log(age_photo / age_face)).sum(dim=1)
    return gender + age


@contextmanager
def plain_memory_format(engine: ProtectionEngine) -> Iterator[None]:
    """The engine keeps its models channels_last; the reference runs them as first written (NCHW)."""
    models = (engine.generator, engine.recognizer)
    for model in models:
        set_memory_format(model, torch.contiguous_format)
    try:
        yield
    finally:
        for model in models:
            set_memory_format(model, torch.channels_last)


def reference_protect(
    engine: ProtectionEngine, face: PreparedFace, key: ProtectionKey, config: OptimisationConfig | None = None
) -> ReferenceResult:
    """Protect one prepared face under ``key`` with the reference loop."""
    with plain_memory_format(engine):
        return _reference_protect(engine, face, key, config or engine.config)


def _reference_protect(
    engine: ProtectionEngine, face: PreparedFace, key: ProtectionKey, config: OptimisationConfig
) -> ReferenceResult:
    real = _invert(engine, face, key, config)
    layout = engine.generator.layout
    optimised = layout.rows(LatentRole.OPTIMISED)
    synthetic = _Inputs(engine, face, key, config).synthetic
    variable = engine.generator.blend(
        real[:, optimised], synthetic[:, optimised], layout.key_blend_of(optimised)
    )
    variable = variable.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([variable], lr=config.learning_rate)
    milestones = sorted({max(1, round(m * config.steps)) for m in config.milestones})
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimiser, milestones=milestones, gamma=config.gamma)
    for step in range(config.steps):
        loss = reference_step(engine, face, key, real, variable, config, step)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
    latent = real.clone()
    with torch.no_grad():
        for row in layout.rows(LatentRole.KEY):
            latent[:, row] = synthetic[:, row]
        for column, row in enumerate(optimised):
            latent[:, row] = variable[:, column]
        generated = engine.generator.synthesize(latent)
    image = ((generated[0] + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    protected = _resize(image, engine.profile.output_size or engine.generator.image_size)
    photo = paste_back(face.photo, face.crop, protected, feather=FEATHER)
    return ReferenceResult(photo=photo, face=protected, latent=latent)
