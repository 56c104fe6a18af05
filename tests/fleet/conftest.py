"""Fixtures of the fleet tests: a fresh database per test, registered gateways and devices.

Every test that takes ``store`` (or ``registry``, or ``store_factory``) runs twice: on SQLite
and on PostgreSQL. The PostgreSQL server is one per test session (:class:`PostgresProcess`,
non-durable for speed); each test gets a database of its own, copied from a template that
was migrated once (``CREATE DATABASE ... TEMPLATE``), and dropped afterwards. Without the
PostgreSQL server programs the PostgreSQL runs skip locally and fail under ``CI=true``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from owlgate.fleet.store import Store
from owlgate.fleet.vault import KeyVault
from owlgate.hil.processes import PostgresProcess, find_postgres

T0 = 1_800_000_000.0
GW1 = "b827ebfffe000001"
GW2 = "b827ebfffe000002"
ABP_EUI = "70b3d57ed0000001"
OTAA_EUI = "70b3d57ed0000002"
JOIN_EUI = "70b3d57ed00000ff"
APP_KEY = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
NWK_S_KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
APP_S_KEY = bytes.fromhex("f0e0d0c0b0a090807060504030201000")
ABP_ADDR = 0x01234567


def raw_public(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@pytest.fixture
def vault(tmp_path: Path) -> KeyVault:
    """A fresh KEK, written to a 0600 file in the test's folder as ``seed`` would."""
    return KeyVault.generate_file(tmp_path / "test-kek.json", "test1")


BACKENDS = ("sqlite", "postgres")
_TEMPLATE = "owlgate_template"
_databases = itertools.count(1)


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresProcess]:
    """One PostgreSQL server for the session, with a migrated template database."""
    bin_folder = find_postgres()
    if bin_folder is None:
        message = "PostgreSQL server programs not found: install Debian package postgresql"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: a missing binary is a failure)")
        pytest.skip(message)
    server = PostgresProcess(
        bin_folder,
        tmp_path_factory.mktemp("postgres"),
        durable=False,
        settings={"max_connections": "300"},
    )
    with server:
        with psycopg.connect(server.url(), autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {_TEMPLATE}")
        Store(server.url(_TEMPLATE)).close()
        yield server


def fresh_postgres_database(server: PostgresProcess) -> str:
    """A new database, migrated (a copy of the template): its URL."""
    name = f"test_{os.getpid()}_{next(_databases)}"
    with psycopg.connect(server.url(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name} TEMPLATE {_TEMPLATE}")
    return server.url(name)


def drop_postgres_database(server: PostgresProcess, url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(server.url(), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def postgres_url(postgres_server: PostgresProcess) -> Iterator[str]:
    """The URL of a fresh, migrated PostgreSQL database, dropped after the test."""
    url = fresh_postgres_database(postgres_server)
    yield url
    drop_postgres_database(postgres_server, url)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Which database the test runs on: ``sqlite`` or ``postgres``."""
    name: str = request.param
    return name


@pytest.fixture
def store_target(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a test's store lives: a SQLite file in the test's folder, or a fresh PostgreSQL
    database. Opened again, it is the same database."""
    if backend == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return str(tmp_path / "fleet.sqlite3")


StoreFactory = Callable[..., Store]


@pytest.fixture
def store_factory(store_target: str) -> Iterator[StoreFactory]:
    """Opens stores on the test's database (``store_target``), keyword arguments as
    :class:`Store` takes them; each is closed after the test."""
    opened: list[Store] = []

    def open_store(**kwargs: Any) -> Store:
        opened.append(Store(store_target, **kwargs))
        return opened[-1]

    yield open_store
    for each in reversed(opened):
        each.close()


@pytest.fixture
def store(backend: str, vault: KeyVault, request: pytest.FixtureRequest) -> Iterator[Store]:
    """A fresh store with the test's vault: SQLite in memory, or a fresh PostgreSQL
    database."""
    target = request.getfixturevalue("postgres_url") if backend == "postgres" else ":memory:"
    with Store(target, vault=vault) as fresh:
        yield fresh


@pytest.fixture
def seal_keys() -> dict[str, X25519PrivateKey]:
    return {GW1: X25519PrivateKey.generate(), GW2: X25519PrivateKey.generate()}


@pytest.fixture
def registry(store: Store, seal_keys: dict[str, X25519PrivateKey]) -> Store:
    """Two gateways, one ABP and one OTAA device."""
    for gid, seal in seal_keys.items():
        store.create_gateway(
            gid,
            name=f"gw {gid[-1]}",
            sign_public_key=raw_public(Ed25519PrivateKey.generate()),
            seal_public_key=raw_public(seal),
            created=T0,
        )
    store.create_device(
        ABP_EUI,
        profile_id="parking-v1",
        activation="abp",
        created=T0,
        dev_addr=ABP_ADDR,
        nwk_s_key=NWK_S_KEY,
        app_s_key=APP_S_KEY,
    )
    store.create_device(
        OTAA_EUI,
        profile_id="waste-bin-v1",
        activation="otaa",
        created=T0,
        join_eui=JOIN_EUI,
        app_key=APP_KEY,
    )
    return store


@pytest.fixture
def keys() -> dict[str, Ed25519PrivateKey]:
    """The signing keys of two gateways, GW1 and GW2, for tests that sign as gateways."""
    return {GW1: Ed25519PrivateKey.generate(), GW2: Ed25519PrivateKey.generate()}


@pytest.fixture
def fleet(store: Store, keys: dict[str, Ed25519PrivateKey]) -> Store:
    """GW1 and GW2 registered with ``keys``, and one ABP device (ABP_EUI)."""
    for gid, key in keys.items():
        store.create_gateway(
            gid,
            name=gid,
            sign_public_key=raw_public(key),
            seal_public_key=raw_public(X25519PrivateKey.generate()),
            created=T0,
        )
    store.create_device(
        ABP_EUI,
        profile_id="parking-v1",
        activation="abp",
        created=T0,
        dev_addr=0x26000001,
        nwk_s_key=bytes(16),
        app_s_key=bytes(16),
    )
    return store
