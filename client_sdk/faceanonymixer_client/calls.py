"""What the blocking and the asyncio clients share: requests, replies and the retry budget."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import grpc

from faceanonymixer_client.errors import DeadlineError, FaceAnonyMixerError, error_from_status
from faceanonymixer_client.images import ChannelOrder, WireImage, to_wire
from faceanonymixer_client.options import RetryPolicy
from faceanonymixer_client.results import KeyInfo, KeyState, Protection, protection_from, state_filter
from faceanonymixer_proto.v1 import keys_pb2, protection_pb2

#: ``output_format`` names the SDK accepts (None: the input's own format, see ``images``)
OUTPUT_FORMATS = {
    "png": protection_pb2.IMAGE_FORMAT_PNG,
    "jpeg": protection_pb2.IMAGE_FORMAT_JPEG,
    "webp": protection_pb2.IMAGE_FORMAT_WEBP,
}


class RetryBudget:
    """One call's deadline, shared by all its attempts, and its count of attempts."""

    def __init__(self, policy: RetryPolicy, timeout: float) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        self.policy = policy
        self.deadline = time.monotonic() + timeout
        self.attempt = 0

    def remaining(self) -> float:
        """Seconds left for the next attempt."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DeadlineError("the call's deadline passed", code=grpc.StatusCode.DEADLINE_EXCEEDED)
        return left

    def wait_after(self, error: FaceAnonyMixerError) -> float:
        """Seconds to sleep before trying again after ``error``; raises ``error`` when the policy says
        not to retry, or when the wait would end after the deadline."""
        delay = self.policy.delay(error, self.attempt)
        if delay is None or time.monotonic() + delay >= self.deadline:
            raise error from None
        self.attempt += 1
        return delay


def output_format_code(name: str | None, wire: WireImage) -> protection_pb2.ImageFormat:
    if name is None:
        return wire.output_format
    if name.lower() not in OUTPUT_FORMATS:
        raise ValueError(f"output_format must be one of {sorted(OUTPUT_FORMATS)} or None, not {name!r}")
    return OUTPUT_FORMATS[name.lower()]


def check_output_size(output_size: int, paste_back: bool) -> None:
    """The server sizes only the aligned face; a pasted-back photo keeps the photo's own size."""
    if output_size and paste_back:
        raise ValueError("output_size sizes the aligned face: pass paste_back=False with it")


def face_request(
    image: Any,
    key_id: str,
    *,
    channel_order: ChannelOrder | None,
    paste_back: bool,
    output_size: int,
    output_format: str | None,
) -> tuple[protection_pb2.ProtectFaceRequest, WireImage]:
    check_output_size(output_size, paste_back)
    wire = to_wire(image, channel_order)
    request = protection_pb2.ProtectFaceRequest(
        image=wire.data,
        key_id=key_id,
        output_size=output_size,
        output_format=output_format_code(output_format, wire),
        paste_back=paste_back,
    )
    return request, wire


def faces_request(
    images: Sequence[Any],
    key_id: str,
    *,
    channel_order: ChannelOrder | None,
    paste_back: bool,
    output_size: int,
    output_format: str | None,
) -> tuple[protection_pb2.ProtectFacesRequest, list[WireImage]]:
    """One ProtectFaces request; its output format is the first image's when none is named."""
    check_output_size(output_size, paste_back)
    wires = [to_wire(image, channel_order) for image in images]
    if not wires:
        raise ValueError("give at least one image")
    request = protection_pb2.ProtectFacesRequest(
        images=[wire.data for wire in wires],
        key_id=key_id,
        output_size=output_size,
        output_format=output_format_code(output_format, wires[0]),
        paste_back=paste_back,
    )
    return request, wires


def protection(reply: protection_pb2.ProtectFaceResponse, wire: WireImage) -> Protection:
    return protection_from(reply, wire.restore(reply.image))


def subject_protections(
    replies: Iterable[protection_pb2.ProtectFacesResponse], wires: Sequence[WireImage]
) -> list[Protection | FaceAnonyMixerError]:
    """The stream's answers in the order of the images: a protection, or that image's error."""
    by_index = {reply.index: reply for reply in replies}
    results: list[Protection | FaceAnonyMixerError] = []
    for index, wire in enumerate(wires):
        reply = by_index.get(index)
        if reply is None:
            results.append(FaceAnonyMixerError(f"the server sent no answer for image {index}"))
        elif reply.status.code != 0:
            results.append(error_from_status(reply.status))
        else:
            results.append(protection_from(reply, wire.restore(reply.image)))
    return results


def list_request(state: KeyState | None, subject: str | None, page_size: int) -> keys_pb2.ListKeysRequest:
    if page_size < 1:
        raise ValueError(f"page_size must be positive, not {page_size}")
    return keys_pb2.ListKeysRequest(page_size=page_size, state=state_filter(state), subject=subject or "")


def key_infos(reply: keys_pb2.ListKeysResponse) -> list[KeyInfo]:
    return [KeyInfo.from_message(key) for key in reply.keys]


def raise_first_error(
    results: list[Protection | FaceAnonyMixerError], return_exceptions: bool
) -> list[Protection | FaceAnonyMixerError]:
    """``results`` as they are with ``return_exceptions``; else the first error is raised."""
    if not return_exceptions:
        for result in results:
            if isinstance(result, FaceAnonyMixerError):
                raise result
    return results
