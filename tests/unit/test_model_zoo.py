"""The model zoo against a local HTTP server: pulls through pooch, SHA-256 pins, verify, model_path, CLI.

Nothing here reaches the internet: each test serves its own bytes from a thread on 127.0.0.1 and
points a temporary manifest at it.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import io
import json
import random
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pooch
import pytest
from typer.testing import CliRunner

from faceanonymixer.cli.main import app
from faceanonymixer.models import weights
from faceanonymixer.models import zoo as model_zoo
from faceanonymixer.models.zoo import (
    DownloadOptions,
    ModelDownloadError,
    ModelIntegrityError,
    ModelMissingError,
    ModelNotPinnedError,
    ModelZooError,
    Status,
    UnknownModelError,
    find_model,
    load_manifest,
    model_path,
    pull_model,
    verify_model,
)
from faceanonymixer.utils import files

PAYLOAD = random.Random(5).randbytes(300_000)
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
FAST = DownloadOptions(timeout=10, retries=3, backoff=0.25, progress=False)
runner = CliRunner()


# ---- a small HTTP server with scripted failures --------------------------------------------------


@dataclass
class Served:
    body: bytes
    #: "file", or "html": a sign-in page with status 200
    mode: str = "file"
    #: the first ``drops`` requests stop after this many body bytes
    drop_after: int | None = None
    drops: int = 1
    #: how a dropped request ends: "close" (clean EOF) or "reset" (TCP RST)
    drop_how: str = "close"
    #: answer the first ``errors`` requests with this HTTP status instead
    error: int | None = None
    errors: int = 1_000
    #: seconds to wait before answering
    stall: float = 0.0


@dataclass
class Site:
    files: dict[str, Served] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    base: str = ""

    def url(self, path: str) -> str:
        return f"{self.base}/{path}"

    def sent(self, path: str) -> list[int]:
        return [request["sent"] for request in self.requests if request["path"] == f"/{path}"]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        site = self.server.site
        record: dict[str, Any] = {
            "path": self.path,
            "range": self.headers.get("Range"),
            "agent": self.headers.get("User-Agent"),
            "sent": 0,
            "status": 0,
        }
        site.requests.append(record)
        served = site.files.get(self.path)
        seen = sum(1 for r in site.requests if r["path"] == self.path)
        if served is not None and served.stall:
            time.sleep(served.stall)
        if served is None or (served.error is not None and seen <= served.errors):
            record["status"] = served.error if served and served.error else 404
            self.send_error(record["status"])
            return
        if served.mode == "html":
            page = b"\n<!DOCTYPE html><html><body>Google Drive cannot scan this file.</body></html>"
            record["status"] = 200
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
            return
        record["status"] = 200
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(served.body)))
        self.end_headers()
        if served.drop_after is not None and seen <= served.drops:
            self.wfile.write(served.body[: served.drop_after])
            record["sent"] = min(served.drop_after, len(served.body))
            self._drop(served.drop_how)
            return
        self.wfile.write(served.body)
        record["sent"] = len(served.body)

    def _drop(self, how: str) -> None:
        self.close_connection = True
        if how == "reset":
            time.sleep(0.3)  # let the client read what was sent, then reset the connection
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    site: Site

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up (a timeout test): no traceback on another test's stderr


@pytest.fixture
def site() -> Iterator[Site]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.site = Site(base=f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.site
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The pauses between retries, recorded instead of slept."""
    slept: list[float] = []
    monkeypatch.setattr(model_zoo, "time", SimpleNamespace(sleep=slept.append))  # this module's only
    return slept


def write_manifest(path: Path, models: dict[str, dict[str, Any]]) -> Path:
    entries = {}
    for name, entry in models.items():
        entries[name] = {
            "file": f"{name}.bin",
            "sha256": DIGEST,
            "size": len(PAYLOAD),
            "sha256_source": "the test",
            "licence": "test",
            "source": "https://example.invalid/project",
            "profiles": ["test"],
            "loader": "faceanonymixer.models.e4e:load_e4e",
            **entry,
        }
    path.write_text(json.dumps({"schema": 1, "models": entries}))
    return path


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    return tmp_path / "models"


def one_model(tmp_path: Path, site: Site, **entry: Any) -> model_zoo.ZooModel:
    manifest = write_manifest(tmp_path / "zoo.json", {"m": {"urls": [site.url("m.bin")], **entry}})
    return find_model("m", load_manifest(manifest))


