"""``owlgate fleet``: run the fleet manager (``serve``), fill a database for a demo (``seed``),
and re-wrap the device keys under a new key-encryption key (``rotate-kek``).

Every command that opens the store opens it with a key vault (:mod:`owlgate.fleet.vault`):
the KEK comes from ``--kek-env NAME`` or ``--kek-file PATH`` (default
``gateway-keys/fleet-kek.json`` beside the database, which ``seed`` creates when missing).

``serve`` runs the HTTP API under uvicorn. Background services (the MQTT ingest, and the
control service that answers joins and hands out device sessions) are added as lifespan
hooks: async context managers entered when the server starts and left when it stops, so
every task they own is awaited or cancelled on shutdown (see :func:`build_server`).
"""

from __future__ import annotations

import json
import math
import os
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from fastapi import FastAPI

from owlgate.codecs.errors import OwlgateError
from owlgate.codecs.payloads import PROFILES

from .alerts import AlertConfig, AlertConfigError, alert_service_factory
from .alerts import load_config as load_alert_config
from .api import StatsSource, create_app, register_stats
from .broker import BrokerError, EmbeddedBroker, parse_broker_url
from .brokerauth import (
    FLEET_ACCOUNT,
    PolicyHolder,
    ephemeral_fleet_account,
    load_policy,
    reload_mosquitto,
    write_mosquitto_files,
)
from .cli_common import DbOption, cli_actor, shown_db
from .cli_common import fail as _fail
from .control import ControlService, control_service
from .downlinks import downlink_service
from .export import DEFAULT_RETENTION_INTERVAL_S, RetentionPolicy, retention_service
from .geo import DEFAULT_CENTRE, MAX_OFFSET_M, LatLon, parse_centre, to_lat_lon
from .ingest import DEFAULT_VERIFY_WORKERS, ingest_service
from .joinserver import dev_addr_prefix
from .mqtt import InstanceNameError, check_instance, default_instance
from .provisioning import ProvisioningSettings
from .provisioning import configure as configure_provisioning
from .rollouts import config_service
from .sql import is_postgres_url
from .store import FleetError, Store
from .vault import KeyVault, VaultError
from .views import make_gateway_site, make_site, set_gateway_site, set_site

DEFAULT_DB = "owlgate-fleet.sqlite3"
#: File names of a seeded gateway's private keys under ``KEYS_DIR/<gateway_id>/``.
IDENTITY_KEY_FILE = "identity-ed25519.pem"
SEALING_KEY_FILE = "sealing-x25519.pem"
#: The fleet's Ed25519 signing key (private), directly under ``KEYS_DIR``.
FLEET_SIGNING_KEY_FILE = "fleet-signing-ed25519.pem"
#: The fleet's public signing key, the one a gateway pins, under ``KEYS_DIR/<gateway_id>/``.
FLEET_PUBLIC_KEY_FILE = "fleet-ed25519.pub.pem"
DEFAULT_KEYS_DIR = "gateway-keys"
MANIFEST_FILE = "emulator-secrets.json"
#: The fleet's key-encryption key, under ``KEYS_DIR`` beside the database.
KEK_FILE = "fleet-kek.json"
#: The admin API token ``seed`` writes beside the database, for the demo.
ADMIN_TOKEN_FILE = "admin-token"
#: How far from ``--centre`` seeded sites lie by default (metres).
DEFAULT_SITE_RADIUS_M = 1500.0
#: A seeded zone's centre lies within this share of the radius from the centre, and its
#: devices within the rest around it, so that every site is inside the radius.
_ZONE_CENTRE_SHARE = 0.6
#: A seeded gateway stands this close to its zone's centre (share of the radius).
_GATEWAY_SHARE = 0.05

#: A background service: given the store, an async context manager that runs while serving.
Service = Callable[[Store], AbstractAsyncContextManager[object]]

fleet_command = typer.Typer(
    name="fleet",
    help="The fleet manager: serve the API, seed a demo database, rotate the KEK.",
    no_args_is_help=True,
    add_completion=False,
)


def db_folder(db: str | Path) -> Path:
    """The "DB folder" the defaults of the key files are relative to: the SQLite file's
    folder, or the current directory for a ``postgresql://`` URL."""
    return Path.cwd() if is_postgres_url(db) else Path(db).parent


def default_kek_file(db: str | Path) -> Path:
    """Where the KEK is looked for (and ``seed`` creates it) when no option names one."""
    return db_folder(db) / DEFAULT_KEYS_DIR / KEK_FILE


def fresh_kek_id() -> str:
    """An id for a new KEK: ``k``, the UTC time to the second and four random hex digits (two
    KEKs made in the same second still differ), e.g. ``k20261201T204600Z-3fa9``."""
    return "k" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(2)


