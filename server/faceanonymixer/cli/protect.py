"""The work behind ``faceanonymixer protect``: in this process, or on a server."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from faceanonymixer.cli.remote import Remote
from faceanonymixer.engine.protection_key import ProtectionKey
from faceanonymixer.faces.imageio import RGBImage, decode_image_bytes
from faceanonymixer_client import Protection
from faceanonymixer_client.errors import FaceAnonyMixerError

if TYPE_CHECKING:
    from faceanonymixer.engine.profiles import Profile
    from faceanonymixer.engine.protection import Runtime


@dataclass
class ProtectedOutput:
    pixels: RGBImage
    profile_id: str
    key_id: str | None
    key_version: int
    #: ``profiles.profile_revision`` of the models and settings that made it ("" from a server)
    profile_revision: str
    #: what ``--json`` reports for this output besides its paths
    report: dict[str, Any] = field(default_factory=dict)


def load_local_key(
    key_file: Path | None,
    key_version: int,
    key_id: str | None,
    keystore: str | None,
    tenant: str,
    profile: str,
    revision: str | None,
) -> tuple[ProtectionKey, Profile]:
    """A raw key file, or a key of the local key store (which refuses a revoked key, a key bound
    to another profile, and a key made under a revision this version no longer has: its enrolled
    faces were protected with other models or settings); with the revision of ``profile`` that
    protects under it: the key's own (store), ``revision`` or the current one (key file)."""
    from faceanonymixer.engine.profiles import get_profile, served_profiles, served_revision
    from faceanonymixer.utils.errors import InvalidRequestError

    try:
        current = get_profile(profile)
    except ValueError as error:
        raise InvalidRequestError(str(error), field="profile") from None
    if key_file is not None:
        try:
            chosen = served_revision(current, revision) if revision is not None else current
        except ValueError as error:
            raise InvalidRequestError(str(error), field="revision") from None
        return ProtectionKey.from_file(key_file, version=key_version), chosen
    assert key_id is not None
    if revision is not None:
        raise InvalidRequestError("--revision is for --key-file: a stored key has its own", field="revision")
    from faceanonymixer.keystore import KeyEncryptionKey, KeyStore
    from faceanonymixer.service.settings import ServiceSettings

    served = served_profiles(current)
    settings = ServiceSettings.load(None, keystore=keystore)
    with KeyStore.open(settings.keystore, KeyEncryptionKey.from_env()) as store:
        record, key = store.key_for_use(tenant, key_id, profile=profile, revisions=served)
    assert record.profile_revision is not None  # key_for_use refuses a key without one of these
    return key, served[record.profile_revision]


def protect_locally(
    images: list[Path],
    key: ProtectionKey,
    profile: Profile,
    *,
    crop: bool,
    steps: int | None,
    runtime: str = "torch",
    onnx_dir: Path | None = None,
    threads: int | None = None,
    progress: bool = False,
) -> list[ProtectedOutput]:
    """Protect ``images`` (one subject) in this process; ``progress`` draws bars on stderr: the
    photos as they are aligned, then the optimisation steps."""
    from tqdm import tqdm

    from faceanonymixer.engine.profiles import profile_revision, with_optimisation_overrides
    from faceanonymixer.engine.protector import Protector
    from faceanonymixer.utils.errors import InvalidRequestError

    if runtime not in ("torch", "onnx"):
        raise InvalidRequestError(f"--runtime must be torch or onnx, not {runtime!r}", field="runtime")
    if runtime == "onnx" and onnx_dir is None:
        raise InvalidRequestError("--runtime onnx needs --onnx-dir", field="onnx_dir")
    overrides: dict[str, Any] = {} if steps is None else {"steps": steps}
    protector = Protector(
        profile, runtime=cast("Runtime", runtime), onnx_dir=onnx_dir, threads=threads, **overrides
    )
    # Every event is drawn (no rate limit): a photo or a step takes tens of milliseconds or more,
    # and a fast run still ends each bar at its total rather than at whatever was last sampled.
    bar_options: dict[str, Any] = {"disable": not progress, "leave": False, "mininterval": 0, "miniters": 1}
    photo_bar = tqdm(total=len(images), desc="align", unit="photo", **bar_options)
    step_bar = tqdm(desc="protect", unit="step", **bar_options)

    def photo_done(done: int, total: int) -> None:
        photo_bar.update(done - photo_bar.n)

    def step_done(done: int, total: int) -> None:
        step_bar.total = total
        step_bar.update(done - step_bar.n)

    with photo_bar, step_bar:
        results = protector.protect(list(images), key, on_photo=photo_done, on_step=step_done)
    return [
        ProtectedOutput(
            pixels=result.face if crop else result.photo,
            profile_id=result.profile_id,
            key_id=result.key_id,
            key_version=result.key_version,
            # what ran: with --steps, another revision than the key's (the faces differ)
            profile_revision=profile_revision(with_optimisation_overrides(profile, overrides)),
            report={
                "target_distance": round(result.target_distance, 4),
                "original_distance": round(result.original_distance, 4),
                "seconds": round(result.timings["total"], 3),
            },
        )
        for result in results
    ]


def protect_remotely(
    remote: Remote, images: list[Path], key_id: str, *, paste_back: bool, timeout: float
) -> list[ProtectedOutput]:
    """One photo: ProtectFace; several: ProtectFaces (joint enrollment). Any failure fails all."""
    options: dict[str, Any] = {"paste_back": paste_back, "output_format": "png"}
    with remote.client(timeout) as client:
        if len(images) == 1:
            try:
                results: list[Protection | FaceAnonyMixerError] = [
                    client.protect_detailed(images[0], key_id, **options)
                ]
            except FaceAnonyMixerError as error:
                error.input = str(images[0])
                raise
        else:
            results = client.protect_subject_detailed(images, key_id, return_exceptions=True, **options)
    for path, result in zip(images, results, strict=True):
        if isinstance(result, FaceAnonyMixerError):
            result.input = str(path)
            raise result
    return [
        ProtectedOutput(
            pixels=decode_image_bytes(result.image),
            profile_id=result.profile_id,
            key_id=result.key_id,
            key_version=result.key_version,
            profile_revision="",  # the reply does not carry it (a gap of the wire format)
            report={"seconds": round(result.timings["total"], 3)},
        )
        for result in results
        if isinstance(result, Protection)
    ]
