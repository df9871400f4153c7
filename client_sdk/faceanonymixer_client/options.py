"""How the SDK connects and retries: TLS, channel options, the retry policy."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from faceanonymixer_client.errors import FaceAnonyMixerError

#: the largest message sent or received by default: room for several full-size photos
MAX_MESSAGE_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class TlsConfig:
    """TLS to the server: ``ca`` (PEM) checks the server's certificate (None: the system's roots);
    ``certificate`` and ``private_key`` (PEM) add a client certificate for mTLS."""

    ca: bytes | None = None
    certificate: bytes | None = None
    private_key: bytes | None = None

    def __post_init__(self) -> None:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("a client certificate and its private key go together (mTLS)")

    @classmethod
    def from_files(
        cls,
        ca: str | Path | None = None,
        certificate: str | Path | None = None,
        private_key: str | Path | None = None,
    ) -> TlsConfig:
        def read(path: str | Path | None) -> bytes | None:
            return None if path is None else Path(path).read_bytes()

        return cls(read(ca), read(certificate), read(private_key))

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.private_key, certificate_chain=self.certificate
        )


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of UNAVAILABLE and RESOURCE_EXHAUSTED: exponential backoff with jitter, or the delay
    the server's ``RetryInfo`` asks for. No attempt starts after the call's deadline."""

    #: attempts in all, the first one included (1: never retry)
    max_attempts: int = 5
    initial_backoff: float = 0.2
    max_backoff: float = 10.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.initial_backoff < 0 or self.max_backoff < self.initial_backoff:
            raise ValueError(f"invalid retry policy: {self}")

    def delay(self, error: FaceAnonyMixerError, attempt: int) -> float | None:
        """Seconds to wait before attempt ``attempt + 1`` after ``error``; None: do not retry."""
        if not error.retryable or attempt + 1 >= self.max_attempts:
            return None
        if error.retry_after is not None:
            # at least what the server asked, spread a little so that refused clients do not return together
            return error.retry_after * random.uniform(1.0, 1.2)
        backoff = min(self.max_backoff, self.initial_backoff * self.multiplier**attempt)
        return backoff * random.uniform(0.5, 1.0)


NO_RETRY = RetryPolicy(max_attempts=1)


def channel_options(
    max_message_bytes: int, options: Sequence[tuple[str, Any]] | None
) -> list[tuple[str, Any]]:
    """Message-size limits, round-robin over every address a name resolves to (a headless
    Kubernetes service, say), and the caller's own channel arguments on top."""
    merged: dict[str, Any] = {
        "grpc.max_send_message_length": max_message_bytes,
        "grpc.max_receive_message_length": max_message_bytes,
        "grpc.lb_policy_name": "round_robin",
    }
    merged.update(options or ())
    return list(merged.items())


def call_metadata(metadata: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Extra metadata for every call (e.g. Ray Serve's ``application`` where a cluster runs
    several apps); the bearer token has its own argument."""
    pairs = tuple((str(key).lower(), str(value)) for key, value in metadata)
    if any(key == "authorization" for key, _ in pairs):
        raise ValueError("pass the bearer token as token=, not as metadata")
    return pairs


def bearer(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def connect(
    address: str,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    options: Sequence[tuple[str, Any]] | None = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
) -> grpc.Channel:
    """A raw gRPC channel to a FaceAnonyMixer server, for the generated stubs (the clients are the
    easier way). Secure when ``credentials`` are given; see :func:`channel_options` for the rest.
    The caller closes it."""
    arguments = channel_options(max_message_bytes, options)
    if credentials is None:
        return grpc.insecure_channel(address, options=arguments)
    return grpc.secure_channel(address, credentials, options=arguments)
