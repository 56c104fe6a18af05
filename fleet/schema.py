"""The fleet database's schema, as registered migrations over :class:`~owlgate.fleet.sql.Sql`.

A migration is a function that takes the database (inside the store's opening transaction)
and changes its schema; it is registered under a unique, never-reused name with
:func:`migration`, and applied exactly once, in name order, when a store opens
(:func:`apply`), each recorded in the ``migrations`` table. Names start with a number that
says where they belong:

- ``0001``-``0099``: the registry, ingest and keys (:mod:`owlgate.fleet.store`);
- ``0100``-``0199``: API tokens and the audit log (:mod:`owlgate.fleet.auth`,
  :mod:`owlgate.fleet.audit`);
- ``0200``-``0299``: alerts and notifications (:mod:`owlgate.fleet.alerts`,
  :mod:`owlgate.fleet.notify`);
- ``0300``-``0399``: application views, exports and retention (:mod:`owlgate.fleet.views`,
  :mod:`owlgate.fleet.export`);
- ``0400``-``0499``: broker credentials (:mod:`owlgate.fleet.brokerauth`);
- ``0500``-``0599``: configuration layers and gateway groups (:mod:`owlgate.fleet.configs`),
  rollouts, config keys and config status (:mod:`owlgate.fleet.rollouts`, from ``0510``);
- ``0600``-``0699``: device downlinks (:mod:`owlgate.fleet.downlinks`);
- ``0700``-``0799``: provisioning: claim tokens, provisioned devices, offline key bundles
  (:mod:`owlgate.fleet.provisioning`);
- ``0800``-``0899``: the facts the dashboard plots: health history, ingest per minute,
  receptions by gateway (:mod:`owlgate.fleet.store`);
- ``0900``-``0999``: dashboard login sessions (:mod:`owlgate.fleet.dashboard.sessions`).

Each module that owns tables is listed in :data:`FEATURE_MODULES` and imported by
:func:`apply`, so a store always has every table whatever the caller imported.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

from .sql import Sql

Migration = Callable[[Sql], None]
_MIGRATIONS: dict[str, Migration] = {}

#: The modules that register migrations besides the store's own.
FEATURE_MODULES: Final = (
    "owlgate.fleet.store",
    "owlgate.fleet.auth",
    "owlgate.fleet.audit",
    "owlgate.fleet.alerts",
    "owlgate.fleet.notify",
    "owlgate.fleet.views",
    "owlgate.fleet.export",
    "owlgate.fleet.brokerauth",
    "owlgate.fleet.configs",
    "owlgate.fleet.rollouts",
    "owlgate.fleet.downlinks",
    "owlgate.fleet.provisioning",
    "owlgate.fleet.dashboard.sessions",
)


def migration(name: str) -> Callable[[Migration], Migration]:
    """Register a schema migration under a unique, never-reused ``name``."""

    def register(function: Migration) -> Migration:
        if name in _MIGRATIONS and _MIGRATIONS[name] is not function:
            raise ValueError(f"migration {name!r} registered twice")
        _MIGRATIONS[name] = function
        return function

    return register


def migrations() -> list[tuple[str, Migration]]:
    """Every registered migration, in the order they apply (by name)."""
    for module in FEATURE_MODULES:
        importlib.import_module(module)
    return sorted(_MIGRATIONS.items())


def apply(sql: Sql) -> list[str]:
    """Apply, in one transaction, the migrations ``sql`` has not had yet; returns their
    names."""
    pending = migrations()
    applied: list[str] = []
    with sql.transaction() as db:
        if "migrations" not in db.table_names():
            db.execute("CREATE TABLE migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
        done = {row[0] for row in db.query_tuples("SELECT name FROM migrations")}
        for name, function in pending:
            if name in done:
                continue
            function(db)
            db.execute(
                "INSERT INTO migrations (name, applied_at) VALUES (?, ?)", [name, _now_text()]
            )
            applied.append(name)
    return applied


def applied(sql: Sql) -> list[str]:
    """Names of the migrations recorded in ``sql``, in the order they apply."""
    return sorted(row[0] for row in sql.query_tuples("SELECT name FROM migrations"))


def _now_text() -> str:
    return datetime.fromtimestamp(time.time(), UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
