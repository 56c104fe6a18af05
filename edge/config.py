"""The edge agent's settings: one TOML file, loaded and validated once at start.

:func:`load_config` reads the file (``tomllib``) and returns an :class:`EdgeConfig` of frozen
dataclasses, or raises one :class:`~owlgate.edge.errors.ConfigError` naming the file, the
section and the key (``edge.toml: [batch] max_readings: must be an integer 1..10000, got
"x"``). Unknown sections and keys are errors too: a misspelt key silently ignored is a setting
that silently does not apply. Relative paths resolve against the folder of the file, so a
configuration and its keys can move together. :func:`load_keys` then reads the key
files the ``[gateway]`` section names, with errors of the same form.

The reference of every key, with defaults, is ``docs/edge.md``.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TypeVar
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

from ..codecs.concentrator import Channel, RadioConfig
from .errors import ConfigError
from .wired import WiredBusError, WiredNodeSpec

__all__ = [
    "DEFAULT_CHANNELS",
    "BatchSettings",
    "ConfigSettings",
    "EdgeConfig",
    "GatewayKeys",
    "GatewaySettings",
    "HealthSettings",
    "MqttSettings",
    "OutboxSettings",
    "RadioSettings",
    "WiredNodeSettings",
    "WiredSettings",
    "load_config",
    "load_keys",
    "load_mqtt_password",
]

ALL_SPREADING_FACTORS: Final[tuple[int, ...]] = (7, 8, 9, 10, 11, 12)
#: The three channels every EU868 device knows from the start (Regional Parameters 1.0.3,
#: section 2.2.2): 868.1, 868.3 and 868.5 MHz, 125 kHz, SF7 to SF12.
DEFAULT_CHANNELS: Final = tuple(
    Channel(frequency_hz=hz, bandwidth_hz=125_000, spreading_factors=ALL_SPREADING_FACTORS)
    for hz in (868_100_000, 868_300_000, 868_500_000)
)
#: The EU868 band (Regional Parameters 1.0.3 section 2.2): receive channels and downlinks.
EU868_MIN_HZ: Final = 863_000_000
EU868_MAX_HZ: Final = 870_000_000
#: EU868 maximum EIRP is 16 dBm; 14 dBm conducted leaves room for a small antenna gain.
EU868_TX_POWER_MAX_DBM: Final = 14
MAX_CHANNELS: Final = 16
BANDWIDTHS_HZ: Final = (125_000, 250_000, 500_000)
DEFAULT_BAUDRATE: Final = 115_200
DEFAULT_MQTT_PORT: Final = 1883
DEFAULT_KEEPALIVE_S: Final = 30
DEFAULT_MAX_READINGS: Final = 100
#: A batch is sealed at most this long after its first reading. The latency goal is 250 ms
#: p99 from radio to broker at 100 frames/s; at that rate 100 readings take a whole second,
#: so the age, not the size, bounds the wait: 100 ms leaves 150 ms for the seal (one fsync)
#: and the QoS 1 publish, and costs about ten small batches a second.
DEFAULT_MAX_AGE_S: Final = 0.1
DEFAULT_OUTBOX_MB: Final = 256.0
DEFAULT_HEALTH_INTERVAL_S: Final = 30
#: ``[config] apply_deadline_s``: how long a configuration document from the fleet has to pass
#: its self-check (radio up, broker reachable, a heartbeat acknowledged) before it is rolled
#: back. A radio restart takes a few seconds; a reconnection to a broker over a cellular link
#: may take tens.
DEFAULT_APPLY_DEADLINE_S: Final = 30.0
APPLY_DEADLINE_MIN_S: Final = 1.0
APPLY_DEADLINE_MAX_S: Final = 600.0
#: A group name, as a configuration document's target carries it: 1..64 bytes of text.
MAX_GROUP_NAME_BYTES: Final = 64
#: The radio backends ``[radio] backend`` names.
RADIO_BACKENDS: Final = ("serial", "rak3172", "semtech-udp")
#: The Semtech UDP packet forwarder's usual port (its ``serv_port_up``/``serv_port_down``).
DEFAULT_UDP_PORT: Final = 1700
DEFAULT_UDP_HOST: Final = "127.0.0.1"
DEFAULT_WIRED_POLL_S: Final = 5.0
DEFAULT_WIRED_TIMEOUT_S: Final = 0.5
DEFAULT_WIRED_SILENT_AFTER: Final = 3
#: The RAK3172's lowest transmit power (RUI3 ``AT+P2P`` accepts 5 .. 22 dBm).
RAK3172_TX_POWER_MIN_DBM: Final = 5
#: Wired node addresses, as on a Modbus line: 1 .. 247.
WIRED_ADDRESS_MAX: Final = 247
_MIB: Final = 1024 * 1024
_GATEWAY_ID: Final = re.compile(r"[0-9a-f]{16}")

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """``[gateway]``: who the gateway is and where it keeps things."""

    gateway_id: bytes
    state_dir: Path
    identity_key: Path
    sealing_key: Path
    fleet_key: Path
    #: The groups a configuration document may target this gateway by (``groups``).
    groups: tuple[str, ...] = ()
    #: ``config_key``: the Ed25519 public key configuration documents are signed with, when
    #: it is not the pinned fleet key (None: the fleet key).
    config_key: Path | None = None

    @property
    def gateway_id_hex(self) -> str:
        return self.gateway_id.hex()


@dataclass(frozen=True, slots=True)
class RadioSettings:
    """``[radio]``: the radio backend and its channel plan (EU868).

    ``backend`` is one of :data:`RADIO_BACKENDS`. ``port`` and ``baudrate`` are the serial
    line of ``serial`` and ``rak3172`` (``port`` is empty for ``semtech-udp``); ``listen_host``
    and ``listen_port`` the UDP address ``semtech-udp`` binds, ``gateway_eui`` the packet
    forwarder it accepts (None: the first one heard). ``rak3172`` receives on one channel with
    one spreading factor: ``channels`` then holds exactly that.
    """

    backend: str
    port: str
    baudrate: int
    channels: tuple[Channel, ...] = DEFAULT_CHANNELS
    tx_power_dbm: int = EU868_TX_POWER_MAX_DBM
    listen_host: str = DEFAULT_UDP_HOST
    listen_port: int = DEFAULT_UDP_PORT
    gateway_eui: bytes | None = None

    @property
    def where(self) -> str:
        """Where the radio is, for log lines: the serial port or the UDP address."""
        if self.backend == "semtech-udp":
            return f"udp://{self.listen_host}:{self.listen_port}"
        return self.port

    def radio_config(self, config_id: int = 1) -> RadioConfig:
        """The concentrator's ``RADIO_CONFIG`` for this plan (the backend sets the token)."""
        return RadioConfig(
            config_id=config_id,
            region="EU868",
            channels=self.channels,
            tx_frequency_min_hz=EU868_MIN_HZ,
            tx_frequency_max_hz=EU868_MAX_HZ,
            tx_power_max_dbm=EU868_TX_POWER_MAX_DBM,
            token=1,
        )


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """``[mqtt]``: the fleet's broker. The gateway logs in with its id as user name and, when
    ``password_file`` is set, the password in that file (read by :func:`load_mqtt_password`;
    the file must be private to its owner, as the fleet's ``--password-out`` writes it)."""

    host: str
    port: int
    keepalive_s: int = DEFAULT_KEEPALIVE_S
    password_file: Path | None = None


