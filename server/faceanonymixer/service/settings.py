"""Configuration of the service: a TOML file, then ``FACEANONYMIXER_*`` environment variables, then
command-line flags, each overriding the one before.

.. code-block:: toml

    listen = "0.0.0.0:50051"
    keystore = "postgresql://faceanonymixer@db/keys"
    workers = 2
    queue_size = 16                 # photos waiting for a worker, all tenants together
    max_request_megapixels = 160    # the pixel budget of one call
    metrics_listen = "0.0.0.0:9090"
    tls_cert_file = "/etc/faceanonymixer/tls.crt"   # tokens off loopback need TLS
    tls_key_file = "/etc/faceanonymixer/tls.key"

    [tokens]            # bearer token -> tenant
    "s3cr3t-token" = "acme"

The key-encryption key is never in the file: ``FACEANONYMIXER_KEK_FILE`` (a file of 32 bytes,
not readable by other users) or ``FACEANONYMIXER_KEK`` (base64) in the environment, plus
``FACEANONYMIXER_ADDITIONAL_KEK_FILES`` while a KEK rotation rolls out (docs/security.md).
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from faceanonymixer.utils.errors import FaceAnonyMixerError

ENV_PREFIX = "FACEANONYMIXER_"


class SettingsError(FaceAnonyMixerError):
    """The configuration is unreadable, invalid or unsafe (e.g. no auth on a public address)."""


def default_keystore_url() -> str:
    """`sqlite:///$XDG_DATA_HOME/faceanonymixer/keys.db` (XDG_DATA_HOME: ~/.local/share when unset)."""
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return f"sqlite:///{data_home / 'faceanonymixer' / 'keys.db'}"


class ServiceSettings(BaseSettings):
    """Everything ``faceanonymixer serve`` and the key commands read from their configuration."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    listen: str = Field("127.0.0.1:50051", description="HOST:PORT to serve gRPC on (port 0: any free port).")
    keystore: str = Field(
        default_factory=default_keystore_url, description="sqlite:///PATH or postgresql://..."
    )
    profile: str = Field("embedded", description="Model profile of this server and of new keys.")
    device: str | None = Field(None, description="torch device of the engines (default: CUDA when present).")
    runtime: Literal["torch", "onnx"] = Field(
        "torch",
        description="Where the gradient-free passes run: torch, or onnxruntime on the graphs in onnx_dir.",
    )
    onnx_dir: Path | None = Field(None, description="Folder written by `faceanonymixer export onnx`.")
    multiple_faces: Literal["largest", "error"] = Field(
        "largest",
        description="Several faces in a photo: protect the largest, or refuse (error: MULTIPLE_FACES).",
    )
    workers: int = Field(
        1, ge=1, description="Engine worker threads; one engine (one copy of the models) each."
    )
    queue_size: int = Field(
        16,
        ge=0,
        description="Photos that may wait for a worker, all calls together (a call costs its photos); "
        "more: RESOURCE_EXHAUSTED QUEUE_FULL with RetryInfo.",
    )
    queue_megapixels: float = Field(
        400.0,
        gt=0,
        description="Megapixels of decoded photos that may wait for a worker, all calls together.",
    )
    tenant_queue_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Most of queue_size and queue_megapixels one tenant may hold while several "
        "tenants are configured; workers take tenants' calls in turn, by photos served.",
    )
    max_request_megapixels: float = Field(
        160.0,
        gt=0,
        description="Pixel budget of one call: the decoded size of all its photos, in megapixels "
        "(over it: RESOURCE_EXHAUSTED PIXEL_BUDGET, before any decoding).",
    )
    keystore_threads: int = Field(
        4, ge=1, description="Threads of the key store's own executor (never shared with decoding)."
    )
    decode_threads: int = Field(
        2, ge=1, description="Threads that read image headers; photos are decoded on the engine workers."
    )
    threads: int = Field(
        0,
        ge=0,
        description="torch threads per worker; 0: per job, the worker's idle share of the cores "
        "(one while other work runs).",
    )
    max_message_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="gRPC send/receive message limit.")
    max_images_per_request: int = Field(16, ge=1, description="Most photos in one ProtectFaces call.")
    max_output_size: int = Field(1024, ge=16, description="Largest output_size a request may ask for.")
    optimisation: dict[str, bool | int | float] = Field(
        default_factory=dict, description="Overrides of the profile's optimisation settings (steps, lr, ...)."
    )
    reflection: bool = Field(False, description="Serve gRPC server reflection.")
    metrics_listen: str = Field("", description="HOST:PORT for Prometheus /metrics; empty: off.")
    tokens: dict[str, str] = Field(default_factory=dict, description="Bearer token -> tenant.")
    allow_insecure_tokens: bool = Field(
        False,
        description="Accept bearer tokens in plaintext (no TLS) on a non-loopback address; "
        "logged as a warning. Off: such a server refuses to start.",
    )
    archived_revisions: bool = Field(
        True,
        description="Also serve keys made under the profile's archived revisions "
        "(profiles.ARCHIVED_PROFILES; their models load on first use).",
    )
    audit_use_interval_seconds: float = Field(
        60.0,
        gt=0,
        description="Key use is audited per key and outcome, one event per key per interval "
        "(and at shutdown; a crash loses at most this much).",
    )
    tls_cert_file: Path | None = Field(None, description="PEM certificate chain of the server (enables TLS).")
    tls_key_file: Path | None = Field(None, description="PEM private key of the server.")
    tls_client_ca_file: Path | None = Field(
        None, description="PEM CA bundle; when set, clients need a cert (mTLS)."
    )
    shutdown_grace_seconds: float = Field(30.0, ge=0, description="Time in-flight calls get on SIGTERM.")
    log_level: str = Field("INFO", description="Python logging level name.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls)

    @model_validator(mode="before")
    @classmethod
    def _no_renamed_settings(cls, data: Any) -> Any:
        # unknown keys are ignored, so a renamed one would silently fall back to its default
        if isinstance(data, dict) and "torch_threads" in data:
            raise ValueError("torch_threads is now called threads")
        return data

    @field_validator("listen")
    @classmethod
    def _valid_listen(cls, value: str) -> str:
        split_address(value)
        return value

    @model_validator(mode="after")
    def _onnx_runtime_has_its_graphs(self) -> ServiceSettings:
        if self.runtime == "onnx" and self.onnx_dir is None:
            raise ValueError("runtime onnx needs onnx_dir (a folder of `faceanonymixer export onnx`)")
        return self

    @field_validator("metrics_listen")
    @classmethod
    def _valid_metrics_listen(cls, value: str) -> str:
        if value:
            split_address(value)
        return value

    @field_validator("tokens")
    @classmethod
    def _valid_tokens(cls, value: dict[str, str]) -> dict[str, str]:
        for token, tenant in value.items():
            if len(token) < 16:
                raise ValueError("every bearer token must be at least 16 characters")
            if not tenant:
                raise ValueError("every bearer token must map to a tenant name")
        return value

    @classmethod
    def load(cls, config_file: Path | None = None, **overrides: Any) -> ServiceSettings:
        """Settings from ``config_file`` (TOML), the environment and ``overrides`` (None = not given)."""
        from pydantic import ValidationError

        given = {name: value for name, value in overrides.items() if value is not None}
        if config_file is not None and not config_file.is_file():
            raise SettingsError(f"{config_file}: no such configuration file")
        source = cls if config_file is None else _with_toml_file(cls, config_file)
        try:
            return source(**given)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "settings"
            raise SettingsError(f"invalid configuration: {where}: {first['msg']}") from None
        except (OSError, ValueError) as error:
            raise SettingsError(f"cannot read the configuration: {error}") from None

    @property
    def auth_enabled(self) -> bool:
        return bool(self.tokens)

    @property
    def insecure_tokens(self) -> bool:
        """Bearer tokens would travel in plaintext over a non-loopback network."""
        host, _ = split_address(self.listen)
        return self.auth_enabled and self.tls_cert_file is None and not is_loopback(host)

    def check_safe_to_serve(self) -> None:
        """Without tokens, serve only on a loopback address; with tokens off loopback, only with
        TLS (or ``allow_insecure_tokens``)."""
        host, _ = split_address(self.listen)
        if not self.auth_enabled and not is_loopback(host):
            raise SettingsError(
                f"refusing to serve on {self.listen} without authentication: configure bearer tokens "
                "(FACEANONYMIXER_TOKENS or [tokens] in the config file) or listen on a loopback address"
            )
        if self.insecure_tokens and not self.allow_insecure_tokens:
            raise SettingsError(
                f"refusing to serve bearer tokens in plaintext on {self.listen}: configure TLS "
                "(tls_cert_file, tls_key_file), listen on a loopback address, or set "
                "allow_insecure_tokens = true if a TLS proxy in front of the server encrypts them"
            )
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise SettingsError("TLS needs both tls_cert_file and tls_key_file")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise SettingsError("mTLS (tls_client_ca_file) needs TLS: set tls_cert_file and tls_key_file")


def _with_toml_file(cls: type[ServiceSettings], config_file: Path) -> type[ServiceSettings]:
    return type(cls.__name__, (cls,), {"model_config": {**cls.model_config, "toml_file": config_file}})


def split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 hosts in brackets) -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
