"""The model zoo: published weights (the ``ffhq`` profile's), pulled and checked against SHA-256 pins.

``zoo.json`` lists each file with its download URLs (the authors' own first, mirrors after),
its size, its SHA-256 and where that digest was read. :func:`pull_model` downloads into
``<file>.part`` with HTTP Range requests (an interrupted transfer resumes where it stopped), checks
size and digest, and only then renames the file into place: a file under its final name has been
verified. A model whose digest was never published is refused unless the user pins one
(``--sha256``) or accepts trust on first use, which records the digest it got in ``pins.json``
next to the models. :func:`model_path` is what loaders call: the verified path, or a typed error
that says what to run.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from tqdm import tqdm

from faceanonymixer._version import __version__
from faceanonymixer.models.weights import file_sha256
from faceanonymixer.utils.errors import FaceAnonyMixerError, ModelFormatError

try:  # POSIX: one pull of a file at a time, across processes
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

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
PART_SUFFIX = ".part"
CHUNK = 1 << 20
USER_AGENT = f"faceanonymixer/{__version__} (model zoo)"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


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
            "name": self.name,
            "file": self.file,
            "urls": list(self.urls),
            "sha256": self.sha256,
            "size": self.size,
            "sha256_source": self.sha256_source,
            "licence": self.licence,
            "licence_sources": list(self.licence_sources),
            "source": self.source,
            "profiles": list(self.profiles),
            "loader": self.loader,
            "notes": self.notes,
        }


def manifest_location(manifest: str | Path | None = None) -> Path:
    """``manifest``, else ``$FACEANONYMIXER_MODEL_ZOO``, else the packaged ``zoo.json``."""
    chosen = manifest or os.environ.get(MANIFEST_ENV)
    return Path(chosen).expanduser() if chosen else MANIFEST_PATH


def load_manifest(manifest: str | Path | None = None) -> dict[str, ZooModel]:
    location = manifest_location(manifest)
    try:
        document = json.loads(location.read_text(encoding="utf-8"))
        entries = document["models"]
        return {name: _parse_model(name, entry) for name, entry in entries.items()}
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
    path = models_dir / PINS_FILE
    _write_atomically(path, json.dumps(pins, indent=2, sort_keys=True) + "\n")
    return path


def normalise_sha256(value: str) -> str:
    digest = value.strip().lower()
    if not _SHA256.fullmatch(digest):
        raise ModelZooError(f"{value!r} is not a SHA-256 (64 hex digits)")
    return digest


# ---- verification ------------------------------------------------------------------------------

# SHA-256 of files already hashed in this process, by identity and state: a loader that asks again
# for an unchanged 300 MB file gets the answer without reading it. ctime changes on any write or
# metadata change and cannot be set back by a user, so a replaced file is hashed again.
_HASHED: dict[tuple[str, int, int, int, int], str] = {}
_HASHED_LOCK = threading.Lock()


def _state_key(path: Path) -> tuple[str, int, int, int, int]:
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)


def hashed_sha256(path: Path, *, use_cache: bool = True) -> str:
    key = _state_key(path)
    if use_cache:
        with _HASHED_LOCK:
            known = _HASHED.get(key)
        if known is not None:
            return known
    digest = file_sha256(path)
    with _HASHED_LOCK:
        _HASHED[key] = digest
    return digest


def _remember(path: Path, digest: str) -> None:
    with _HASHED_LOCK:
        _HASHED[_state_key(path)] = digest


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
    expected = pin.sha256 if pin else None
    origin = pin.origin if pin else None
    if not path.is_file():
        detail = f"missing from {models_dir}: run `faceanonymixer models pull {model.name}`"
        return Verification(
            model.name, path, Status.MISSING, expected=expected, pin_origin=origin, detail=detail
        )
    size = path.stat().st_size
    if model.size is not None and size != model.size:  # definite, and needs no hashing
        detail = f"size is {size} bytes, expected {model.size}"
        return Verification(model.name, path, Status.MISMATCH, size, None, expected, origin, detail)
    digest = hashed_sha256(path, use_cache=use_cache)
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

    A file is hashed once per process while it stays unchanged (same size, mtime, ctime, inode).
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


# ---- downloading -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DownloadOptions:
    #: seconds a connection or a read may stall
    timeout: float = 60.0
    #: further attempts per URL after a dropped connection, a timeout or a 5xx (each resumes)
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


class _Transient(Exception):  # noqa: N818 - control flow: retry this URL, resuming
    pass


class _UrlFailed(Exception):  # noqa: N818 - control flow: this URL cannot give the file
    pass


class _WrongBytes(_UrlFailed):
    pass


@dataclass
class _Transfer:
    url: str
    part: Path
    expected_size: int | None
    options: DownloadOptions
    label: str


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
    pin = _choose_pin(model, models_dir, sha256, trust_on_first_use)
    return _pull(model, models_dir, pin, force=force, options=options or DownloadOptions(), notify=notify)


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
    models_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(final):
        if final.is_file() and not force:
            return _accept_present(model, models_dir, pin, notify)
        part = final.with_name(final.name + PART_SUFFIX)
        url, digest = _download_verified(model, part, pin, options)
        os.replace(part, final)
        _fsync_directory(models_dir)
        _remember(final, digest)  # model_path in this process need not hash it again
        pinned_in = _record_new_pin(model, models_dir, pin, digest, url, notify)
        origin = pin.origin if pin else "trust-on-first-use"
        return PullResult(model.name, final, digest, "downloaded", url, origin, pinned_in)


def _accept_present(
    model: ZooModel, models_dir: Path, pin: Pin | None, notify: Callable[[str], None]
) -> PullResult:
    """A file already in place: keep it if it matches the pin (or, trusting it, pin it)."""
    final = model.path(models_dir)
    digest = hashed_sha256(final, use_cache=False)
    size_ok = model.size is None or final.stat().st_size == model.size
    if pin is not None and size_ok and digest == pin.sha256:
        pinned_in = _record_new_pin(model, models_dir, pin, digest, None, notify)
        return PullResult(model.name, final, digest, "present", None, pin.origin, pinned_in)
    if pin is None and size_ok:  # trust on first use, of the file the user put there
        pinned_in = _record_new_pin(model, models_dir, None, digest, None, notify)
        return PullResult(model.name, final, digest, "present", None, "trust-on-first-use", pinned_in)
    expected = f"{pin.sha256} (pinned by {pin.describe})" if pin else f"{model.size} bytes"
    raise ModelIntegrityError(
        f"{final} exists but its SHA-256 is {digest} ({final.stat().st_size} bytes), expected {expected}; "
        f"run `faceanonymixer models pull {model.name} --force` to replace it"
    )


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


def _download_verified(
    model: ZooModel, part: Path, pin: Pin | None, options: DownloadOptions
) -> tuple[str, str]:
    """Try each URL in order; the first whose bytes match the pin wins. Returns (url, sha256)."""
    failures: list[str] = []
    wrong_bytes = False
    for url in model.urls:
        try:
            return url, _fetch_from(url, model, part, pin, options)
        except _UrlFailed as exc:
            failures.append(f"{url}: {exc}")
            wrong_bytes = wrong_bytes or isinstance(exc, _WrongBytes)
    kind = ModelIntegrityError if wrong_bytes else ModelDownloadError
    resumable = (
        " (the partial download is kept; run the same command again to resume)" if part.exists() else ""
    )
    raise kind(f"model {model.name}: no URL gave the pinned file: {'; '.join(failures)}{resumable}")


def _fetch_from(url: str, model: ZooModel, part: Path, pin: Pin | None, options: DownloadOptions) -> str:
    """The SHA-256 of the complete ``part`` from ``url``; wrong bytes never stay on disk."""
    resumed = part.exists() and part.stat().st_size > 0
    transfer = _Transfer(url, part, model.size, options, model.file)
    _download(transfer)
    digest = file_sha256(part)
    if pin is None or digest == pin.sha256:
        return digest
    part.unlink()
    if resumed:  # the bytes kept from an earlier transfer may be the bad ones: once more from zero
        _download(transfer)
        digest = file_sha256(part)
        if digest == pin.sha256:
            return digest
        part.unlink()
    raise _WrongBytes(f"SHA-256 is {digest}, expected {pin.sha256} (pinned by {pin.describe})")


def _download(transfer: _Transfer) -> None:
    """Fill ``transfer.part`` with the whole body, resuming after each transient failure."""
    failures = 0
    while True:
        try:
            _attempt(transfer)
            return
        except _Transient as exc:
            failures += 1
            if failures > transfer.options.retries:
                raise _UrlFailed(f"{exc} (gave up after {transfer.options.retries} retries)") from None
            time.sleep(min(30.0, transfer.options.backoff * 2 ** (failures - 1)))


def _attempt(transfer: _Transfer) -> None:
    part, expected = transfer.part, transfer.expected_size
    offset = part.stat().st_size if part.exists() else 0
    if expected is not None and offset > expected:  # cannot be a prefix of the file
        part.unlink()
        offset = 0
    if expected is not None and offset == expected:
        return  # complete already; the digest decides
    response = _open(transfer, offset)
    with response:
        start, total = _body_range(response, offset)
        if start != offset:  # 200: the server ignored the Range, start over
            offset = 0
        if expected is not None and total is not None and total != expected:
            raise _WrongBytes(f"serves {total} bytes, the manifest says {expected}")
        _copy_body(response, transfer, offset, total if total is not None else expected)


def _open(transfer: _Transfer, offset: int) -> http.client.HTTPResponse:
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(transfer.url, headers=headers)
    try:
        response: http.client.HTTPResponse = urllib.request.urlopen(request, timeout=transfer.options.timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:  # our .part is not a prefix the server can continue
            transfer.part.unlink()
            raise _Transient("the server refused to resume; restarting from zero") from None
        if exc.code in (408, 425, 429) or exc.code >= 500:
            raise _Transient(f"HTTP {exc.code} {exc.reason}") from None
        raise _UrlFailed(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, socket.gaierror):  # no such host: retrying will not help
            raise _UrlFailed(f"cannot resolve the host ({exc.reason})") from None
        raise _Transient(f"cannot connect ({exc.reason})") from None
    except (OSError, http.client.HTTPException) as exc:
        raise _Transient(f"cannot connect ({exc})") from None
    if response.headers.get_content_type() == "text/html":
        response.close()
        raise _UrlFailed("served an HTML page, not the file (a sign-in, consent or quota page?)")
    return response


def _body_range(response: http.client.HTTPResponse, offset: int) -> tuple[int, int | None]:
    """(first byte of the body, total size of the file or None)."""
    if response.status == 206:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        if match is None or int(match.group(1)) != offset:
            raise _UrlFailed(
                f"answered a Range request with Content-Range {response.headers.get('Content-Range')!r}"
            )
        return offset, None if match.group(3) == "*" else int(match.group(3))
    if response.status == 200:
        length = response.headers.get("Content-Length")
        return 0, int(length) if length and length.isdigit() else None
    raise _UrlFailed(f"unexpected HTTP status {response.status}")


def _copy_body(
    response: http.client.HTTPResponse, transfer: _Transfer, offset: int, total: int | None
) -> None:
    received = offset
    with (
        transfer.part.open("ab" if offset else "wb") as out,
        tqdm(
            total=total,
            initial=offset,
            desc=transfer.label,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=sys.stderr,
            disable=None if transfer.options.progress else True,  # None: only on a terminal
            leave=False,
        ) as bar,
    ):
        try:
            # read1: whatever has arrived, so every byte received is on disk before a reset
            while chunk := response.read1(CHUNK):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as exc:  # reset, timeout, truncated chunk
            raise _Transient(f"connection lost after {received} bytes ({exc})") from None
        finally:
            out.flush()
            os.fsync(out.fileno())
    if total is not None and received < total:
        raise _Transient(f"connection closed after {received} of {total} bytes")
    if total is not None and received > total:
        transfer.part.unlink()
        raise _UrlFailed(f"sent {received} bytes, more than the {total} it announced")


# ---- small file-system helpers -----------------------------------------------------------------


@contextlib.contextmanager
def _exclusive(final: Path) -> Iterator[None]:
    """One pull of a file at a time: a second process fails at once instead of mixing bytes."""
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    lock = final.with_name(final.name + ".lock")
    descriptor = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ModelDownloadError(f"another process is pulling {final.name} into {final.parent}") from None
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temporary.open("w", encoding="utf-8") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, path)
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened."""
    with contextlib.suppress(OSError):
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