@dataclass(frozen=True, slots=True)
class BatchSettings:
    """``[batch]``: when a telemetry batch is sealed."""

    max_readings: int = DEFAULT_MAX_READINGS
    max_age_s: float = DEFAULT_MAX_AGE_S


@dataclass(frozen=True, slots=True)
class OutboxSettings:
    """``[outbox]``: the bound of the durable outbox."""

    max_mb: float = DEFAULT_OUTBOX_MB

    @property
    def max_bytes(self) -> int:
        return int(self.max_mb * _MIB)


@dataclass(frozen=True, slots=True)
class HealthSettings:
    """``[health]``: how often the gateway reports its health."""

    interval_s: int = DEFAULT_HEALTH_INTERVAL_S


@dataclass(frozen=True, slots=True)
class ConfigSettings:
    """``[config]``: how configuration documents from the fleet are applied."""

    apply_deadline_s: float = DEFAULT_APPLY_DEADLINE_S


@dataclass(frozen=True, slots=True)
class WiredNodeSettings:
    """One ``[[wired.nodes]]`` entry: the node's bus address, its DevEUI, and the settings
    the gateway gives it (None: leave the node's own)."""

    address: int
    dev_eui: bytes
    settings: tuple[tuple[str, int | float | bool], ...] | None = None


