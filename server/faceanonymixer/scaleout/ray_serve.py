"""The protection service on Ray Serve: replicas behind Ray's gRPC proxy, one shared key store.

Each replica is the plain server minus its network code: the same ``ProtectionServicer`` (its
engine step batched across calls with ``@serve.batch``, see :mod:`.batching`) and
``KeyServicer``, an :class:`~faceanonymixer.service.workers.EnginePool`, and a
:class:`~faceanonymixer.keystore.KeyStore` on the PostgreSQL database every replica shares (a key
revoked through one replica is refused by all: the store reads keys on every use). Ray's gRPC proxy
serves our own ``.proto`` services, so the client SDK talks to it unchanged.

Ray is imported only inside the functions that need it (``pip install 'faceanonymixer[ray]'``).

* :func:`build_app` is the application builder for ``serve run deploy/ray/serve_config.yaml``.
* :func:`running` starts (or joins) Ray, deploys, and yields the gRPC port; :func:`serve_ray`
  runs that until SIGTERM or SIGINT (``faceanonymixer serve --ray``).

Ray's gRPC proxy listens on every interface and speaks plaintext, so bearer tokens are required
and TLS settings are refused (terminate TLS in front of Ray). Settings that belong to the plain
server's own network code (``listen``, ``metrics_listen``, ``reflection``, ``max_message_bytes``)
have no effect here: Ray's ``grpc_options``, metrics and message limits apply instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from faceanonymixer.keystore import KeyEncryptionKey, KeyStore
from faceanonymixer.keystore.kek import ENV_KEK_FILE
from faceanonymixer.scaleout.batching import (
    BatchedFunction,
    BatchFunction,
    BatchingProtectionServicer,
    photo_count,
)
from faceanonymixer.scaleout.grpc_context import CallAbortedError, RayGrpcContext, ServeCallContext
from faceanonymixer.service.auth import Authenticator
from faceanonymixer.service.logs import JsonFormatter, configure_json_logging
from faceanonymixer.service.metrics import ServiceMetrics
from faceanonymixer.service.server import engine_factory
from faceanonymixer.service.servicers import CallGuard, KeyServicer
from faceanonymixer.service.settings import ServiceSettings, SettingsError
from faceanonymixer.service.workers import EnginePool
from faceanonymixer_proto.v1 import keys_pb2, protection_pb2

if TYPE_CHECKING:
    from ray.serve import Application

log = logging.getLogger("faceanonymixer.service")

APP_NAME = "faceanonymixer"
DEPLOYMENT_NAME = "FaceAnonyMixer"
#: Ray's proxy registers our services from these (``grpc_options.grpc_servicer_functions``)
GRPC_SERVICER_FUNCTIONS = (
    "faceanonymixer_proto.v1.protection_pb2_grpc.add_ProtectionServiceServicer_to_server",
    "faceanonymixer_proto.v1.keys_pb2_grpc.add_KeyServiceServicer_to_server",
)

Request = TypeVar("Request")
Response = TypeVar("Response")


@dataclass(frozen=True)
class BatchOptions:
    """``@serve.batch`` of each replica: up to ``max_batch_photos`` photos (from one or several
    calls) per engine call, waiting at most ``batch_wait_seconds`` for a batch to fill."""

    max_batch_photos: int = 8
    batch_wait_seconds: float = 0.05

    def __post_init__(self) -> None:
        if self.max_batch_photos < 1 or self.batch_wait_seconds < 0:
            raise SettingsError(f"invalid batch options: {self}")


@dataclass(frozen=True)
class RayServeOptions:
    """How the application runs on Ray (the service's own settings stay in ``ServiceSettings``)."""

    #: the gRPC proxy's port, on every interface of every node that runs a proxy
    grpc_port: int = 9000
    #: Ray's HTTP proxy (unused by this application; bound to 127.0.0.1)
    http_port: int = 8000
    #: a fixed number of replicas; None: autoscale between min_replicas and max_replicas
    num_replicas: int | None = None
    min_replicas: int = 1
    max_replicas: int = 4
    #: ongoing requests per replica that autoscaling aims at (None: max_batch_photos)
    target_ongoing_requests: float | None = None
    #: requests a replica accepts at once; more wait in Ray's router (None: 2 x max_batch_photos)
    max_ongoing_requests: int | None = None
    num_cpus: float = 1.0
    #: GPUs per replica; None: 1 when the cluster has a GPU, else 0
    num_gpus: float | None = None
    batch: BatchOptions = field(default_factory=BatchOptions)
    app_name: str = APP_NAME
    #: Ray's end-to-end limit per call (the caller's own deadline does not reach the replicas)
    request_timeout_s: float | None = None


# ---- the deployment -------------------------------------------------------------------------------


def replica_settings(config_file: str | Path | None, overrides: Mapping[str, Any]) -> ServiceSettings:
    """The settings a replica runs with: ``config_file`` (TOML), then the environment, then
    ``overrides`` (as ``faceanonymixer serve``), checked for Ray's proxy."""
    settings = ServiceSettings.load(Path(config_file) if config_file else None, **overrides)
    if not settings.auth_enabled:
        raise SettingsError(
            "Ray Serve's gRPC proxy listens on every interface: configure bearer tokens "
            "(FACEANONYMIXER_TOKENS or [tokens] in the config file)"
        )
    if settings.tls_cert_file is not None or settings.tls_client_ca_file is not None:
        raise SettingsError(
            "Ray Serve's gRPC proxy serves plaintext only: terminate TLS in front of it "
            "(a load balancer or service mesh), or run faceanonymixer serve without --ray"
        )
    return settings


class ProtectionDeployment:
    """One replica. Its methods carry the RPC names, which is how Ray's proxy routes calls."""

    # Ray awaits an async constructor: the replica takes calls only once its engines are loaded
    async def __init__(  # type: ignore[misc]
        self, config_file: str | None, overrides: dict[str, Any], batch: BatchOptions
    ) -> None:
        import ray
        from ray import serve

        settings = replica_settings(config_file, overrides)
        # the workers share the cores Ray gave this replica, not the machine's
        cpus = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 0)) or None
        self._replica = serve.get_replica_context().replica_tag
        _log_as_json(settings.log_level, self._replica)
        # the key-encryption key comes from this replica's environment: never through Ray
        self._store = await asyncio.to_thread(KeyStore.open, settings.keystore, KeyEncryptionKey.from_env())
        self._pool = EnginePool(
            engine_factory(settings),
            workers=settings.workers,
            queue_size=settings.queue_size,
            threads=settings.threads,
            cores=cpus,
        )
        self._pool.start()
        await self._pool.wait_ready()  # Ray routes to a replica once its constructor returns
        self._grace = settings.shutdown_grace_seconds
        guard = CallGuard(Authenticator(settings.tokens), ServiceMetrics())

        def batcher(function: BatchFunction) -> BatchedFunction:
            return serve.batch(
                max_batch_size=batch.max_batch_photos,
                batch_wait_timeout_s=batch.batch_wait_seconds,
                max_concurrent_batches=settings.workers,  # one batch per engine worker
                batch_size_fn=photo_count,
            )(function)

        self._protection = BatchingProtectionServicer(
            settings, self._store, self._pool, guard, batcher=batcher, max_batch_photos=batch.max_batch_photos
        )
        self._keys = KeyServicer(settings, self._store, guard)
        fields = {"profile": settings.profile, "workers": settings.workers, "threads": settings.threads}
        log.info("replica serving", extra={"fields": fields})

    # ---- ProtectionService -----------------------------------------------------------------------

    async def ProtectFace(  # noqa: N802 (gRPC method name)
        self, request: protection_pb2.ProtectFaceRequest, grpc_context: RayGrpcContext
    ) -> protection_pb2.ProtectFaceResponse:
        return await self._unary(
            self._protection.ProtectFace, request, grpc_context, protection_pb2.ProtectFaceResponse
        )

    async def ProtectFaces(  # noqa: N802 (gRPC method name)
        self, request: protection_pb2.ProtectFacesRequest, grpc_context: RayGrpcContext
    ) -> AsyncIterator[protection_pb2.ProtectFacesResponse]:
        answered: set[int] = set()
        try:
            async for reply in self._protection.ProtectFaces(request, self._context(grpc_context)):
                answered.add(reply.index)
                yield reply
        except CallAbortedError as aborted:
            # Ray's proxy puts a stream's code and trailers on the wire only along with a message:
            # each photo not yet answered carries the call's status (the contract's per-photo
            # status), then the call ends with it, rich details included.
            pending = [index for index in range(len(request.images)) if index not in answered]
            if not pending:
                raise  # no photo to carry it: Ray sends the code and message, not the details
            for index in pending:
                yield protection_pb2.ProtectFacesResponse(index=index, status=aborted.status)

    # ---- KeyService ------------------------------------------------------------------------------

    async def CreateKey(  # noqa: N802 (gRPC method name)
        self, request: keys_pb2.CreateKeyRequest, grpc_context: RayGrpcContext
    ) -> keys_pb2.CreateKeyResponse:
        return await self._unary(self._keys.CreateKey, request, grpc_context, keys_pb2.CreateKeyResponse)

    async def RevokeKey(  # noqa: N802 (gRPC method name)
        self, request: keys_pb2.RevokeKeyRequest, grpc_context: RayGrpcContext
    ) -> keys_pb2.RevokeKeyResponse:
        return await self._unary(self._keys.RevokeKey, request, grpc_context, keys_pb2.RevokeKeyResponse)

    async def GetKey(  # noqa: N802 (gRPC method name)
        self, request: keys_pb2.GetKeyRequest, grpc_context: RayGrpcContext
    ) -> keys_pb2.GetKeyResponse:
        return await self._unary(self._keys.GetKey, request, grpc_context, keys_pb2.GetKeyResponse)

    async def ListKeys(  # noqa: N802 (gRPC method name)
        self, request: keys_pb2.ListKeysRequest, grpc_context: RayGrpcContext
    ) -> keys_pb2.ListKeysResponse:
        return await self._unary(self._keys.ListKeys, request, grpc_context, keys_pb2.ListKeysResponse)

    # ---- Ray's hooks -----------------------------------------------------------------------------

    def check_health(self) -> None:
        """Ray restarts a replica whose engine workers died."""
        if not self._pool.ready:
            raise RuntimeError("the engine pool is not ready")

    def __del__(self) -> None:
        # Ray calls this after draining the replica (graceful_shutdown_timeout_s)
        pool, store = getattr(self, "_pool", None), getattr(self, "_store", None)
        if pool is not None:
            pool.stop(self._grace)
        if store is not None:
            store.close()

    # ---- plumbing --------------------------------------------------------------------------------

    def _context(self, grpc_context: RayGrpcContext) -> ServeCallContext:
        return ServeCallContext(grpc_context, self._replica)

    async def _unary(
        self,
        method: Callable[[Request, Any], Awaitable[Response]],
        request: Request,
        grpc_context: RayGrpcContext,
        empty: Callable[[], Response],
    ) -> Response:
        try:
            return await method(request, self._context(grpc_context))
        except CallAbortedError:
            return empty()  # discarded by gRPC: the status set on the context is not OK