KekFileOption = Annotated[
    Path | None,
    typer.Option(
        "--kek-file",
        metavar="FILE",
        help=f"the key-encryption key the device keys are wrapped under, JSON, mode 0600 "
        f"[DB folder/{DEFAULT_KEYS_DIR}/{KEK_FILE}]",
    ),
]
KekEnvOption = Annotated[
    str | None,
    typer.Option(
        "--kek-env",
        metavar="NAME",
        help="read the key-encryption key from this environment variable (ID:HEX) instead "
        "of a file",
    ),
]


def load_vault(
    db: str | Path, kek_file: Path | None, kek_env: str | None, *, create: bool = False
) -> KeyVault:
    """The vault for ``db``: from ``kek_env`` if given, else from ``kek_file`` (default
    :func:`default_kek_file`), created with a new KEK when missing and ``create``. A one-line
    error and exit 2 when the KEK cannot be loaded."""
    if kek_env is not None:
        if kek_file is not None:
            _fail("give --kek-file or --kek-env, not both")
        try:
            return KeyVault.from_env(kek_env)
        except VaultError as err:
            _fail(f"--kek-env: {err.message}")
    path = kek_file or default_kek_file(db)
    try:
        if create and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            return KeyVault.generate_file(path, fresh_kek_id())
        return KeyVault.from_file(path)
    except VaultError as err:
        hint = "" if path.exists() else " (`owlgate fleet seed` creates one)"
        _fail(f"--kek-file: {err.message}{hint}")
    except OSError as err:
        _fail(f"--kek-file {path}: {err.strerror or err}")


def _check_db_folder(db: str) -> None:
    if db != ":memory:" and not is_postgres_url(db) and not Path(db).parent.is_dir():
        _fail(f"--db {db}: folder {Path(db).parent} does not exist")


def _open_store(db: str | Path, vault: KeyVault | None) -> Store:
    """The store at ``db`` (a SQLite file or a ``postgresql://`` URL), migrated; a one-line
    error and exit 2 when it cannot be opened."""
    _check_db_folder(str(db))
    try:
        return Store(db if is_postgres_url(db) else Path(db), vault=vault)
    except (OwlgateError, OSError) as err:
        _fail(f"--db {shown_db(db)}: {err}")


def build_server(
    store: Store,
    *,
    host: str,
    port: int,
    services: Sequence[Service] = (),
    alerts: AlertConfig | None = None,
    on_broker_change: Callable[[], None] | None = None,
    provisioning: ProvisioningSettings | None = None,
) -> uvicorn.Server:
    """The uvicorn server for :func:`owlgate.fleet.api.create_app` over ``store``, entering
    each of ``services`` at startup and leaving them, in reverse order, at shutdown. A service
    that counts what it does (:class:`~owlgate.fleet.api.StatsSource`) shows its counters in
    ``GET /api/v1/stats`` and ``/metrics`` (the control service's join server too).
    ``alerts`` and ``on_broker_change`` go to :func:`~owlgate.fleet.api.create_app`;
    ``provisioning`` is what claimed gateways are handed (:mod:`owlgate.fleet.provisioning`)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            for service in services:
                running = await stack.enter_async_context(service(store))
                if isinstance(running, StatsSource):
                    register_stats(app, running)
                if isinstance(running, ControlService):
                    register_stats(app, running.control.join_server)
            yield

    app = create_app(store, lifespan=lifespan, alerts=alerts, on_broker_change=on_broker_change)
    if provisioning is not None:
        configure_provisioning(app, provisioning)
    config = uvicorn.Config(app, host=host, port=port, log_level="info", lifespan="on")
    return uvicorn.Server(config)


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """The fleet's Ed25519 signing key from a PEM file (PKCS#8, unencrypted); a one-line
    error and exit 2 when it is missing, unreadable or not an Ed25519 private key."""
    try:
        data = path.read_bytes()
    except OSError as err:
        _fail(f"--signing-key {path}: {err.strerror or err}")
    try:
        key = serialization.load_pem_private_key(data, None)
    except (ValueError, TypeError) as err:
        # Only the kind of failure is shown: a parser's message could quote the file's bytes.
        _fail(f"--signing-key {path}: not an unencrypted PEM private key ({type(err).__name__})")
    if not isinstance(key, Ed25519PrivateKey):
        _fail(f"--signing-key {path}: not an Ed25519 key ({type(key).__name__})")
    return key


@dataclass(frozen=True, slots=True)
class BrokerLogin:
    """How the fleet's own MQTT clients log in: anonymously (no ``username``), or with the
    fleet's broker account (:mod:`owlgate.fleet.brokerauth`)."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)