@dataclass(frozen=True, slots=True)
class WiredSettings:
    """``[wired]``: wired sensor nodes on a UART or RS-485 line (wired protocol v1)."""

    port: str
    baudrate: int = DEFAULT_BAUDRATE
    poll_interval_s: float = DEFAULT_WIRED_POLL_S
    response_timeout_s: float = DEFAULT_WIRED_TIMEOUT_S
    silent_after_polls: int = DEFAULT_WIRED_SILENT_AFTER
    nodes: tuple[WiredNodeSettings, ...] = ()


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    """The whole configuration; ``path`` is the file it came from and ``sha256`` the hash of
    its bytes.

    A configuration document from the fleet (:mod:`owlgate.edge.remote_config`) overlays
    its settings on the file's: ``document_seq`` and ``document_hash`` then name the document
    (its seq and content hash), ``log_level`` and ``devices`` carry the two settings that
    ``edge.toml`` has no key for (None: the file's defaults, the log level of the command
    line and no expected device list). :attr:`running_hash` is what the health message
    reports, so the fleet sees which configuration a gateway runs.
    """

    path: Path
    sha256: bytes
    gateway: GatewaySettings
    radio: RadioSettings
    mqtt: MqttSettings
    batch: BatchSettings = field(default_factory=BatchSettings)
    outbox: OutboxSettings = field(default_factory=OutboxSettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    wired: WiredSettings | None = None
    config: ConfigSettings = field(default_factory=ConfigSettings)
    log_level: str | None = None
    devices: tuple[bytes, ...] | None = None
    document_seq: int | None = None
    document_hash: bytes | None = None

    @property
    def running_hash(self) -> bytes:
        """The content hash of the configuration document running, or without one the
        SHA-256 of the file."""
        return self.sha256 if self.document_hash is None else self.document_hash

    def radio_config_id(self) -> int:
        """A ``RADIO_CONFIG`` id derived from :attr:`running_hash` (1 .. 2**32-1), so the
        concentrator's STATS tell which configuration it runs."""
        return int.from_bytes(self.running_hash[:4], "big") or 1


@dataclass(frozen=True, slots=True)
class GatewayKeys:
    """The gateway's private keys and the fleet's pinned public key. ``repr`` hides them."""

    identity: Ed25519PrivateKey
    sealing: X25519PrivateKey
    fleet: Ed25519PublicKey
    #: ``[gateway] config_key`` when set: the key configuration documents are signed with.
    config_signing: Ed25519PublicKey | None = None

    @property
    def config_trusted(self) -> Ed25519PublicKey:
        """The key a configuration document must be signed with before any rotation."""
        return self.fleet if self.config_signing is None else self.config_signing

    def __repr__(self) -> str:
        return "GatewayKeys(<secret>)"


def _show(value: object) -> str:
    # Values as TOML writes them, so the message quotes what the user typed.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return str(value)


class _Section:
    """One table of the file, read key by key; :meth:`done` refuses the keys left over."""

    def __init__(self, file: str, folder: Path, name: str, table: object, prefix: str = "") -> None:
        self.file = file
        self.folder = folder
        self.name = name
        self.prefix = prefix
        if not isinstance(table, dict):
            raise ConfigError(
                file, name, prefix.rstrip(".") or None, f"must be a table, got {_show(table)}"
            )
        self._table: dict[str, object] = dict(table)

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.file, self.name, self.prefix + key, problem)

    def pop_raw(self, key: str) -> object | None:
        """The value of ``key`` as parsed by TOML (None when absent), taken off the table."""
        return self._table.pop(key, None)

    def take(
        self, key: str, parse: Callable[[object], _T | None], wanted: str, default: _T | None
    ) -> _T:
        if key not in self._table:
            if default is None:
                raise self.fail(key, f"required ({wanted})")
            return default
        value = self._table.pop(key)
        parsed = parse(value)
        if parsed is None:
            raise self.fail(key, f"must be {wanted}, got {_show(value)}")
        return parsed

    def integer(self, key: str, low: int, high: int, default: int | None = None) -> int:
        def parse(value: object) -> int | None:
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                return None
            return value

        return self.take(key, parse, f"an integer {low}..{high}", default)

    def number(self, key: str, low: float, high: float, default: float | None = None) -> float:
        # low is exclusive: every number setting here must be positive.
        def parse(value: object) -> float | None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                return None
            return float(value) if low < value <= high else None

        return self.take(key, parse, f"a number above {low:g} and at most {high:g}", default)

    def text(self, key: str, default: str | None = None) -> str:
        def parse(value: object) -> str | None:
            return value if isinstance(value, str) and value.strip() else None

        return self.take(key, parse, "a non-empty string", default)

    def path(self, key: str, default: str | None = None) -> Path:
        return self.folder / Path(self.text(key, default)).expanduser()

    def optional_path(self, key: str) -> Path | None:
        return self.path(key) if key in self._table else None

    def done(self) -> None:
        if self._table:
            first = sorted(self._table)[0]
            raise self.fail(first, "unknown key")


