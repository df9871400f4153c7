"""The ``faceanonymixer`` command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from faceanonymixer._version import __version__
from faceanonymixer.cli.common import ThreadsOption, emit, one_line_errors, show_progress
from faceanonymixer.cli.eval import evaluate
from faceanonymixer.cli.export import export_app
from faceanonymixer.cli.health import health
from faceanonymixer.cli.keys import keys_app
from faceanonymixer.cli.models import models_app
from faceanonymixer.cli.remote import (
    Remote,
    ServerOption,
    TlsCaOption,
    TlsCertOption,
    TlsKeyOption,
    TokenOption,
)
from faceanonymixer.cli.serve import serve
from faceanonymixer.utils.errors import InvalidImageError, InvalidRequestError

app = typer.Typer(
    name="faceanonymixer",
    help="Cancelable face biometrics: protected faces under revocable keys.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # click's plain help: paragraphs rewrapped to the terminal, flags shown without a "<bool>" type
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"faceanonymixer {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """FaceAnonyMixer command line."""


app.add_typer(models_app, name="models")
app.add_typer(keys_app, name="keys")
app.add_typer(export_app, name="export")
app.command()(serve)
app.command(name="eval")(evaluate)
app.command()(health)


@app.command()
def demo(
    images: Annotated[
        Path | None,
        typer.Option(
            "--images",
            help="Folder of <person>/<image> photos (default: variations of scikit-image's "
            "public-domain astronaut photo).",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="New or empty folder for grid.png and summary.json (default: a new one here)."),
    ] = None,
    max_people: Annotated[int, typer.Option(min=1, help="People to take from --images.")] = 4,
    max_images: Annotated[int, typer.Option(min=1, help="Photos per person from --images.")] = 3,
    steps: Annotated[
        int | None,
        typer.Option(min=0, help="Optimisation steps (default: the profile's 50; fewer for a quick look)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print summary.json instead of the table.")] = False,
    threads: ThreadsOption = None,
) -> None:
    """Run the service in-process, protect photos under a key, revoke it, re-enroll, and judge.

    Shows that one person's protected photos match each other, do not match the originals, and
    stop matching after the key is revoked; writes grid.png and summary.json into --out.
    """
    with one_line_errors(as_json):
        from faceanonymixer.cli.demo import folder_photos, prepare_out_dir, run_demo, sample_photos

        photo_set = (
            sample_photos()
            if images is None
            else folder_photos(images, max_people=max_people, max_images=max_images)
        )
        target = prepare_out_dir(out)
        say = (lambda line: typer.echo(line, err=True)) if show_progress(as_json) else None
        report = run_demo(photo_set, target, progress=say, threads=threads, steps=steps)
        emit(as_json, report.summary, lambda: report.render(sys.stdout))


@app.command()
def protect(
    images: Annotated[
        list[Path], typer.Argument(help="Photos of ONE subject (joint enrollment); one photo = a probe.")
    ],
    out: Annotated[Path, typer.Option(help="Folder for <input stem>.png, one per input.")],
    key_file: Annotated[
        Path | None, typer.Option(help="File holding exactly 32 raw key bytes (no key store).")
    ] = None,
    key_id: Annotated[
        str | None, typer.Option(help="A key of the key store: on --server, else in the local store.")
    ] = None,
    key_version: Annotated[int, typer.Option(min=1, help="Version a --key-file was issued as.")] = 1,
    crop: Annotated[
        bool, typer.Option("--crop", help="Write the aligned protected face, not the whole photo.")
    ] = False,
    profile: Annotated[str, typer.Option(help="Model profile (local protection).")] = "embedded",
    revision: Annotated[
        str | None,
        typer.Option(
            help="Revision of the profile for a --key-file (default: the current one); an earlier "
            "revision keeps matching faces enrolled before its models or settings changed."
        ),
    ] = None,
    steps: Annotated[
        int | None, typer.Option(min=0, help="Optimisation steps (local; profile default: 50).")
    ] = None,
    runtime: Annotated[
        str, typer.Option(help="Gradient-free passes on torch or onnx (local; onnx needs --onnx-dir).")
    ] = "torch",
    onnx_dir: Annotated[
        Path | None, typer.Option(help="Folder of `faceanonymixer export onnx` (local, --runtime onnx).")
    ] = None,
    server: ServerOption = None,
    token: TokenOption = None,
    tls_ca: TlsCaOption = None,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds --server may take.")] = 600.0,
    keystore: Annotated[str | None, typer.Option(help="Local key store URL for --key-id.")] = None,
    tenant: Annotated[str, typer.Option(help="Tenant of the local key store.")] = "default",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    threads: ThreadsOption = None,
) -> None:
    """Protect photos with a key and write one PNG per input: nothing is written unless all succeed.

    The key is a raw --key-file, or a --key-id of the key store; with --server the protection runs
    on that server (exit codes follow the error table: a revoked key exits 4).
    """
    with one_line_errors(as_json):
        stems = [path.stem for path in images]
        if len(set(stems)) != len(stems):
            raise InvalidImageError(
                "two inputs share a file name stem; their outputs would collide", field="images"
            )
        if (key_file is None) == (key_id is None):
            raise InvalidRequestError("give exactly one of --key-file and --key-id", field="key")
        if server is not None:
            if key_id is None:
                raise InvalidRequestError("--server needs --key-id (keys live on the server)", field="key_id")
            if revision is not None:
                raise InvalidRequestError(
                    "--revision is for --key-file: a server protects under each key's own", field="revision"
                )
            from faceanonymixer.cli.protect import protect_remotely

            remote = Remote(server, token, tls_ca, tls_cert, tls_key)
            protected = protect_remotely(remote, images, key_id, paste_back=not crop, timeout=timeout)
        else:
            from faceanonymixer.cli.protect import load_local_key, protect_locally

            key, chosen = load_local_key(key_file, key_version, key_id, keystore, tenant, profile, revision)
            protected = protect_locally(
                images,
                key,
                chosen,
                crop=crop,
                steps=steps,
                runtime=runtime,
                onnx_dir=onnx_dir,
                threads=threads,
                progress=show_progress(as_json),
            )
        # every result exists before the first file is written: a failure leaves nothing behind
        out.mkdir(parents=True, exist_ok=True)
        written = _write_all([out / f"{stem}.png" for stem in stems], [item.pixels for item in protected])
        outputs = [
            {"input": str(source), "output": str(target), **item.report}
            for source, target, item in zip(images, written, protected, strict=True)
        ]
        payload = {
            "profile": protected[0].profile_id,
            "profile_revision": protected[0].profile_revision,
            "key_id": protected[0].key_id,
            "key_version": protected[0].key_version,
            "outputs": outputs,
        }

        def render() -> None:
            for item in outputs:
                typer.echo(f"{item['output']}  ({item['seconds']} s)")

        emit(as_json, payload, render)


def _write_all(paths: list[Path], images: list[Any]) -> list[Path]:
    """Write every image atomically; if one write fails, remove the ones already written."""
    from faceanonymixer.faces.imageio import write_png_atomic

    written: list[Path] = []
    try:
        for path, image in zip(paths, images, strict=True):
            written.append(write_png_atomic(path, image))
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return written