def broker_services(
    broker: str | None,
    signing_key: Ed25519PrivateKey,
    *,
    instance: str | None = None,
    verify_workers: int = DEFAULT_VERIFY_WORKERS,
    shared: bool = False,
    policy: PolicyHolder | None = None,
    login: BrokerLogin | None = None,
) -> tuple[list[Service], str]:
    """The services that give the fleet its MQTT side, and the broker URL gateways use.

    Without ``broker``: an embedded broker on a free loopback port, enforcing ``policy``
    (the broker credentials and ACL) when given, then the ingest and the control service
    (joins, device sessions) and the downlink service (device settings), what they send
    signed with ``signing_key``, on it. With ``mqtt://host:port``: the same on that broker
    (Mosquitto or any other). All connect under persistent sessions named after ``instance``
    (default: the host name; see :func:`owlgate.fleet.mqtt.client_id`), through MQTT 5 shared
    subscriptions when ``shared``, logged in as ``login`` says."""
    login = login or BrokerLogin()
    embedded = None
    if broker is None:
        embedded = EmbeddedBroker(policy=policy)
        host, port = embedded.host, embedded.port
    else:
        try:
            host, port = parse_broker_url(broker)
        except BrokerError as err:
            _fail(f"--broker: {err.message}")
    services: list[Service] = []
    if embedded is not None:
        running = embedded

        def start_broker(store: Store) -> AbstractAsyncContextManager[object]:
            return running

        services.append(start_broker)
    # The embedded broker (amqtt) speaks MQTT 3.1.1 only, and never answers an MQTT 5 CONNECT
    # that carries a user name: no probe for MQTT 5 there.
    mqtt5 = embedded is None
    services.append(
        ingest_service(
            host,
            port,
            mqtt5=mqtt5,
            instance=instance,
            verify_workers=verify_workers,
            shared=shared,
            username=login.username,
            password=login.password,
        )
    )
    services.append(
        control_service(
            host,
            port,
            signing_key,
            mqtt5=mqtt5,
            instance=instance,
            shared=shared,
            username=login.username,
            password=login.password,
        )
    )
    services.append(
        downlink_service(
            host,
            port,
            signing_key,
            mqtt5=mqtt5,
            instance=instance,
            username=login.username,
            password=login.password,
        )
    )
    # Configuration rollouts and the gateways' config status reports.
    services.append(
        config_service(
            host,
            port,
            signing_key,
            mqtt5=mqtt5,
            instance=instance,
            username=login.username,
            password=login.password,
        )
    )
    return services, f"mqtt://{host}:{port}"


