"""Model profiles: one consistent set of models, their latent layout and optimisation defaults.

A profile id never changes: it is part of every key's derivation. What a profile *is* can change
(new weights, new settings); each such state is a **revision**, :func:`profile_revision`: a short
digest of the settings, the registry names and the SHA-256 of every weight file the profile
loads. A key records the revision it was made under; a server protects only under revisions it
serves (the current one, plus the profile's entries in :data:`ARCHIVED_PROFILES`), so an upgrade
never silently changes the faces of keys enrolled before it (docs/security.md; the decision:
docs/decisions/2026-12-07-service-hardening.md).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from faceanonymixer.utils.files import cached_file_sha256


@dataclass(frozen=True)
class OptimisationConfig:
    """Knobs of the protection loop. Defaults follow the published FaceAnonyMixer code."""

    steps: int = 50
    learning_rate: float = 0.01
    #: MultiStepLR milestones as fractions of ``steps``
    milestones: tuple[float, ...] = (0.75, 0.9)
    gamma: float = 0.8
    lambda_anon: float = 10.0
    lambda_id: float = 10.0
    lambda_attr: float = 0.15
    #: weight of the attribute classifiers' term (the profile's ``attribute_classifiers``): the
    #: protected face keeps the photo's apparent gender and age group as the loss recognizer
    #: reads them (``engine/attribute_term.py``); 0: no such term
    lambda_attr_classes: float = 0.0
    #: the key's target keeps the photo's apparent gender and age group as the profile's
    #: ``attribute_classifiers`` read them (the smallest change of the target that does so;
    #: ``identity_target.with_attributes_of``), so that the identity and attribute terms agree
    attribute_targets: bool = False
    #: centred cosine between protected and original embeddings is pushed below this
    margin: float = 0.0
    #: views of each protected face in the identity loss: plain, mirrored, then random affine/colour
    views: int = 2
    #: views the recognizer sees at each step, taken in turn (step s starts at view s * k mod
    #: ``views``); 0: all of them every step. One view a step costs one recognizer pass instead
    #: of ``views``, and over the steps the loss still sees every view
    views_per_step: int = 0
    #: views of each photo averaged into its original embedding: 1 the photo as is, 2 with its
    #: mirror image too, a steadier estimate of who it is, so one person's photos get closer targets
    original_views: int = 1
    #: per-face latent refinement after the encoder (pixel + identity-feature loss)
    inversion_steps: int = 20
    inversion_learning_rate: float = 0.05
    #: weight of the refinement's identity term (the distance of the refined face to the photo's
    #: identity, in the loss recognizer); 0: the refinement fits the photo's pixels alone, without
    #: the recognizer. Screened as the loop's start (150 steps): more realistic faces, easier to
    #: link across keys (docs/decisions/2026-12-07-where-shared-key-faces-become-alike.md)
    inversion_identity_weight: float = 1.0
    #: dimensions of the original identity that survive into the key-derived target (of 128 for dlib)
    target_rank: int = 64
    #: scale of the target's distance from the real-face centre (1 keeps real-face spread)
    target_gain: float = 1.0
    #: targets drawn inside this many principal axes of real identities (the profile's
    #: ``identity_basis``), where faces vary; 0: anywhere in the embedding space
    target_subspace: int = 0
    #: the key's map reads the photo's identity inside this many principal axes of real
    #: identities, where people differ more than one person's photos do; 0: all of it
    source_axes: int = 0
    #: the target keeps the photo's identity along this many top principal axes as it is (where
    #: groups differ: skin tone, gender, age) and the key rotates only the rest, so that a target
    #: stays where faces like the photo's are, which the generator can render; 0: rotate it all
    kept_axes: int = 0
    #: the kept coordinates move by a key-seeded offset of this many standard deviations of real
    #: faces along each kept axis: the same for everyone under one key (distances under a shared
    #: key unchanged), another under another key, so that one person's faces under two keys no
    #: longer share them exactly; 0: kept as they are
    kept_shift: float = 0.0
    #: the key's face from the subject's identity inside this many principal axes of real
    #: identities (where a fitted code map gives the subject's part of it): the coarse part, which
    #: varies less between one person's photos than the whole; 0: the whole identity
    start_axes: int = 0
    #: share of the key's synthetic face drawn from the subject's identity (0: from the key
    #: alone, as published); above 0, people sharing one key start from different faces
    synthetic_identity_weight: float = 0.0
    #: opt-in: end the loop once every face is done: its anonymity term at 0 over the last
    #: ``early_stop_patience`` steps, and its identity term improved by less than
    #: ``early_stop_tolerance`` (relative) over them. The identity term never reaches 0 (the
    #: key's target lies beyond what the generator can reach), so "done" is a plateau.
    early_stop: bool = False
    early_stop_tolerance: float = 0.01
    early_stop_patience: int = 5

    def __post_init__(self) -> None:
        if self.steps < 0 or self.inversion_steps < 0:
            raise ValueError("steps must not be negative")
        if self.views < 1:
            raise ValueError("at least one view is needed")
        if not 0 <= self.views_per_step <= self.views:
            raise ValueError("views_per_step must be 0 (every view) or between 1 and views")
        if self.original_views not in (1, 2):
            raise ValueError("original_views is 1 (the photo) or 2 (the photo and its mirror image)")
        if not all(0.0 < m <= 1.0 for m in self.milestones):
            raise ValueError("milestones are fractions of the steps, in (0, 1]")
        if self.learning_rate <= 0 or self.inversion_learning_rate <= 0:
            raise ValueError("learning rates must be positive")
        if self.inversion_identity_weight < 0:
            raise ValueError("inversion_identity_weight must not be negative")
        if not 0.0 <= self.synthetic_identity_weight <= 1.0:
            raise ValueError("synthetic_identity_weight must be between 0 and 1")
        if self.target_rank < 1:
            raise ValueError("target_rank must be at least 1")
        if self.start_axes < 0:
            raise ValueError("start_axes must be 0 (the whole identity) or a number of axes")
        if self.target_subspace and self.target_subspace < self.target_rank:
            raise ValueError("target_subspace must be 0 (the whole space) or at least target_rank")
        if self.source_axes and self.source_axes < self.target_rank:
            raise ValueError("source_axes must be 0 (the whole identity) or at least target_rank")
        if self.lambda_attr_classes < 0:
            raise ValueError("lambda_attr_classes must not be negative")
        if self.kept_shift < 0 or (self.kept_shift and not self.kept_axes):
            raise ValueError("kept_shift must not be negative, and needs kept_axes")
        if self.kept_axes < 0:
            raise ValueError("kept_axes must be 0 or a number of axes")
        rotated = min(self.source_axes, self.target_subspace) - self.kept_axes
        if self.kept_axes and not (self.source_axes and self.target_subspace and rotated >= self.target_rank):
            raise ValueError(
                "kept_axes needs source_axes and target_subspace, each at least kept_axes + target_rank"
            )
        if self.early_stop_tolerance < 0 or self.early_stop_patience < 1:
            raise ValueError("early_stop_tolerance must not be negative, early_stop_patience at least 1")

    def with_overrides(self, **overrides: Any) -> OptimisationConfig:
        unknown = set(overrides) - set(self.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown optimisation settings: {', '.join(sorted(unknown))}")
        return replace(self, **overrides)


@dataclass(frozen=True)
class Profile:
    profile_id: str
    #: names in the generator, recognizer and inverter registries
    generator: str
    recognizer: str
    inverter: str
    #: the recognizer's mean real-face embedding (a name in the committed weights manifest); None:
    #: the origin (ArcFace's unit embeddings are already centred enough for the cosine)
    identity_mean: str | None
    optimisation: OptimisationConfig = field(default_factory=OptimisationConfig)
    #: side of the aligned protected crop returned to callers; None: the generator's own size
    output_size: int | None = 256
    #: how photos are cut: "dlib" (the recognizer's dlib chip; the generator's crop onto its
    #: landmark template) or "ffhq" (both with the FFHQ recipe StyleGAN2 and e4e were trained on)
    alignment: Literal["dlib", "ffhq"] = "dlib"
    #: a fitted map from identities to generator codes (a name in the committed weights
    #: manifest; ``identity_code.py``): the subject's part of the key's synthetic face is the code
    #: of its target identity. None: a key-seeded random map of the subject's embedding
    identity_code_map: str | None = None
    #: the principal axes of real identities in the recognizer's space (a name in the committed
    #: weights manifest; ``identity_stats.py``), for ``target_subspace``
    identity_basis: str | None = None
    #: apparent-gender and age-group classifiers over the recognizer's embeddings (a name in the
    #: committed weights manifest; ``models/attribute_classifiers.py``), for ``lambda_attr_classes``
    #: and ``attribute_targets``
    attribute_classifiers: str | None = None


#: The first engine, on the DigiFace DCGAN. lr 0.05: the published 0.01 (tuned for StyleGAN2's W+)
#: moves the DCGAN's first feature map too little in 50 steps. target_gain 2.25: the DCGAN reaches
#: its targets only part of the way, so protected faces of different people crowd together unless
#: the targets lie farther from the centre, and a larger gain costs genuine matches.
#: docs/decisions/2026-11-25-digiface-target-gain.md.
EMBEDDED_DIGIFACE = Profile(
    profile_id="embedded-digiface",
    generator="digiface-dcgan",
    recognizer="dlib",
    inverter="digiface-dcgan-encoder",
    identity_mean="dlib-identity-mean",
    optimisation=OptimisationConfig(learning_rate=0.05, target_gain=2.25),
    identity_basis="dlib-identity-basis",
)

#: The default until 2026-12-07, archived (``ARCHIVED_PROFILES``) so that keys made under it keep
#: their faces: the DigiFace DCGAN fine-tuned adversarially on ``lfw_train`` with its encoder
#: ("lfw-dcgan", ``models train-generator``), everything fitted on real faces fitted on
#: ``lfw_train`` alone. Each setting and what it was measured against, in docs/decisions/:
#: the key's face from each person's coarse target identity through the fitted map
#: (synthetic_identity_weight 1, start_axes 16: 2026-12-05-the-keys-face-from-the-target-identity.md,
#: 2026-12-06-the-keys-face-from-the-coarse-identity.md); targets inside the top 64 principal axes
#: (2026-12-06-targets-where-real-faces-vary.md) read from the top 48 at gain 1.6
#: (2026-12-06-target-source-axes.md); the original read with its mirror image
#: (2026-12-06-a-steadier-original.md); views in turn (2026-12-06-views-in-turn.md); the loop
#: from the encoder's code (2026-12-06-start-from-the-encoders-code.md); one default for both
#: kinds of key (2026-12-06-one-default-for-both-kinds-of-key.md).
EMBEDDED_LFW_STATS = replace(
    EMBEDDED_DIGIFACE,
    profile_id="embedded",
    generator="lfw-dcgan",
    inverter="lfw-dcgan-encoder",
    identity_code_map="lfw-dcgan-identity-code",
    optimisation=replace(
        EMBEDDED_DIGIFACE.optimisation,
        synthetic_identity_weight=1.0,
        target_subspace=64,
        target_gain=1.6,
        target_rank=48,
        source_axes=48,
        original_views=2,
        start_axes=16,
        views_per_step=1,
        inversion_steps=0,
    ),
)

#: The default: the revision above with everything fitted on real faces refitted on LFW and
#: UTKFace together (``lfw_train`` + ``utk_train``, balanced by race x gender; UTKFace is non-commercial
#: research data, see the weights manifest): the identity mean and principal axes
#: ("dlib-identity-diverse-*") and the identity-to-code map ("lfw-dcgan-diverse-identity-code"). The
#: LFW-only mean put Black and Asian women far from the centre, where their targets crowded
#: together under a shared key. The target also keeps each photo's identity along the top
#: principal axes (kept_axes), where groups (gender, skin tone, age) differ most, and the key
#: rotates the identity inside the next ones: people of one group are spread by the key instead of
#: drawn towards one region, at a cost in unlinkability.
#: docs/decisions/2026-12-07-diverse-statistics-and-kept-axes.md. Its attribute classifiers
#: (over dlib's embeddings, fitted on utk_train) are named for opt-in settings only
#: (lambda_attr_classes, attribute_targets, with kept_shift): measured and not made the default,
#: docs/decisions/2026-12-07-attribute-classifiers-in-the-loss.md; named but unused, they are not
#: part of the revision.
EMBEDDED = replace(
    EMBEDDED_LFW_STATS,
    identity_mean="dlib-identity-diverse-mean",
    identity_basis="dlib-identity-diverse-basis",
    identity_code_map="lfw-dcgan-diverse-identity-code",
    attribute_classifiers="dlib-attribute-classifiers",
    optimisation=replace(EMBEDDED_LFW_STATS.optimisation, kept_axes=2, source_axes=50),
)

#: The published models: StyleGAN2 FFHQ 1024 (W+ 18 x 512; rows 0-2 from the key, 3-7 optimised, 8-17
#: the real face's), the e4e FFHQ encoder and ArcFace IR-SE50, all from the model zoo
#: (``faceanonymixer models pull``). The published loop: 50 Adam steps at lr 0.01 from e4e's
#: inversion (no refinement). The attribute term is the engine's pooled-pixel L1 in place of the
#: published FaRL ViT features, which cannot be loaded here. target_rank keeps half of ArcFace's
#: 512 dimensions, as 64 of dlib's 128 do in the embedded profile; untuned (no weights here).
FFHQ = Profile(
    profile_id="ffhq",
    generator="stylegan2-ffhq",
    recognizer="arcface-ir-se50",
    inverter="e4e-ffhq",
    identity_mean=None,
    optimisation=OptimisationConfig(inversion_steps=0, target_rank=256),
    output_size=None,
    alignment="ffhq",
)

PROFILES: dict[str, Profile] = {
    profile.profile_id: profile for profile in (EMBEDDED, EMBEDDED_DIGIFACE, FFHQ)
}


def get_profile(name: str) -> Profile:
    profile = PROFILES.get(name)
    if profile is None:
        raise ValueError(f"unknown profile {name!r}; available: {', '.join(sorted(PROFILES))}")
    return profile


#: Earlier states of profiles that servers keep serving beside the current one, so keys made
#: under them keep their protected faces: when a profile's weights or settings change, put its
#: previous ``Profile`` here (its generator, encoder and weights stay registered and committed).
#: A server loads an archived revision's models on the first call that needs them.
ARCHIVED_PROFILES: tuple[Profile, ...] = (EMBEDDED_LFW_STATS,)

#: the weight files each registry name loads: ("committed", manifest name), ("zoo", model zoo
#: name) or ("package", a function giving the path of a file shipped by an installed package)
_PACKAGE_FILES: dict[str, tuple[str, str]] = {
    # registry name -> (package, file inside it)
    "digiface-dcgan": ("gan_face_generate", "weights.tar"),
    "dlib": ("face_recognition_models", "models/dlib_face_recognition_resnet_model_v1.dat"),
    "aligner:dlib": ("face_recognition_models", "models/shape_predictor_5_face_landmarks.dat"),
    "aligner:ffhq": ("face_recognition_models", "models/shape_predictor_68_face_landmarks.dat"),
}
_ZOO_NAMES = frozenset({"stylegan2-ffhq", "e4e-ffhq", "arcface-ir-se50"})
#: characters of the hex digest kept in a revision
REVISION_CHARS = 16


def profile_revision(profile: Profile) -> str:
    """The profile's revision: 16 hex characters of the SHA-256 of its settings (optimisation
    included), its registry names, its alignment and the SHA-256 of every weight file it loads
    (the aligner's landmark model too). A change of code that changes protected faces without
    changing any of these needs a change here too (a setting, or a new registry name)."""
    names = {
        "generator": profile.generator,
        "recognizer": profile.recognizer,
        "encoder": profile.inverter,
        "identity_mean": profile.identity_mean,
        "identity_code_map": profile.identity_code_map,
        "identity_basis": profile.identity_basis,
    }
    settings = profile.optimisation
    if profile.attribute_classifiers is not None and (
        settings.lambda_attr_classes or settings.attribute_targets
    ):
        # a role added since revisions were introduced: digested only where a setting uses it, as
        # only then does it change protected faces
        names["attribute_classifiers"] = profile.attribute_classifiers
    weights = {
        f"{role}:{_NAMES_AT_FIRST_REVISION.get(name, name)}": _weights_digest(name)
        for role, name in names.items()
        if name is not None
    }
    names = {role: _NAMES_AT_FIRST_REVISION.get(name, name) if name else name for role, name in names.items()}
    weights["aligner"] = _weights_digest(f"aligner:{profile.alignment}")
    document = {
        "profile_id": profile.profile_id,
        **names,
        "output_size": profile.output_size,
        "alignment": profile.alignment,
        "optimisation": _optimisation_document(profile.optimisation),
        "weights": weights,
    }
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:REVISION_CHARS]


#: registry names renamed since revisions were introduced, digested under their first name so that
#: a rename changes no revision (``Profile.inverter`` is digested as "encoder" for the same reason)
_NAMES_AT_FIRST_REVISION = {"digiface-dcgan-encoder": "embedded-encoder"}


#: the optimisation settings that existed when revisions were introduced (2026-12-07): always part
#: of the digest. A setting added since counts only when it differs from its default, so adding a
#: setting whose default keeps today's faces changes no revision. (Its default must then never
#: change; to change it, move it here, which changes every revision.)
_FIRST_REVISION_SETTINGS = frozenset(
    {
        "steps",
        "learning_rate",
        "milestones",
        "gamma",
        "lambda_anon",
        "lambda_id",
        "lambda_attr",
        "margin",
        "views",
        "views_per_step",
        "original_views",
        "inversion_steps",
        "inversion_learning_rate",
        "target_rank",
        "target_gain",
        "target_subspace",
        "source_axes",
        "start_axes",
        "synthetic_identity_weight",
        "early_stop",
        "early_stop_tolerance",
        "early_stop_patience",
    }
)


def _optimisation_document(config: OptimisationConfig) -> dict[str, Any]:
    defaults = OptimisationConfig()
    return {
        name: value
        for name, value in asdict(config).items()
        if name in _FIRST_REVISION_SETTINGS or value != getattr(defaults, name)
    }


def served_profiles(current: Profile, *, archived: bool = True) -> dict[str, Profile]:
    """Revision -> profile for every revision of ``current``'s id a server with ``current``
    serves: ``current`` itself, and (``archived``) the id's entries in :data:`ARCHIVED_PROFILES`."""
    served = {profile_revision(current): current}
    if archived:
        for profile in ARCHIVED_PROFILES:
            if profile.profile_id == current.profile_id:
                served.setdefault(profile_revision(profile), profile)
    return served


def served_revision(current: Profile, revision: str) -> Profile:
    """The profile of ``revision`` among those a server with ``current`` serves
    (:func:`served_profiles`); ValueError naming the revisions this version has."""
    served = served_profiles(current)
    if revision not in served:
        known = ", ".join(served)
        raise ValueError(
            f"profile {current.profile_id!r} has no revision {revision!r}; this version has {known}"
        )
    return served[revision]


def with_optimisation_overrides(profile: Profile, overrides: dict[str, Any]) -> Profile:
    """``profile`` as a server configured with ``optimisation`` overrides runs it (another
    revision unless the overrides repeat the defaults)."""
    if not overrides:
        return profile
    return replace(profile, optimisation=profile.optimisation.with_overrides(**overrides))


def _weights_digest(name: str) -> str:
    """SHA-256 of the weight file behind a registry name; "unpinned" for a zoo model without a
    published digest, "unregistered:<name>" for a name this table does not know (a plugin's)."""
    from faceanonymixer.models.weights import committed_weights

    committed = committed_weights()
    if name in committed:
        return committed[name].sha256
    if name in _ZOO_NAMES:
        from faceanonymixer.models.zoo import load_manifest

        model = load_manifest().get(name)
        return (model.sha256 if model is not None else None) or "unpinned"
    if name in _PACKAGE_FILES:
        package, relative = _PACKAGE_FILES[name]
        return _package_file_digest(package, relative)
    return f"unregistered:{name}"


def _package_file_digest(package: str, relative: str) -> str:
    from importlib.util import find_spec

    spec = find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return f"missing:{package}"
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        return f"missing:{package}/{relative}"
    return cached_file_sha256(path)
