"""Key-derived target identities: what makes a probe protected on its own match its enrollment.

Each protected face is pulled toward ``t = c + s * B P^T (e - c)`` in the loss recognizer's space:
``e`` the original embedding (the mean over a subject's photos when several are protected
together), ``c`` the centre of real faces, ``P`` and ``B`` two key-seeded orthonormal bases of
``rank`` dimensions and ``s = sqrt(dim / rank)`` so that distances keep their expected size (the
engine scales ``s`` by the profile's ``target_gain`` where its generator falls short of targets).
With the profile's ``target_subspace`` k, ``B`` is drawn inside the k principal axes of real
identities (``identity_stats.py``): a ``B`` drawn in the whole space puts about half of every
target along directions in which real faces hardly differ (the weakest 64 of dlib's 128 axes hold
3% of their variance), where no generated face reaches either.
With the profile's ``source_axes`` k', ``P`` is drawn inside the top k' of those axes: the target
reads the photo's identity only where real people differ most, so that what varies between one
person's photos along the weaker axes no longer moves its target.

* Stable: ``t`` is a smooth function of the real identity, so photos of one person (close ``e``)
  get close targets in separate calls, and different people keep their distance even when the
  whole application shares one key.
* Unlinkable: another key draws other bases, so the same person gets an unrelated target.
* Not invertible: ``P^T`` keeps ``rank`` of the ``dim`` dimensions of ``e - c``; the rest is gone
  from the target, and so from the protected face. The trade-off, stated plainly: whoever holds
  the key *and* a protected face can recover those ``rank`` projections and, like any holder of a
  key in a cancelable scheme, protect candidate photos with the same key and compare. The key is
  the secret; what is destroyed is the way back to the face and to the full original template.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from faceanonymixer.engine.attribute_term import AttributeTerm
from faceanonymixer.engine.profiles import OptimisationConfig, Profile
from faceanonymixer.engine.protection_key import ProtectionKey, key_generator
from faceanonymixer.models.identity_code import IdentityCoder, load_identity_code_map
from faceanonymixer.models.identity_stats import IdentityBasis, load_identity_basis, load_identity_mean
from faceanonymixer.models.weights import weights_entry
from faceanonymixer.utils.errors import ModelFormatError

TARGET_PURPOSE = "identity-target"
LATENT_PURPOSE = "synthetic-latent"
LATENT_IDENTITY_PURPOSE = "synthetic-latent-identity"
KEPT_SHIFT_PURPOSE = "kept-shift"


def key_target_map(
    key: ProtectionKey,
    profile_id: str,
    dim: int,
    rank: int,
    subspace: torch.Tensor | None = None,
    source_subspace: torch.Tensor | None = None,
) -> torch.Tensor:
    """The (dim, dim) linear map ``s * B P^T`` of rank ``rank`` for this key (float32).

    ``subspace`` (dim, k) orthonormal columns, k >= rank: ``B`` is drawn inside it (the principal
    axes of real identities, ``identity_stats.IdentityBasis.top``), so that targets lie where
    real faces vary and a generator can reach them; None: anywhere in the embedding space.
    ``source_subspace``, the same for ``P``: the map reads the identity along those axes only.
    """
    if not 1 <= rank <= dim:
        raise ValueError(f"rank must be between 1 and {dim}, not {rank}")
    for name, axes in (("target", subspace), ("source", source_subspace)):
        if axes is not None and (axes.ndim != 2 or axes.shape[0] != dim or axes.shape[1] < rank):
            raise ValueError(
                f"the {name} subspace must be ({dim}, k) with k >= rank {rank}, not {tuple(axes.shape)}"
            )
    generator = key_generator(key, profile_id, TARGET_PURPOSE)
    draws = torch.randn(2, dim, rank, generator=generator, dtype=torch.float64)
    source = _orthonormal_inside(draws[0], source_subspace)
    target = _orthonormal_inside(draws[1], subspace)
    return (math.sqrt(dim / rank) * target @ source.T).float()


def _orthonormal_inside(draw: torch.Tensor, subspace: torch.Tensor | None) -> torch.Tensor:
    """Orthonormal columns from a (dim, rank) Gaussian draw: in the whole space, or inside
    ``subspace`` (dim, k) with the draw's first k rows as coordinates along its axes."""
    if subspace is None:
        return torch.linalg.qr(draw).Q
    axes = subspace.to(torch.float64)
    return axes @ torch.linalg.qr(draw[: axes.shape[1]]).Q


def target_identity(embeddings: torch.Tensor, centre: torch.Tensor, mapping: torch.Tensor) -> torch.Tensor:
    """Targets for (N, dim) original embeddings around ``centre``."""
    return centre + (embeddings - centre) @ mapping.T


