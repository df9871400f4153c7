"""The blocking client: protect images and manage keys on a FaceAnonyMixer server."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
from tqdm import tqdm

from faceanonymixer_client import calls
from faceanonymixer_client.errors import FaceAnonyMixerError, error_from_rpc
from faceanonymixer_client.images import ChannelOrder
from faceanonymixer_client.options import (
    MAX_MESSAGE_BYTES,
    NO_RETRY,
    RetryPolicy,
    TlsConfig,
    bearer,
    call_metadata,
    connect,
)
from faceanonymixer_client.results import KeyInfo, KeyState, Protection, Revocation
from faceanonymixer_proto.v1 import keys_pb2, keys_pb2_grpc, protection_pb2_grpc

T = TypeVar("T")
#: seconds a call may take, all its retries included, unless the call says otherwise
DEFAULT_TIMEOUT = 120.0


class ServerTarget:
    """One server address: its channel (blocking or asyncio) and stubs."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.protection = protection_pb2_grpc.ProtectionServiceStub(channel)
        self.keys = keys_pb2_grpc.KeyServiceStub(channel)


class ProtectionClient:
    """Protect face images and manage keys on one or several FaceAnonyMixer servers.

    ``addresses``: ``"host:port"`` or a list of them; calls go round-robin over the addresses (and
    over every address a name resolves to), and a retry goes to the next one. ``timeout`` bounds
    every call, retries included; each method also takes its own ``timeout``. UNAVAILABLE and
    RESOURCE_EXHAUSTED are retried under ``retry`` (RetryInfo honoured); every refusal is raised as
    a typed error from :mod:`faceanonymixer_client.errors`. ``metadata``: extra (key, value) pairs
    sent with every call (Ray Serve's ``application`` where a cluster serves several apps).
    Thread-safe; close it when done (or use it as a context manager).
    """

    def __init__(
        self,
        addresses: str | Sequence[str],
        *,
        token: str | None = None,
        tls: TlsConfig | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        options: Sequence[tuple[str, Any]] | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        targets = [addresses] if isinstance(addresses, str) else list(addresses)
        if not targets:
            raise ValueError("give at least one server address")
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._metadata = (*bearer(token), *call_metadata(metadata))
        credentials = None if tls is None else tls.credentials()
        self._targets = [
            ServerTarget(
                connect(
                    address, credentials=credentials, options=options, max_message_bytes=max_message_bytes
                )
            )
            for address in targets
        ]
        self._turn = itertools.count()

    # ---- protection --------------------------------------------------------------------------

    def protect(
        self,
        image: Any,
        key_id: str,
        *,
        channel_order: ChannelOrder | None = None,
        paste_back: bool = True,
        output_size: int = 0,
        output_format: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        """The protected image, in the kind ``image`` was given (see :mod:`faceanonymixer_client.images`;
        a colour numpy array needs ``channel_order``)."""
        return self.protect_detailed(
            image,
            key_id,
            channel_order=channel_order,
            paste_back=paste_back,
            output_size=output_size,
            output_format=output_format,
            timeout=timeout,
        ).image

    def protect_detailed(
        self,
        image: Any,
        key_id: str,
        *,
        channel_order: ChannelOrder | None = None,
        paste_back: bool = True,
        output_size: int = 0,
        output_format: str | None = None,
        timeout: float | None = None,
    ) -> Protection:
        """As :meth:`protect`, with the key version, profile, face box and timings."""
        request, wire = calls.face_request(
            image,
            key_id,
            channel_order=channel_order,
            paste_back=paste_back,
            output_size=output_size,
            output_format=output_format,
        )
        reply = self._call(
            lambda target, left: target.protection.ProtectFace(request, **self._kw(left)), timeout
        )
        return calls.protection(reply, wire)

    def protect_subject(
        self,
        images: Sequence[Any],
        key_id: str,
        *,
        channel_order: ChannelOrder | None = None,
        paste_back: bool = True,
        output_size: int = 0,
        output_format: str | None = None,
        timeout: float | None = None,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """Several photos of one person, protected together in one call (consistent enrollment):
        the protected images in order. A photo that fails raises its error, or with
        ``return_exceptions`` stands in the list as its error."""
        results = self.protect_subject_detailed(
            images,
            key_id,
            channel_order=channel_order,
            paste_back=paste_back,
            output_size=output_size,
            output_format=output_format,
            timeout=timeout,
            return_exceptions=return_exceptions,
        )
        return [result.image if isinstance(result, Protection) else result for result in results]

    def protect_subject_detailed(
        self,
        images: Sequence[Any],
        key_id: str,
        *,
        channel_order: ChannelOrder | None = None,
        paste_back: bool = True,
        output_size: int = 0,
        output_format: str | None = None,
        timeout: float | None = None,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """As :meth:`protect_subject`, each with its key version, profile, face box and timings."""
        request, wires = calls.faces_request(
            images,
            key_id,
            channel_order=channel_order,
            paste_back=paste_back,
            output_size=output_size,
            output_format=output_format,
        )
        replies = self._call(
            lambda target, left: list(target.protection.ProtectFaces(request, **self._kw(left))), timeout
        )
        return calls.raise_first_error(calls.subject_protections(replies, wires), return_exceptions)

    def protect_many(
        self,
        images: Iterable[Any],
        key_id: str,
        *,
        max_in_flight: int = 4,
        progress: bool = False,
        return_exceptions: bool = False,
        **protect_options: Any,
    ) -> list[Any]:
        """Each image protected in its own call, up to ``max_in_flight`` at once; results in the
        order of ``images``. ``progress`` shows a progress bar. The first failure is raised (the
        calls not yet started are dropped) unless ``return_exceptions``."""
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight}")
        items = list(images)

        def one(image: Any) -> Any:
            try:
                return self.protect(image, key_id, **protect_options)
            except FaceAnonyMixerError as error:
                if return_exceptions:
                    return error
                raise

        with (
            ThreadPoolExecutor(max_in_flight, thread_name_prefix="faceanonymixer") as pool,
            tqdm(total=len(items), disable=not progress, desc="protect", unit="image") as bar,
        ):
            futures = [pool.submit(one, image) for image in items]
            for future in futures:
                future.add_done_callback(lambda _: bar.update())
            try:
                return [future.result() for future in futures]
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

    # ---- keys --------------------------------------------------------------------------------

    def create_key(
        self,
        subject: str,
        *,
        labels: dict[str, str] | None = None,
        profile_id: str = "",
        timeout: float | None = None,
    ) -> KeyInfo:
        """A new key for ``subject`` (a person, or a whole application). Not retried: a retry after
        a lost answer could create a second key."""
        request = keys_pb2.CreateKeyRequest(subject=subject, labels=labels or {}, profile_id=profile_id)
        reply = self._call(
            lambda target, left: target.keys.CreateKey(request, **self._kw(left)), timeout, NO_RETRY
        )
        return KeyInfo.from_message(reply.key)

    def revoke_key(self, key_id: str, *, timeout: float | None = None) -> Revocation:
        """Revoke ``key_id`` for good; the answer names its replacement (a new key id). Safe to
        retry: revoking again returns the same pair."""
        request = keys_pb2.RevokeKeyRequest(key_id=key_id)
        reply = self._call(lambda target, left: target.keys.RevokeKey(request, **self._kw(left)), timeout)
        return Revocation(
            KeyInfo.from_message(reply.revoked_key), KeyInfo.from_message(reply.replacement_key)
        )

    def get_key(self, key_id: str, *, timeout: float | None = None) -> KeyInfo:
        request = keys_pb2.GetKeyRequest(key_id=key_id)
        reply = self._call(lambda target, left: target.keys.GetKey(request, **self._kw(left)), timeout)
        return KeyInfo.from_message(reply.key)

    def list_keys(
        self,
        *,
        state: KeyState | None = None,
        subject: str | None = None,
        page_size: int = 100,
        timeout: float | None = None,
    ) -> Iterator[KeyInfo]:
        """The caller's keys, page by page as the iteration goes (``timeout`` is per page)."""
        request = calls.list_request(state, subject, page_size)
        while True:
            reply = self._call(lambda target, left: target.keys.ListKeys(request, **self._kw(left)), timeout)
            yield from calls.key_infos(reply)
            if not reply.next_page_token:
                return
            request.page_token = reply.next_page_token

    # ---- plumbing ----------------------------------------------------------------------------

    def _kw(self, timeout: float) -> dict[str, Any]:
        return {"timeout": timeout, "metadata": self._metadata}

    def _call(
        self,
        invoke: Callable[[ServerTarget, float], T],
        timeout: float | None,
        retry: RetryPolicy | None = None,
    ) -> T:
        budget = calls.RetryBudget(retry or self.retry, self.timeout if timeout is None else timeout)
        while True:
            target = self._targets[next(self._turn) % len(self._targets)]
            try:
                return invoke(target, budget.remaining())
            except grpc.RpcError as error:
                time.sleep(budget.wait_after(error_from_rpc(error)))

    def close(self) -> None:
        for target in self._targets:
            target.channel.close()

    def __enter__(self) -> ProtectionClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
