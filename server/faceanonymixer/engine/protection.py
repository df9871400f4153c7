"""The protection engine: photos of a subject + a key -> protected faces.

Per photo: detect and align (dlib's five landmarks), cut the face onto the generator's landmark
template, invert it (encoder, then the profile's ``inversion_steps`` of refinement), mix the
real latent with the key's synthetic latent by the generator's
:class:`~faceanonymixer.models.generator_base.LatentLayout`, optimise the OPTIMISED rows with Adam, and
decode. Faces of one or several subjects optimise as one batch, each with its own loss terms.

The loss recognizer sees exactly what a recognizer will see downstream: the generated face
blended into the original dlib face chip with the feathered mask that pastes it back into the
photo. Loss terms, per face (weights in :class:`~faceanonymixer.engine.profiles.OptimisationConfig`):

* anonymity: ``relu(cos(f(x) - c, f(original) - c) - margin)``, the cosine of the embeddings
  centred on the real-face centre ``c`` (raw dlib descriptors all share a large common part);
* identity: distance of every view of the protected face (plain, mirrored, small affine and colour
  changes) to the key-derived target identity (:mod:`faceanonymixer.engine.identity_target`), plus, when
  a subject's photos are protected together, their distance to the subject's mean embedding;
  views keep the identity from resting on pixel patterns that one resampling destroys;
* attributes: L1 between the 16 x 16 average-pooled protected and real crops. Pose, expression,
  lighting and colour live in that coarse structure; identity, for a recognizer, mostly in the
  finer detail the pooling throws away. Where the profile has attribute classifiers over the loss
  recognizer's embeddings, also the divergence of the protected face's apparent gender and age
  group from the photo's (:mod:`faceanonymixer.engine.attribute_term`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from faceanonymixer.engine.identity_target import KeyedIdentities
from faceanonymixer.engine.profiles import OptimisationConfig, Profile, get_profile
from faceanonymixer.engine.protection_key import ProtectionKey
from faceanonymixer.faces.alignment import (
    DEFAULT_PADDING,
    AlignedFace,
    FaceAligner,
    crop_to_template,
    feather_mask,
    ffhq_crop,
    paste_back,
)
from faceanonymixer.faces.embedding import chips_to_tensor
from faceanonymixer.faces.imageio import ImageInput, RGBImage, load_image
from faceanonymixer.models.base import Recognizer
from faceanonymixer.models.generator_base import Generator, LatentRole
from faceanonymixer.models.generators import load_generator
from faceanonymixer.models.inverters import load_inverter
from faceanonymixer.models.recognizers import load_recognizer
from faceanonymixer.utils.errors import ProtectionCancelledError

#: feathered border of the pasted face, as a fraction of the crop (loss and paste-back agree)
FEATHER = 0.1
ATTRIBUTE_POOL = 16
#: views beyond plain and mirrored draw their affine/colour changes from this fixed seed
VIEW_SEED = 20250701

StopCheck = Callable[[], bool]
#: called after each optimisation step with (steps done, steps in all)
StepCallback = Callable[[int, int], object]


@dataclass
class PreparedFace:
    """One photo, aligned for the recognizer and for the generator."""

    photo: RGBImage
    chip: AlignedFace
    crop: AlignedFace
    #: photo-chip pixel -> generator-crop coordinates in grid_sample's [-1, 1] units, (S, S, 2)
    grid: torch.Tensor
    decode_seconds: float
    align_seconds: float


@dataclass
class LossTrace:
    """Per-step loss values of one face."""

    total: list[float] = field(default_factory=list)
    anonymity: list[float] = field(default_factory=list)
    identity: list[float] = field(default_factory=list)
    attributes: list[float] = field(default_factory=list)
    #: the attribute classifiers' term, measured wherever the profile has classifiers (its weight
    #: may be 0); 0 throughout where it has none
    attribute_classes: list[float] = field(default_factory=list)


@dataclass
class ProtectionResult:
    #: the protected photo: the protected face pasted back at the alignment transform
    photo: RGBImage
    #: the protected face on the generator's template, ``output_size`` square
    face: RGBImage
    #: the original face on the same template and size
    original_face: RGBImage
    key_id: str | None
    key_version: int
    profile_id: str
    loss_trace: LossTrace
    timings: dict[str, float]
    #: distance of the final protected face to its target, and to the original, in the loss space
    target_distance: float
    original_distance: float
    #: (rows, width) latents, only when asked for: real (inverted), synthetic (key), protected
    latents: dict[str, np.ndarray] | None = None


@dataclass
class Subject:
    """Photos of one person under one key, protected together."""

    faces: list[PreparedFace]
    key: ProtectionKey


class ProtectionEngine:
    """Holds one profile's models; thread-compatible (one protection at a time per engine)."""

    def __init__(
        self,
        profile: str | Profile = "embedded",
        *,
        optimisation: OptimisationConfig | None = None,
        device: str | torch.device = "cpu",
        aligner: FaceAligner | None = None,
        precision: Precision = "auto",
        runtime: Runtime = "torch",
        onnx_dir: str | Path | None = None,
    ) -> None:
        """``precision``: the generator's and recognizer's arithmetic inside the loops; "auto" is
        bfloat16 on a CUDA device that supports it, float32 elsewhere. Latents, Adam and the loss
        terms stay float32 either way. ``runtime="onnx"`` runs the gradient-free passes (the
        encoder's starting latent, the original and final embeddings) on onnxruntime with the
        graphs of ``faceanonymixer export onnx --out onnx_dir``; the optimisation stays PyTorch."""
        self.profile = get_profile(profile) if isinstance(profile, str) else profile
        self.config = optimisation or self.profile.optimisation
        self._check_attribute_classifiers(self.config)
        self.device = torch.device(device)
        self.aligner = aligner or FaceAligner()
        self.generator: Generator = load_generator(self.profile.generator, device=self.device)
        self.recognizer: Recognizer = load_recognizer(self.profile.recognizer, device=self.device)
        self.inverter = load_inverter(self.profile.inverter, self.generator, device=self.device)
        self.identities = KeyedIdentities.load(
            self.profile,
            embedding_dim=self.recognizer.embedding_dim,
            z_dim=self.generator.z_dim,
            device=self.device,
        )
        self.precision = _autocast_dtype(precision, self.device)
        self.passes = _forward_passes(self, runtime, onnx_dir)
        # NHWC convolutions: tensor cores on CUDA, oneDNN instead of the slow im2col path on CPU
        # (about 20% per step on one face on this machine; docs/decisions/2026-12-04-engine-loop-speedups.md)
        set_memory_format(self.generator, torch.channels_last)
        set_memory_format(self.recognizer, torch.channels_last)
        size = self.generator.image_size
        self._mask = torch.from_numpy(feather_mask(size, FEATHER)[:, :, 0].astype(np.float32) / 255.0)

    def _check_attribute_classifiers(self, config: OptimisationConfig) -> None:
        if self.profile.attribute_classifiers is None:
            for setting in ("lambda_attr_classes", "attribute_targets"):
                if getattr(config, setting):
                    raise ValueError(
                        f"profile {self.profile.profile_id!r} has no attribute classifiers for {setting}"
                    )

    # ---- preparation -------------------------------------------------------------------------

    def prepare(self, image: ImageInput) -> PreparedFace:
        started = time.perf_counter()
        photo = load_image(image, limits=self.aligner.limits)
        decoded = time.perf_counter()
        size = self.generator.image_size
        chip_size = self.recognizer.input_size[0]
        if self.profile.alignment == "ffhq":
            chip = self.aligner.align_decoded(photo, chip_size, DEFAULT_PADDING["ffhq"], style="ffhq")
            crop_pixels, crop_transform = ffhq_crop(photo, chip.landmarks, size)
        else:
            chip = self.aligner.align_decoded(photo, chip_size, DEFAULT_PADDING["dlib"], style="dlib")
            template = self.generator.require_landmark_template()
            crop_pixels, crop_transform = crop_to_template(photo, chip.landmarks, template, size)
        crop = AlignedFace(
            image=crop_pixels,
            landmarks=chip.landmarks,
            transform=crop_transform,
            box=chip.box,
            source_size=chip.source_size,
            style="ffhq" if self.profile.alignment == "ffhq" else "template",
        )
        grid = _chip_to_crop_grid(chip, crop, self.generator.image_size)
        return PreparedFace(photo, chip, crop, grid, decoded - started, time.perf_counter() - decoded)

    # ---- protection --------------------------------------------------------------------------

    def protect(
        self,
        subjects: Sequence[Subject],
        *,
        should_stop: StopCheck | None = None,
        keep_latents: bool = False,
        optimisation: OptimisationConfig | None = None,
        on_step: StepCallback | None = None,
    ) -> list[list[ProtectionResult]]:
        """Protect every subject's photos; one optimisation batch for all of them.

        ``should_stop`` is called before every step; when it returns True the work stops with
        :class:`ProtectionCancelledError` and nothing is returned. ``on_step`` hears of each
        finished optimisation step (progress bars). ``optimisation`` replaces the
        engine's settings for this call (the evaluation's no-optimisation baseline uses it).
        """
        config = optimisation or self.config
        self._check_attribute_classifiers(config)
        faces = [face for subject in subjects for face in subject.faces]
        if not faces:
            return [[] for _ in subjects]
        owner = torch.tensor([index for index, s in enumerate(subjects) for _ in s.faces], device=self.device)
        check = should_stop or (lambda: False)
        timer = time.perf_counter()

        chips, crops, composite = self._pixels(faces)
        original = self.original_embeddings(chips, config)
        real = self._invert(crops, original, composite, check, config)
        inverted_at = time.perf_counter()

        synthetic, targets = [], []
        for index, subject in enumerate(subjects):
            mine = owner == index
            start, goal = self.key_start_and_target(
                subject.key, original[mine].mean(dim=0, keepdim=True), config
            )
            synthetic.append(start.expand(int(mine.sum()), -1, -1))
            targets.append(goal.expand(int(mine.sum()), -1))
        synthetic_latents = torch.cat(synthetic)
        target = torch.cat(targets)

        latent, trace = self._optimise(
            real, synthetic_latents, target, original, owner, crops, composite, check, config, on_step
        )
        optimised_at = time.perf_counter()

        with torch.no_grad():
            generated = self.generator.synthesize(latent)
            final = self.passes.embed(torch.round(composite(generated)).clamp(0, 255))
        results = self._results(
            subjects,
            faces,
            generated,
            final,
            target,
            original,
            latent,
            real,
            synthetic_latents,
            trace,
            keep_latents,
        )
        per_face = {
            "invert": (inverted_at - timer) / len(faces),
            "optimise": (optimised_at - inverted_at) / len(faces),
        }
        for result, face in zip((r for rs in results for r in rs), faces, strict=True):
            result.timings.update(per_face, decode=face.decode_seconds, align=face.align_seconds)
            result.timings["total"] = sum(result.timings.values())
        return results

    def _pixels(
        self, faces: Sequence[PreparedFace]
    ) -> tuple[torch.Tensor, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """The faces' recognizer chips [0, 255], generator crops [-1, 1], and the map that pastes a
        generated face into the chips with the feathered mask (what the loss recognizer sees)."""
        chips = chips_to_tensor([f.chip.image for f in faces], self.device)
        crops = chips_to_tensor([f.crop.image for f in faces], self.device) / 127.5 - 1.0
        grids = torch.stack([f.grid for f in faces]).to(self.device)
        return chips, crops, self.compositor(chips, grids)

    def compositor(self, chips: torch.Tensor, grids: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """The map that pastes generated faces ([-1, 1]) into the recognizer chips ([0, 255]) with
        the feathered mask, through the faces' chip-to-crop ``grids`` (:class:`PreparedFace`)."""
        masks = F.grid_sample(
            self._mask.expand(len(chips), 1, -1, -1).to(self.device), grids, align_corners=False
        )

        def composite(generated: torch.Tensor) -> torch.Tensor:
            pixels = F.grid_sample(
                (generated + 1.0) * 127.5, grids, align_corners=False, padding_mode="border"
            )
            return masks * pixels + (1.0 - masks) * chips

        return composite

    def reconstruct(
        self, faces: Sequence[PreparedFace], *, optimisation: OptimisationConfig | None = None
    ) -> list[RGBImage]:
        """The generator's own rendering of each face: its inverted latent (encoder, then the
        profile's ``inversion_steps``) decoded with no key and no optimisation, on the template at
        the output size: the evaluation's reference for the realism this generator allows at best."""
        config = optimisation or self.config
        if not faces:
            return []
        chips, crops, composite = self._pixels(faces)
        # only a refinement with an identity term needs the photo's identity; the encoder does not
        needs_identity = config.inversion_steps and config.inversion_identity_weight
        original = self.original_embeddings(chips, config) if needs_identity else chips.new_zeros(0)
        real = self._invert(crops, original, composite, lambda: False, config)
        with torch.no_grad():
            generated = self.generator.synthesize(real)
        images = ((generated.detach().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
        size = self.profile.output_size or self.generator.image_size
        return [_resize(image.permute(1, 2, 0).numpy(), size) for image in images]

    def key_start_and_target(
        self, key: ProtectionKey, mean: torch.Tensor, config: OptimisationConfig | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The key's synthetic latent (1, rows, width) and target identity (1, dim) for a subject
        whose original embedding (the mean over its photos) is ``mean`` (1, dim)."""
        code, target = self.identities.start_and_target(key, mean, config or self.config)
        return self.generator.mapping(code.to(self.device)), target

    def original_embeddings(self, chips: torch.Tensor, config: OptimisationConfig) -> torch.Tensor:
        """The photos' own identities: what anonymity pushes away from and targets derive from."""
        original = self.passes.embed(chips)
        if config.original_views == 2:
            # a mirror image is the same person, and the mean of the two varies less between one
            # person's photos (lfw_train: genuine distance 0.415 against 0.437, impostor 0.81)
            original = (original + self.passes.embed(chips.flip(-1))) / 2
        return original

    def _invert(
        self,
        crops: torch.Tensor,
        original: torch.Tensor,
        composite: Callable[[torch.Tensor], torch.Tensor],
        check: StopCheck,
        config: OptimisationConfig,
    ) -> torch.Tensor:
        """Encoder, then a refinement: pixel L1 + ``inversion_identity_weight`` x the distance to
        the original identity (at weight 0 the recognizer is not run)."""
        start = self.passes.invert(crops)
        if config.inversion_steps == 0:
            return start
        latent = start.clone().requires_grad_(True)
        optimiser = torch.optim.Adam([latent], lr=config.inversion_learning_rate)
        weight = config.inversion_identity_weight
        for _ in range(config.inversion_steps):
            _stop_if(check)
            with self._autocast():
                generated = self.generator.synthesize(latent).float()
                embedded = self.recognizer(composite(generated)).float() if weight else None
            loss = (generated - crops).abs().mean(dim=(1, 2, 3))
            if embedded is not None:
                loss = loss + weight * (embedded - original).norm(dim=1)
            optimiser.zero_grad(set_to_none=True)
            loss.sum().backward()
            optimiser.step()
        return latent.detach()

    def mixed_start(self, real: torch.Tensor, synthetic: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The loop's start from the real and the key's synthetic latents, by the generator's
        layout: (the real latent with the KEY rows from the synthetic one, the initial value of
        the OPTIMISED rows: their blend)."""
        layout = self.generator.layout
        base = real.clone()
        key_rows = layout.rows(LatentRole.KEY)
        optimised_rows = layout.rows(LatentRole.OPTIMISED)
        base[:, key_rows] = synthetic[:, key_rows]
        initial = self.generator.blend(
            real[:, optimised_rows], synthetic[:, optimised_rows], layout.key_blend_of(optimised_rows)
        )
        return base, initial

    def _optimise(
        self,
        real: torch.Tensor,
        synthetic: torch.Tensor,
        target: torch.Tensor,
        original: torch.Tensor,
        owner: torch.Tensor,
        crops: torch.Tensor,
        composite: Callable[[torch.Tensor], torch.Tensor],
        check: StopCheck,
        config: OptimisationConfig,
        on_step: StepCallback | None = None,
    ) -> tuple[torch.Tensor, list[LossTrace]]:
        base, initial = self.mixed_start(real, synthetic)
        optimised_rows = self.generator.layout.rows(LatentRole.OPTIMISED)
        rows = torch.tensor(optimised_rows, device=self.device)
        variable = initial.clone().requires_grad_(True)
        traces = [LossTrace() for _ in range(len(real))]
        if not optimised_rows:
            return base, traces

        optimiser = torch.optim.Adam([variable], lr=config.learning_rate)
        milestones = sorted({max(1, round(m * config.steps)) for m in config.milestones})
        schedule = torch.optim.lr_scheduler.MultiStepLR(optimiser, milestones=milestones, gamma=config.gamma)
        centred_original = original - self.identities.centre
        pooled_real = F.adaptive_avg_pool2d(crops, ATTRIBUTE_POOL)
        views = view_transforms(config.views, self.device)
        subject_sizes = torch.bincount(owner).to(real.dtype)
        several = (subject_sizes[owner] > 1).to(real.dtype)
        # measured wherever the profile has classifiers (two small products), weighted by the setting
        classes = self.identities.attributes
        original_classes = None if classes is None else classes.log_probabilities(original)

        steps: list[torch.Tensor] = []
        window = config.early_stop_patience + 1
        recent: list[tuple[torch.Tensor, torch.Tensor]] = []  # (anonymity, identity) of the last steps
        for step in range(config.steps):
            _stop_if(check)
            latent = base.index_copy(1, rows, variable)
            seen = views_at_step(views, step, config.views_per_step)
            with self._autocast():
                generated = self.generator.synthesize(latent).float()
                chips = composite(generated)
                # a step's views in one batch: a batch of one falls to torch's slow CPU convolution
                # path (no oneDNN): one call per view made the loop about 1.3x slower on a 2-core CPU
                stacked = self.recognizer(torch.cat([view(chips) for view in seen])).float()
                embeddings = list(stacked.chunk(len(seen)))
            plain = embeddings[0]  # the plain view, or with views in turn this step's first view
            anonymity = F.relu(
                F.cosine_similarity(plain - self.identities.centre, centred_original, dim=1) - config.margin
            )
            identity = torch.stack([(e - target).norm(dim=1) for e in embeddings]).mean(dim=0)
            subject_mean = torch.zeros_like(plain).index_add(0, owner, plain) / subject_sizes[owner, None]
            identity = identity + several * (plain - subject_mean[owner]).norm(dim=1)
            attributes = (
                (F.adaptive_avg_pool2d(generated, ATTRIBUTE_POOL) - pooled_real).abs().mean(dim=(1, 2, 3))
            )
            attribute_classes = (
                torch.zeros_like(anonymity)
                if classes is None or original_classes is None
                else classes.divergence(plain, original_classes)
            )
            per_face = (
                config.lambda_anon * anonymity
                + config.lambda_id * identity
                + config.lambda_attr * attributes
                + config.lambda_attr_classes * attribute_classes
            )
            terms = torch.stack([per_face, anonymity, identity, attributes, attribute_classes]).detach()
            if config.early_stop:
                recent = [*recent[1 - window :], (anonymity.detach(), identity.detach())]
                # checked before stepping, so the latent returned is the one measured as done
                if len(recent) == window and _all_done(recent, config.early_stop_tolerance):
                    steps.append(terms)
                    break
            optimiser.zero_grad(set_to_none=True)
            per_face.sum().backward()
            optimiser.step()
            schedule.step()
            # kept on the device: reading them each step would stall a GPU's queue
            steps.append(terms)
            if on_step is not None:
                on_step(step + 1, config.steps)
        values = torch.stack(steps).cpu().tolist() if steps else []  # (steps, 5, faces)
        for step in values:
            for index, trace in enumerate(traces):
                trace.total.append(step[0][index])
                trace.anonymity.append(step[1][index])
                trace.identity.append(step[2][index])
                trace.attributes.append(step[3][index])
                trace.attribute_classes.append(step[4][index])
        return base.index_copy(1, rows, variable.detach()), traces

    def _autocast(self) -> torch.autocast:
        return torch.autocast(
            self.device.type, dtype=self.precision or torch.float32, enabled=self.precision is not None
        )

    def _results(
        self,
        subjects: Sequence[Subject],
        faces: list[PreparedFace],
        generated: torch.Tensor,
        final: torch.Tensor,
        target: torch.Tensor,
        original: torch.Tensor,
        latent: torch.Tensor,
        real: torch.Tensor,
        synthetic: torch.Tensor,
        traces: list[LossTrace],
        keep_latents: bool,
    ) -> list[list[ProtectionResult]]:
        size = self.profile.output_size or self.generator.image_size
        images = ((generated.detach().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
        target_distances = (final - target).norm(dim=1).cpu().tolist()
        original_distances = (final - original).norm(dim=1).cpu().tolist()
        results: list[list[ProtectionResult]] = []
        index = 0
        for subject in subjects:
            mine: list[ProtectionResult] = []
            for face in subject.faces:
                started = time.perf_counter()
                native = images[index].permute(1, 2, 0).numpy()
                protected = _resize(native, size)
                photo = paste_back(face.photo, face.crop, protected, feather=FEATHER)
                latents = None
                if keep_latents:
                    latents = {
                        "real": real[index].cpu().numpy(),
                        "synthetic": synthetic[index].cpu().numpy(),
                        "protected": latent[index].cpu().numpy(),
                    }
                mine.append(
                    ProtectionResult(
                        photo=photo,
                        face=protected,
                        original_face=_resize(face.crop.image, size),
                        key_id=subject.key.key_id,
                        key_version=subject.key.version,
                        profile_id=self.profile.profile_id,
                        loss_trace=traces[index],
                        timings={"encode": time.perf_counter() - started},
                        target_distance=target_distances[index],
                        original_distance=original_distances[index],
                        latents=latents,
                    )
                )
                index += 1
            results.append(mine)
        return results


Precision = Literal["auto", "float32", "bfloat16"]
Runtime = Literal["torch", "onnx"]


class ForwardPasses(Protocol):
    """The engine's gradient-free forward passes, chosen once by ``runtime``."""

    def invert(self, crops: torch.Tensor) -> torch.Tensor: ...

    def embed(self, chips: torch.Tensor) -> torch.Tensor: ...


class _TorchPasses:
    """The gradient-free passes on the engine's own PyTorch modules."""

    def __init__(self, engine: ProtectionEngine) -> None:
        self.engine = engine

    def invert(self, crops: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), self.engine._autocast():
            return self.engine.inverter(crops).float()

    def embed(self, chips: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.engine.recognizer(chips)


def _forward_passes(engine: ProtectionEngine, runtime: Runtime, onnx_dir: str | Path | None) -> ForwardPasses:
    if runtime == "torch":
        return _TorchPasses(engine)
    if runtime != "onnx":
        raise ValueError(f"runtime must be torch or onnx, not {runtime!r}")
    if onnx_dir is None:
        raise ValueError("runtime='onnx' needs onnx_dir: a folder of `faceanonymixer export onnx`")
    # imported here: onnxruntime comes with the [export] extra only
    from faceanonymixer.engine.onnx_passes import OnnxForwardPasses

    return OnnxForwardPasses.open(
        onnx_dir, engine.profile, recognizer=engine.recognizer, inverter=engine.inverter, device=engine.device
    )


def _autocast_dtype(precision: Precision, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None: plain float32.

    float16 is not offered: without loss scaling its gradients underflow in a 50-step loop.
    """
    if precision == "float32":
        return None
    if precision == "bfloat16":
        return torch.bfloat16
    if precision != "auto":
        raise ValueError(f"precision must be auto, float32 or bfloat16, not {precision!r}")
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return torch.bfloat16 if cuda_bf16 else None


def _all_done(recent: list[tuple[torch.Tensor, torch.Tensor]], tolerance: float) -> bool:
    """Every face: anonymity 0 throughout ``recent``, identity improved by less than ``tolerance``
    (relative) from its first to its last step. One host sync: early stop is opt-in."""
    anonymity = torch.stack([terms[0] for terms in recent])
    first, last = recent[0][1], recent[-1][1]
    plateau = (first - last) < tolerance * first
    return bool(((anonymity <= 0).all(dim=0) & plateau).all())


def set_memory_format(module: torch.nn.Module, memory_format: torch.memory_format) -> None:
    """Lay out every 4-D weight and buffer of ``module`` in ``memory_format``, in place.

    ``Module.to(memory_format=...)`` also converts 5-D tensors and fails on StyleGAN2's 5-D
    modulated-conv weights; convolutions only care about their 4-D kernels.
    """
    with torch.no_grad():
        for tensor in (*module.parameters(), *module.buffers()):
            if tensor.dim() == 4:
                tensor.data = tensor.data.contiguous(memory_format=memory_format)


def _stop_if(check: StopCheck) -> None:
    if check():
        raise ProtectionCancelledError("protection cancelled")


def _resize(image: RGBImage, size: int) -> RGBImage:
    if image.shape[0] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))


def _chip_to_crop_grid(chip: AlignedFace, crop: AlignedFace, crop_size: int) -> torch.Tensor:
    """For every pixel of the recognizer chip, where it falls in the generator crop ([-1, 1])."""
    size = chip.image.shape[0]
    chip_to_photo = np.vstack([chip.inverse_transform, [0.0, 0.0, 1.0]])
    chip_to_crop = crop.transform @ chip_to_photo
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    u = chip_to_crop[0, 0] * xs + chip_to_crop[0, 1] * ys + chip_to_crop[0, 2]
    v = chip_to_crop[1, 0] * xs + chip_to_crop[1, 1] * ys + chip_to_crop[1, 2]
    # pixel centres sit at integers; grid_sample (align_corners=False) puts them at (i + 0.5) / n
    grid = np.stack([(u + 0.5) / crop_size * 2 - 1, (v + 0.5) / crop_size * 2 - 1], axis=-1)
    return torch.from_numpy(grid.astype(np.float32))


ViewTransform = Callable[[torch.Tensor], torch.Tensor]


def views_at_step(views: Sequence[ViewTransform], step: int, per_step: int) -> list[ViewTransform]:
    """The views the loss sees at ``step``: all of them (``per_step`` 0), or ``per_step`` of them
    taken in turn, so that consecutive steps cycle through every view."""
    if not per_step or per_step >= len(views):
        return list(views)
    return [views[(step * per_step + offset) % len(views)] for offset in range(per_step)]


def view_transforms(count: int, device: torch.device) -> list[ViewTransform]:
    """Plain, mirrored, then fixed random small rotations/scales/shifts with colour changes."""
    views: list[ViewTransform] = [lambda chips: chips, lambda chips: chips.flip(-1)]
    draws = torch.Generator().manual_seed(VIEW_SEED)
    for _ in range(max(0, count - 2)):
        angle, scale, shift_x, shift_y, gain, offset = (torch.rand(6, generator=draws) * 2 - 1).tolist()
        theta = np.deg2rad(6.0 * angle)
        factor = 1.0 + 0.05 * scale
        matrix = torch.tensor(
            [
                [np.cos(theta) / factor, -np.sin(theta) / factor, 0.04 * shift_x],
                [np.sin(theta) / factor, np.cos(theta) / factor, 0.04 * shift_y],
            ],
            dtype=torch.float32,
            device=device,
        )

        def view(
            chips: torch.Tensor, matrix: torch.Tensor = matrix, gain: float = gain, offset: float = offset
        ) -> torch.Tensor:
            grid = F.affine_grid(matrix.expand(len(chips), 2, 3), list(chips.shape), align_corners=False)
            moved = F.grid_sample(chips, grid, align_corners=False, padding_mode="border")
            return (moved * (1.0 + 0.12 * gain) + 12.0 * offset).clamp(0, 255)

        views.append(view)
    return views[:count]
