"""Page sizes and opaque page tokens of ``KeyStore.list_keys``.

A token is urlsafe base64 (no padding) of JSON ``{"after": <last key id>, "filters": <check>}``,
where the check is a truncated SHA-256 of the tenant and filters it was made for, so a token is
refused with other filters (or by another tenant) instead of silently paging a different list.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json

from faceanonymixer.keystore import key_ids
from faceanonymixer.keystore.audit import canonical_json
from faceanonymixer.utils.errors import InvalidRequestError

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
_MAX_TOKEN_CHARS = 512


def page_size(requested: int) -> int:
    if isinstance(requested, bool) or not isinstance(requested, int):
        raise InvalidRequestError("page_size must be an integer", field="page_size")
    if requested < 0:
        raise InvalidRequestError(f"page_size must be 0 or more, not {requested}", field="page_size")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _filters_check(tenant: str, state: str | None, subject: str | None) -> str:
    body = canonical_json({"tenant": tenant, "state": state, "subject": subject})
    return hashlib.sha256(("faceanonymixer/v1|list-keys|" + body).encode("utf-8")).hexdigest()[:16]


def make_token(last_key_id: str, *, tenant: str, state: str | None, subject: str | None) -> str:
    body = canonical_json({"after": last_key_id, "filters": _filters_check(tenant, state, subject)})
    return base64.urlsafe_b64encode(body.encode("utf-8")).decode("ascii").rstrip("=")


def read_token(token: str, *, tenant: str, state: str | None, subject: str | None) -> str | None:
    """The key id to list after, or None for the first page (an empty token)."""
    if not isinstance(token, str):
        raise InvalidRequestError("page_token must be a string", field="page_token")
    if token == "":
        return None
    malformed = InvalidRequestError("page_token is not a token returned by ListKeys", field="page_token")
    if len(token) > _MAX_TOKEN_CHARS:
        raise malformed
    try:
        body = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise malformed from None
    if not isinstance(body, dict) or set(body) != {"after", "filters"}:
        raise malformed
    after, check = body["after"], body["filters"]
    if not isinstance(after, str) or key_ids.decode(after) is None or not isinstance(check, str):
        raise malformed
    if check != _filters_check(tenant, state, subject):
        raise InvalidRequestError(
            "page_token was made for other filters; repeat the same state and subject with it",
            field="page_token",
        )
    return after