def listing(folder: Path) -> list[str]:
    """What a pull left in the models folder: pooch's temporary files would show here."""
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# ---- pulling ------------------------------------------------------------------------------------


def test_pull_downloads_verifies_and_then_finds_the_file_present(
    tmp_path: Path, site: Site, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site.files["/m.bin"] = Served(PAYLOAD)
    model = one_model(tmp_path, site)
    logger = pooch.get_logger()
    level, logged = logger.level, io.StringIO()
    for handler in logger.handlers:  # its handler holds the stderr of import time: look here instead
        monkeypatch.setattr(handler, "stream", logged)

    result = pull_model(model, models_dir, options=FAST)

    assert result.action == "downloaded" and result.sha256 == DIGEST and result.url == site.url("m.bin")
    assert (models_dir / "m.bin").read_bytes() == PAYLOAD
    assert listing(models_dir) == ["m.bin"]  # pooch's temporary file is gone
    assert site.requests[0]["agent"].startswith("faceanonymixer/")
    assert logged.getvalue() == ""  # pooch's "Downloading data from ..." stays out of stderr
    assert logger.level == level  # silenced only while it ran
    assert verify_model(model, models_dir).status is Status.OK
    again = pull_model(model, models_dir, options=FAST)
    assert again.action == "present" and len(site.requests) == 1


def test_a_dropped_transfer_is_tried_again_from_the_first_byte(
    tmp_path: Path, site: Site, models_dir: Path, sleeps: list[float]
) -> None:
    site.files["/m.bin"] = Served(PAYLOAD, drop_after=100_000)
    model = one_model(tmp_path, site)

    pull_model(model, models_dir, options=FAST)

    assert site.sent("m.bin") == [100_000, len(PAYLOAD)]  # no Range resume: the whole file again
    assert [request["range"] for request in site.requests] == [None, None]
    assert sleeps == [0.25]
    assert (models_dir / "m.bin").read_bytes() == PAYLOAD and listing(models_dir) == ["m.bin"]


def test_a_reset_connection_is_tried_again(
    tmp_path: Path, site: Site, models_dir: Path, sleeps: list[float]
) -> None:
    site.files["/m.bin"] = Served(PAYLOAD, drop_after=120_000, drop_how="reset")
    model = one_model(tmp_path, site)

    pull_model(model, models_dir, options=FAST)

    assert len(site.requests) == 2 and len(sleeps) == 1
    assert (models_dir / "m.bin").read_bytes() == PAYLOAD


def test_a_transfer_that_keeps_failing_gives_up_and_leaves_nothing(
    tmp_path: Path, site: Site, models_dir: Path, sleeps: list[float]
) -> None:
    site.files["/m.bin"] = Served(PAYLOAD, drop_after=50_000, drops=10)
    model = one_model(tmp_path, site)

    with pytest.raises(ModelDownloadError, match=r"IncompleteRead.*gave up after 2 retries"):
        pull_model(model, models_dir, options=DownloadOptions(retries=2, backoff=1, progress=False))

    assert len(site.requests) == 3 and sleeps == [1, 2]  # backoff doubles
    assert listing(models_dir) == []  # no partial file, under any name


def test_5xx_is_retried_404_is_not(tmp_path: Path, site: Site, models_dir: Path, sleeps: list[float]) -> None:
    site.files["/busy.bin"] = Served(PAYLOAD, error=503, errors=2)
    model = one_model(tmp_path, site, urls=[site.url("gone.bin"), site.url("busy.bin")])

    result = pull_model(model, models_dir, options=FAST)

    assert result.url == site.url("busy.bin")
    assert [(r["path"], r["status"]) for r in site.requests] == [
        ("/gone.bin", 404),
        ("/busy.bin", 503),
        ("/busy.bin", 503),
        ("/busy.bin", 200),
    ]
    assert sleeps == [0.25, 0.5]


def test_a_refused_connection_is_retried_an_unknown_host_is_not(
    tmp_path: Path, models_dir: Path, sleeps: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    resolve = socket.getaddrinfo

    def offline_dns(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "no-such-host.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", offline_dns)
    refused = f"http://127.0.0.1:{free_port()}/m.bin"
    manifest = write_manifest(
        tmp_path / "zoo.json", {"m": {"urls": ["http://no-such-host.invalid/m.bin", refused]}}
    )
    model = find_model("m", load_manifest(manifest))

    with pytest.raises(ModelDownloadError) as raised:
        pull_model(model, models_dir, options=DownloadOptions(retries=1, backoff=3, progress=False))

    message = str(raised.value)
    assert "no-such-host.invalid/m.bin: connection failed (" in message and "not known" in message
    assert f"{refused}: connection failed (" in message and "gave up after 1 retries" in message
    assert sleeps == [3]  # only the refused connection was tried again
    assert listing(models_dir) == []


def test_a_stalled_server_times_out(
    tmp_path: Path, site: Site, models_dir: Path, sleeps: list[float]
) -> None:
    site.files["/m.bin"] = Served(PAYLOAD, stall=1.5)
    model = one_model(tmp_path, site)

    with pytest.raises(ModelDownloadError, match="timed out"):  # else it would wait, then succeed
        pull_model(model, models_dir, options=DownloadOptions(timeout=0.3, retries=0, progress=False))

    assert sleeps == [] and listing(models_dir) == []


def test_a_wrong_hash_is_rejected_and_leaves_no_file(
    tmp_path: Path, site: Site, models_dir: Path, sleeps: list[float]
) -> None:
    site.files["/m.bin"] = Served(PAYLOAD)
    other = hashlib.sha256(b"something else").hexdigest()
    model = one_model(tmp_path, site, sha256=other)

    with pytest.raises(ModelIntegrityError, match=f"SHA-256 is {DIGEST}, expected {other}"):
        pull_model(model, models_dir, options=FAST)

    assert listing(models_dir) == []
    assert len(site.requests) == 1 and sleeps == []  # wrong bytes are not fetched again


def test_a_size_other_than_the_manifests_is_rejected(tmp_path: Path, site: Site, models_dir: Path) -> None:
    site.files["/m.bin"] = Served(PAYLOAD)
    model = one_model(tmp_path, site, size=len(PAYLOAD) + 1)

    with pytest.raises(ModelIntegrityError, match=f"sent {len(PAYLOAD)} bytes, the manifest says"):
        pull_model(model, models_dir, options=FAST)

    assert listing(models_dir) == []


def test_mirrors_are_tried_in_order_after_a_404_and_an_html_page(
    tmp_path: Path, site: Site, models_dir: Path
) -> None:
    site.files["/gone.bin"] = Served(b"", error=404)
    site.files["/drive.bin"] = Served(b"", mode="html")
    site.files["/mirror.bin"] = Served(PAYLOAD)
    urls = [site.url("gone.bin"), site.url("drive.bin"), site.url("mirror.bin")]
    model = one_model(tmp_path, site, urls=urls)

    result = pull_model(model, models_dir, options=FAST)

    assert result.url == site.url("mirror.bin")
    assert [r["path"] for r in site.requests] == ["/gone.bin", "/drive.bin", "/mirror.bin"]


def test_an_html_page_is_never_taken_for_the_file_even_on_trust(
    tmp_path: Path, site: Site, models_dir: Path
) -> None:
    site.files["/m.bin"] = Served(b"", mode="html")
    model = one_model(tmp_path, site, sha256=None, size=None)

    with pytest.raises(ModelDownloadError, match="HTML page"):
        pull_model(model, models_dir, trust_on_first_use=True, options=FAST, notify=print)

    assert listing(models_dir) == []  # neither the page nor a pin of it


def test_a_present_file_that_differs_is_kept_unless_forced(
    tmp_path: Path, site: Site, models_dir: Path
) -> None:
    site.files["/m.bin"] = Served(PAYLOAD[:-1] + b"!")  # a mirror serving other bytes
    model = one_model(tmp_path, site)
    models_dir.mkdir()
    mine = PAYLOAD[::-1]
    (models_dir / "m.bin").write_bytes(mine)

    with pytest.raises(ModelIntegrityError, match="--force"):
        pull_model(model, models_dir, options=FAST)
    assert site.requests == []

    with pytest.raises(ModelIntegrityError, match="no URL gave the pinned file"):
        pull_model(model, models_dir, force=True, options=FAST)
    assert (models_dir / "m.bin").read_bytes() == mine  # replaced only by verified bytes

    site.files["/m.bin"] = Served(PAYLOAD)
    assert pull_model(model, models_dir, force=True, options=FAST).action == "downloaded"
    assert (models_dir / "m.bin").read_bytes() == PAYLOAD and listing(models_dir) == ["m.bin"]


# ---- models without a published digest ----------------------------------------------------------


def test_a_present_file_of_the_wrong_size_is_replaced_when_forced_without_a_digest(
    tmp_path: Path, site: Site, models_dir: Path
) -> None:
    site.files["/m.bin"] = Served(PAYLOAD)
    model = one_model(tmp_path, site, sha256=None)
    models_dir.mkdir()
    (models_dir / "m.bin").write_bytes(PAYLOAD[:1000])

    with pytest.raises(ModelIntegrityError, match=f"expected {len(PAYLOAD)} bytes"):
        pull_model(model, models_dir, trust_on_first_use=True, options=FAST)
    result = pull_model(model, models_dir, trust_on_first_use=True, force=True, options=FAST, notify=print)

    assert result.action == "downloaded" and result.sha256 == DIGEST
    assert (models_dir / "m.bin").read_bytes() == PAYLOAD
    assert json.loads((models_dir / "pins.json").read_text())["m.bin"]["sha256"] == DIGEST


def test_an_unpinned_model_is_refused_before_any_download(
    tmp_path: Path, site: Site, models_dir: Path
) -> None:
    site.files["/m.bin"] = Served(PAYLOAD)
    model = one_model(tmp_path, site, sha256=None)

    with pytest.raises(ModelNotPinnedError, match="--trust-on-first-use"):
        pull_model(model, models_dir, options=FAST)

    assert site.requests == []


def test_trust_on_first_use_records_the_digest_loudly(tmp_path: Path, site: Site, models_dir: Path) -> None:
    site.files["/m.bin"] = Served(PAYLOAD)
    model = one_model(tmp_path, site, sha256=None)
    said: list[str] = []

    result = pull_model(model, models_dir, trust_on_first_use=True, options=FAST, notify=said.append)

    pins = json.loads((models_dir / "pins.json").read_text())
    assert pins["m.bin"]["sha256"] == DIGEST and pins["m.bin"]["how"] == "trust-on-first-use"
    assert pins["m.bin"]["url"] == site.url("m.bin")
    assert result.pinned_in == models_dir / "pins.json" and result.sha256 == DIGEST
    assert len(said) == 1 and "TRUSTED ON FIRST USE" in said[0] and DIGEST in said[0]
    check = verify_model(model, models_dir)
    assert check.status is Status.OK and check.pin_origin == "trust-on-first-use"
    (models_dir / "m.bin").write_bytes(PAYLOAD[:-1] + b"!")  # from now on held to the recorded digest
    assert verify_model(model, models_dir).status is Status.MISMATCH


def test_sha256_option_pins_a_model_without_one(tmp_path: Path, site: Site, models_dir: Path) -> None:
    site.files["/m.bin"] = Served(PAYLOAD)
    model = one_model(tmp_path, site, sha256=None)

    with pytest.raises(ModelIntegrityError):
        pull_model(model, models_dir, sha256="0" * 64, options=FAST)
    assert not (models_dir / "pins.json").exists()
    pull_model(model, models_dir, sha256=DIGEST.upper(), options=FAST)

    assert json.loads((models_dir / "pins.json").read_text())["m.bin"]["how"] == "--sha256"
    assert verify_model(model, models_dir).status is Status.OK


def test_sha256_option_never_overrides_the_manifest(tmp_path: Path, site: Site, models_dir: Path) -> None:
    model = one_model(tmp_path, site)
    with pytest.raises(ModelZooError, match="differs from the manifest's pin"):
        pull_model(model, models_dir, sha256="0" * 64, options=FAST)
    with pytest.raises(ModelZooError, match="not a SHA-256"):
        pull_model(model, models_dir, sha256="abc", options=FAST)
    assert site.requests == []


# ---- verify and model_path ----------------------------------------------------------------------


def test_verify_reports_ok_missing_mismatch_and_no_pin(tmp_path: Path, models_dir: Path) -> None:
    url = ["https://example.invalid/x"]
    manifest = write_manifest(
        tmp_path / "zoo.json",
        {
            "good": {"urls": url},
            "absent": {"urls": url},
            "bad": {"urls": url},
            "short": {"urls": url},
            "unpinned": {"urls": url, "sha256": None},
        },
    )
    models = load_manifest(manifest)
    models_dir.mkdir()
    (models_dir / "good.bin").write_bytes(PAYLOAD)
    (models_dir / "bad.bin").write_bytes(PAYLOAD[::-1])
    (models_dir / "short.bin").write_bytes(PAYLOAD[:-1])
    (models_dir / "unpinned.bin").write_bytes(PAYLOAD)

    statuses = {name: verify_model(model, models_dir) for name, model in models.items()}

    assert {name: check.status for name, check in statuses.items()} == {
        "good": Status.OK,
        "absent": Status.MISSING,
        "bad": Status.MISMATCH,
        "short": Status.MISMATCH,
        "unpinned": Status.NO_PIN,
    }
    assert "faceanonymixer models pull absent" in statuses["absent"].detail
    assert statuses["short"].detail == f"size is {len(PAYLOAD) - 1} bytes, expected {len(PAYLOAD)}"
    assert statuses["unpinned"].sha256 == DIGEST


def test_model_path_returns_the_verified_file_and_hashes_it_once(
    tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write_manifest(tmp_path / "zoo.json", {"m": {"urls": ["https://example.invalid/m"]}})
    models_dir.mkdir()
    target = models_dir / "m.bin"
    target.write_bytes(PAYLOAD)
    hashed: list[Path] = []
    real = files.file_sha256

    def counting(path: str | Path) -> str:
        hashed.append(Path(path))
        return real(path)

    monkeypatch.setattr(files, "file_sha256", counting)

    assert model_path("m", models_dir, manifest=manifest) == target
    assert model_path("m.bin", models_dir, manifest=manifest) == target  # by file name too
    assert len(hashed) == 1
    time.sleep(0.05)  # past the file system's timestamp granularity
    target.write_bytes(PAYLOAD[::-1])  # same size, new bytes: hashed again, and refused
    with pytest.raises(ModelIntegrityError, match="SHA-256 is .* expected " + DIGEST):
        model_path("m", models_dir, manifest=manifest)
    assert len(hashed) == 2


def test_a_pulled_file_is_not_hashed_again_by_model_path(
    tmp_path: Path, site: Site, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site.files["/m.bin"] = Served(PAYLOAD)
    manifest = write_manifest(tmp_path / "zoo.json", {"m": {"urls": [site.url("m.bin")]}})
    pull_model(find_model("m", load_manifest(manifest)), models_dir, options=FAST)
    hashed: list[str] = []
    monkeypatch.setattr(files, "file_sha256", lambda path: hashed.append(path) or "0" * 64)

    assert model_path("m", models_dir, manifest=manifest) == models_dir / "m.bin"
    assert hashed == []  # pooch checked the digest before moving the file into place


def test_model_path_works_offline_and_names_the_command_for_a_missing_file(
    tmp_path: Path, site: Site, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site.files["/m.bin"] = Served(PAYLOAD)
    manifest = write_manifest(tmp_path / "zoo.json", {"m": {"urls": [site.url("m.bin")]}})
    with pytest.raises(ModelMissingError, match="run `faceanonymixer models pull m`"):
        model_path("m", models_dir, manifest=manifest)
    assert site.requests == []  # a loader never downloads
    monkeypatch.setenv(model_zoo.MANIFEST_ENV, str(manifest))
    monkeypatch.setenv(model_zoo.MODELS_DIR_ENV, str(models_dir))
    with pytest.raises(ModelMissingError):
        model_path("m")  # manifest and models dir from the environment
    with pytest.raises(UnknownModelError, match="the zoo has: m"):
        model_path("nope")
    models_dir.mkdir()
    (models_dir / "m.bin").write_bytes(PAYLOAD)
    assert model_path("m") == models_dir / "m.bin"
    assert site.requests == []


def test_default_models_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(model_zoo.MODELS_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert model_zoo.default_models_dir() == tmp_path / "cache" / "faceanonymixer" / "models"
    monkeypatch.setenv(model_zoo.MODELS_DIR_ENV, str(tmp_path / "mine"))
    assert model_zoo.default_models_dir() == tmp_path / "mine"


# ---- the packaged manifest ----------------------------------------------------------------------


def _defines(loader: str) -> bool:
    """Whether ``module:function`` names a function the module defines (read, not imported: no torch)."""
    module, function = loader.split(":")
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    return any(isinstance(node, ast.FunctionDef) and node.name == function for node in tree.body)


def test_the_packaged_manifest_describes_the_ffhq_profile() -> None:
    models = load_manifest(model_zoo.MANIFEST_PATH)

    assert {model.file for model in models.values()} == {
        "stylegan2-ffhq-config-f.pt",
        "e4e_ffhq_encode.pt",
        "model_ir_se50.pth",
    }
    for model in models.values():
        assert "ffhq" in model.profiles
        assert all(url.startswith("https://") for url in model.urls)
        assert model.sha256_source and model.licence and model.licence_sources and model.source
        assert model.sha256 is None or model.size is not None
        assert _defines(model.loader), model.loader


def test_a_broken_manifest_is_a_clear_error(tmp_path: Path) -> None:
    broken = tmp_path / "zoo.json"
    broken.write_text(json.dumps({"models": {"m": {"file": "m.bin", "urls": [], "sha256": None}}}))
    with pytest.raises(ModelZooError, match="urls must be"):
        load_manifest(broken)
    broken.write_text(
        json.dumps({"models": {"m": {"file": "m.bin", "urls": ["https://x"], "sha256": "beef"}}})
    )
    with pytest.raises(ModelZooError, match="sha256 must be"):
        load_manifest(broken)


# ---- the command line ---------------------------------------------------------------------------


def _cli(*arguments: str) -> Any:
    return runner.invoke(app, ["models", *arguments])


def test_cli_list_pull_verify(tmp_path: Path, site: Site, models_dir: Path) -> None:
    site.files["/m.bin"] = Served(PAYLOAD)
    manifest = write_manifest(tmp_path / "zoo.json", {"m": {"urls": [site.url("m.bin")]}})
    where = ["--manifest", str(manifest), "--models-dir", str(models_dir)]

    listed = _cli("list", *where, "--json")
    assert listed.exit_code == 0, listed.output
    row = json.loads(listed.stdout)["models"]["m"]
    assert row["present"] is False and row["pin"] == "manifest" and row["urls"] == [site.url("m.bin")]

    missing = _cli("verify", "m", *where)
    assert missing.exit_code == 1
    assert missing.stdout.startswith("MISSING  m  ") and "faceanonymixer models pull m" in missing.stdout

    pulled = _cli("pull", "m", *where, "--no-progress")
    assert pulled.exit_code == 0, pulled.output
    assert pulled.stdout.split()[:2] == ["downloaded", "m"] and DIGEST in pulled.stdout
    assert pulled.stderr == ""  # pooch's log lines stay out of the command's output

    checked = _cli("verify", "m", *where, "--json")
    assert checked.exit_code == 0, checked.output
    result = json.loads(checked.stdout)["m"]
    assert result["ok"] is True and result["sha256"] == DIGEST and result["kind"] == "zoo"
    assert "present" in _cli("list", *where).stdout


def test_cli_verify_without_names_checks_committed_weights_and_tolerates_unpulled_models(
    tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write_manifest(tmp_path / "zoo.json", {"m": {"urls": ["https://example.invalid/m"]}})
    committed = tmp_path / "committed.pt"
    committed.write_bytes(PAYLOAD)  # a stand-in: the real weights may be being retrained meanwhile
    stand_in = SimpleNamespace(path=committed, sha256=DIGEST)
    monkeypatch.setattr(weights, "committed_weights", lambda: {"digiface-dcgan-encoder": stand_in})

    result = _cli("verify", "--manifest", str(manifest), "--models-dir", str(models_dir), "--json")

    assert result.exit_code == 0, result.output
    results = json.loads(result.stdout)
    assert results["m"]["status"] == "missing" and results["m"]["required"] is False
    encoder = results["digiface-dcgan-encoder"]
    assert encoder["ok"] is True and encoder["kind"] == "committed"
    with_profile = _cli(
        "verify", "--profile", "test", "--manifest", str(manifest), "--models-dir", str(models_dir)
    )
    assert with_profile.exit_code == 1 and "digiface-dcgan-encoder" not in with_profile.stdout


def test_cli_errors_are_one_line_with_exit_2(tmp_path: Path, site: Site, models_dir: Path) -> None:
    site.files["/m.bin"] = Served(PAYLOAD)
    manifest = write_manifest(
        tmp_path / "zoo.json",
        {
            "wrong": {"urls": [site.url("m.bin")], "sha256": "0" * 64},
            "loose": {"urls": [site.url("m.bin")], "sha256": None},
        },
    )
    where = ["--manifest", str(manifest), "--models-dir", str(models_dir), "--no-progress"]

    for arguments, message in [
        (["wrong"], "no URL gave the pinned file"),
        (["loose"], "has no published SHA-256"),
        (["nope"], "unknown model 'nope'"),
        (["wrong", "loose", "--sha256", DIGEST], "--sha256 pins one model"),
    ]:
        result = _cli("pull", *arguments, *where)
        assert result.exit_code == 2, (arguments, result.output)
        assert (
            result.stderr.count("\n") == 1
            and result.stderr.startswith("error: ")
            and message in result.stderr
        )
    assert listing(models_dir) == []

    trusted = _cli("pull", "loose", "--trust-on-first-use", *where)
    assert trusted.exit_code == 0, trusted.output
    assert "TRUSTED ON FIRST USE" in trusted.stderr
