"""The asyncio client: the same calls as :class:`~faceanonymixer_client.ProtectionClient`, awaited."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import grpc
from tqdm import tqdm

from faceanonymixer_client import calls
from faceanonymixer_client.client import DEFAULT_TIMEOUT, ServerTarget
from faceanonymixer_client.errors import FaceAnonyMixerError, error_from_rpc
from faceanonymixer_client.images import ChannelOrder
from faceanonymixer_client.options import (
    MAX_MESSAGE_BYTES,
    NO_RETRY,
    RetryPolicy,
    TlsConfig,
    bearer,
    call_metadata,
    channel_options,
)
from faceanonymixer_client.results import KeyInfo, KeyState, Protection, Revocation
from faceanonymixer_proto.v1 import keys_pb2

T = TypeVar("T")


class AsyncProtectionClient:
    """:class:`~faceanonymixer_client.ProtectionClient` for asyncio: same arguments, same errors,
    same retries. Create it inside the event loop that uses it; ``await client.close()`` (or
    ``async with``) when done."""

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
        arguments = channel_options(max_message_bytes, options)
        self._targets = [
            ServerTarget(
                grpc.aio.insecure_channel(address, options=arguments)
                if tls is None
                else grpc.aio.secure_channel(address, tls.credentials(), options=arguments)
            )
            for address in targets
        ]
        self._turn = itertools.count()

    async def protect(
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
        protection = await self.protect_detailed(
            image,
            key_id,
            channel_order=channel_order,
            paste_back=paste_back,
            output_size=output_size,
            output_format=output_format,
            timeout=timeout,
        )
        return protection.image

    async def protect_detailed(
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
        request, wire = calls.face_request(
            image,
            key_id,
            channel_order=channel_order,
            paste_back=paste_back,
            output_size=output_size,
            output_format=output_format,
        )
        reply = await self._call(
            lambda target, left: target.protection.ProtectFace(request, **self._kw(left)), timeout
        )
        return calls.protection(reply, wire)

    async def protect_subject(
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
        results = await self.protect_subject_detailed(
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

    async def protect_subject_detailed(
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

        async def collect(target: ServerTarget, left: float) -> list[Any]:
            return [reply async for reply in target.protection.ProtectFaces(request, **self._kw(left))]

        replies = await self._call(collect, timeout)
        return calls.raise_first_error(calls.subject_protections(replies, wires), return_exceptions)

    async def protect_many(
        self,
        images: Iterable[Any],
        key_id: str,
        *,
        max_in_flight: int = 4,
        progress: bool = False,
        return_exceptions: bool = False,
        **protect_options: Any,
    ) -> list[Any]:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight}")
        items = list(images)
        gate = asyncio.Semaphore(max_in_flight)

        with tqdm(total=len(items), disable=not progress, desc="protect", unit="image") as bar:

            async def one(image: Any) -> Any:
                async with gate:
                    try:
                        return await self.protect(image, key_id, **protect_options)
                    except FaceAnonyMixerError as error:
                        if return_exceptions:
                            return error
                        raise
                    finally:
                        bar.update()

            tasks = [asyncio.ensure_future(one(image)) for image in items]
            try:
                return list(await asyncio.gather(*tasks))
            except BaseException:
                for task in tasks:
                    task.cancel()
                raise

    async def create_key(
        self,
        subject: str,
        *,
        labels: dict[str, str] | None = None,
        profile_id: str = "",
        timeout: float | None = None,
    ) -> KeyInfo:
        request = keys_pb2.CreateKeyRequest(subject=subject, labels=labels or {}, profile_id=profile_id)
        reply = await self._call(
            lambda target, left: target.keys.CreateKey(request, **self._kw(left)), timeout, NO_RETRY
        )
        return KeyInfo.from_message(reply.key)

    async def revoke_key(self, key_id: str, *, timeout: float | None = None) -> Revocation:
        request = keys_pb2.RevokeKeyRequest(key_id=key_id)
        reply = await self._call(
            lambda target, left: target.keys.RevokeKey(request, **self._kw(left)), timeout
        )
        return Revocation(
            KeyInfo.from_message(reply.revoked_key), KeyInfo.from_message(reply.replacement_key)
        )

    async def get_key(self, key_id: str, *, timeout: float | None = None) -> KeyInfo:
        request = keys_pb2.GetKeyRequest(key_id=key_id)
        reply = await self._call(lambda target, left: target.keys.GetKey(request, **self._kw(left)), timeout)
        return KeyInfo.from_message(reply.key)

    async def list_keys(
        self,
        *,
        state: KeyState | None = None,
        subject: str | None = None,
        page_size: int = 100,
        timeout: float | None = None,
    ) -> AsyncIterator[KeyInfo]:
        request = calls.list_request(state, subject, page_size)
        while True:
            reply = await self._call(
                lambda target, left: target.keys.ListKeys(request, **self._kw(left)), timeout
            )
            for key in calls.key_infos(reply):
                yield key
            if not reply.next_page_token:
                return
            request.page_token = reply.next_page_token

    def _kw(self, timeout: float) -> dict[str, Any]:
        return {"timeout": timeout, "metadata": self._metadata}

    async def _call(
        self,
        invoke: Callable[[ServerTarget, float], Awaitable[T]],
        timeout: float | None,
        retry: RetryPolicy | None = None,
    ) -> T:
        budget = calls.RetryBudget(retry or self.retry, self.timeout if timeout is None else timeout)
        while True:
            target = self._targets[next(self._turn) % len(self._targets)]
            try:
                return await invoke(target, budget.remaining())
            except grpc.RpcError as error:
                await asyncio.sleep(budget.wait_after(error_from_rpc(error)))

    async def close(self) -> None:
        for target in self._targets:
            await target.channel.close()

    async def __aenter__(self) -> AsyncProtectionClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