def _channel(section: _Section, index: int, item: object) -> Channel:
    sub = _Section(section.file, section.folder, section.name, item, f"channels[{index}].")
    frequency = sub.integer("frequency_hz", EU868_MIN_HZ, EU868_MAX_HZ)
    bandwidth = sub.integer("bandwidth_hz", BANDWIDTHS_HZ[0], BANDWIDTHS_HZ[-1], 125_000)
    if bandwidth not in BANDWIDTHS_HZ:
        raise sub.fail("bandwidth_hz", f"must be 125000, 250000 or 500000, got {bandwidth}")

    def sf_list(value: object) -> tuple[int, ...] | None:
        if not isinstance(value, list) or not value:
            return None
        for sf in value:
            if isinstance(sf, bool) or not isinstance(sf, int) or not 5 <= sf <= 12:
                return None
        if len(set(value)) != len(value):
            return None
        return tuple(sorted(value))

    sfs = sub.take(
        "spreading_factors",
        sf_list,
        "a non-empty array of distinct integers 5..12",
        ALL_SPREADING_FACTORS,
    )
    sub.done()
    return Channel(frequency_hz=frequency, bandwidth_hz=bandwidth, spreading_factors=sfs)


def _serial_port(section: _Section) -> str:
    port = section.text("port")
    if "://" not in port:
        # A device path; a pyserial URL (rfc2217://, socket://, ...) is kept as it is.
        port = str(section.folder / Path(port).expanduser())
    return port


def _eui(value: object) -> bytes | None:
    if isinstance(value, str) and _GATEWAY_ID.fullmatch(value):
        return bytes.fromhex(value)
    return None


def _radio(section: _Section) -> RadioSettings:
    backend = section.text("backend", "serial")
    if backend not in RADIO_BACKENDS:
        choices = ", ".join(f'"{name}"' for name in RADIO_BACKENDS)
        raise section.fail("backend", f"must be one of {choices}, got {_show(backend)}")
    port = ""
    baudrate = DEFAULT_BAUDRATE
    listen_host, listen_port = DEFAULT_UDP_HOST, DEFAULT_UDP_PORT
    gateway_eui: bytes | None = None
    if backend == "semtech-udp":
        for key in ("port", "baudrate"):
            if section.pop_raw(key) is not None:
                raise section.fail(key, 'is for serial backends; "semtech-udp" uses listen')
        listen_host, listen_port = section.take(
            "listen",
            _host_port,
            'a "host:port" UDP address, e.g. "127.0.0.1:1700"',
            (DEFAULT_UDP_HOST, DEFAULT_UDP_PORT),
        )
        raw_eui = section.pop_raw("gateway_eui")
        if raw_eui is not None:
            gateway_eui = _eui(raw_eui)
            if gateway_eui is None:
                raise section.fail(
                    "gateway_eui", f"must be 16 lowercase hex digits, got {_show(raw_eui)}"
                )
    else:
        for key in ("listen", "gateway_eui"):
            if section.pop_raw(key) is not None:
                raise section.fail(key, f'is for "semtech-udp", not "{backend}"')
        port = _serial_port(section)
        baudrate = section.integer("baudrate", 1200, 4_000_000, DEFAULT_BAUDRATE)
    tx_power = section.integer("tx_power_dbm", 0, EU868_TX_POWER_MAX_DBM, EU868_TX_POWER_MAX_DBM)
    channels: tuple[Channel, ...] = DEFAULT_CHANNELS
    raw = section.pop_raw("channels")
    if raw is not None:
        if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_CHANNELS:
            raise section.fail(
                "channels", f"must be an array of 1..{MAX_CHANNELS} tables, got {_show(raw)}"
            )
        channels = tuple(_channel(section, index, item) for index, item in enumerate(raw))
        frequencies = [channel.frequency_hz for channel in channels]
        if len(set(frequencies)) != len(frequencies):
            raise section.fail("channels", "two channels share a frequency")
    if backend == "rak3172":
        if tx_power < RAK3172_TX_POWER_MIN_DBM:
            raise section.fail(
                "tx_power_dbm",
                f"the RAK3172 transmits at {RAK3172_TX_POWER_MIN_DBM} dBm or more, got {tx_power}",
            )
        if raw is None:
            # One channel of the default plan, at the fastest rate: a single-channel radio
            # hears only devices set to exactly this.
            channels = (
                Channel(
                    frequency_hz=DEFAULT_CHANNELS[0].frequency_hz,
                    bandwidth_hz=125_000,
                    spreading_factors=(7,),
                ),
            )
        elif len(channels) != 1 or len(channels[0].spreading_factors) != 1:
            raise section.fail(
                "channels",
                'the "rak3172" backend receives on one channel with one spreading factor:'
                " give exactly one channel with spreading_factors = [N]",
            )
    section.done()
    return RadioSettings(
        backend,
        port,
        baudrate,
        channels,
        tx_power_dbm=tx_power,
        listen_host=listen_host,
        listen_port=listen_port,
        gateway_eui=gateway_eui,
    )