def read_secret_file(path: Path, option: str) -> str:
    """The one line of a secret file (a password), refused with a one-line error and exit 2
    when it cannot be read, is empty or longer than a line, or others may read it."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        _fail(f"{option} {path}: {getattr(err, 'strerror', None) or err}")
    if mode & 0o077:
        _fail(f"{option} {path}: others may read it (mode {mode & 0o777:o}): chmod 600 {path}")
    lines = text.splitlines()
    if len(lines) != 1 or not lines[0]:
        _fail(f"{option} {path}: it must hold the password on one line")
    return lines[0]


def broker_change_hook(
    store: Store, policy: PolicyHolder | None, files: Path | None, pid: int | None
) -> Callable[[], None] | None:
    """What runs after broker credentials change through the API: the embedded broker's
    ``policy`` is reloaded from the database; for Mosquitto the password and ACL files are
    written again into ``files`` and the broker ``pid`` told to reload (SIGHUP)."""
    if policy is not None:
        holder = policy

        def reload_embedded() -> None:
            holder.reload(store.sql)

        return reload_embedded
    if files is None:
        return None
    folder = files

    def rewrite() -> None:
        write_mosquitto_files(load_policy(store.sql), folder)
        if pid is not None:
            reload_mosquitto(pid)

    return rewrite


@fleet_command.command("serve")
def serve(
    db: DbOption = DEFAULT_DB,
    host: Annotated[str, typer.Option("--host", help="address to listen on")] = "127.0.0.1",
    http_port: Annotated[
        int, typer.Option("--http-port", help="HTTP port (0: any free port)")
    ] = 8080,
    broker: Annotated[
        str | None,
        typer.Option(
            "--broker",
            metavar="mqtt://HOST:PORT",
            help="MQTT broker to ingest from (default: an embedded broker on a free port)",
        ),
    ] = None,
    signing_key: Annotated[
        Path | None,
        typer.Option(
            "--signing-key",
            metavar="FILE",
            help=f"the fleet's Ed25519 signing key, PEM [DB folder/{DEFAULT_KEYS_DIR}/"
            f"{FLEET_SIGNING_KEY_FILE}]",
        ),
    ] = None,
    verify_workers: Annotated[
        int,
        typer.Option(
            "--verify-workers",
            metavar="N",
            help="processes that verify and decode telemetry while the ingest stores "
            "(0: in the fleet process, taking turns with storing)",
        ),
    ] = DEFAULT_VERIFY_WORKERS,
    instance: Annotated[
        str | None,
        typer.Option(
            "--instance",
            metavar="NAME",
            help="this fleet process's name on the broker: its MQTT sessions are kept under "
            "it; every fleet process sharing a broker needs its own [the host name]",
        ),
    ] = None,
    shared_subscriptions: Annotated[
        bool,
        typer.Option(
            "--shared-subscriptions",
            help="subscribe through MQTT 5 shared subscriptions, so several fleet processes "
            "split the gateways' messages; needs a broker that keeps shared subscriptions "
            "over its restarts (Mosquitto 2.0 does not: see docs/fleet.md)",
        ),
    ] = False,
    mqtt_username: Annotated[
        str,
        typer.Option(
            "--mqtt-username", help="the fleet's broker account, with --mqtt-password-file"
        ),
    ] = FLEET_ACCOUNT,
    mqtt_password_file: Annotated[
        Path | None,
        typer.Option(
            "--mqtt-password-file",
            metavar="FILE",
            help="log in to --broker with this password (one line, mode 0600): the fleet "
            "account's, from `owlgate fleet broker fleet-account`",
        ),
    ] = None,
    broker_files: Annotated[
        Path | None,
        typer.Option(
            "--broker-files",
            metavar="DIR",
            help="keep Mosquitto's password and ACL files in DIR up to date (written at "
            "start and whenever credentials change through the API)",
        ),
    ] = None,
    broker_pid: Annotated[
        int | None,
        typer.Option(
            "--broker-pid",
            metavar="PID",
            help="with --broker-files: send this Mosquitto SIGHUP after writing them",
        ),
    ] = None,
    alerts_config: Annotated[
        Path | None,
        typer.Option(
            "--alerts-config",
            metavar="FILE",
            help="alert rules and notification channels, TOML (docs/fleet-alerts.md) "
            "[the default rules, no notifications]",
        ),
    ] = None,
    retention_raw_days: Annotated[
        float | None,
        typer.Option(
            "--retention-raw-days",
            metavar="N",
            help="roll readings older than N days up into hourly aggregates [off]",
        ),
    ] = None,
    retention_rollup_days: Annotated[
        float | None,
        typer.Option(
            "--retention-rollup-days",
            metavar="M",
            help="with --retention-raw-days: delete rollups older than M days [kept]",
        ),
    ] = None,
    retention_interval_s: Annotated[
        float,
        typer.Option("--retention-interval-s", metavar="S", help="run the retention job every S"),
    ] = DEFAULT_RETENTION_INTERVAL_S,
    public_mqtt_url: Annotated[
        str | None,
        typer.Option(
            "--public-mqtt-url",
            metavar="mqtt://HOST:PORT",
            help="the broker URL claimed gateways are told to connect to [the broker URL "
            "printed at start]",
        ),
    ] = None,
    kek_file: KekFileOption = None,
    kek_env: KekEnvOption = None,
) -> None:
    """Run the fleet manager: the HTTP API (OpenAPI at /openapi.json), the MQTT ingest,
    joins and device sessions over MQTT, alerts, and retention when asked."""
    if not 0 <= http_port <= 65535:
        _fail(f"--http-port must be 0 .. 65535, got {http_port}")
    if not 0 <= verify_workers <= 64:
        _fail(f"--verify-workers must be 0 .. 64, got {verify_workers}")
    try:
        instance = check_instance(default_instance() if instance is None else instance)
    except InstanceNameError as err:
        _fail(f"--instance: {err.message}")
    _check_db_folder(db)
    if broker is None and (mqtt_password_file or broker_files or broker_pid):
        _fail("--mqtt-password-file, --broker-files and --broker-pid go with --broker")
    if broker_pid is not None and broker_files is None:
        _fail("--broker-pid needs --broker-files")
    if retention_rollup_days is not None and retention_raw_days is None:
        _fail("--retention-rollup-days needs --retention-raw-days")
    if public_mqtt_url is not None:
        try:
            parse_broker_url(public_mqtt_url)
        except BrokerError as err:
            _fail(f"--public-mqtt-url: {err.message}")
    try:
        alert_rules = load_alert_config(alerts_config)
        retention = (
            None
            if retention_raw_days is None
            else retention_service(
                RetentionPolicy(raw_days=retention_raw_days, rollup_days=retention_rollup_days),
                interval_s=retention_interval_s,
            )
        )
    except (AlertConfigError, FleetError) as err:
        _fail(err.message)
    key = load_signing_key(signing_key or db_folder(db) / DEFAULT_KEYS_DIR / FLEET_SIGNING_KEY_FILE)
    vault = load_vault(db, kek_file, kek_env)
    login = BrokerLogin()
    if mqtt_password_file is not None:
        login = BrokerLogin(
            mqtt_username, read_secret_file(mqtt_password_file, "--mqtt-password-file")
        )
    store = _open_store(db, vault)
    policy = None
    if broker is None:
        # The embedded broker enforces the credentials issued in the database (none: open,
        # the demo default); this process's own services log in with an account that
        # exists only in its memory.
        account, password = ephemeral_fleet_account()
        policy = PolicyHolder(load_policy(store.sql), extra_accounts=[account])
        login = BrokerLogin(account.username, password)
    elif broker_files is not None:
        try:
            written = write_mosquitto_files(load_policy(store.sql), broker_files)
            if broker_pid is not None:
                reload_mosquitto(broker_pid)
        except (OwlgateError, OSError) as err:
            store.close()
            _fail(f"--broker-files {broker_files}: {err}")
        typer.echo(f"Mosquitto files: {written.password_file}, {written.acl_file}")
    services, url = broker_services(
        broker,
        key,
        instance=instance,
        verify_workers=verify_workers,
        shared=shared_subscriptions,
        policy=policy,
        login=login,
    )
    services.append(alert_service_factory(alert_rules))
    if retention is not None:
        services.append(retention)
    typer.echo(f"MQTT broker: {url}" + (" (embedded)" if broker is None else ""))
    typer.echo(f"fleet instance: {instance}")
    typer.echo(
        "every API route needs a bearer token: "
        "owlgate fleet token create --db DB --role ROLE --name NAME"
    )
    try:
        build_server(
            store,
            host=host,
            port=http_port,
            services=services,
            alerts=alert_rules,
            on_broker_change=broker_change_hook(store, policy, broker_files, broker_pid),
            provisioning=ProvisioningSettings(mqtt_url=public_mqtt_url or url, signing_key=key),
        ).run()
    finally:
        store.close()


@dataclass(frozen=True, slots=True)
class SeedResult:
    """What :func:`seed_fleet` registered: gateways and devices as written to the manifest."""

    gateways: list[dict[str, Any]]
    devices: list[dict[str, Any]]
    #: The fleet's private signing key file.
    signing_key: str


@dataclass(frozen=True, slots=True)
class SiteArea:
    """Where :func:`seed_fleet` puts the sites: within ``radius_m`` of ``centre``."""

    centre: LatLon = DEFAULT_CENTRE
    radius_m: float = DEFAULT_SITE_RADIUS_M

    def __post_init__(self) -> None:
        if not 0 < self.radius_m <= MAX_OFFSET_M:
            raise FleetError(
                f"the site radius must be more than 0 and at most {MAX_OFFSET_M:g} m, "
                f"got {self.radius_m:g}"
            )


def _in_disc(rng: random.Random, radius_m: float) -> tuple[float, float]:
    # Uniform over the disc's area: the square root keeps the centre from crowding.
    distance = radius_m * (rng.random() ** 0.5)
    bearing = rng.uniform(0.0, 2 * math.pi)
    return distance * math.sin(bearing), distance * math.cos(bearing)


def seed_sites(
    store: Store,
    area: SiteArea,
    gateway_ids: Sequence[str],
    dev_euis: Sequence[str],
    *,
    seed: int | None,
    now: float,
) -> None:
    """Give each gateway and device a site in ``area``, in one transaction: one zone per
    gateway (``zone-1``, ``zone-2`` ..., one ``zone-1`` when there is no gateway) with its
    centre drawn in the area and the gateway beside it; the devices take the zones in turn and
    stand around their zone's centre. With ``seed`` the same positions again."""
    rng = random.Random(f"{seed}:sites") if seed is not None else random.Random()
    zones = max(len(gateway_ids), 1 if dev_euis else 0)
    centres = [_in_disc(rng, area.radius_m * _ZONE_CENTRE_SHARE) for _ in range(zones)]
    spread_m = area.radius_m * (1 - _ZONE_CENTRE_SHARE)

    def near(zone: int, radius_m: float) -> LatLon:
        east, north = _in_disc(rng, radius_m)
        return to_lat_lon(area.centre, centres[zone][0] + east, centres[zone][1] + north)

    with store.transaction() as db:
        for index, gid in enumerate(gateway_ids):
            where = near(index, area.radius_m * _GATEWAY_SHARE)
            site = make_gateway_site(
                gid,
                zone=f"zone-{index + 1}",
                lat=where.lat,
                lon=where.lon,
                label=f"mast {index + 1}",
            )
            set_gateway_site(db, site, at=now)
        for index, eui in enumerate(dev_euis):
            zone = index % zones
            where = near(zone, spread_m)
            set_site(
                db, make_site(eui, zone=f"zone-{zone + 1}", lat=where.lat, lon=where.lon), at=now
            )


