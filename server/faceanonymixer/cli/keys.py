"""``faceanonymixer keys``: create, revoke, get, list and audit keys, in the local key store or on a
running server (``--server``); rotate the local store's key-encryption key. ``--json`` prints the
key as an object whose ``key_id`` is the key made (for ``revoke``: the replacement).

The local store is opened with the keyring of the environment: ``FACEANONYMIXER_KEK_FILE`` (or
``FACEANONYMIXER_KEK``) and ``FACEANONYMIXER_ADDITIONAL_KEK_FILES``."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from google.protobuf import json_format

from faceanonymixer.cli.common import emit, one_line_errors, options_from
from faceanonymixer.cli.remote import Remote, remote_options
from faceanonymixer_proto.v1 import keys_pb2, keys_pb2_grpc

if TYPE_CHECKING:
    from faceanonymixer.keystore import KeyStore
    from faceanonymixer.service.settings import ServiceSettings

keys_app = typer.Typer(help="Manage protection keys.", no_args_is_help=True)

KeystoreOption = Annotated[
    str | None,
    typer.Option(
        help="Key store URL, sqlite:///PATH or postgresql://... (default: FACEANONYMIXER_KEYSTORE)."
    ),
]
TenantOption = Annotated[str, typer.Option(help="Tenant of the local key store.")]
ConfigOption = Annotated[Path | None, typer.Option("--config", help="TOML configuration file.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]

_STATE_NAMES = {"active": keys_pb2.KEY_STATE_ACTIVE, "revoked": keys_pb2.KEY_STATE_REVOKED}


class KeyTarget:
    """Where key commands act: the local store (through the KeyService's own servicer code) or a
    remote server; both answer with ``keys_pb2`` messages, so output is the same."""

    def __init__(self, remote: Remote | None, keystore: str | None, tenant: str, config: Path | None) -> None:
        self.remote = remote
        self.keystore = keystore
        self.tenant = tenant
        self.config = config

    @contextmanager
    def calls(self, as_json: bool = False) -> Iterator[Callable[[str, Any], Any]]:
        """Yields ``call(method_name, request) -> response``; errors end the command as
        ``one_line_errors(as_json)`` says."""
        if self.remote is not None:
            remote = self.remote
            with one_line_errors(as_json), remote.channel() as channel:
                stub = keys_pb2_grpc.KeyServiceStub(channel)
                yield lambda name, request: getattr(stub, name)(request, metadata=remote.metadata, timeout=30)
            return
        from faceanonymixer.service import key_operations

        tenant, actor = self.tenant, f"cli:{self.tenant}"
        with one_line_errors(as_json), _local_store(self.keystore, self.config) as (store, settings):
            revision = key_operations.settings_revision(settings)
            local: dict[str, Callable[[Any], Any]] = {
                "CreateKey": lambda request: key_operations.create_key(
                    store,
                    tenant,
                    request,
                    default_profile=settings.profile,
                    default_revision=revision,
                    actor=actor,
                ),
                "RevokeKey": lambda request: key_operations.revoke_key(
                    store, tenant, request, actor=actor, revisions={settings.profile: revision}
                ),
                "GetKey": lambda request: key_operations.get_key(store, tenant, request),
                "ListKeys": lambda request: key_operations.list_keys(store, tenant, request),
            }
            yield lambda name, request: local[name](request)


@contextmanager
def _local_store(keystore: str | None, config: Path | None) -> Iterator[tuple[KeyStore, ServiceSettings]]:
    """The local key store (URL: ``keystore``, else the configuration) and the settings read."""
    from faceanonymixer.keystore import KeyStore
    from faceanonymixer.keystore.kek import KeyRing
    from faceanonymixer.service.settings import ServiceSettings

    settings = ServiceSettings.load(config, keystore=keystore)
    with KeyStore.open(settings.keystore, KeyRing.from_env()) as store:
        yield store, settings


@options_from(remote_options, "remote")
def _key_target(
    remote: Remote | None,
    keystore: KeystoreOption = None,
    tenant: TenantOption = "default",
    config: ConfigOption = None,
) -> KeyTarget:
    """The connection options of ``create``, ``revoke``, ``get`` and ``list``, declared once here:
    ``--server`` and its credentials (``remote_options``), else the local store's."""
    return KeyTarget(remote, keystore, tenant, config)


def key_dict(key: keys_pb2.Key) -> dict[str, Any]:
    """A key as JSON-ready fields (proto field names; state without its KEY_STATE_ prefix)."""
    fields = json_format.MessageToDict(
        key, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    fields["state"] = keys_pb2.KeyState.Name(key.state).removeprefix("KEY_STATE_").lower()
    return fields


def _render_key(key: keys_pb2.Key) -> None:
    state = keys_pb2.KeyState.Name(key.state).removeprefix("KEY_STATE_").lower()
    profile = f"{key.profile_id}@{key.profile_revision}" if key.profile_revision else key.profile_id
    typer.echo(f"{key.key_id}  v{key.version}  {state}  subject={key.subject}  profile={profile}")


@keys_app.command()
@options_from(_key_target, "target")
def create(
    subject: Annotated[str, typer.Option(help="Your identifier of the person the key is for.")],
    label: Annotated[list[str] | None, typer.Option(help="KEY=VALUE annotation (repeatable).")] = None,
    profile: Annotated[str, typer.Option(help="Model profile to bind the key to.")] = "",
    *,
    target: KeyTarget,
    as_json: JsonOption = False,
) -> None:
    """Create a key (version 1) for a subject."""
    labels = _parse_labels(label or [])
    request = keys_pb2.CreateKeyRequest(subject=subject, labels=labels, profile_id=profile)
    with target.calls(as_json) as call:
        key = call("CreateKey", request).key
        emit(as_json, key_dict(key), lambda: _render_key(key))


@keys_app.command()
@options_from(_key_target, "target")
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key to revoke.")],
    *,
    target: KeyTarget,
    as_json: JsonOption = False,
) -> None:
    """Revoke a key; prints its replacement (a new key id, the next version)."""
    with target.calls(as_json) as call:
        reply = call("RevokeKey", keys_pb2.RevokeKeyRequest(key_id=key_id))
        payload = {**key_dict(reply.replacement_key), "revoked_key": key_dict(reply.revoked_key)}

        def render() -> None:
            typer.echo(f"revoked {reply.revoked_key.key_id}; replacement:")
            _render_key(reply.replacement_key)

        emit(as_json, payload, render)


@keys_app.command()
@options_from(_key_target, "target")
def get(
    key_id: Annotated[str, typer.Argument(help="The key to show.")],
    *,
    target: KeyTarget,
    as_json: JsonOption = False,
) -> None:
    """Show one key."""
    with target.calls(as_json) as call:
        key = call("GetKey", keys_pb2.GetKeyRequest(key_id=key_id)).key
        emit(as_json, key_dict(key), lambda: _render_key(key))


@keys_app.command("list")
@options_from(_key_target, "target")
def list_keys(
    state: Annotated[str | None, typer.Option(help="Only keys in this state: active or revoked.")] = None,
    subject: Annotated[str | None, typer.Option(help="Only the keys of this subject.")] = None,
    *,
    target: KeyTarget,
    as_json: JsonOption = False,
) -> None:
    """List keys (every page)."""
    if state is not None and state not in _STATE_NAMES:
        raise typer.BadParameter("state must be 'active' or 'revoked'", param_hint="--state")
    wanted = _STATE_NAMES.get(state or "", keys_pb2.KEY_STATE_UNSPECIFIED)
    request = keys_pb2.ListKeysRequest(page_size=500, state=wanted, subject=subject or "")
    keys: list[keys_pb2.Key] = []
    with target.calls(as_json) as call:
        while True:
            page = call("ListKeys", request)
            keys.extend(page.keys)
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token

        def render() -> None:
            for key in keys:
                _render_key(key)

        emit(as_json, {"keys": [key_dict(key) for key in keys]}, render)


@keys_app.command()
def audit(
    verify: Annotated[
        bool,
        typer.Option(
            "--verify", help="Check the keyed hash chain, every key's MAC and the store's integrity."
        ),
    ] = False,
    keystore: KeystoreOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print the audit log of the local key store, or verify it (exit 1 when it fails)."""
    with one_line_errors(as_json), _local_store(keystore, config) as (store, _):
        if verify:
            report = store.verify()
            payload = {
                "ok": report.ok,
                "keys": report.keys,
                "events": report.events,
                "problems": report.problems,
            }

            def render() -> None:
                verdict = "ok" if report.ok else "FAILED"
                typer.echo(f"audit log {verdict}: {report.events} events, {report.keys} keys")
                for problem in report.problems:
                    typer.echo(f"  {problem}")

            emit(as_json, payload, render)
            if not report.ok:
                raise typer.Exit(1)
            return
        events = [{**dataclasses.asdict(event), "at": event.at.isoformat()} for event in store.audit_events()]

        def render_events() -> None:
            for event in events:
                typer.echo(json.dumps(event))

        emit(as_json, {"events": events}, render_events)


@keys_app.command("rotate-kek")
def rotate_kek(
    new_kek_file: Annotated[
        Path,
        typer.Option(
            "--new-kek-file", help="The new key-encryption key: a file of 32 random bytes, mode 0600 or 0400."
        ),
    ],
    keystore: KeystoreOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Re-wrap every key of the local key store under a new key-encryption key, in one transaction.

    Key ids do not change. The current KEK comes from FACEANONYMIXER_KEK_FILE (or
    FACEANONYMIXER_KEK); servers that hold both KEKs (FACEANONYMIXER_ADDITIONAL_KEK_FILES) keep
    serving throughout. Afterwards serve with the new KEK. Procedure: docs/security.md.
    """
    from faceanonymixer.keystore import KeyEncryptionKey

    with one_line_errors(as_json), _local_store(keystore, config) as (store, _):
        new_kek = KeyEncryptionKey.from_file(new_kek_file)
        report = store.rotate_kek(new_kek, actor="cli:rotate-kek")
        payload = {
            "from_kek": report.from_kek,
            "to_kek": report.to_kek,
            "keys": report.keys,
            "integrity_epoch": report.integrity_epoch,
        }

        def render() -> None:
            typer.echo(
                f"re-wrapped {report.keys} keys: KEK {report.from_kek} -> {report.to_kek} "
                f"(integrity key epoch {report.integrity_epoch}); serve with the new KEK now"
            )

        emit(as_json, payload, render)


def _parse_labels(pairs: list[str]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--label")
        labels[name] = value
    return labels
