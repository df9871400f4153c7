"""The work behind ``faceanonymixer protect``: in this process, or on a server."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faceanonymixer.cli_remote import Remote, RemoteItemError, one_line_rpc_errors
from faceanonymixer.imageio import RGBImage, decode_image_bytes
from faceanonymixer.protection_key import ProtectionKey


@dataclass
class ProtectedOutput:
    pixels: RGBImage
    profile_id: str
    key_id: str | None
    key_version: int
    #: what ``--json`` reports for this output besides its paths
    report: dict[str, Any] = field(default_factory=dict)


def load_local_key(
    key_file: Path | None, key_version: int, key_id: str | None, keystore: str | None, tenant: str
) -> ProtectionKey:
    """A raw key file, or a key of the local key store (which refuses a revoked key)."""
    if key_file is not None:
        return ProtectionKey.from_file(key_file, version=key_version)
    assert key_id is not None
    from faceanonymixer.keystore import KeyEncryptionKey, KeyStore
    from faceanonymixer.service.settings import ServiceSettings

    settings = ServiceSettings.load(None, keystore=keystore)
    with KeyStore.open(settings.keystore, KeyEncryptionKey.from_env()) as store:
        _, key = store.key_for_use(tenant, key_id)
    return key


def protect_locally(
    images: list[Path], key: ProtectionKey, profile: str, *, crop: bool, steps: int | None
) -> list[ProtectedOutput]:
    from faceanonymixer.protector import Protector

    overrides: dict[str, Any] = {} if steps is None else {"steps": steps}
    results = Protector(profile, **overrides).protect(list(images), key)
    return [
        ProtectedOutput(
            pixels=result.face if crop else result.photo,
            profile_id=result.profile_id,
            key_id=result.key_id,
            key_version=result.key_version,
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
    from faceanonymixer.errors import InvalidImageError
    from faceanonymixer.v1 import protection_pb2, protection_pb2_grpc

    try:
        photos = [path.read_bytes() for path in images]
    except OSError as error:
        raise InvalidImageError(f"{error.filename}: cannot read ({error.strerror})") from None
    with remote.channel() as channel, one_line_rpc_errors():
        stub = protection_pb2_grpc.ProtectionServiceStub(channel)
        if len(photos) == 1:
            request = protection_pb2.ProtectFaceRequest(image=photos[0], key_id=key_id, paste_back=paste_back)
            replies = [stub.ProtectFace(request, metadata=remote.metadata, timeout=timeout)]
        else:
            request_many = protection_pb2.ProtectFacesRequest(
                images=photos, key_id=key_id, paste_back=paste_back
            )
            stream = stub.ProtectFaces(request_many, metadata=remote.metadata, timeout=timeout)
            replies = _in_order(list(stream), images)
    return [
        ProtectedOutput(
            pixels=decode_image_bytes(reply.image),
            profile_id=reply.profile_id,
            key_id=reply.key_id,
            key_version=reply.key_version,
            report={"seconds": round(reply.timings.total.ToTimedelta().total_seconds(), 3)},
        )
        for reply in replies
    ]


def _in_order(replies: list[Any], images: list[Path]) -> list[Any]:
    """Stream replies by index; the first failed item fails the whole command, as locally."""
    by_index = {reply.index: reply for reply in replies}
    for index, path in enumerate(images):
        reply = by_index.get(index)
        if reply is None:
            raise RuntimeError(f"the server sent no result for {path}")
        if reply.status.code != 0:
            raise RemoteItemError(path, reply.status)
    return [by_index[index] for index in range(len(images))]