def with_attributes_of(
    targets: torch.Tensor, originals: torch.Tensor, directions: torch.Tensor
) -> torch.Tensor:
    """The smallest change of (N, dim) ``targets`` that gives them the ``originals``' projections
    on the (k, dim) ``directions`` (linear classifiers' weights): a linear classifier then reads
    each target as it reads its original, and the rest of the target is the key's."""
    directions = directions.to(targets)
    gram = torch.linalg.pinv(directions @ directions.T)  # pinv: the age directions are dependent
    return targets + (originals - targets) @ directions.T @ gram @ directions


def synthetic_code(
    key: ProtectionKey,
    profile_id: str,
    z_dim: int,
    centred: torch.Tensor,
    identity_weight: float,
    identity_code: torch.Tensor | None = None,
) -> torch.Tensor:
    """The generator code of the key's synthetic face for one subject, (1, z_dim) on the CPU.

    ``sqrt(1 - w^2) z_key + w i``: ``z_key`` a key-seeded Gaussian code and ``i`` the subject's
    part. ``i`` is ``identity_code`` where the profile has a fitted map from identities to codes
    (``identity_code.py``: the code of the subject's key-derived target, or with the profile's
    ``start_axes`` of the target of its identity's coarse part); otherwise
    ``sqrt(z_dim) W u``, ``u`` the unit direction of the subject's centred embedding (1, dim) and
    ``W`` a key-seeded orthonormal map, so the code keeps about the length of a Gaussian draw. With
    ``w = 0`` everyone sharing a key starts from one synthetic face (the published method, one key
    per person); with ``w > 0`` people sharing a key start from different faces, while photos of
    one person (close directions) start close together, and another key draws unrelated codes.
    """
    if not 0.0 <= identity_weight <= 1.0:
        raise ValueError(f"identity_weight must be between 0 and 1, not {identity_weight}")
    code = torch.randn(1, z_dim, generator=key_generator(key, profile_id, LATENT_PURPOSE))
    if identity_weight == 0.0:
        return code
    if identity_code is not None:
        if identity_code.shape != (1, z_dim):
            raise ValueError(f"identity_code must be (1, {z_dim}), not {tuple(identity_code.shape)}")
        return math.sqrt(1.0 - identity_weight**2) * code + identity_weight * identity_code.cpu().float()
    dim = centred.shape[-1]
    draw = torch.randn(
        max(z_dim, dim),
        min(z_dim, dim),
        generator=key_generator(key, profile_id, LATENT_IDENTITY_PURPOSE),
        dtype=torch.float64,
    )
    basis = torch.linalg.qr(draw).Q.float()  # orthonormal columns
    projection = basis if z_dim >= dim else basis.T  # (z_dim, dim)
    direction = torch.nn.functional.normalize(centred.detach().cpu().float().reshape(1, dim), dim=1)
    # scaled so that its length matches a Gaussian draw's, about sqrt(z_dim)
    identity = math.sqrt(z_dim) * torch.nn.functional.normalize(direction @ projection.T, dim=1)
    return math.sqrt(1.0 - identity_weight**2) * code + identity_weight * identity


