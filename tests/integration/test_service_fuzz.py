"""Malformed requests against a real ``faceanonymixer serve``: every one gets its documented status.

One server (two tenants) takes a few hundred generated bad requests across all six methods:
broken, truncated, tiny, unsupported and decompression-bomb images, bad options, bad and foreign
key ids, bad key metadata, bad list filters and page tokens, bad batches. Each must end with the
exact code of the error table of ARCHITECTURE.md, its ``ErrorInfo`` reason and, for
INVALID_ARGUMENT, a ``BadRequest`` field violation; never UNKNOWN or INTERNAL. Afterwards the
server must still be healthy, still protect a real photo, and have logged no unexpected error.
"""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import grpc
import numpy as np
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image
from service_harness import ServerProcess, bearer, health_status, stubs

from faceanonymixer.engine.profiles import PROFILES
from faceanonymixer.faces.imageio import ALLOWED_FORMATS, DEFAULT_LIMITS
from faceanonymixer.keystore import KeyEncryptionKey
from faceanonymixer.keystore.key_ids import KeyIds
from faceanonymixer_proto.v1 import keys_pb2, keys_pb2_grpc, protection_pb2, protection_pb2_grpc

#: fuzzes a real server: slow, not in the quick loop
pytestmark = pytest.mark.slow

TOKEN_ONE = "fuzz-token-of-tenant-one-0001"
TOKEN_TWO = "fuzz-token-of-tenant-two-0002"
TENANT_ONE, TENANT_TWO = "tenant-one", "tenant-two"
MAX_IMAGES = 4
MAX_OUTPUT = 512
MAX_TEXT = 256  # key_operations.MAX_TEXT: the longest key_id / subject / label the service takes
DOMAIN = "faceanonymixer.v1"
CALL_TIMEOUT = 30.0
KEY_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"

#: hypothesis settings of every fuzzer: reproducible, no example database in the repository
FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)

#: the fuzz tests; the final test checks the request count only when all of them ran
FUZZ_TESTS = frozenset(
    {
        "images",
        "options",
        "key_ids",
        "create_key",
        "list_keys",
        "batches",
        "no_face",
        "malformed",
    }
)


@dataclass(frozen=True)
class Expect:
    """The status a request must end with."""

    code: grpc.StatusCode
    reason: str
    field: str | None = None  # the BadRequest field violation, required with INVALID_ARGUMENT


@dataclass(repr=False)
class FuzzEnv:
    server: ServerProcess
    protection: protection_pb2_grpc.ProtectionServiceStub
    keys: keys_pb2_grpc.KeyServiceStub
    channel: grpc.Channel
    key_a: str  # an active key of tenant one
    key_b: str  # an active key of tenant two
    revoked_key: str  # a revoked key of tenant one
    absent_own_key: str  # well formed and tagged for tenant one, never created
    face_jpeg: bytes
    face_png: bytes
    face_webp: bytes
    bombs: list[bytes]
    token_of_tenant_two: str  # a real next_page_token of tenant two (any filters)
    token_for_active_filter: str  # a real next_page_token of tenant one for state=ACTIVE
    requests: int = 0
    completed: set[str] = field(default_factory=set)

    def count(self, n: int = 1) -> None:
        self.requests += n

    def __repr__(self) -> str:  # hypothesis prints it with failing examples: no photos in it
        return f"FuzzEnv(server at {self.server.address}, {self.requests} requests)"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # hypothesis' printer: use __repr__
        printer.text(repr(self))


@dataclass(frozen=True)
class ImageCase:
    """A generated photo and what it is; its repr stays short in hypothesis reports."""

    what: str
    data: bytes

    def __repr__(self) -> str:
        return f"ImageCase({self.what!r}, {len(self.data)} bytes starting {self.data[:16]!r})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


ONE = bearer(TOKEN_ONE)
TWO = bearer(TOKEN_TWO)


# ---- images ---------------------------------------------------------------------------------------


def encode(image: Image.Image, image_format: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims ``width`` x ``height`` 8-bit grey pixels (a decompression bomb)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )


def gif_claiming(width: int, height: int) -> bytes:
    """A tiny GIF whose screen and frame claim ``width`` x ``height`` pixels."""
    return (
        b"GIF89a"
        + struct.pack("<HHBBB", width, height, 0, 0, 0)
        + b","
        + struct.pack("<HHHHB", 0, 0, width, height, 0)
        + b"\x02\x02\x44\x01\x00;"
    )


