"""Shared fixtures. Real face photos come from ``../shared/faces`` (never copied into the repo)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

# One torch thread in every test and in the processes tests start (they inherit it), unless the
# caller set it: results then agree bit for bit with the 1-thread references the tests compute,
# and a test on a busy machine is slower, never wrong (faceanonymixer.utils.threads).
os.environ.setdefault("FACEANONYMIXER_THREADS", "1")

#: the labelled photo sets beside the repository; FACEANONYMIXER_FACES points elsewhere
FACES_ROOT = Path(
    os.environ.get("FACEANONYMIXER_FACES", Path(__file__).resolve().parents[2] / "shared" / "faces")
)
#: the sets that may be used for evaluation (lfw_train is for training only)
EVALUATION_SETS = ("orl", "yale", "deepface", "fr_examples", "lfw")


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch intra-op thread for a module of tiny steps, restored afterwards: OpenMP threads on
    a shared two-core machine only add overhead (docs/decisions/2026-12-07-threads.md)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def weights() -> None:
    """Skips where the embedded profile's committed weights are absent (a partial checkout)."""
    from committed import committed_entry

    committed_entry("digiface-dcgan-encoder", "the embedded profile's encoder")


@pytest.fixture(scope="module")
def kek_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh key-encryption key (32 random bytes) in a file, for the servers of one module."""
    path = tmp_path_factory.mktemp("kek") / "kek.bin"
    path.write_bytes(os.urandom(32))
    path.chmod(0o600)  # a KEK file other users can read is refused
    return path


@pytest.fixture(scope="session")
def faces_root() -> Path:
    if not FACES_ROOT.is_dir():
        pytest.skip(
            f"real face photos not found at {FACES_ROOT} (set FACEANONYMIXER_FACES to the shared folder)"
        )
    return FACES_ROOT


#: admin URL of the PostgreSQL server the real-database tests use (CI has one at this address)
POSTGRES_ADMIN_URL = os.environ.get(
    "FACEANONYMIXER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(scope="module")
def postgres_database() -> Iterator[sa.URL]:
    """A fresh PostgreSQL database for this module, dropped afterwards.

    Without a reachable server the tests that use it are skipped, except with CI=true, where
    that is a failure.
    """
    admin_url = sa.make_url(POSTGRES_ADMIN_URL).set(drivername="postgresql+psycopg")
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    name = f"fam_test_{secrets.token_hex(6)}"
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as error:
        admin.dispose()
        shown = admin_url.render_as_string(hide_password=True)
        reason = f"PostgreSQL at {shown} is unreachable ({str(error.orig).strip()})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; CI=true needs it")
        pytest.skip(f"{reason}; set FACEANONYMIXER_TEST_POSTGRES to an admin URL to run these tests")
    try:
        yield admin_url.set(database=name)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
