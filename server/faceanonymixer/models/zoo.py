"""The model zoo: published weights (the ``ffhq`` profile's), fetched with pooch and held to SHA-256 pins.

``zoo.json`` lists each file with its download URLs (the authors' own first, mirrors after), its
size, its SHA-256 and where that digest was read. :func:`pull_model` hands the URLs in turn to
:func:`pooch.retrieve`, which downloads into a temporary file beside the models, checks the SHA-256
and only then moves the file under its name: a file under its final name has been verified. An
interrupted transfer is tried again from its first byte
(docs/decisions/2026-12-07-model-zoo-on-pooch.md). A model whose digest was never published is
refused unless the user pins one (``--sha256``) or accepts trust on first use, which records the
digest it got in ``pins.json`` next to the models. :func:`model_path` is what loaders call: the
verified path, or a typed error that says what to run; it never downloads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from faceanonymixer._version import __version__
from faceanonymixer.utils.errors import FaceAnonyMixerError, ModelFormatError
from faceanonymixer.utils.files import cached_file_sha256, file_sha256, remember_sha256, write_atomic

if TYPE_CHECKING:
    import requests

__all__ = [
    "MANIFEST_ENV",
    "MANIFEST_PATH",
    "MODELS_DIR_ENV",
    "PINS_FILE",
    "DownloadOptions",
    "ModelDownloadError",
    "ModelIntegrityError",
    "ModelMissingError",
    "ModelNotPinnedError",
    "ModelZooError",
    "Pin",
    "PullResult",
    "Status",
    "UnknownModelError",
    "Verification",
    "ZooModel",
    "default_models_dir",
    "effective_pin",
    "find_model",
    "load_manifest",
    "model_path",
    "pull_model",
    "pull_models",
    "resolve_models_dir",
    "verify_model",
]

MANIFEST_PATH = Path(__file__).with_name("zoo.json")
#: another manifest (an organisation's own mirrors, or a test's)
MANIFEST_ENV = "FACEANONYMIXER_MODEL_ZOO"
MODELS_DIR_ENV = "FACEANONYMIXER_MODELS_DIR"
#: digests the user pinned (``--sha256``) or trusted on first use, next to the models
PINS_FILE = "pins.json"
CHUNK = 1 << 20
HEADERS = {"User-Agent": f"faceanonymixer/{__version__} (model zoo)", "Accept-Encoding": "identity"}
_SHA256 = re.compile(r"[0-9a-f]{64}")


# ---- errors ------------------------------------------------------------------------------------


class ModelZooError(FaceAnonyMixerError):
    """A model of the zoo cannot be found, pinned, downloaded or trusted."""

    exit_code = 2


class UnknownModelError(ModelZooError):
    """No model of this name (or file name) in the manifest."""


class ModelMissingError(ModelZooError):
    """The model's file is not in the models directory."""


class ModelNotPinnedError(ModelZooError):
    """No SHA-256 is known for the model: neither published in the manifest nor pinned locally."""


class ModelIntegrityError(ModelZooError, ModelFormatError):
    """The file's size or SHA-256 differs from its pin."""

    exit_code = 2


class ModelDownloadError(ModelZooError):
    """No URL of the model gave the file (network, HTTP status, an HTML page instead of the file)."""


# ---- the manifest ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZooModel:
    name: str
    file: str
    urls: tuple[str, ...]
    sha256: str | None
    size: int | None
    sha256_source: str
    licence: str
    licence_sources: tuple[str, ...]
    source: str
    profiles: tuple[str, ...]
    loader: str
    notes: str = ""

    def path(self, models_dir: Path) -> Path:
        return models_dir / self.file

    def to_json(self) -> dict[str, Any]:
        return {
            key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()
        }


def manifest_location(manifest: str | Path | None = None) -> Path:
    """``manifest``, else ``$FACEANONYMIXER_MODEL_ZOO``, else the packaged ``zoo.json``."""
    chosen = manifest or os.environ.get(MANIFEST_ENV)
    return Path(chosen).expanduser() if chosen else MANIFEST_PATH