def exif_with_wrong_tag_type(tag: int, text: bytes, orientation: int) -> bytes:
    """Raw EXIF (big-endian TIFF) with a numeric tag stored as ASCII ``text``, plus an Orientation.

    Pillow reads it, but cannot write it back (it writes the tag with its known numeric type),
    which is what ``ImageOps.exif_transpose`` tries to do for a rotated photo.
    """
    payload = text[:3].ljust(3, b"x") + b"\0"
    entries = struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)  # entries sorted by tag
    entries += struct.pack(">HHI", tag, 2, 4) + payload
    return b"Exif\0\0MM\0*" + struct.pack(">I", 8) + struct.pack(">H", 2) + entries + b"\0\0\0\0"


def pillow_decodes(data: bytes) -> bool:
    """Whether Pillow alone decodes ``data`` as an allowed format within the documented limits."""
    limits = DEFAULT_LIMITS
    if not data or len(data) > limits.max_bytes:
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data), formats=sorted(ALLOWED_FORMATS)) as image:
                width, height = image.size
                if min(width, height) < limits.min_side:
                    return False
                if max(width, height) > limits.max_side or width * height > limits.max_pixels:
                    return False
                image.load()
                return True
    except Exception:
        return False


MAGICS = [
    b"",
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff\xe0",
    b"GIF89a",
    b"II*\0",
    b"MM\0*",
    b"BM",
    b"RIFF\0\0\0\0WEBPVP8 ",
    b"P6\n",
]


@st.composite
def random_bytes(draw: st.DrawFn) -> ImageCase:
    data = draw(st.sampled_from(MAGICS)) + draw(st.binary(min_size=0, max_size=2048))
    return ImageCase("random bytes", data)


@st.composite
def truncated_photo(draw: st.DrawFn, env: FuzzEnv) -> ImageCase:
    name, photo = draw(
        st.sampled_from([("jpeg", env.face_jpeg), ("png", env.face_png), ("webp", env.face_webp)])
    )
    cut = draw(st.integers(0, len(photo) - 1))
    return ImageCase(f"{name} cut at {cut} of {len(photo)} bytes", photo[:cut])