def _write_private(path: Path, data: bytes) -> None:
    # Created 0600 from the start: a key must never exist world-readable, even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


def _pem(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _public_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _existing_signing_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), None)
    except (ValueError, TypeError) as err:
        raise FleetError(f"{path} exists but is not an unencrypted PEM private key") from err
    if not isinstance(key, Ed25519PrivateKey):
        raise FleetError(f"{path} exists but is not an Ed25519 private key")
    return key


def seed_fleet(
    store: Store,
    *,
    gateways: int,
    nodes: int,
    keys_dir: Path,
    seed: int | None,
    now: float,
    profiles: Sequence[str] | None = None,
    otaa_every: int = 2,
    sites: SiteArea | None = None,
) -> SeedResult:
    """Register ``gateways`` gateways (private keys written to ``keys_dir``) and ``nodes``
    devices over the built-in profiles, and make the fleet's signing key
    (``keys_dir/fleet-signing-ed25519.pem``; its public key beside each gateway's keys, for
    the gateway to pin). With ``seed``, ids and keys are reproducible (for demos only: seeded
    keys are not secret).

    ``profiles``: the profile of each device in order (then ``nodes`` is ignored); otherwise
    the built-in profiles take turns. Every ``otaa_every``-th device is OTAA (the second,
    fourth, ... with 2), the others ABP; 0: all ABP. With ``sites``, every gateway and device
    gets a site in that area (:func:`seed_sites`)."""
    if otaa_every < 0:
        raise FleetError(f"otaa_every must be 0 or more, got {otaa_every}")
    rng = random.Random(seed)

    def draw(n: int) -> bytes:
        return rng.randbytes(n) if seed is not None else secrets.token_bytes(n)

    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fleet_key = Ed25519PrivateKey.from_private_bytes(draw(32))
    fleet_key_path = keys_dir / FLEET_SIGNING_KEY_FILE
    if fleet_key_path.exists():
        # Seeding more gateways into the same keys folder keeps the fleet's key: the gateways
        # seeded before have pinned it.
        fleet_key = _existing_signing_key(fleet_key_path)
    else:
        _write_private(fleet_key_path, _pem(fleet_key))
    fleet_public = _public_pem(fleet_key)
    seeded = SeedResult([], [], str(fleet_key_path))
    for index in range(gateways):
        gid = draw(8).hex()
        identity = Ed25519PrivateKey.from_private_bytes(draw(32))
        sealing = X25519PrivateKey.from_private_bytes(draw(32))
        folder = keys_dir / gid
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_private(folder / IDENTITY_KEY_FILE, _pem(identity))
        _write_private(folder / SEALING_KEY_FILE, _pem(sealing))
        # Public: the gateway verifies what the fleet signs against it (its pinned key).
        (folder / FLEET_PUBLIC_KEY_FILE).write_bytes(fleet_public)
        raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
        store.create_gateway(
            gid,
            name=f"gateway-{index + 1}",
            sign_public_key=identity.public_key().public_bytes(*raw),
            seal_public_key=sealing.public_key().public_bytes(*raw),
            created=now,
        )
        seeded.gateways.append(
            {
                "id": gid,
                "keys_dir": str(folder),
                "fleet_public_key": str(folder / FLEET_PUBLIC_KEY_FILE),
            }
        )
    profile_ids = sorted(PROFILES)
    if profiles is None:
        profiles = [profile_ids[index % len(profile_ids)] for index in range(nodes)]
    unknown = sorted(set(profiles) - set(PROFILES))
    if unknown:
        raise FleetError(
            f"unknown device profile {', '.join(unknown)}; known: {', '.join(profile_ids)}"
        )
    join_eui = draw(8).hex()
    prefix, bits = dev_addr_prefix(0)
    used: set[int] = set()
    for index, profile_id in enumerate(profiles):
        dev_eui = draw(8).hex()
        entry: dict[str, Any] = {"dev_eui": dev_eui, "profile_id": profile_id}
        if otaa_every == 0 or (index + 1) % otaa_every != 0:
            dev_addr = prefix | (1 + rng.randrange((1 << bits) - 1))
            while dev_addr in used or store.dev_addr_in_use(dev_addr):
                dev_addr = prefix | (1 + rng.randrange((1 << bits) - 1))
            used.add(dev_addr)
            nwk_s_key, app_s_key = draw(16), draw(16)
            store.create_device(
                dev_eui,
                profile_id=profile_id,
                activation="abp",
                created=now,
                name=f"node-{index + 1}",
                dev_addr=dev_addr,
                nwk_s_key=nwk_s_key,
                app_s_key=app_s_key,
            )
            entry |= {
                "activation": "abp",
                "dev_addr": f"{dev_addr:08x}",
                "nwk_s_key": nwk_s_key.hex(),
                "app_s_key": app_s_key.hex(),
            }
        else:
            app_key = draw(16)
            store.create_device(
                dev_eui,
                profile_id=profile_id,
                activation="otaa",
                created=now,
                name=f"node-{index + 1}",
                join_eui=join_eui,
                app_key=app_key,
            )
            entry |= {"activation": "otaa", "join_eui": join_eui, "app_key": app_key.hex()}
        seeded.devices.append(entry)
    if sites is not None:
        seed_sites(
            store,
            sites,
            [gateway["id"] for gateway in seeded.gateways],
            [device["dev_eui"] for device in seeded.devices],
            seed=seed,
            now=now,
        )
    return seeded


