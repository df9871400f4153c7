"""``faceanonymixer serve``: run the gRPC service."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from faceanonymixer.cli.common import ThreadsOption, one_line_errors


def serve(
    config: Annotated[Path | None, typer.Option("--config", help="TOML configuration file.")] = None,
    listen: Annotated[
        str | None, typer.Option(help="HOST:PORT to listen on (default 127.0.0.1:50051).")
    ] = None,
    keystore: Annotated[
        str | None, typer.Option(help="Key store URL: sqlite:///PATH or postgresql://...")
    ] = None,
    profile: Annotated[str | None, typer.Option(help="Model profile (default: embedded).")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Engine worker threads.")] = None,
    threads: ThreadsOption = None,
    queue_size: Annotated[
        int | None, typer.Option(min=0, help="Requests that may wait for a worker.")
    ] = None,
    metrics_listen: Annotated[str | None, typer.Option(help="HOST:PORT for Prometheus /metrics.")] = None,
    reflection: Annotated[
        bool | None, typer.Option("--reflection/--no-reflection", help="gRPC reflection.")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="Logging level (default INFO).")] = None,
    ray: Annotated[
        bool,
        typer.Option(
            "--ray", help="Serve on Ray Serve: replicas behind Ray's gRPC proxy (needs faceanonymixer[ray])."
        ),
    ] = False,
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="With --ray: the Ray cluster to join (default: RAY_ADDRESS, else a new local one)."
        ),
    ] = None,
    replicas: Annotated[
        int | None,
        typer.Option(min=1, help="With --ray: a fixed number of replicas (default: autoscale 1-4)."),
    ] = None,
) -> None:
    """Serve ProtectionService and KeyService over gRPC until SIGTERM.

    The key-encryption key comes from FACEANONYMIXER_KEK_FILE (a file of 32 bytes) or
    FACEANONYMIXER_KEK (base64); every setting can also come from FACEANONYMIXER_<NAME>.
    """
    with one_line_errors():
        from faceanonymixer.keystore import KeyEncryptionKey
        from faceanonymixer.service.server import serve as run_server
        from faceanonymixer.service.settings import ServiceSettings

        if ray:
            from faceanonymixer.scaleout.ray_serve import options_from, serve_ray
            from faceanonymixer.service.settings import split_address

            overrides = {
                "keystore": keystore,
                "profile": profile,
                "workers": workers,
                "threads": threads,
                "queue_size": queue_size,
                "log_level": log_level,
            }
            port = split_address(listen)[1] if listen else None  # Ray's proxy binds every interface
            options = options_from(grpc_port=port, num_replicas=replicas)
            serve_ray(config, overrides, options, ray_address=ray_address)
            return
        settings = ServiceSettings.load(
            config,
            listen=listen,
            keystore=keystore,
            profile=profile,
            workers=workers,
            threads=threads,
            queue_size=queue_size,
            metrics_listen=metrics_listen,
            reflection=reflection,
            log_level=log_level,
        )
        asyncio.run(run_server(settings, KeyEncryptionKey.from_env()))