def _host_port(value: object) -> tuple[str, int] | None:
    if not isinstance(value, str):
        return None
    host, colon, port_text = value.rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not (port_text.isascii() and port_text.isdigit()):
        return None
    port = int(port_text)
    return (host, port) if 0 < port < 65536 else None


def _wired_settings(value: object) -> tuple[tuple[str, int | float | bool], ...] | None:
    if not isinstance(value, dict) or not value:
        return None
    items: list[tuple[str, int | float | bool]] = []
    for key, item in sorted(value.items()):
        if not isinstance(item, bool | int | float):
            return None
        items.append((key, item))
    return tuple(items)


def _wired(section: _Section) -> WiredSettings:
    port = _serial_port(section)
    baudrate = section.integer("baudrate", 1200, 4_000_000, DEFAULT_BAUDRATE)
    poll = section.number("poll_interval_s", 0.0, 3600.0, DEFAULT_WIRED_POLL_S)
    timeout = section.number("response_timeout_s", 0.0, 10.0, DEFAULT_WIRED_TIMEOUT_S)
    silent = section.integer("silent_after_polls", 1, 1000, DEFAULT_WIRED_SILENT_AFTER)
    raw = section.pop_raw("nodes")
    if not isinstance(raw, list) or not 1 <= len(raw) <= WIRED_ADDRESS_MAX:
        raise section.fail(
            "nodes", f"must be an array of 1..{WIRED_ADDRESS_MAX} tables, got {_show(raw)}"
        )
    nodes: list[WiredNodeSettings] = []
    for index, item in enumerate(raw):
        sub = _Section(section.file, section.folder, section.name, item, f"nodes[{index}].")
        address = sub.integer("address", 1, WIRED_ADDRESS_MAX)
        dev_eui = sub.take("dev_eui", _eui, "16 lowercase hex digits (an EUI-64)", None)
        settings = None
        raw_settings = sub.pop_raw("settings")
        if raw_settings is not None:
            settings = _wired_settings(raw_settings)
            if settings is None:
                raise sub.fail(
                    "settings",
                    f"must be a non-empty table of numbers and booleans, got {_show(raw_settings)}",
                )
        sub.done()
        try:
            # The bus refuses settings the wired protocol cannot carry: refuse them here.
            WiredNodeSpec(address, dev_eui, None if settings is None else dict(settings))
        except WiredBusError as err:
            raise sub.fail("settings", err.message) from err
        nodes.append(WiredNodeSettings(address, dev_eui, settings))
    addresses = [node.address for node in nodes]
    if len(set(addresses)) != len(addresses):
        raise section.fail("nodes", "two nodes share an address")
    euis = [node.dev_eui for node in nodes]
    if len(set(euis)) != len(euis):
        raise section.fail("nodes", "two nodes share a dev_eui")
    section.done()
    return WiredSettings(port, baudrate, poll, timeout, silent, tuple(nodes))