def _profile_counts(text: str) -> list[str]:
    """``parking-v1=40,waste-bin-v1=10`` -> forty ``parking-v1`` then ten ``waste-bin-v1``."""
    out: list[str] = []
    for part in text.split(","):
        name, equals, count = part.strip().partition("=")
        if not equals or not count.strip().isdigit():
            _fail(f"--profiles: {part.strip()!r} is not PROFILE=COUNT (e.g. parking-v1=40)")
        if name.strip() not in PROFILES:
            _fail(
                f"--profiles: unknown device profile {name.strip()!r}; known: "
                f"{', '.join(sorted(PROFILES))}"
            )
        out.extend([name.strip()] * int(count))
    return out


@fleet_command.command("seed")
def seed(
    db: Annotated[
        str,
        typer.Option(
            "--db",
            metavar="FILE|URL",
            help="the fleet database: a SQLite file (created if new), or a postgresql:// URL",
        ),
    ],
    gateways: Annotated[int, typer.Option("--gateways", help="gateways to register")] = 1,
    nodes: Annotated[int, typer.Option("--nodes", help="devices to register")] = 4,
    keys_dir: Annotated[
        Path | None,
        typer.Option(
            "--keys-dir",
            help=f"where the fleet's and gateways' keys go [DB folder/{DEFAULT_KEYS_DIR}]",
        ),
    ] = None,
    manifest: Annotated[
        Path | None,
        typer.Option("--manifest", help=f"emulator secrets file [DB folder/{MANIFEST_FILE}]"),
    ] = None,
    seed_value: Annotated[
        int | None, typer.Option("--seed", help="reproducible ids and keys (demo only)")
    ] = None,
    profiles: Annotated[
        str | None,
        typer.Option(
            "--profiles",
            metavar="PROFILE=COUNT,...",
            help="devices per profile, in this order (instead of --nodes over every profile)",
        ),
    ] = None,
    otaa_every: Annotated[
        int, typer.Option("--otaa-every", help="every N-th device is OTAA, the rest ABP; 0: none")
    ] = 2,
    centre: Annotated[
        str,
        typer.Option(
            "--centre", metavar="LAT,LON", help="the middle of the seeded sites (WGS 84 degrees)"
        ),
    ] = f"{DEFAULT_CENTRE.lat},{DEFAULT_CENTRE.lon}",
    radius_m: Annotated[
        float,
        typer.Option("--radius-m", help="every seeded site lies within this many metres"),
    ] = DEFAULT_SITE_RADIUS_M,
    no_sites: Annotated[
        bool, typer.Option("--no-sites", help="give the gateways and devices no site")
    ] = False,
    kek_file: KekFileOption = None,
    kek_env: KekEnvOption = None,
) -> None:
    """Fill a fleet database for a demo: gateways with fresh keys, devices over every profile,
    each with a site (zone and position) around ``--centre``."""
    if gateways < 0 or nodes < 0:
        _fail("--gateways and --nodes must not be negative")
    if otaa_every < 0:
        _fail(f"--otaa-every must be 0 or more, got {otaa_every}")
    area: SiteArea | None = None
    if not no_sites:
        try:
            area = SiteArea(parse_centre(centre), radius_m)
        except FleetError as err:
            _fail(f"--centre {centre} --radius-m {radius_m:g}: {err.message}")
    node_profiles = None if profiles is None else _profile_counts(profiles)
    keys_dir = keys_dir or db_folder(db) / DEFAULT_KEYS_DIR
    manifest = manifest or db_folder(db) / MANIFEST_FILE
    if not manifest.parent.is_dir():
        _fail(f"--manifest {manifest}: folder {manifest.parent} does not exist")
    _check_db_folder(db)
    exists = is_postgres_url(db) or Path(db).exists()
    if kek_env is None and exists and not (kek_file or default_kek_file(db)).exists():
        # A new KEK for a database whose keys are wrapped under another would only leave a
        # useless KEK file behind: say which one it needs instead.
        with _open_store(db, None) as existing:
            needed = existing.kek_ids_in_use()
        if needed:
            _fail(
                f"--db {shown_db(db)}: its keys are wrapped under KEK "
                f"{', '.join(sorted(needed))}; give that KEK with --kek-file or --kek-env"
            )
    store = _open_store(db, load_vault(db, kek_file, kek_env, create=True))
    try:
        seeded = seed_fleet(
            store,
            gateways=gateways,
            nodes=nodes,
            keys_dir=keys_dir,
            seed=seed_value,
            now=time.time(),
            profiles=node_profiles,
            otaa_every=otaa_every,
            sites=area,
        )
        # An admin API token for the demo (every route needs one) beside the emulator
        # secrets, kept when seeding again.
        token_file = manifest.parent / ADMIN_TOKEN_FILE
        if not token_file.exists():
            from .cli_auth import write_admin_token

            write_admin_token(store, token_file)
    except OwlgateError as err:
        _fail(str(err))
    except OSError as err:
        _fail(f"--keys-dir {keys_dir}: {err.strerror}")
    finally:
        store.close()
    document = {
        "warning": "EMULATOR SECRETS: device keys for emulated devices; never use in production",
        "db": shown_db(db),
        "fleet_signing_key": seeded.signing_key,
        "gateways": seeded.gateways,
        "devices": seeded.devices,
    }
    _write_private(manifest, (json.dumps(document, indent=2) + "\n").encode())
    abp = sum(1 for device in seeded.devices if device["activation"] == "abp")
    typer.echo(
        f"seeded {shown_db(db)}: {len(seeded.gateways)} gateways (private keys under "
        f"{keys_dir}, the fleet's signing key in {seeded.signing_key}), "
        f"{len(seeded.devices)} devices ({abp} ABP, {len(seeded.devices) - abp} OTAA) over "
        f"profiles {', '.join(sorted(PROFILES))}; emulator secrets in {manifest} (mode 0600); "
        f"an admin API token in {token_file} (mode 0600)"
        + (
            ""
            if area is None
            else f"; sites within {area.radius_m:g} m of {area.centre.lat:g},{area.centre.lon:g}"
        )
    )