def _log_as_json(level: str, replica: str) -> None:
    """The service's JSON log lines on the replica's stderr, each naming the replica."""

    class _Replica(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            record.fields = {**getattr(record, "fields", {}), "replica": replica}
            return True

    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    handler.addFilter(_Replica())
    logger = logging.getLogger("faceanonymixer")
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False  # Ray's own handlers would print each line again


# ---- the application ------------------------------------------------------------------------------


def deployment_options(
    options: RayServeOptions, settings: ServiceSettings, *, env_vars: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """``@serve.deployment`` options: replicas or autoscaling, resources, request limits."""
    import ray

    batch = options.batch.max_batch_photos
    gpus = options.num_gpus
    if gpus is None:  # one accelerator per replica wherever the cluster has one
        gpus = 1.0 if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    actor: dict[str, Any] = {"num_cpus": options.num_cpus, "num_gpus": gpus}
    if env_vars:
        actor["runtime_env"] = {"env_vars": dict(env_vars)}
    chosen: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        "ray_actor_options": actor,
        # enough calls at once to fill a batch while the previous one runs
        "max_ongoing_requests": options.max_ongoing_requests or 2 * batch,
        "graceful_shutdown_timeout_s": settings.shutdown_grace_seconds,
    }
    if options.num_replicas is not None:
        chosen["num_replicas"] = options.num_replicas
    else:
        chosen["autoscaling_config"] = {
            "min_replicas": options.min_replicas,
            "max_replicas": options.max_replicas,
            "target_ongoing_requests": options.target_ongoing_requests or batch,
        }
    return chosen


def application(
    config_file: str | Path | None,
    overrides: Mapping[str, Any],
    options: RayServeOptions,
    *,
    env_vars: Mapping[str, str] | None = None,
) -> Application:
    """The Serve application; its replicas load ``config_file`` and ``overrides`` themselves, so
    tokens and database passwords in the file or the environment never pass through Ray."""
    from ray import serve

    settings = replica_settings(config_file, overrides)
    if settings.keystore.startswith("sqlite"):
        log.warning("an SQLite key store is shared only by replicas on one machine: use PostgreSQL")
    deployment = serve.deployment(**deployment_options(options, settings, env_vars=env_vars))(
        ProtectionDeployment
    )
    return deployment.bind(str(config_file) if config_file else None, dict(overrides), options.batch)


#: ``build_app`` arguments that set :class:`RayServeOptions` fields (ports live in grpc_options)
_OPTION_ARGS = {"num_replicas", "min_replicas", "max_replicas", "target_ongoing_requests"} | {
    "max_ongoing_requests",
    "num_cpus",
    "num_gpus",
    "request_timeout_s",
}
_BATCH_ARGS = {"max_batch_photos", "batch_wait_seconds"}


def build_app(args: dict[str, Any]) -> Application:
    """Application builder of ``serve run`` / ``serve deploy`` (``import_path:
    faceanonymixer.scaleout.ray_serve:build_app``). ``args``: ``config`` (a TOML file on every
    node), ``settings`` (non-secret setting overrides), and any of ``num_replicas``,
    ``min_replicas``, ``max_replicas``, ``target_ongoing_requests``, ``max_ongoing_requests``,
    ``num_cpus``, ``num_gpus``, ``max_batch_photos``, ``batch_wait_seconds``. The config file's
    ``deployments:`` section overrides what this sets."""
    unknown = set(args) - {"config", "settings"} - _OPTION_ARGS - _BATCH_ARGS
    if unknown:
        raise SettingsError(f"unknown build_app arguments: {', '.join(sorted(unknown))}")
    batch = BatchOptions(**{name: args[name] for name in _BATCH_ARGS if name in args})
    options = RayServeOptions(batch=batch, **{name: args[name] for name in _OPTION_ARGS if name in args})
    return application(args.get("config"), dict(args.get("settings") or {}), options)


@contextmanager
def running(
    config_file: str | Path | None,
    overrides: Mapping[str, Any],
    options: RayServeOptions | None = None,
    *,
    ray_address: str | None = None,
) -> Iterator[int]:
    """Deploy on Ray and yield the gRPC port once every replica serves; tear down on exit.

    Joins the Ray instance this process already initialised, else ``ray.init(ray_address)`` (None:
    a new local instance, or ``RAY_ADDRESS``). Checks first what would fail every replica: the
    settings, the key-encryption key, the key store (migrated here once). On exit, Serve is shut
    down with the Ray instance this call started, else only this application is deleted.
    """
    try:
        import ray
        from ray import serve
        from ray.serve.config import HTTPOptions, gRPCOptions
    except ImportError:
        raise SettingsError("Ray Serve is not installed: pip install 'faceanonymixer[ray]'") from None

    options = options or RayServeOptions()
    settings = replica_settings(config_file, overrides)
    engine_factory(settings)  # a wrong profile or optimisation override fails here
    KeyStore.open(settings.keystore, KeyEncryptionKey.from_env()).close()
    # replicas read the key-encryption key from a file on their node; its path, never its value,
    # goes through Ray (runtime_env variables are visible in Ray's dashboard and state API)
    kek_file = os.environ.get(ENV_KEK_FILE)
    env_vars = {ENV_KEK_FILE: str(Path(kek_file).resolve())} if kek_file else None

    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address=ray_address)
    try:
        serve.start(
            http_options=HTTPOptions(host="127.0.0.1", port=options.http_port),
            grpc_options=gRPCOptions(
                port=options.grpc_port,
                grpc_servicer_functions=list(GRPC_SERVICER_FUNCTIONS),
                request_timeout_s=options.request_timeout_s,
            ),
        )
        app = application(config_file, overrides, options, env_vars=env_vars)
        serve.run(app, name=options.app_name, route_prefix="/")
        yield options.grpc_port
    finally:
        try:
            if started_ray:
                serve.shutdown()
            else:
                serve.delete(options.app_name)
        finally:
            if started_ray:
                ray.shutdown()