def load_manifest(manifest: str | Path | None = None) -> dict[str, ZooModel]:
    location = manifest_location(manifest)
    try:
        document = json.loads(location.read_text(encoding="utf-8"))
        return {name: _parse_model(name, entry) for name, entry in document["models"].items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelZooError(f"model zoo manifest {location} is unreadable: {exc}") from None


def _parse_model(name: str, entry: dict[str, Any]) -> ZooModel:
    sha256 = entry.get("sha256")
    if sha256 is not None and not _SHA256.fullmatch(sha256):
        raise ValueError(f"{name}: sha256 must be 64 lowercase hex digits or null")
    urls = tuple(entry["urls"])
    if not urls or not all(url.startswith(("https://", "http://")) for url in urls):
        raise ValueError(f"{name}: urls must be a non-empty list of http(s) URLs")
    if Path(entry["file"]).name != entry["file"]:
        raise ValueError(f"{name}: file must be a bare file name")
    return ZooModel(
        name=name,
        file=entry["file"],
        urls=urls,
        sha256=sha256,
        size=entry.get("size"),
        sha256_source=entry.get("sha256_source", ""),
        licence=entry.get("licence", ""),
        licence_sources=tuple(entry.get("licence_sources", ())),
        source=entry.get("source", ""),
        profiles=tuple(entry.get("profiles", ())),
        loader=entry.get("loader", ""),
        notes=entry.get("notes", ""),
    )


def find_model(name: str, models: dict[str, ZooModel]) -> ZooModel:
    """A model by its name or its file name."""
    if name in models:
        return models[name]
    for model in models.values():
        if model.file == name:
            return model
    raise UnknownModelError(f"unknown model {name!r}; the zoo has: {', '.join(sorted(models))}")


# ---- where the models live ---------------------------------------------------------------------


def default_models_dir() -> Path:
    """``$FACEANONYMIXER_MODELS_DIR``, else the user's cache folder + ``faceanonymixer/models``.

    The container sets ``XDG_CACHE_HOME`` on its volume, so the default lands there too.
    """
    configured = os.environ.get(MODELS_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    if sys.platform == "win32":  # pragma: no cover - platform branch
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
        return base / "faceanonymixer" / "cache" / "models"
    if sys.platform == "darwin":  # pragma: no cover - platform branch
        return Path.home() / "Library" / "Caches" / "faceanonymixer" / "models"
    cache = os.environ.get("XDG_CACHE_HOME")
    return (Path(cache).expanduser() if cache else Path.home() / ".cache") / "faceanonymixer" / "models"


def resolve_models_dir(models_dir: str | Path | None = None) -> Path:
    return Path(models_dir).expanduser() if models_dir else default_models_dir()


# ---- pins --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pin:
    sha256: str
    #: "manifest", or how a local pin was made: "--sha256", "trust-on-first-use"
    origin: str

    @property
    def describe(self) -> str:
        return "the manifest" if self.origin == "manifest" else f"a local pin ({self.origin}, {PINS_FILE})"


def read_pins(models_dir: Path) -> dict[str, dict[str, str]]:
    path = models_dir / PINS_FILE
    if not path.exists():
        return {}
    try:
        pins = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelZooError(f"{path} is unreadable: {exc}") from None
    return pins if isinstance(pins, dict) else {}


def effective_pin(model: ZooModel, models_dir: Path) -> Pin | None:
    """The manifest's digest; only where it has none, a local pin."""
    if model.sha256 is not None:
        return Pin(model.sha256, "manifest")
    local = read_pins(models_dir).get(model.file)
    if local and _SHA256.fullmatch(local.get("sha256", "")):
        return Pin(local["sha256"], local.get("how", "local"))
    return None


def record_pin(models_dir: Path, model: ZooModel, sha256: str, *, how: str, url: str | None) -> Path:
    pins = read_pins(models_dir)
    pins[model.file] = {
        "model": model.name,
        "sha256": sha256,
        "how": how,
        "url": url or "",
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    text = json.dumps(pins, indent=2, sort_keys=True) + "\n"
    return write_atomic(models_dir / PINS_FILE, text.encode("utf-8"))


def normalise_sha256(value: str) -> str:
    digest = value.strip().lower()
    if not _SHA256.fullmatch(digest):
        raise ModelZooError(f"{value!r} is not a SHA-256 (64 hex digits)")
    return digest


# ---- verification ------------------------------------------------------------------------------


# SHA-256 of files already hashed in this process, by identity and state: a loader that asks again
# for an unchanged 300 MB file gets the answer without reading it. ctime changes on any write or
# metadata change and cannot be set back by a user, so a replaced file is hashed again.
class Status(StrEnum):
    OK = "ok"
    MISSING = "missing"
    MISMATCH = "mismatch"
    NO_PIN = "no pin"


@dataclass(frozen=True)
class Verification:
    name: str
    path: Path
    status: Status
    size: int | None = None
    sha256: str | None = None
    expected: str | None = None
    pin_origin: str | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    def to_json(self) -> dict[str, Any]:
        return {
            "file": str(self.path),
            "ok": self.ok,
            "status": str(self.status),
            "size": self.size,
            "sha256": self.sha256,
            "expected": self.expected,
            "pin": self.pin_origin,
            "detail": self.detail,
        }


def verify_model(model: ZooModel, models_dir: Path, *, use_cache: bool = False) -> Verification:
    """Present? The manifest's size? The pinned SHA-256?"""
    path = model.path(models_dir)
    pin = effective_pin(model, models_dir)
    expected, origin = (pin.sha256, pin.origin) if pin else (None, None)
    if not path.is_file():
        detail = f"missing from {models_dir}: run `faceanonymixer models pull {model.name}`"
        return Verification(model.name, path, Status.MISSING, None, None, expected, origin, detail)
    size = path.stat().st_size
    if model.size is not None and size != model.size:  # definite, and needs no hashing
        detail = f"size is {size} bytes, expected {model.size}"
        return Verification(model.name, path, Status.MISMATCH, size, None, expected, origin, detail)
    digest = cached_file_sha256(path, fresh=not use_cache)
    if pin is None:
        detail = f"no published or local pin; its SHA-256 is {digest}"
        return Verification(model.name, path, Status.NO_PIN, size, digest, None, None, detail)
    if digest != pin.sha256:
        detail = f"SHA-256 is {digest}, expected {pin.sha256} (pinned by {pin.describe})"
        return Verification(model.name, path, Status.MISMATCH, size, digest, expected, origin, detail)
    return Verification(model.name, path, Status.OK, size, digest, expected, origin)


_STATUS_ERRORS: dict[Status, type[ModelZooError]] = {
    Status.MISSING: ModelMissingError,
    Status.MISMATCH: ModelIntegrityError,
    Status.NO_PIN: ModelNotPinnedError,
}


def model_path(
    name: str, models_dir: str | Path | None = None, *, manifest: str | Path | None = None
) -> Path:
    """The verified path of a zoo model, for its loader; a typed error that says what to run.

    Never downloads. A file is hashed once per process while it stays unchanged (same size, mtime,
    ctime, inode).
    """
    model = find_model(name, load_manifest(manifest))
    result = verify_model(model, resolve_models_dir(models_dir), use_cache=True)
    if result.ok:
        return result.path
    message = f"model {model.name} ({result.path}): {result.detail}"
    if result.status is Status.MISMATCH:
        message += f"; delete it or run `faceanonymixer models pull {model.name} --force`"
    elif result.status is Status.NO_PIN:
        message += f"; pin it with `faceanonymixer models pull {model.name} --sha256 HEX`"
    raise _STATUS_ERRORS[result.status](message)


# ---- pulling -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DownloadOptions:
    #: seconds a connection or a read may stall
    timeout: float = 60.0
    #: further attempts per URL after a timeout, a dropped connection or HTTP 408/425/429/5xx
    #: (each from the first byte)
    retries: int = 5
    #: seconds before the first retry, doubling after each (at most 30)
    backoff: float = 1.0
    progress: bool = True


@dataclass(frozen=True)
class PullResult:
    name: str
    path: Path
    sha256: str
    #: "downloaded" or "present"
    action: str
    url: str | None = None
    pin_origin: str = "manifest"
    #: where a new local pin was written (``--sha256`` or trust on first use)
    pinned_in: Path | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "file": str(self.path),
            "sha256": self.sha256,
            "action": self.action,
            "url": self.url,
            "pin": self.pin_origin,
            "pinned_in": str(self.pinned_in) if self.pinned_in else None,
        }


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def pull_models(
    models: Iterable[ZooModel],
    models_dir: Path,
    *,
    sha256: str | None = None,
    trust_on_first_use: bool = False,
    force: bool = False,
    options: DownloadOptions | None = None,
    notify: Callable[[str], None] = _stderr,
) -> list[PullResult]:
    """Pull several models; every pin is settled before the first byte is downloaded."""
    chosen = list(models)
    if sha256 is not None and len(chosen) != 1:
        raise ModelZooError("--sha256 pins one model: name exactly one")
    pins = [_choose_pin(model, models_dir, sha256, trust_on_first_use) for model in chosen]
    return [
        _pull(model, models_dir, pin, force=force, options=options or DownloadOptions(), notify=notify)
        for model, pin in zip(chosen, pins, strict=True)
    ]


def pull_model(
    model: ZooModel,
    models_dir: Path,
    *,
    sha256: str | None = None,
    trust_on_first_use: bool = False,
    force: bool = False,
    options: DownloadOptions | None = None,
    notify: Callable[[str], None] = _stderr,
) -> PullResult:
    """Download ``model`` into ``models_dir`` (or find it there), verified against its pin."""
    return pull_models(
        [model],
        models_dir,
        sha256=sha256,
        trust_on_first_use=trust_on_first_use,
        force=force,
        options=options,
        notify=notify,
    )[0]


def _choose_pin(
    model: ZooModel, models_dir: Path, sha256: str | None, trust_on_first_use: bool
) -> Pin | None:
    """The digest the download must have; None only for trust on first use."""
    if sha256 is not None:
        given = normalise_sha256(sha256)
        if model.sha256 is not None and given != model.sha256:
            raise ModelZooError(
                f"--sha256 {given} differs from the manifest's pin {model.sha256} for {model.name}; refusing"
            )
        return Pin(given, "manifest" if model.sha256 else "--sha256")
    pin = effective_pin(model, models_dir)
    if pin is None and not trust_on_first_use:
        raise ModelNotPinnedError(
            f"model {model.name} has no published SHA-256; pass --sha256 HEX to pin the file you expect, "
            "or --trust-on-first-use to record whatever is downloaded"
        )
    return pin


def _pull(
    model: ZooModel,
    models_dir: Path,
    pin: Pin | None,
    *,
    force: bool,
    options: DownloadOptions,
    notify: Callable[[str], None],
) -> PullResult:
    final = model.path(models_dir)
    origin = pin.origin if pin else "trust-on-first-use"
    if final.is_file():  # as pinned (or, trusting it, whatever the user put there): keep it
        digest = cached_file_sha256(final, fresh=True)
        size = final.stat().st_size
        if (pin is None or digest == pin.sha256) and (model.size is None or size == model.size):
            pinned_in = _record_new_pin(model, models_dir, pin, digest, None, notify)
            return PullResult(model.name, final, digest, "present", None, origin, pinned_in)
        if not force:
            expected = f"{pin.sha256} (pinned by {pin.describe})" if pin else f"{model.size} bytes"
            raise ModelIntegrityError(
                f"{final} exists but its SHA-256 is {digest} ({size} bytes), expected {expected}; "
                f"run `faceanonymixer models pull {model.name} --force` to replace it"
            )
        if pin is None:  # with no digest pooch keeps any file in place; this one is the wrong size
            final.unlink()
    models_dir.mkdir(parents=True, exist_ok=True)
    url = _download(model, models_dir, pin, options)
    digest = pin.sha256 if pin else file_sha256(final)
    remember_sha256(final, digest)  # model_path in this process need not hash it again
    pinned_in = _record_new_pin(model, models_dir, pin, digest, url, notify)
    return PullResult(model.name, final, digest, "downloaded", url, origin, pinned_in)


def _record_new_pin(
    model: ZooModel,
    models_dir: Path,
    pin: Pin | None,
    digest: str,
    url: str | None,
    notify: Callable[[str], None],
) -> Path | None:
    if pin is not None and pin.origin != "--sha256":
        return None  # the manifest's, or a local pin already recorded
    if pin is not None:
        if read_pins(models_dir).get(model.file, {}).get("sha256") == digest:
            return None
        return record_pin(models_dir, model, digest, how="--sha256", url=url)
    path = record_pin(models_dir, model, digest, how="trust-on-first-use", url=url)
    notify(
        f"WARNING: {model.name} has no published SHA-256. TRUSTED ON FIRST USE: recorded sha256 {digest} "
        f"in {path}. Check this digest against a source you trust; `models verify` will hold the file to it."
    )
    return path


# ---- downloading: pooch, one URL after another -------------------------------------------------


class _UrlFailed(Exception):  # noqa: N818 - control flow: this URL cannot give the file
    def __init__(self, reason: str, *, wrong_bytes: bool = False) -> None:
        super().__init__(reason)
        self.wrong_bytes = wrong_bytes


def _download(model: ZooModel, models_dir: Path, pin: Pin | None, options: DownloadOptions) -> str:
    """Try each URL in order; the first whose bytes match the pin wins. Returns that URL."""
    failures: list[str] = []
    wrong_bytes = False
    for url in model.urls:
        try:
            _retrieve(url, model, models_dir, pin, options)
            return url
        except _UrlFailed as exc:
            failures.append(f"{url}: {exc}")
            wrong_bytes = wrong_bytes or exc.wrong_bytes
    kind = ModelIntegrityError if wrong_bytes else ModelDownloadError
    raise kind(f"model {model.name}: no URL gave the pinned file: {'; '.join(failures)}")


def _retrieve(url: str, model: ZooModel, models_dir: Path, pin: Pin | None, options: DownloadOptions) -> None:
    """``pooch.retrieve`` from one URL, tried again after a transient failure."""
    import pooch  # type: ignore[import-untyped]  # pooch ships no type information
    import requests

    known_hash = f"sha256:{pin.sha256}" if pin else None
    attempt = 0
    while True:
        downloader = _CheckedDownloader(model, options)
        try:
            with _quiet(pooch.get_logger()):  # its INFO lines would break the CLI's one-line output
                pooch.retrieve(url, known_hash, fname=model.file, path=models_dir, downloader=downloader)
            return
        except requests.RequestException as exc:
            if attempt >= options.retries or not _transient(exc):
                tried = f" (gave up after {attempt} retries)" if attempt else ""
                raise _UrlFailed(_describe(exc) + tried) from None
        except ValueError as exc:  # pooch: the SHA-256 differs from known_hash; it deleted the download
            got = re.search(r"got ([0-9a-f]{64})", str(exc))
            pinned = f"{pin.sha256} (pinned by {pin.describe})" if pin else "?"
            raise _UrlFailed(
                f"SHA-256 is {got[1] if got else '?'}, expected {pinned}", wrong_bytes=True
            ) from None
        finally:
            downloader.bar.close()
        time.sleep(min(30.0, options.backoff * 2**attempt))
        attempt += 1


class _CheckedDownloader:
    """pooch's HTTP downloader, then what a digest cannot say (or says late) about the temporary file:
    an HTML page (a sign-in, consent or quota page, which trust on first use would otherwise pin) and
    a size other than the manifest's. Raising here makes pooch delete the temporary file."""

    def __init__(self, model: ZooModel, options: DownloadOptions) -> None:
        import pooch
        from tqdm import tqdm

        self.model = model
        self.bar = tqdm(
            total=model.size or 1,  # pooch sets the served length; a bar of total None is not truthy
            desc=model.file,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=sys.stderr,
            disable=None if options.progress else True,  # None: only on a terminal
            leave=False,
        )
        self.http = pooch.HTTPDownloader(
            progressbar=self.bar, chunk_size=CHUNK, timeout=options.timeout, headers=HEADERS
        )

    def __call__(self, url: str, output_file: str, pup: object) -> None:
        self.http(url, output_file, pup)
        with open(output_file, "rb") as stream:
            head = stream.read(512).lstrip().lower()
        if head.startswith((b"<!doctype html", b"<html")):
            raise _UrlFailed("served an HTML page, not the file (a sign-in, consent or quota page?)")
        size = os.path.getsize(output_file)
        if self.model.size is not None and size != self.model.size:
            raise _UrlFailed(f"sent {size} bytes, the manifest says {self.model.size}", wrong_bytes=True)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _transient(exc: requests.RequestException) -> bool:
    """Worth another try: HTTP 408/425/429/5xx, a timeout, a refused or dropped connection; not
    another HTTP status and not a host name that does not resolve."""
    if exc.response is not None:
        return exc.response.status_code in (408, 425, 429) or exc.response.status_code >= 500
    return not any(isinstance(cause, socket.gaierror) for cause in _causes(exc))


def _describe(exc: requests.RequestException) -> str:
    """One short clause: the HTTP status, or what broke the connection (its innermost cause)."""
    import requests

    if exc.response is not None:
        return f"HTTP {exc.response.status_code} {exc.response.reason}"
    what = "timed out" if isinstance(exc, requests.Timeout) else "connection failed"
    return f"{what} ({list(_causes(exc))[-1]})"


@contextlib.contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
