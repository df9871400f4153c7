"""``faceanonymixer serve``: the grpc.aio server, from start-up checks to graceful shutdown.

Start-up refuses early and clearly (unsafe settings, wrong key-encryption key, a port it cannot
bind); health reports NOT_SERVING until every engine worker has loaded its models and again from
the moment SIGTERM arrives; in-flight calls then get ``shutdown_grace_seconds`` to finish.

:func:`run_in_background` runs the same server in a thread of the calling process (the demo uses
it): no signal handlers, stopped when its ``with`` block ends.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from faceanonymixer.engine.profiles import Profile, get_profile, served_profiles, with_optimisation_overrides
from faceanonymixer.engine.protection import ProtectionEngine
from faceanonymixer.keystore import KeyEncryptionKey, KeyStore
from faceanonymixer.keystore.kek import KeyRing
from faceanonymixer.service.auth import Authenticator, server_credentials
from faceanonymixer.service.handlers import tolerant_handler
from faceanonymixer.service.logs import configure_json_logging
from faceanonymixer.service.metrics import ServiceMetrics
from faceanonymixer.service.servicers import (
    CallGuard,
    KeyServicer,
    ProtectionServicer,
    decode_executor,
    keystore_executor,
)
from faceanonymixer.service.settings import ServiceSettings, SettingsError, split_address
from faceanonymixer.service.usage import UsageRecorder
from faceanonymixer.service.workers import EnginePool
from faceanonymixer.utils.errors import FaceAnonyMixerError, ModelLoadError
from faceanonymixer_proto.v1 import keys_pb2, protection_pb2

log = logging.getLogger("faceanonymixer.service")

SERVICE_NAMES = (
    protection_pb2.DESCRIPTOR.services_by_name["ProtectionService"].full_name,
    keys_pb2.DESCRIPTOR.services_by_name["KeyService"].full_name,
)


def engine_factory(
    settings: ServiceSettings, profile: Profile | None = None
) -> Callable[[], ProtectionEngine]:
    """Checks the profile and overrides now, so that a typo fails start-up, not the first call.

    ``profile``: an archived revision to build instead of the configured one (served as it was:
    the configured ``optimisation`` overrides apply to the current revision only)."""
    if profile is None:
        try:
            profile = with_optimisation_overrides(get_profile(settings.profile), settings.optimisation)
        except (TypeError, ValueError) as error:
            raise SettingsError(f"invalid configuration: optimisation: {error}") from None
    chosen = profile

    def build() -> ProtectionEngine:
        from faceanonymixer.faces.alignment import FaceAligner
        from faceanonymixer.utils.devices import default_device

        device = settings.device or default_device()
        aligner = FaceAligner(multiple_faces=settings.multiple_faces)
        return ProtectionEngine(
            chosen,
            optimisation=chosen.optimisation,
            device=device,
            aligner=aligner,
            runtime=settings.runtime,
            onnx_dir=settings.onnx_dir,
        )

    return build


def served_revisions(settings: ServiceSettings) -> dict[str, Profile]:
    """Revision -> profile of every revision this server serves; the first is the current one."""
    current = with_optimisation_overrides(get_profile(settings.profile), settings.optimisation)
    return served_profiles(current, archived=settings.archived_revisions)


async def serve(settings: ServiceSettings, kek: KeyEncryptionKey | KeyRing) -> None:
    """Run until SIGTERM or SIGINT. Raises typed errors for anything that stops start-up.

    ``kek``: the current KEK; the files of ``FACEANONYMIXER_ADDITIONAL_KEK_FILES`` join it in the
    keyring (a rotation in progress)."""
    configure_json_logging(settings.log_level)
    settings.check_safe_to_serve()
    build_engine = engine_factory(settings)
    store = KeyStore.open(settings.keystore, KeyRing.with_additional_from_env(kek))
    try:
        await _serve_with(settings, store, build_engine)
    finally:
        store.close()


@contextmanager
def run_in_background(
    settings: ServiceSettings, kek: KeyEncryptionKey | KeyRing, *, start_timeout: float = 300.0
) -> Iterator[str]:
    """Serve in a background thread of this process; yields the bound address once health says
    SERVING, and stops gracefully (``shutdown_grace_seconds``) when the block ends.

    Installs no signal handlers and leaves logging as the caller configured it. A failure to
    start (bad settings, a port it cannot bind, an engine that does not load) is raised here, in
    the caller's thread; so is a server that is not serving within ``start_timeout`` seconds.
    """
    settings.check_safe_to_serve()
    build_engine = engine_factory(settings)
    ready = threading.Event()
    address: list[str] = []
    failure: list[BaseException] = []
    control: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def serving(bound: str) -> None:
        address.append(bound)
        ready.set()

    async def main() -> None:
        stop = asyncio.Event()
        control.append((asyncio.get_running_loop(), stop))
        store = KeyStore.open(settings.keystore, kek)
        try:
            await _serve_with(settings, store, build_engine, stop=stop, on_serving=serving)
        finally:
            store.close()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as error:  # handed to the caller's thread
            failure.append(error)
        finally:
            ready.set()

    thread = threading.Thread(target=run, name="faceanonymixer-server", daemon=True)
    thread.start()
    try:
        if not ready.wait(start_timeout):
            raise TimeoutError(f"the server was not serving within {start_timeout:g} s")
        if failure:
            raise failure[0]
        if not address:
            raise RuntimeError("the server stopped before it was serving")
        yield address[0]
    finally:
        if control:
            loop, stop = control[0]
            with suppress(RuntimeError):  # the loop has already closed
                loop.call_soon_threadsafe(stop.set)
        thread.join()
    if failure:
        raise failure[0]


async def _serve_with(
    settings: ServiceSettings,
    store: KeyStore,
    build_engine: Callable[[], ProtectionEngine],
    *,
    stop: asyncio.Event | None = None,
    on_serving: Callable[[str], None] | None = None,
) -> None:
    """Serve until ``stop`` is set; without one, until SIGTERM or SIGINT (main thread only).
    ``on_serving`` is called with the bound address once health says SERVING."""
    metrics = ServiceMetrics()
    revisions = served_revisions(settings)
    current_revision = next(iter(revisions))
    tenants = set(settings.tokens.values())
    pool = EnginePool(
        build_engine,
        workers=settings.workers,
        queue_size=settings.queue_size,
        threads=settings.threads,
        queue_megapixels=settings.queue_megapixels,
        tenant_share=settings.tenant_queue_share if len(tenants) > 1 else 1.0,
        revision_factories={
            revision: engine_factory(settings, profile)
            for revision, profile in revisions.items()
            if revision != current_revision
        },
    )
    metrics.watch(lambda: pool.queue_depth, lambda: pool.busy_workers)
    limits = [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
    ]
    server = grpc.aio.server(options=limits)
    usage = UsageRecorder()
    guard = CallGuard(Authenticator(settings.tokens), metrics, usage)
    key_calls, probes = keystore_executor(settings), decode_executor(settings)
    protection = ProtectionServicer(
        settings,
        store,
        pool,
        guard,
        key_calls=key_calls,
        probes=probes,
        profiles=revisions,
    )
    keys = KeyServicer(settings, store, guard, key_calls=key_calls)
    server.add_generic_rpc_handlers(
        (
            tolerant_handler(protection, protection_pb2, "ProtectionService"),
            tolerant_handler(keys, keys_pb2, "KeyService"),
        )
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if settings.reflection:
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
    await _set_health(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING)

    credentials = server_credentials(settings)
    try:
        if credentials is None:
            port = server.add_insecure_port(settings.listen)
        else:
            port = server.add_secure_port(settings.listen, credentials)
    except RuntimeError as error:
        raise SettingsError(f"cannot listen on {settings.listen}: {error}") from None
    host, _ = split_address(settings.listen)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)

    await server.start()
    if not guard.authenticator.enabled:
        log.warning("authentication is off: no bearer tokens configured (loopback only)")
    if settings.insecure_tokens:  # only with allow_insecure_tokens (check_safe_to_serve)
        log.warning(
            "bearer tokens travel in plaintext: no TLS on a non-loopback address (allow_insecure_tokens)",
            extra={"fields": {"address": address}},
        )
    log.info(
        "listening",
        extra={
            "fields": {
                "address": address,
                "tls": credentials is not None,
                "mtls": settings.tls_client_ca_file is not None,
            }
        },
    )
    if settings.metrics_listen:
        metrics_port = metrics.serve(settings.metrics_listen)
        log.info("metrics", extra={"fields": {"port": metrics_port}})
    auditing = asyncio.ensure_future(usage.run(store, key_calls, settings.audit_use_interval_seconds))
    try:
        pool.start()
        loading = asyncio.ensure_future(pool.wait_ready())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if loading.done():
            try:
                loading.result()
            except FaceAnonyMixerError:
                raise
            except Exception as error:  # the traceback is in the log already (workers.py)
                raise ModelLoadError(f"the {settings.profile} models did not load: {error}") from error
            await _set_health(health_servicer, health_pb2.HealthCheckResponse.SERVING)
            log.info(
                "serving",
                extra={
                    "fields": {
                        "profile": settings.profile,
                        "revisions": list(revisions),
                        "workers": settings.workers,
                        "queue_size": settings.queue_size,
                    }
                },
            )
            if on_serving is not None:
                on_serving(address)
            await stopping
        else:
            loading.cancel()
    finally:
        log.info("shutting down", extra={"fields": {"grace_seconds": settings.shutdown_grace_seconds}})
        await health_servicer.enter_graceful_shutdown()
        await server.stop(settings.shutdown_grace_seconds)
        await asyncio.to_thread(pool.stop, settings.shutdown_grace_seconds)
        auditing.cancel()
        with suppress(asyncio.CancelledError):
            await auditing
        await usage.flush(store, key_calls)  # the last interval's key use
        key_calls.shutdown(wait=True)
        probes.shutdown(wait=False)
        log.info("stopped")


async def _set_health(servicer: health.aio.HealthServicer, status: int) -> None:
    for name in ("", *SERVICE_NAMES):
        await servicer.set(name, status)