def serve_ray(
    config_file: Path | None,
    overrides: Mapping[str, Any],
    options: RayServeOptions | None = None,
    *,
    ray_address: str | None = None,
) -> None:
    """``faceanonymixer serve --ray``: :func:`running` until SIGTERM or SIGINT, logging as
    ``faceanonymixer serve`` does (JSON lines on stderr)."""
    configure_json_logging(replica_settings(config_file, overrides).log_level)
    stop = threading.Event()
    with running(config_file, overrides, options, ray_address=ray_address) as port:
        for signum in (signal.SIGTERM, signal.SIGINT):  # after ray.init, which installs its own
            signal.signal(signum, lambda *_: stop.set())
        log.info("serving on Ray", extra={"fields": {"grpc_port": port}})
        stop.wait()
        log.info("shutting down")


def options_from(**values: Any) -> RayServeOptions:
    """:class:`RayServeOptions` from keyword values, None meaning the default (for the CLI)."""
    names = {f.name for f in dataclasses.fields(RayServeOptions)} - {"batch"}
    batch = BatchOptions(**{k: v for k, v in values.items() if k in _BATCH_ARGS and v is not None})
    given = {k: v for k, v in values.items() if k in names and v is not None}
    unknown = set(values) - names - _BATCH_ARGS
    if unknown:
        raise TypeError(f"unknown Ray Serve options: {', '.join(sorted(unknown))}")
    return RayServeOptions(batch=batch, **given)