@dataclass(frozen=True)
class KeyedIdentities:
    """A profile's statistics of real identities, and what a key makes of a subject's identity
    with them: its target identity and the code of its synthetic face (:meth:`start_and_target`)."""

    profile_id: str
    #: (dim,) the centre of real faces in the loss recognizer's space, on the engine's device
    centre: torch.Tensor
    #: principal axes of real identities (``target_subspace``, ``source_axes``, ``kept_axes``, ``start_axes``)
    basis: IdentityBasis | None
    #: fitted map from identities to generator codes (``synthetic_identity_weight`` > 0)
    code_map: IdentityCoder | None
    z_dim: int
    #: the loss recognizer's attribute classifiers (``lambda_attr_classes``, ``attribute_targets``)
    attributes: AttributeTerm | None = None

    @classmethod
    def load(
        cls, profile: Profile, *, embedding_dim: int, z_dim: int, device: torch.device
    ) -> KeyedIdentities:
        """The profile's committed statistics, checked against its recognizer's and generator's sizes."""
        centre = torch.zeros(embedding_dim, device=device)
        if profile.identity_mean is not None:
            entry = weights_entry(profile.identity_mean)
            centre = load_identity_mean(entry.path, sha256=entry.sha256).to(device)
        code_map = None
        if profile.identity_code_map is not None:
            entry = weights_entry(profile.identity_code_map)
            code_map = load_identity_code_map(entry.path, sha256=entry.sha256)
            if (code_map.z_dim, code_map.embedding_dim) != (z_dim, embedding_dim):
                raise ModelFormatError(
                    f"{entry.path}: maps {code_map.embedding_dim}-d embeddings to {code_map.z_dim}-d codes, "
                    f"the profile's models need {embedding_dim} to {z_dim}"
                )
        basis = None
        if profile.identity_basis is not None:
            entry = weights_entry(profile.identity_basis)
            basis = load_identity_basis(entry.path, sha256=entry.sha256)
            if basis.dim != embedding_dim:
                raise ModelFormatError(
                    f"{entry.path}: axes of a {basis.dim}-d space, the recognizer's is {embedding_dim}-d"
                )
        attributes = None
        if profile.attribute_classifiers is not None:
            attributes = AttributeTerm.load(
                profile.attribute_classifiers, embedding_dim=embedding_dim, device=device
            )
        return cls(profile.profile_id, centre, basis, code_map, z_dim, attributes)

    def start_and_target(
        self, key: ProtectionKey, mean: torch.Tensor, config: OptimisationConfig
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The code (1, z_dim) of the key's synthetic face, on the CPU, and the target identity
        (1, dim) for a subject whose original embedding (the mean over its photos) is ``mean``."""
        subject, target = self.subject_and_target(key, mean, config)
        identity_code = None
        if subject is not None:
            assert self.code_map is not None
            identity_code = self.code_map.code(subject)
        code = synthetic_code(
            key,
            self.profile_id,
            self.z_dim,
            mean - self.centre,
            config.synthetic_identity_weight,
            identity_code,
        )
        return code, target

    def subject_and_target(
        self, key: ProtectionKey, mean: torch.Tensor, config: OptimisationConfig
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """What the code map reads of the subject, (1, dim) around the centre (None where the
        profile's key face takes nothing from a code map), and the target identity (1, dim)."""
        centre, kept = self.centre, config.kept_axes
        target_axes = self.axes(config.target_subspace, "target_subspace")
        source_axes = self.axes(config.source_axes, "source_axes")
        mapping = config.target_gain * key_target_map(
            key,
            self.profile_id,
            mean.shape[1],
            config.target_rank,
            None if target_axes is None else target_axes[:, kept:],
            None if source_axes is None else source_axes[:, kept:],
        )
        if kept:
            # the group-level part of the identity stays as it is (kept_axes, profiles.py)
            kept_part = self.axes(kept, "kept_axes")
            assert kept_part is not None
            mapping = mapping + kept_part @ kept_part.T
        mapping = mapping.to(mean.device)
        shift = self.kept_offset(key, config).to(mean)
        target = self.keep_attributes(target_identity(mean, centre, mapping) + shift, mean, config)
        if self.code_map is None or config.synthetic_identity_weight == 0:
            return None, target
        subject = target - centre
        start_axes = self.axes(config.start_axes, "start_axes")
        if start_axes is not None:
            # the target of the subject's coarse identity: steadier across its photos
            axes = start_axes.to(mean.device)
            subject = (mean - centre) @ axes @ axes.T @ mapping.T
            if config.kept_shift:
                subject = subject + shift
            if config.attribute_targets:
                subject = self.keep_attributes(centre + subject, mean, config) - centre
        return subject, target

    def kept_offset(self, key: ProtectionKey, config: OptimisationConfig) -> torch.Tensor:
        """The key's offset (dim,) of the kept coordinates (``kept_shift`` standard deviations of
        real faces along each kept axis); zeros without ``kept_shift``."""
        if not config.kept_shift:
            return torch.zeros(self.centre.shape[0])
        axes = self.axes(config.kept_axes, "kept_axes")
        assert axes is not None and self.basis is not None
        draws = torch.randn(
            config.kept_axes, generator=key_generator(key, self.profile_id, KEPT_SHIFT_PURPOSE)
        )
        spread = self.basis.variances[: config.kept_axes].sqrt()
        return axes @ (config.kept_shift * spread * draws)

    def keep_attributes(
        self, target: torch.Tensor, mean: torch.Tensor, config: OptimisationConfig
    ) -> torch.Tensor:
        """``target`` as it is, or with ``attribute_targets`` read by the attribute classifiers as
        ``mean`` is (:func:`with_attributes_of`), so that the identity and attribute terms agree."""
        if not config.attribute_targets:
            return target
        if self.attributes is None:
            raise ValueError(
                f"profile {self.profile_id!r} has no attribute classifiers for attribute_targets"
            )
        return with_attributes_of(target, mean, self.attributes.directions())

    def axes(self, count: int, setting: str) -> torch.Tensor | None:
        """The top ``count`` principal axes of real identities, (dim, count) on the CPU (where
        the key's draws are); None for 0 (the whole space)."""
        if not count:
            return None
        if self.basis is None:
            raise ValueError(f"profile {self.profile_id!r} has no identity basis for {setting}")
        return self.basis.top(count)
