"""Bearer tokens -> tenants, and the server's TLS / mTLS credentials."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import grpc
from google.rpc import code_pb2

from faceanonymixer.service.settings import ServiceSettings
from faceanonymixer.service.status import Reason, ServiceError, rich_status

#: the tenant of every call when the server runs without tokens (loopback only)
DEFAULT_TENANT = "default"


class Authenticator:
    """Finds the caller's tenant from the ``authorization: Bearer <token>`` metadata.

    Tokens are kept only as SHA-256 digests and compared in constant time; with no tokens
    configured every call belongs to :data:`DEFAULT_TENANT`.
    """

    def __init__(self, tokens: dict[str, str]) -> None:
        self._digests = [(_digest(token), tenant) for token, tenant in tokens.items()]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def tenant(self, metadata: tuple[tuple[str, str | bytes], ...] | None) -> str:
        if not self.enabled:
            return DEFAULT_TENANT
        header = next((value for name, value in metadata or () if name == "authorization"), None)
        if not isinstance(header, str) or not header.lower().startswith("bearer "):
            raise _unauthenticated("missing bearer token (metadata 'authorization: Bearer <token>')")
        presented = _digest(header[len("bearer ") :].strip())
        found = None
        for digest, tenant in self._digests:  # no early exit: time does not depend on the match
            if hmac.compare_digest(digest, presented):
                found = tenant
        if found is None:
            raise _unauthenticated("invalid bearer token")
        return found


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _unauthenticated(message: str) -> ServiceError:
    return ServiceError(rich_status(code_pb2.UNAUTHENTICATED, message, Reason.UNAUTHENTICATED))


def server_credentials(settings: ServiceSettings) -> grpc.ServerCredentials | None:
    """TLS credentials when a certificate is configured; client certificates required with a CA."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    pair = (_read(settings.tls_key_file), _read(settings.tls_cert_file))
    client_ca = _read(settings.tls_client_ca_file) if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def _read(path: Path) -> bytes:
    from faceanonymixer.service.settings import SettingsError

    try:
        return path.read_bytes()
    except OSError as error:
        raise SettingsError(f"{path}: cannot read ({error.strerror})") from None