def _mqtt(section: _Section) -> MqttSettings:
    url = section.text("url")
    wanted = 'an URL "mqtt://host" or "mqtt://host:port"'
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as err:
        raise section.fail("url", f"must be {wanted}, got {_show(url)} ({err})") from err
    if (
        parts.scheme != "mqtt"
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.username is not None
    ):
        raise section.fail("url", f"must be {wanted}, got {_show(url)}")
    keepalive = section.integer("keepalive_s", 5, 3600, DEFAULT_KEEPALIVE_S)
    password_file = section.optional_path("password_file")
    section.done()
    return MqttSettings(
        parts.hostname, DEFAULT_MQTT_PORT if port is None else port, keepalive, password_file
    )


def load_config(path: Path | str) -> EdgeConfig:
    """Read and validate the configuration file at ``path``; :class:`ConfigError` on any
    problem, naming the file and the key."""
    file = str(path)
    source = Path(path)
    try:
        data = source.read_bytes()
    except OSError as err:
        raise ConfigError(file, None, None, f"cannot read: {err.strerror or err}") from err
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(file, None, None, f"not UTF-8 text: {err.reason}") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(file, None, None, f"not valid TOML: {err}") from err
    folder = source.resolve().parent
    known = ("gateway", "radio", "mqtt", "batch", "outbox", "health", "wired", "config")
    unknown = sorted(name for name in document if name not in known)
    if unknown:
        raise ConfigError(file, unknown[0], None, f"unknown section (known: {', '.join(known)})")
    for required in ("gateway", "radio", "mqtt"):
        if required not in document:
            raise ConfigError(file, required, None, "required section missing")

    def section(name: str) -> _Section:
        return _Section(file, folder, name, document.get(name, {}))

    gateway = section("gateway")

    def gateway_id(value: object) -> bytes | None:
        if isinstance(value, str) and _GATEWAY_ID.fullmatch(value):
            return bytes.fromhex(value)
        return None

    gateway_settings = GatewaySettings(
        gateway_id=gateway.take("id", gateway_id, "16 lowercase hex digits (an EUI-64)", None),
        state_dir=gateway.path("state_dir"),
        identity_key=gateway.path("identity_key"),
        sealing_key=gateway.path("sealing_key"),
        fleet_key=gateway.path("fleet_key"),
        groups=gateway.take(
            "groups",
            _groups,
            f"an array of distinct group names (1..{MAX_GROUP_NAME_BYTES} bytes each)",
            (),
        ),
        config_key=gateway.optional_path("config_key"),
    )
    gateway.done()
    if gateway_settings.state_dir.exists() and not gateway_settings.state_dir.is_dir():
        raise gateway.fail("state_dir", f"{gateway_settings.state_dir} is not a folder")
    radio = _radio(section("radio"))
    mqtt = _mqtt(section("mqtt"))
    batch_section = section("batch")
    batch = BatchSettings(
        max_readings=batch_section.integer("max_readings", 1, 10_000, DEFAULT_MAX_READINGS),
        max_age_s=batch_section.number("max_age_s", 0.0, 3600.0, DEFAULT_MAX_AGE_S),
    )
    batch_section.done()
    outbox_section = section("outbox")
    outbox = OutboxSettings(outbox_section.number("max_mb", 0.0, 1_000_000.0, DEFAULT_OUTBOX_MB))
    outbox_section.done()
    if outbox.max_bytes < 1:
        raise outbox_section.fail("max_mb", f"{outbox.max_mb:g} MiB is less than one byte")
    health_section = section("health")
    health = HealthSettings(
        health_section.integer("interval_s", 1, 86_400, DEFAULT_HEALTH_INTERVAL_S)
    )
    health_section.done()
    wired = _wired(section("wired")) if "wired" in document else None
    config_section = section("config")
    apply_deadline_s = config_section.take(
        "apply_deadline_s",
        _deadline,
        f"a number {APPLY_DEADLINE_MIN_S:g}..{APPLY_DEADLINE_MAX_S:g} (seconds)",
        DEFAULT_APPLY_DEADLINE_S,
    )
    config_section.done()
    return EdgeConfig(
        path=source,
        sha256=hashlib.sha256(data).digest(),
        gateway=gateway_settings,
        radio=radio,
        mqtt=mqtt,
        batch=batch,
        outbox=outbox,
        health=health,
        wired=wired,
        config=ConfigSettings(apply_deadline_s),
    )


