"""Authentication, tenant isolation, TLS and mTLS of a real ``faceanonymixer serve``.

* Bearer tokens: no token or a wrong one is UNAUTHENTICATED on every method; health needs none.
* Tenants: another tenant's key id is PERMISSION_DENIED, decided from the id alone, so an existing
  key, a revoked one and an id that was minted for the tenant but never stored get the same answer;
  ListKeys never shows another tenant's keys.
* TLS: certificates made here (a CA, a server certificate for 127.0.0.1 and localhost, client
  certificates from that CA and from an untrusted one). With a client CA configured only clients
  with a certificate from it connect; without one, the CA root alone is enough.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from service_harness import ServerProcess, bearer, error_reason, health_status, stubs

from faceanonymixer.keystore import KeyEncryptionKey
from faceanonymixer.keystore.key_ids import KeyIds
from faceanonymixer_proto.v1 import keys_pb2, keys_pb2_grpc, protection_pb2, protection_pb2_grpc

#: real servers with tokens, TLS and mTLS: slow, not in the quick loop
pytestmark = pytest.mark.slow

TOKEN_ONE = "auth-test-token-of-tenant-one"
TOKEN_TWO = "auth-test-token-of-tenant-two"
TENANT_ONE, TENANT_TWO = "tenant1", "tenant2"
ONE, TWO = bearer(TOKEN_ONE), bearer(TOKEN_TWO)
TIMEOUT = 20.0
CONNECT_TIMEOUT = 5.0


def new_server(workdir: Path, **settings: Any) -> ServerProcess:
    kek_file = workdir / "kek.bin"
    kek_file.write_bytes(os.urandom(32))
    return ServerProcess(
        workdir,
        kek_file,
        {
            "keystore": f"sqlite:///{workdir / 'keys.db'}",
            "tokens": {TOKEN_ONE: TENANT_ONE, TOKEN_TWO: TENANT_TWO},
            "workers": 1,
            **settings,
        },
    )


def status_details(error: grpc.RpcError) -> tuple[grpc.StatusCode, str, list[str]]:
    """(code, message, the details as text) of a failed call."""
    assert isinstance(error, grpc.Call)
    status = rpc_status.from_call(error)
    details = []
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            details.append(f"ErrorInfo({info.reason}, {info.domain}, {dict(info.metadata)})")
        else:
            details.append(detail.type_url)
    return error.code(), error.details() or "", details


def refused(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


# ---- bearer tokens and tenants --------------------------------------------------------------------


@dataclass
class TokenServer:
    server: ServerProcess
    protection: protection_pb2_grpc.ProtectionServiceStub
    keys: keys_pb2_grpc.KeyServiceStub
    channel: grpc.Channel
    key_ids: KeyIds  # mints ids tagged like the server's (same KEK)
    face: bytes


@pytest.fixture(scope="module")
def token_server(faces_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    server = new_server(tmp_path_factory.mktemp("tokens"))
    key_ids = KeyIds(KeyEncryptionKey.from_file(server.kek_file).key_id_tag_key())
    face = (faces_root / "fr_examples" / "kit_harington" / "john2.jpeg").read_bytes()
    with server.running(), stubs(server.address) as (protection, keys, channel):
        yield TokenServer(server, protection, keys, channel, key_ids, face)


def every_method(env: TokenServer, key_id: str) -> dict[str, Callable[[tuple[tuple[str, str], ...]], Any]]:
    return {
        "ProtectFace": lambda metadata: env.protection.ProtectFace(
            protection_pb2.ProtectFaceRequest(image=env.face, key_id=key_id),
            metadata=metadata,
            timeout=TIMEOUT,
        ),
        "ProtectFaces": lambda metadata: list(
            env.protection.ProtectFaces(
                protection_pb2.ProtectFacesRequest(images=[env.face], key_id=key_id),
                metadata=metadata,
                timeout=TIMEOUT,
            )
        ),
        "CreateKey": lambda metadata: env.keys.CreateKey(
            keys_pb2.CreateKeyRequest(subject="someone"), metadata=metadata, timeout=TIMEOUT
        ),
        "RevokeKey": lambda metadata: env.keys.RevokeKey(
            keys_pb2.RevokeKeyRequest(key_id=key_id), metadata=metadata, timeout=TIMEOUT
        ),
        "GetKey": lambda metadata: env.keys.GetKey(
            keys_pb2.GetKeyRequest(key_id=key_id), metadata=metadata, timeout=TIMEOUT
        ),
        "ListKeys": lambda metadata: env.keys.ListKeys(
            keys_pb2.ListKeysRequest(), metadata=metadata, timeout=TIMEOUT
        ),
    }


BAD_CREDENTIALS: dict[str, tuple[tuple[str, str], ...]] = {
    "no metadata": (),
    "no token": (("authorization", "Bearer "),),
    "wrong token": bearer("a-wrong-token-of-enough-length"),
    "a prefix of a valid token": bearer(TOKEN_ONE[:-1]),
    "a valid token with a suffix": bearer(TOKEN_ONE + "x"),
    "another scheme": (("authorization", f"Basic {TOKEN_ONE}"),),
    "the token without a scheme": (("authorization", TOKEN_ONE),),
    "another header": (("x-api-key", TOKEN_ONE),),
}


@pytest.mark.parametrize("credentials", list(BAD_CREDENTIALS))
def test_calls_without_a_valid_token_are_unauthenticated(token_server: TokenServer, credentials: str) -> None:
    key = token_server.keys.CreateKey(keys_pb2.CreateKeyRequest(subject="victim"), metadata=ONE).key
    before = token_server.keys.ListKeys(keys_pb2.ListKeysRequest(page_size=1000), metadata=ONE).keys
    for method, call in every_method(token_server, key.key_id).items():
        code, message, details = status_details(
            refused(functools.partial(call, BAD_CREDENTIALS[credentials]))
        )
        assert code == grpc.StatusCode.UNAUTHENTICATED, (method, code, message)
        assert details and details[0].startswith("ErrorInfo(UNAUTHENTICATED"), (method, details)
        assert TOKEN_ONE not in message
    # nothing happened: no key created or revoked
    after = token_server.keys.ListKeys(keys_pb2.ListKeysRequest(page_size=1000), metadata=ONE).keys
    assert after == before


def test_health_needs_no_token(token_server: TokenServer) -> None:
    assert health_status(token_server.channel) == "SERVING"
    assert health_status(token_server.channel, "faceanonymixer.v1.ProtectionService") == "SERVING"


def test_another_tenants_key_is_denied_without_revealing_whether_it_exists(token_server: TokenServer) -> None:
    env = token_server
    existing = env.keys.CreateKey(keys_pb2.CreateKeyRequest(subject="alice"), metadata=ONE).key.key_id
    revoked = env.keys.CreateKey(keys_pb2.CreateKeyRequest(subject="alice"), metadata=ONE).key.key_id
    env.keys.RevokeKey(keys_pb2.RevokeKeyRequest(key_id=revoked), metadata=ONE)
    never_stored = env.key_ids.mint(TENANT_ONE)  # a valid tenant1 id that no key has
    # tenant1 itself: the never-stored id is simply not found, the revoked one refuses protection
    own_lookup = refused(lambda: env.keys.GetKey(keys_pb2.GetKeyRequest(key_id=never_stored), metadata=ONE))
    assert (own_lookup.code(), error_reason(own_lookup)) == (
        grpc.StatusCode.NOT_FOUND,
        "KEY_NOT_FOUND",
    )
    assert env.keys.GetKey(keys_pb2.GetKeyRequest(key_id=existing), metadata=ONE).key.key_id == existing

    ids = {"existing": existing, "revoked": revoked, "never stored": never_stored}
    for method in ("ProtectFace", "ProtectFaces", "GetKey", "RevokeKey"):
        answers = {}
        for kind, key_id in ids.items():
            code, message, details = status_details(
                refused(functools.partial(every_method(env, key_id)[method], TWO))
            )
            assert code == grpc.StatusCode.PERMISSION_DENIED, (method, kind, message)
            # the only difference allowed is the id the caller sent, echoed back
            answers[kind] = (code, message.replace(key_id, "<key id>"), details)
        assert len(set(map(repr, answers.values()))) == 1, (method, answers)
        assert "ErrorInfo(KEY_ACCESS_DENIED" in answers["existing"][2][0]
    # tenant2's attempts changed nothing: tenant1's key is still active, the revoked one has one successor
    assert env.keys.GetKey(keys_pb2.GetKeyRequest(key_id=existing), metadata=ONE).key.state == (
        keys_pb2.KEY_STATE_ACTIVE
    )
    revoked_key = env.keys.GetKey(keys_pb2.GetKeyRequest(key_id=revoked), metadata=ONE).key
    replacement = env.keys.GetKey(keys_pb2.GetKeyRequest(key_id=revoked_key.replaced_by_key_id), metadata=ONE)
    assert replacement.key.state == keys_pb2.KEY_STATE_ACTIVE and replacement.key.version == 2


def test_list_keys_never_shows_another_tenants_keys(token_server: TokenServer) -> None:
    env = token_server
    mine = {
        env.keys.CreateKey(keys_pb2.CreateKeyRequest(subject=f"two-{index}"), metadata=TWO).key.key_id
        for index in range(3)
    }
    theirs = {
        env.keys.CreateKey(keys_pb2.CreateKeyRequest(subject="shared-subject"), metadata=ONE).key.key_id
        for _ in range(3)
    }

    def all_pages(metadata: tuple[tuple[str, str], ...], **filters: Any) -> set[str]:
        seen: set[str] = set()
        token = ""
        while True:
            page = env.keys.ListKeys(
                keys_pb2.ListKeysRequest(page_size=1, page_token=token, **filters), metadata=metadata
            )
            seen |= {key.key_id for key in page.keys}
            token = page.next_page_token
            if not token:
                return seen

    listed_by_two = all_pages(TWO)
    assert mine <= listed_by_two and not listed_by_two & all_pages(ONE)
    assert all_pages(TWO, subject="shared-subject") == set()
    assert theirs <= all_pages(ONE, subject="shared-subject")
    # a page token of tenant1 does not page tenant1's list for tenant2
    first = env.keys.ListKeys(keys_pb2.ListKeysRequest(page_size=1), metadata=ONE)
    assert first.next_page_token
    error = refused(
        lambda: env.keys.ListKeys(
            keys_pb2.ListKeysRequest(page_size=1, page_token=first.next_page_token), metadata=TWO
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


# ---- TLS and mTLS ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pem:
    cert: bytes
    key: bytes


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_ca(common_name: str) -> tuple[Pem, x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Pem(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)), cert, key


def issue(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    *,
    server: bool,
) -> Pem:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    return Pem(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


@dataclass(frozen=True)
class Pki:
    ca: Pem
    server: Pem
    client: Pem
    untrusted_client: Pem
    folder: Path

    def write(self, name: str, data: bytes) -> Path:
        path = self.folder / name
        path.write_bytes(data)
        return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca, ca_cert, ca_key = make_ca("FaceAnonyMixer test CA")
    _, other_cert, other_key = make_ca("an untrusted CA")
    return Pki(
        ca=ca,
        server=issue(ca_cert, ca_key, "localhost", server=True),
        client=issue(ca_cert, ca_key, "trusted client", server=False),
        untrusted_client=issue(other_cert, other_key, "untrusted client", server=False),
        folder=tmp_path_factory.mktemp("pki"),
    )


def tls_settings(pki: Pki, *, client_ca: bool) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "tls_cert_file": pki.write("server.pem", pki.server.cert),
        "tls_key_file": pki.write("server.key", pki.server.key),
    }
    if client_ca:
        settings["tls_client_ca_file"] = pki.write("client-ca.pem", pki.ca.cert)
    return settings


def create_key(
    address: str, credentials: grpc.ChannelCredentials | None, metadata: tuple[tuple[str, str], ...] = ONE
) -> keys_pb2.Key:
    with stubs(address, credentials) as (_, keys, _):
        return keys.CreateKey(
            keys_pb2.CreateKeyRequest(subject="tls"), metadata=metadata, timeout=CONNECT_TIMEOUT
        ).key


def test_mtls_admits_only_clients_with_a_certificate_from_the_client_ca(
    pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> None:
    server = new_server(tmp_path_factory.mktemp("mtls"), **tls_settings(pki, client_ca=True))
    with server.running():
        listening = next(entry for entry in server.events() if entry.get("event") == "listening")
        assert listening["tls"] is True and listening["mtls"] is True
        trusted = grpc.ssl_channel_credentials(pki.ca.cert, pki.client.key, pki.client.cert)
        key = create_key(server.address, trusted)
        assert key.key_id.startswith("fk_") and key.state == keys_pb2.KEY_STATE_ACTIVE
        # a client certificate does not replace the bearer token
        assert refused(lambda: create_key(server.address, trusted, ())).code() == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        refused_clients = {
            "no client certificate": grpc.ssl_channel_credentials(pki.ca.cert),
            "an untrusted client certificate": grpc.ssl_channel_credentials(
                pki.ca.cert, pki.untrusted_client.key, pki.untrusted_client.cert
            ),
            "plaintext": None,
        }
        for what, credentials in refused_clients.items():
            error = refused(functools.partial(create_key, server.address, credentials))
            assert error.code() == grpc.StatusCode.UNAVAILABLE, (what, error)
        # refused handshakes never reach a servicer: the log has only the two calls that got in
        calls = [
            (entry["method"], entry["code"]) for entry in server.events() if entry.get("event") == "call"
        ]
        assert calls == [("CreateKey", "OK"), ("CreateKey", "UNAUTHENTICATED")]


def test_tls_without_a_client_ca_needs_only_the_ca_root(
    pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> None:
    server = new_server(tmp_path_factory.mktemp("tls"), **tls_settings(pki, client_ca=False))
    with server.running():
        listening = next(entry for entry in server.events() if entry.get("event") == "listening")
        assert listening["tls"] is True and listening["mtls"] is False
        key = create_key(server.address, grpc.ssl_channel_credentials(pki.ca.cert))
        assert key.key_id.startswith("fk_")
        # the name in the server certificate is checked: localhost is in it too
        with stubs(
            server.address.replace("127.0.0.1", "localhost"), grpc.ssl_channel_credentials(pki.ca.cert)
        ) as (
            _,
            keys,
            channel,
        ):
            assert keys.ListKeys(keys_pb2.ListKeysRequest(), metadata=ONE, timeout=CONNECT_TIMEOUT).keys
            assert health_status(channel) == "SERVING"
        # a client that does not trust the CA, or speaks plaintext, does not get in
        other_ca, _, _ = make_ca("another CA")
        for credentials in (grpc.ssl_channel_credentials(other_ca.cert), None):
            error = refused(functools.partial(create_key, server.address, credentials))
            assert error.code() == grpc.StatusCode.UNAVAILABLE