@st.composite
def claimed_bomb(draw: st.DrawFn) -> ImageCase:
    limits = DEFAULT_LIMITS
    kind = draw(st.sampled_from(["png", "gif"]))
    top = 2**31 - 1 if kind == "png" else 2**16 - 1
    width = draw(st.integers(max(limits.min_side, limits.max_pixels // top + 1), top))
    if width > limits.max_side:
        height = draw(st.integers(limits.min_side, top))
    else:  # within the side limit: claim more pixels than the pixel limit
        height = draw(st.integers(limits.max_pixels // width + 1, top))
    build = png_claiming if kind == "png" else gif_claiming
    return ImageCase(f"{kind} claiming {width}x{height}", build(width, height))


@st.composite
def tiny_image(draw: st.DrawFn) -> ImageCase:
    short = draw(st.integers(1, DEFAULT_LIMITS.min_side - 1))
    long = draw(st.integers(1, 300))
    size = (short, long) if draw(st.booleans()) else (long, short)
    image_format = draw(st.sampled_from(["PNG", "JPEG", "WEBP", "GIF", "BMP"]))
    shade = draw(st.integers(0, 255))
    image = Image.new("RGB", size, (shade, shade, shade))
    return ImageCase(f"{image_format} of {size}", encode(image, image_format))


@st.composite
def unsupported_format(draw: st.DrawFn) -> ImageCase:
    image_format = draw(st.sampled_from(["TGA", "ICO", "PCX", "SGI", "PDF", "DIB"]))
    side = draw(st.integers(DEFAULT_LIMITS.min_side, 128))
    shade = draw(st.integers(0, 255))
    image = Image.new("RGB", (side, side), (shade, 128, 255 - shade))
    return ImageCase(f"{image_format} {side}px", encode(image, image_format))


def bad_image(env: FuzzEnv) -> st.SearchStrategy[ImageCase]:
    return st.one_of(
        st.just(ImageCase("empty", b"")),
        random_bytes(),
        truncated_photo(env),
        claimed_bomb(),
        st.sampled_from(env.bombs).map(
            lambda data: ImageCase(f"Pillow-made bomb of {len(data)} bytes", data)
        ),
        tiny_image(),
        unsupported_format(),
    )


# ---- checking statuses ----------------------------------------------------------------------------


def details_of(status: status_pb2.Status) -> tuple[error_details_pb2.ErrorInfo | None, list[str]]:
    info: error_details_pb2.ErrorInfo | None = None
    fields: list[str] = []
    for detail in status.details:
        unpacked = error_details_pb2.ErrorInfo()
        if detail.Unpack(unpacked):
            info = unpacked
            continue
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            fields.extend(violation.field for violation in bad_request.field_violations)
    return info, fields


def check_status(status: status_pb2.Status, expect: Expect, what: str) -> None:
    got = grpc.StatusCode.OK
    for code in grpc.StatusCode:
        if code.value[0] == status.code:
            got = code
    assert got == expect.code, f"{what}: expected {expect.code.name}, got {got.name}: {status.message!r}"
    info, fields = details_of(status)
    assert info is not None, f"{what}: no ErrorInfo in {status}"
    assert (info.domain, info.reason) == (DOMAIN, expect.reason), f"{what}: {info}"
    if expect.code == grpc.StatusCode.INVALID_ARGUMENT:
        # a request that does not parse has no field to blame; every other one names its field
        expected_fields = [] if expect.reason == "MALFORMED_REQUEST" else [expect.field]
        assert expect.field is not None or not expected_fields
        assert fields == expected_fields, f"{what}: field violations {fields}, expected {expect.field!r}"


def check_refused(env: FuzzEnv, call: Callable[[], Any], expect: Expect, what: str) -> None:
    env.count()
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error = caught.value
    assert isinstance(error, grpc.Call)
    status = rpc_status.from_call(error)
    if status is None:  # no rich details: only the code can be compared
        raise AssertionError(f"{what}: {error.code().name} without a rich status: {error.details()!r}")
    check_status(status, expect, what)


def invalid(field_name: str, reason: str = "INVALID_ARGUMENT") -> Expect:
    return Expect(grpc.StatusCode.INVALID_ARGUMENT, reason, field_name)


# ---- the server -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(faces_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzEnv]:
    workdir = tmp_path_factory.mktemp("fuzz")
    kek_file = workdir / "kek.bin"
    kek_file.write_bytes(os.urandom(32))
    kek_file.chmod(0o600)
    kek = KeyEncryptionKey.from_file(kek_file)
    server = ServerProcess(
        workdir,
        kek_file,
        {
            "keystore": f"sqlite:///{workdir / 'keys.db'}",
            "tokens": {TOKEN_ONE: TENANT_ONE, TOKEN_TWO: TENANT_TWO},
            "workers": 1,
            "queue_size": 8,
            "max_images_per_request": MAX_IMAGES,
            "max_output_size": MAX_OUTPUT,
            "metrics_listen": "127.0.0.1:0",
        },
    )
    face_jpeg = (faces_root / "fr_examples" / "kit_harington" / "john2.jpeg").read_bytes()
    face = Image.open(io.BytesIO(face_jpeg)).convert("RGB")
    bombs = [
        encode(Image.new("L", (6400, 6400), 0), "PNG"),  # 41 M pixels > 40 M, about 40 kB
        encode(Image.new("L", (16_500, 40), 255), "PNG"),  # one side over 16384
        encode(Image.new("L", (40, 20_000), 0), "GIF"),
        encode(Image.new("L", (7000, 6000), 0), "JPEG", quality=10),
    ]
    with server.running(), stubs(server.address) as (protection, key_service, channel):
        created = [
            key_service.CreateKey(keys_pb2.CreateKeyRequest(subject=subject), metadata=metadata).key.key_id
            for subject, metadata in [("alice", ONE), ("to-revoke", ONE), ("bob", TWO), ("carol", TWO)]
        ]
        key_a, to_revoke, key_b, _ = created
        key_service.RevokeKey(keys_pb2.RevokeKeyRequest(key_id=to_revoke), metadata=ONE)
        token_two = key_service.ListKeys(keys_pb2.ListKeysRequest(page_size=1), metadata=TWO).next_page_token
        token_active = key_service.ListKeys(
            keys_pb2.ListKeysRequest(page_size=1, state=keys_pb2.KEY_STATE_ACTIVE), metadata=ONE
        ).next_page_token
        assert token_two and token_active
        yield FuzzEnv(
            server=server,
            protection=protection,
            keys=key_service,
            channel=channel,
            key_a=key_a,
            key_b=key_b,
            revoked_key=to_revoke,
            absent_own_key=KeyIds(kek.key_id_tag_key()).mint(TENANT_ONE),
            face_jpeg=face_jpeg,
            face_png=encode(face, "PNG"),
            face_webp=encode(face, "WEBP", quality=80),
            bombs=bombs,
            token_of_tenant_two=token_two,
            token_for_active_filter=token_active,
            requests=6,
        )


# ---- ProtectFace / ProtectFaces: images -----------------------------------------------------------


@settings(FUZZ, max_examples=150)
@given(data=st.data())
def test_malformed_images_are_invalid_arguments(env: FuzzEnv, data: st.DataObject) -> None:
    case = data.draw(bad_image(env))
    assume(not pillow_decodes(case.data))  # e.g. a JPEG cut just before its end marker still decodes
    request = protection_pb2.ProtectFaceRequest(image=case.data, key_id=env.key_a)
    check_refused(
        env,
        lambda: env.protection.ProtectFace(request, metadata=ONE, timeout=CALL_TIMEOUT),
        invalid("image", "INVALID_IMAGE"),
        case.what,
    )
    env.completed.add("images")


def test_an_image_over_the_byte_limit_is_an_invalid_argument(env: FuzzEnv) -> None:
    image = env.face_jpeg * (DEFAULT_LIMITS.max_bytes // len(env.face_jpeg) + 1)
    request = protection_pb2.ProtectFaceRequest(image=image, key_id=env.key_a)
    check_refused(
        env,
        lambda: env.protection.ProtectFace(request, metadata=ONE, timeout=CALL_TIMEOUT),
        invalid("image", "INVALID_IMAGE"),
        f"{len(image)} bytes",
    )


# ---- output options -------------------------------------------------------------------------------

VALID_FORMATS = st.sampled_from(list(protection_pb2.ImageFormat.values()))
BAD_FORMATS = st.one_of(st.integers(4, 2**31 - 1), st.integers(-(2**31), -1))
VALID_SIZES = st.one_of(st.just(0), st.integers(16, MAX_OUTPUT))
BAD_SIZES = st.one_of(st.integers(1, 15), st.integers(MAX_OUTPUT + 1, 2**32 - 1))


@settings(FUZZ, max_examples=60)
@given(
    output_format=st.one_of(VALID_FORMATS, BAD_FORMATS),
    output_size=st.one_of(VALID_SIZES, BAD_SIZES),
    paste_back=st.booleans(),
    batch=st.booleans(),
)
def test_bad_output_options_are_invalid_arguments(
    env: FuzzEnv, output_format: int, output_size: int, paste_back: bool, batch: bool
) -> None:
    bad_format = output_format not in protection_pb2.ImageFormat.values()
    bad_size = 0 < output_size < 16 or output_size > MAX_OUTPUT
    assume(bad_format or bad_size)
    # the format is checked first; both are checked before the key and the photo
    expect = invalid("output_format" if bad_format else "output_size")
    image_format: Any = output_format  # any int32: proto3 enums are open
    what = f"format {output_format}, size {output_size}, paste_back {paste_back}, batch {batch}"
    if batch:
        many = protection_pb2.ProtectFacesRequest(
            images=[env.face_jpeg],
            key_id=env.key_a,
            output_format=image_format,
            output_size=output_size,
            paste_back=paste_back,
        )
        check_refused(
            env,
            lambda: list(env.protection.ProtectFaces(many, metadata=ONE, timeout=CALL_TIMEOUT)),
            expect,
            what,
        )
    else:
        one = protection_pb2.ProtectFaceRequest(
            image=env.face_jpeg,
            key_id=env.key_a,
            output_format=image_format,
            output_size=output_size,
            paste_back=paste_back,
        )
        check_refused(
            env, lambda: env.protection.ProtectFace(one, metadata=ONE, timeout=CALL_TIMEOUT), expect, what
        )
    env.completed.add("options")


# ---- key ids across ProtectFace, ProtectFaces, GetKey and RevokeKey ------------------------------

NOT_FOUND = Expect(grpc.StatusCode.NOT_FOUND, "KEY_NOT_FOUND")
DENIED = Expect(grpc.StatusCode.PERMISSION_DENIED, "KEY_ACCESS_DENIED")
REVOKED = Expect(grpc.StatusCode.FAILED_PRECONDITION, "KEY_REVOKED")
TEXT = st.characters(codec="utf-8")


def well_formed_id() -> st.SearchStrategy[str]:
    return st.text(st.sampled_from(KEY_ALPHABET), min_size=32, max_size=32).map(lambda body: "fk_" + body)


def malformed_id() -> st.SearchStrategy[str]:
    near_misses = st.one_of(
        well_formed_id().map(str.upper),
        well_formed_id().map(lambda key_id: key_id[:-1]),
        well_formed_id().map(lambda key_id: key_id + "a"),
        well_formed_id().map(lambda key_id: key_id.replace("fk_", "fk-", 1)),
        well_formed_id().map(lambda key_id: key_id[:10] + "0" + key_id[11:]),  # 0 is not base32
    )
    random_text = st.text(TEXT, min_size=1, max_size=MAX_TEXT).filter(lambda text: not text.startswith("fk_"))
    return st.one_of(near_misses, random_text)


@st.composite
def bad_key_case(draw: st.DrawFn, env: FuzzEnv) -> tuple[str, bytes, str, Expect]:
    """(description, caller's metadata as a tenant tag, key id, expected status)."""
    kind = draw(
        st.sampled_from(
            [
                "empty",
                "too long",
                "malformed",
                "well formed",
                "foreign",
                "foreign reverse",
                "absent",
                "revoked",
            ]
        )
    )
    caller = b"one"
    if kind == "empty":
        return kind, caller, "", invalid("key_id")
    if kind == "too long":
        text = draw(st.text(TEXT, min_size=MAX_TEXT + 1, max_size=MAX_TEXT + 64))
        return kind, caller, text, invalid("key_id")
    if kind == "malformed":
        return kind, caller, draw(malformed_id()), NOT_FOUND
    if kind == "well formed":  # random tag: not issued to the caller (a 2**-40 chance of a match)
        return kind, caller, draw(well_formed_id()), DENIED
    if kind == "foreign":
        return kind, caller, env.key_b, DENIED
    if kind == "foreign reverse":
        return kind, b"two", env.key_a, DENIED
    if kind == "absent":
        return kind, caller, env.absent_own_key, NOT_FOUND
    return kind, caller, env.revoked_key, REVOKED


@settings(FUZZ, max_examples=100)
@given(data=st.data(), method=st.sampled_from(["ProtectFace", "ProtectFaces", "GetKey", "RevokeKey"]))
def test_bad_key_ids_get_their_documented_status(env: FuzzEnv, data: st.DataObject, method: str) -> None:
    kind, caller, key_id, expect = data.draw(bad_key_case(env))
    if kind == "revoked" and method in ("GetKey", "RevokeKey"):
        return  # reading a revoked key, or revoking it again, is allowed
    metadata = ONE if caller == b"one" else TWO
    what = f"{method} with a {kind} key id {key_id[:80]!r}"
    call: Callable[[], Any]
    if method == "ProtectFace":
        one = protection_pb2.ProtectFaceRequest(image=env.face_jpeg, key_id=key_id)
        call = lambda: env.protection.ProtectFace(one, metadata=metadata, timeout=CALL_TIMEOUT)  # noqa: E731
    elif method == "ProtectFaces":
        many = protection_pb2.ProtectFacesRequest(images=[env.face_jpeg, b"junk"], key_id=key_id)
        call = lambda: list(env.protection.ProtectFaces(many, metadata=metadata, timeout=CALL_TIMEOUT))  # noqa: E731
    elif method == "GetKey":
        get = keys_pb2.GetKeyRequest(key_id=key_id)
        call = lambda: env.keys.GetKey(get, metadata=metadata, timeout=CALL_TIMEOUT)  # noqa: E731
    else:
        revoke = keys_pb2.RevokeKeyRequest(key_id=key_id)
        call = lambda: env.keys.RevokeKey(revoke, metadata=metadata, timeout=CALL_TIMEOUT)  # noqa: E731
    check_refused(env, call, expect, what)
    env.completed.add("key_ids")


# ---- CreateKey ------------------------------------------------------------------------------------

SUBJECTS = st.text(st.characters(codec="utf-8", exclude_characters="\0"), min_size=1, max_size=40)
SHORT = st.text(TEXT, max_size=20)


@st.composite
def bad_create(draw: st.DrawFn) -> tuple[str, keys_pb2.CreateKeyRequest, Expect]:
    kind = draw(
        st.sampled_from(
            ["empty subject", "long subject", "NUL subject", "many labels", "long label", "unknown profile"]
        )
    )
    subject = draw(SUBJECTS)
    labels = draw(st.dictionaries(SHORT, SHORT, max_size=3))
    profile_id = ""
    if kind == "empty subject":
        subject = ""
    elif kind == "long subject":
        subject = draw(st.text(TEXT, min_size=MAX_TEXT + 1, max_size=MAX_TEXT + 50))
    elif kind == "NUL subject":
        subject = draw(SHORT) + "\0" + draw(SHORT)
    elif kind == "many labels":
        labels = {f"label-{index}": "x" for index in range(draw(st.integers(65, 90)))}
    elif kind == "long label":
        long_text = draw(st.text(TEXT, min_size=MAX_TEXT + 1, max_size=MAX_TEXT + 20))
        labels = {long_text: "value"} if draw(st.booleans()) else {"name": long_text}
    else:
        profile_id = draw(st.text(TEXT, min_size=1, max_size=40).filter(lambda text: text not in PROFILES))
    field_name = "subject" if "subject" in kind else "labels" if "label" in kind else "profile_id"
    request = keys_pb2.CreateKeyRequest(subject=subject, labels=labels, profile_id=profile_id)
    return kind, request, invalid(field_name)


@settings(FUZZ, max_examples=60)
@given(case=bad_create(), tenant_two=st.booleans())
def test_bad_create_key_requests_are_invalid_arguments(
    env: FuzzEnv, case: tuple[str, keys_pb2.CreateKeyRequest, Expect], tenant_two: bool
) -> None:
    kind, request, expect = case
    metadata = TWO if tenant_two else ONE
    check_refused(
        env,
        lambda: env.keys.CreateKey(request, metadata=metadata, timeout=CALL_TIMEOUT),
        expect,
        f"CreateKey with {kind}: subject={request.subject[:40]!r} profile={request.profile_id!r}",
    )
    env.completed.add("create_key")


# ---- ListKeys -------------------------------------------------------------------------------------


def forged_token(after: str, filters: str) -> str:
    body = json.dumps({"after": after, "filters": filters}).encode()
    return base64.urlsafe_b64encode(body).decode().rstrip("=")


@st.composite
def bad_list(draw: st.DrawFn, env: FuzzEnv) -> tuple[str, keys_pb2.ListKeysRequest, Expect]:
    kind = draw(
        st.sampled_from(
            [
                "negative page_size",
                "random page_token",
                "base64 junk page_token",
                "forged page_token",
                "other tenant's page_token",
                "other filters' page_token",
                "long subject",
                "NUL subject",
                "unknown state",
            ]
        )
    )
    request = keys_pb2.ListKeysRequest(page_size=draw(st.integers(0, 2000)))
    field_name = "page_token"
    if kind == "negative page_size":
        request.page_size = draw(st.integers(-(2**31), -1))
        field_name = "page_size"
    elif kind == "random page_token":
        request.page_token = draw(st.text(TEXT, min_size=1, max_size=600))
    elif kind == "base64 junk page_token":
        junk = draw(st.binary(min_size=1, max_size=300))
        request.page_token = base64.urlsafe_b64encode(junk).decode().rstrip("=")
    elif kind == "forged page_token":
        after = draw(st.one_of(well_formed_id(), st.text(TEXT, max_size=40)))
        request.page_token = forged_token(after, draw(st.text("0123456789abcdef", max_size=16)))
    elif kind == "other tenant's page_token":
        request.page_token = env.token_of_tenant_two
    elif kind == "other filters' page_token":  # made for state=ACTIVE, used with other filters
        request.page_token = env.token_for_active_filter
        request.state = draw(st.sampled_from([keys_pb2.KEY_STATE_UNSPECIFIED, keys_pb2.KEY_STATE_REVOKED]))
        request.subject = draw(st.sampled_from(["", "alice"]))
    elif kind == "long subject":
        request.subject = draw(st.text(TEXT, min_size=MAX_TEXT + 1, max_size=MAX_TEXT + 40))
        field_name = "subject"
    elif kind == "NUL subject":
        request.subject = draw(SHORT) + "\0"
        field_name = "subject"
    else:
        state = draw(st.one_of(st.integers(3, 2**31 - 1), st.integers(-(2**31), -1)))
        request.state = cast(Any, state)  # proto3 enums are open: any int32 goes on the wire
        field_name = "state"
    return kind, request, invalid(field_name)


@settings(FUZZ, max_examples=80)
@given(data=st.data())
def test_bad_list_keys_requests_are_invalid_arguments(env: FuzzEnv, data: st.DataObject) -> None:
    kind, request, expect = data.draw(bad_list(env))
    check_refused(
        env,
        lambda: env.keys.ListKeys(request, metadata=ONE, timeout=CALL_TIMEOUT),
        expect,
        f"ListKeys with {kind}: {str(request)[:200]!r}",
    )
    env.completed.add("list_keys")


def test_tenant_two_never_lists_tenant_one_keys(env: FuzzEnv) -> None:
    env.count()
    listed = env.keys.ListKeys(keys_pb2.ListKeysRequest(page_size=1000), metadata=TWO, timeout=CALL_TIMEOUT)
    assert env.key_a not in {key.key_id for key in listed.keys}
    assert env.key_b in {key.key_id for key in listed.keys}


# ---- ProtectFaces batches -------------------------------------------------------------------------


@settings(FUZZ, max_examples=40)
@given(data=st.data())
def test_bad_batches_are_refused_whole_or_per_photo(env: FuzzEnv, data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(["too many", "empty", "all broken"]))
    if kind == "too many":
        count = data.draw(st.integers(MAX_IMAGES + 1, MAX_IMAGES + 12))
        request = protection_pb2.ProtectFacesRequest(images=[env.face_jpeg] * count, key_id=env.key_a)
        check_refused(
            env,
            lambda: list(env.protection.ProtectFaces(request, metadata=ONE, timeout=CALL_TIMEOUT)),
            invalid("images"),
            f"{count} photos",
        )
    elif kind == "empty":
        request = protection_pb2.ProtectFacesRequest(images=[], key_id=env.key_a)
        check_refused(
            env,
            lambda: list(env.protection.ProtectFaces(request, metadata=ONE, timeout=CALL_TIMEOUT)),
            invalid("images"),
            "no photos",
        )
    else:  # every photo broken: one INVALID_ARGUMENT item each, and the call itself ends OK
        cases = data.draw(st.lists(bad_image(env), min_size=1, max_size=MAX_IMAGES))
        assume(not any(pillow_decodes(case.data) for case in cases))
        request = protection_pb2.ProtectFacesRequest(images=[case.data for case in cases], key_id=env.key_a)
        env.count()
        replies = list(env.protection.ProtectFaces(request, metadata=ONE, timeout=CALL_TIMEOUT))
        assert sorted(reply.index for reply in replies) == list(range(len(cases)))
        for reply in replies:
            check_status(
                reply.status,
                invalid(f"images[{reply.index}]", "INVALID_IMAGE"),
                f"item {reply.index}: {cases[reply.index].what}",
            )
            assert not reply.image
    env.completed.add("batches")


def test_a_batch_mixing_broken_and_good_photos_reports_each(env: FuzzEnv) -> None:
    images = [b"not a photo", env.face_jpeg, env.face_jpeg[: len(env.face_jpeg) // 2]]
    request = protection_pb2.ProtectFacesRequest(images=images, key_id=env.key_a)
    env.count()
    replies = {
        reply.index: reply
        for reply in env.protection.ProtectFaces(request, metadata=ONE, timeout=CALL_TIMEOUT)
    }
    assert sorted(replies) == [0, 1, 2]
    assert replies[1].status.code == code_pb2.OK and replies[1].image
    for index in (0, 2):
        check_status(replies[index].status, invalid(f"images[{index}]", "INVALID_IMAGE"), f"item {index}")


# ---- photos without a face ------------------------------------------------------------------------

NO_FACE = Expect(grpc.StatusCode.FAILED_PRECONDITION, "NO_FACE")
#: numeric EXIF tags (RATIONAL, LONG, SHORT) that a broken file may store as ASCII
NUMERIC_TAGS = [0x011A, 0x011B, 0x011F, 0x0120, 0x0128, 0x0213]


@st.composite
def faceless_photo(draw: st.DrawFn) -> ImageCase:
    width, height = draw(st.integers(32, 320)), draw(st.integers(32, 320))
    low, high = draw(st.integers(0, 255)), draw(st.integers(0, 255))
    ramp = np.linspace(low, high, width, dtype=np.float64).astype(np.uint8)
    pixels = np.repeat(np.repeat(ramp[None, :, None], height, axis=0), 3, axis=2)
    image = Image.fromarray(np.ascontiguousarray(pixels))
    if draw(st.booleans()):  # a valid photo whose EXIF stores a numeric tag as text
        tag = draw(st.sampled_from(NUMERIC_TAGS))
        orientation = draw(st.integers(1, 8))
        exif = exif_with_wrong_tag_type(tag, draw(st.binary(min_size=3, max_size=3)), orientation)
        what = f"{width}x{height} JPEG, tag {tag:#x} as text, orientation {orientation}"
        return ImageCase(what, encode(image, "JPEG", exif=exif))
    image_format = draw(st.sampled_from(["PNG", "JPEG", "WEBP"]))
    return ImageCase(f"{width}x{height} {image_format} ramp", encode(image, image_format))


@settings(FUZZ, max_examples=40)
@given(case=faceless_photo())
def test_photos_without_a_face_are_failed_preconditions(env: FuzzEnv, case: ImageCase) -> None:
    request = protection_pb2.ProtectFaceRequest(image=case.data, key_id=env.key_a)
    check_refused(
        env,
        lambda: env.protection.ProtectFace(request, metadata=ONE, timeout=CALL_TIMEOUT),
        NO_FACE,
        case.what,
    )
    env.completed.add("no_face")


# ---- bytes that are not a request message ---------------------------------------------------------

#: (method path, server streaming, request class) of every method
METHODS = [
    ("/faceanonymixer.v1.ProtectionService/ProtectFace", False, protection_pb2.ProtectFaceRequest),
    ("/faceanonymixer.v1.ProtectionService/ProtectFaces", True, protection_pb2.ProtectFacesRequest),
    ("/faceanonymixer.v1.KeyService/CreateKey", False, keys_pb2.CreateKeyRequest),
    ("/faceanonymixer.v1.KeyService/RevokeKey", False, keys_pb2.RevokeKeyRequest),
    ("/faceanonymixer.v1.KeyService/GetKey", False, keys_pb2.GetKeyRequest),
    ("/faceanonymixer.v1.KeyService/ListKeys", False, keys_pb2.ListKeysRequest),
]
#: a truncated varint, a field of length 5 holding 2 bytes, field number 0, a string field
#: holding invalid UTF-8, a group that never ends
KNOWN_BAD = [b"\xff", b"\x0a\x05ab", b"\x00\x01", b"\x0a\x02\xff\xfe", b"\x12\x02\xff\xfe", b"\x0b"]
MALFORMED = Expect(grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST")


def parses(message: Any, data: bytes) -> bool:
    try:
        message.FromString(data)
    except Exception:
        return False
    return True


def send_raw(env: FuzzEnv, path: str, streaming: bool, data: bytes) -> Any:
    """Bytes as they are, past the client's serializer."""
    if streaming:
        return list(env.channel.unary_stream(path)(data, metadata=ONE, timeout=CALL_TIMEOUT))
    return env.channel.unary_unary(path)(data, metadata=ONE, timeout=CALL_TIMEOUT)


@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_malformed_protobuf_bytes_are_invalid_arguments(env: FuzzEnv, data: st.DataObject) -> None:
    path, streaming, message = data.draw(st.sampled_from(METHODS))
    raw = data.draw(st.one_of(st.sampled_from(KNOWN_BAD), st.binary(min_size=1, max_size=48)))
    assume(not parses(message, raw))
    check_refused(env, lambda: send_raw(env, path, streaming, raw), MALFORMED, f"{path} {raw!r}")
    env.completed.add("malformed")


def test_malformed_requests_are_counted_and_logged(env: FuzzEnv) -> None:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    [port] = [entry["port"] for entry in env.server.events() if entry.get("event") == "metrics"]

    def invalid_calls() -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        return {
            sample.labels["method"]: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "faceanonymixer_calls_total" and sample.labels["code"] == "INVALID_ARGUMENT"
        }

    def logged() -> int:
        return sum(entry.get("reason") == "MALFORMED_REQUEST" for entry in env.server.events())

    before, lines = invalid_calls(), logged()
    for path, streaming, _ in METHODS[:3]:
        check_refused(env, lambda p=path, s=streaming: send_raw(env, p, s, b"\xff"), MALFORMED, path)
    after = invalid_calls()
    for method in ("ProtectFace", "ProtectFaces", "CreateKey"):
        assert after.get(method, 0) - before.get(method, 0) == 1, (method, before, after)
    assert logged() - lines == 3


# ---- afterwards -----------------------------------------------------------------------------------


def test_the_server_is_healthy_after_the_fuzzing(env: FuzzEnv) -> None:
    if env.completed == FUZZ_TESTS:
        print(f"\n{env.requests} requests")
        assert env.requests >= 200
    assert health_status(env.channel) == "SERVING"
    reply = env.protection.ProtectFace(
        protection_pb2.ProtectFaceRequest(image=env.face_jpeg, key_id=env.key_a),
        metadata=ONE,
        timeout=CALL_TIMEOUT,
    )
    assert reply.image and reply.key_id == env.key_a
    events = env.server.events()
    assert not [entry for entry in events if entry.get("event") == "unexpected error"]
    assert not [entry for entry in events if entry.get("level") in ("error", "critical")]
    codes = {entry.get("code") for entry in events if entry.get("event") == "call"}
    assert not codes & {"UNKNOWN", "INTERNAL"}, codes