@fleet_command.command("rotate-kek")
def rotate_kek(
    db: DbOption,
    new_kek_file: Annotated[
        Path,
        typer.Option(
            "--new-kek-file",
            metavar="FILE",
            help="the new key-encryption key (created, mode 0600, when it does not exist)",
        ),
    ],
    new_kek_id: Annotated[
        str | None,
        typer.Option(
            "--new-kek-id",
            metavar="ID",
            help="the id of the new KEK when it is created [k and the UTC time]",
        ),
    ] = None,
    kek_file: KekFileOption = None,
    kek_env: KekEnvOption = None,
) -> None:
    """Re-wrap every secret under a new key-encryption key, in one transaction: device keys,
    the AppKeys reserved for offline bundles, and config signing keys."""
    if not is_postgres_url(db) and not Path(db).is_file():
        _fail(f"--db {db}: no such database file")
    old = load_vault(db, kek_file, kek_env)
    # Opening checks the old KEK against what is stored (RFC 3394 integrity check), so a
    # wrong old KEK is refused here, before the new one is made or anything is written.
    store = _open_store(db, old)
    try:
        try:
            if new_kek_file.exists():
                new = KeyVault.from_file(new_kek_file)
            else:
                new = KeyVault.generate_file(new_kek_file, new_kek_id or fresh_kek_id())
        except VaultError as err:
            _fail(f"--new-kek-file: {err.message}")
        if new.key_id in old.key_ids:
            _fail(
                f"--new-kek-file: KEK id {new.key_id!r} is already the old KEK's; a new KEK "
                "needs an id of its own"
            )
        try:
            counts = store.rewrap_keys(new.with_older([old]))
            # After the rewrap's own transaction: it ends with a WAL checkpoint, which SQLite
            # cannot run inside one.
            from .audit import record_event

            record_event(
                store.sql,
                actor=cli_actor(),
                action="keys.rewrapped",
                target=f"kek-id:{new.key_id}",
                details={
                    "rewrapped": sum(counts.values()),
                    "by_kind": counts,
                    "previous_kek_id": old.key_id,
                },
            )
        except OwlgateError as err:
            _fail(f"--db {shown_db(db)}: {err}")
    finally:
        store.close()
    kinds = ", ".join(f"{what}: {count}" for what, count in counts.items())
    typer.echo(
        f"re-wrapped {sum(counts.values())} keys ({kinds}) in {shown_db(db)} under KEK "
        f"{new.key_id!r} ({new_kek_file}); the old KEK {old.key_id!r} is no longer needed"
    )


# The sub-command groups of the fleet's features; each module imports this one for its
# helpers (--db, the vault), so they are mounted after everything above is defined.
from .cli_auth import audit_command, token_command, ui_link_command  # noqa: E402
from .cli_broker import broker_command  # noqa: E402
from .cli_config import config_key_command  # noqa: E402
from .cli_data import data_command  # noqa: E402
from .cli_provision import claim_command  # noqa: E402

fleet_command.add_typer(token_command)
fleet_command.command("audit")(audit_command)
fleet_command.command("ui-link")(ui_link_command)
fleet_command.add_typer(broker_command)
fleet_command.add_typer(data_command)
fleet_command.add_typer(config_key_command)
fleet_command.add_typer(claim_command)