def _groups(value: object) -> tuple[str, ...] | None:
    if not isinstance(value, list):
        return None
    for name in value:
        if not isinstance(name, str) or not 0 < len(name.encode()) <= MAX_GROUP_NAME_BYTES:
            return None
    if len(set(value)) != len(value):
        return None
    return tuple(value)


def _deadline(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if APPLY_DEADLINE_MIN_S <= value <= APPLY_DEADLINE_MAX_S else None


def _read_key(config: EdgeConfig, key: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise ConfigError(
            str(config.path), "gateway", key, f"cannot read {path}: {err.strerror or err}"
        ) from err


def load_mqtt_password(config: EdgeConfig) -> str | None:
    """The broker password from ``[mqtt] password_file`` (None when the key is not set):
    the file's one line, without its line ending. :class:`ConfigError` naming the key when the
    file cannot be read, is empty, holds more than one line, or can be read by anyone but its
    owner (``chmod 600`` it). The password is never shown."""
    path = config.mqtt.password_file
    if path is None:
        return None
    file = str(config.path)
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(
            file, "mqtt", "password_file", f"cannot read {path}: {err.strerror or err}"
        ) from err
    if mode & 0o077:
        raise ConfigError(
            file,
            "mqtt",
            "password_file",
            f"{path} can be read by others (mode {mode & 0o777:o}): chmod 600 {path}",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(file, "mqtt", "password_file", f"{path} is not UTF-8 text") from err
    lines = text.splitlines()
    if len(lines) != 1 or not lines[0]:
        raise ConfigError(
            file, "mqtt", "password_file", f"{path} must hold the password on one line"
        )
    return lines[0]


def load_keys(config: EdgeConfig) -> GatewayKeys:
    """Read the gateway's identity (Ed25519) and sealing (X25519) private keys, PKCS#8 PEM,
    the fleet's pinned Ed25519 public key, PEM, and the configuration signing key when
    ``config_key`` names one; :class:`ConfigError` naming the key
    setting when a file is missing or holds something else. Keys are never shown."""
    settings = config.gateway
    file = str(config.path)
    keys: list[object] = []
    for key, path in (
        ("identity_key", settings.identity_key),
        ("sealing_key", settings.sealing_key),
    ):
        data = _read_key(config, key, path)
        try:
            keys.append(load_pem_private_key(data, password=None))
        except (ValueError, TypeError) as err:
            raise ConfigError(
                file, "gateway", key, f"{path} is not an unencrypted PKCS#8 PEM private key"
            ) from err
    identity, sealing = keys
    if not isinstance(identity, Ed25519PrivateKey):
        raise ConfigError(
            file, "gateway", "identity_key", f"{settings.identity_key} is not an Ed25519 key"
        )
    if not isinstance(sealing, X25519PrivateKey):
        raise ConfigError(
            file, "gateway", "sealing_key", f"{settings.sealing_key} is not an X25519 key"
        )
    data = _read_key(config, "fleet_key", settings.fleet_key)
    try:
        fleet = load_pem_public_key(data)
    except (ValueError, TypeError) as err:
        raise ConfigError(
            file, "gateway", "fleet_key", f"{settings.fleet_key} is not a PEM public key"
        ) from err
    if not isinstance(fleet, Ed25519PublicKey):
        raise ConfigError(
            file, "gateway", "fleet_key", f"{settings.fleet_key} is not an Ed25519 public key"
        )
    config_signing: Ed25519PublicKey | None = None
    if settings.config_key is not None:
        data = _read_key(config, "config_key", settings.config_key)
        try:
            loaded = load_pem_public_key(data)
        except (ValueError, TypeError) as err:
            raise ConfigError(
                file, "gateway", "config_key", f"{settings.config_key} is not a PEM public key"
            ) from err
        if not isinstance(loaded, Ed25519PublicKey):
            raise ConfigError(
                file,
                "gateway",
                "config_key",
                f"{settings.config_key} is not an Ed25519 public key",
            )
        config_signing = loaded
    return GatewayKeys(identity, sealing, fleet, config_signing)
