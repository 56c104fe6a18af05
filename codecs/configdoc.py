"""Gateway configuration documents: signed, sequenced, targeted, hashed.

A configuration document is a signed document (:mod:`owlgate.codecs.signed`, COSE_Sign1 with
Ed25519) of kind ``gateway-config``. Its body carries the settings of ``edge.toml`` that the
fleet may change remotely, the SHA-256 of their deterministic CBOR, and optionally the next
config signing key. The schema is ``docs/formats/config-document.cddl``; the prose, the JSON
form people edit and the key rotation rule are in ``docs/formats/config-document.md``::

    document = {1: "gateway-config", 2: seq, 3: target, 4: issued_at, 5: body}
    body     = {1: config, 2: content_hash, ? 3: next_key}
    config   = {1: radio_backend, 2: channels, 3: tx_power_dbm, 4: batch_max_readings,
                5: batch_max_age_ms, 6: health_interval_s, 7: outbox_max_bytes, 8: mqtt_url,
                9: mqtt_keepalive_s, ? 10: mqtt_credentials, 11: log_level, 12: devices}

Why a content hash under a signature: the signature says who issued the document; the hash
names the configuration itself, independently of seq, target and signer, so a gateway reports
the hash of what it runs (``config_hash`` of the health message) and the fleet compares it
with what it sent, and two documents carrying the same settings are recognisably the same.

The ranges are those ``owlgate.edge.config`` accepts from ``edge.toml`` (codecs import nothing
of owlgate, so they are repeated here; a test keeps both in step). A document the edge could
not load is refused here already, at signing time, not on the gateway.

Refusals: :class:`ConfigDocumentError` (``reason`` ``schema``, ``hash`` or ``json``) for a
document that is not well-formed; :class:`ConfigRejected` from :func:`verify_config` with one
of the :class:`Reason` values, for everything a gateway refuses.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Final
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from . import signed
from .concentrator import Channel
from .errors import CborError, CodecError, SchemaError, SignatureError
from .node import cbor

KIND: Final = "gateway-config"

# Body keys.
B_CONFIG: Final = 1
B_CONTENT_HASH: Final = 2
B_NEXT_KEY: Final = 3

# Config keys.
C_RADIO_BACKEND: Final = 1
C_CHANNELS: Final = 2
C_TX_POWER: Final = 3
C_BATCH_MAX_READINGS: Final = 4
C_BATCH_MAX_AGE_MS: Final = 5
C_HEALTH_INTERVAL: Final = 6
C_OUTBOX_MAX_BYTES: Final = 7
C_MQTT_URL: Final = 8
C_MQTT_KEEPALIVE: Final = 9
C_MQTT_CREDENTIALS: Final = 10
C_LOG_LEVEL: Final = 11
C_DEVICES: Final = 12
CONFIG_KEY_NAMES: Final = {
    C_RADIO_BACKEND: "radio_backend",
    C_CHANNELS: "channels",
    C_TX_POWER: "tx_power_dbm",
    C_BATCH_MAX_READINGS: "batch_max_readings",
    C_BATCH_MAX_AGE_MS: "batch_max_age_ms",
    C_HEALTH_INTERVAL: "health_interval_s",
    C_OUTBOX_MAX_BYTES: "outbox_max_bytes",
    C_MQTT_URL: "mqtt_url",
    C_MQTT_KEEPALIVE: "mqtt_keepalive_s",
    C_MQTT_CREDENTIALS: "mqtt_credentials",
    C_LOG_LEVEL: "log_level",
    C_DEVICES: "devices",
}

# The limits of edge.toml (owlgate.edge.config); tests/codecs/test_configdoc.py compares.
RADIO_BACKENDS: Final = ("serial", "rak3172", "semtech-udp")
EU868_MIN_HZ: Final = 863_000_000
EU868_MAX_HZ: Final = 870_000_000
BANDWIDTHS_HZ: Final = (125_000, 250_000, 500_000)
SPREADING_FACTORS: Final = (5, 6, 7, 8, 9, 10, 11, 12)
MAX_CHANNELS: Final = 16
TX_POWER_MAX_DBM: Final = 14
RAK3172_TX_POWER_MIN_DBM: Final = 5
BATCH_MAX_READINGS: Final = 10_000
BATCH_MAX_AGE_MS: Final = 3_600_000  # [batch] max_age_s: above 0, at most 3600 s
HEALTH_INTERVAL_MAX_S: Final = 86_400
OUTBOX_MAX_BYTES: Final = 1_000_000 * 1024 * 1024  # [outbox] max_mb at most 1,000,000 MiB
KEEPALIVE_MIN_S: Final = 5
KEEPALIVE_MAX_S: Final = 3600
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
MAX_DEVICES: Final = 10_000
MAX_CREDENTIALS_BYTES: Final = 128
EUI64_LENGTH: Final = 8
HASH_LENGTH: Final = 32  # SHA-256
PUBLIC_KEY_LENGTH: Final = 32  # RFC 8032 section 5.1.5
_U64_END: Final = 1 << 64
# A reference names where the secret is (a file on the gateway, a vault entry), never the
# secret itself: printable, no spaces, so it reads as a name in logs and diffs.
_CREDENTIALS = re.compile(r"[A-Za-z0-9._:/@+-]+")
_GATEWAY_HEX = re.compile(r"[0-9a-f]{16}")


class ConfigDocumentError(SchemaError):
    """A configuration document that is not well-formed. ``reason`` says which way:

    ``schema`` (a field missing, unknown or out of range), ``hash`` (the content hash does not
    match the configuration) or ``json`` (the JSON form is not JSON at all).
    """

    def __init__(self, message: str, reason: str = "schema") -> None:
        super().__init__(message)
        self.reason = reason


class Reason(StrEnum):
    """Why :func:`verify_config` refused a document (the gateway reports it as is)."""

    SIGNATURE = "signature"
    SCHEMA = "schema"
    HASH = "hash"
    REPLAYED = "replayed"
    WRONG_TARGET = "wrong_target"


class ConfigRejected(CodecError):
    """A configuration document a gateway must not apply; ``reason`` is a :class:`Reason`."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason

    def __str__(self) -> str:
        return f"rejected ({self.reason.value}): {self.message}"


def _schema(message: str) -> ConfigDocumentError:
    return ConfigDocumentError(message, "schema")


def _int(value: object, name: str, low: int, high: int) -> int:
    # type() rather than isinstance: True is an int to Python, not to a configuration.
    if type(value) is int and low <= value <= high:
        return value
    raise _schema(f"{name} must be an integer {low}..{high}, got {value!r}")


def _text(value: object, name: str) -> str:
    if isinstance(value, str):
        return value
    raise _schema(f"{name} must be text, got {value!r}")


def _check_mqtt_url(url: str) -> None:
    wanted = 'an URL "mqtt://host" or "mqtt://host:port"'
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as err:
        raise _schema(f"mqtt_url must be {wanted}, got {url!r} ({err})") from err
    if (
        parts.scheme != "mqtt"
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
        or port == 0
    ):
        raise _schema(f"mqtt_url must be {wanted} (no user, password or path), got {url!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayConfig:
    """The settings a configuration document sets, with the defaults of ``edge.toml``.

    The radio's channel plan is EU868 (``channels``: 1..16 channels, distinct frequencies,
    spreading factors ascending); the ``rak3172`` backend takes exactly one channel with one
    spreading factor and at least 5 dBm. ``batch_max_age_ms`` is ``[batch] max_age_s`` in
    milliseconds (an integer travels exactly; a float would not). ``outbox_max_bytes`` is the
    outbox bound. ``mqtt_credentials`` is a *reference* to the broker password (where the
    gateway finds it), never the password. ``devices`` are the DevEUIs whose sessions the
    gateway should hold, ascending and distinct. Invalid values raise
    :class:`ConfigDocumentError` on construction.
    """

    radio_backend: str = "serial"
    channels: tuple[Channel, ...] = tuple(
        Channel(frequency_hz=hz) for hz in (868_100_000, 868_300_000, 868_500_000)
    )
    tx_power_dbm: int = TX_POWER_MAX_DBM
    batch_max_readings: int = 100
    batch_max_age_ms: int = 100
    health_interval_s: int = 30
    outbox_max_bytes: int = 256 * 1024 * 1024
    mqtt_url: str
    mqtt_keepalive_s: int = 30
    mqtt_credentials: str | None = None
    log_level: str = "info"
    devices: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if self.radio_backend not in RADIO_BACKENDS:
            raise _schema(
                f"radio_backend must be one of {', '.join(RADIO_BACKENDS)}, "
                f"got {self.radio_backend!r}"
            )
        channels = self.channels
        if not isinstance(channels, tuple) or not 1 <= len(channels) <= MAX_CHANNELS:
            raise _schema(f"channels must be a tuple of 1..{MAX_CHANNELS} channels")
        for index, channel in enumerate(channels):
            _check_channel(channel, f"channels[{index}]")
        frequencies = [channel.frequency_hz for channel in channels]
        if len(set(frequencies)) != len(frequencies):
            raise _schema("channels: two channels share a frequency")
        power = _int(self.tx_power_dbm, "tx_power_dbm", 0, TX_POWER_MAX_DBM)
        if self.radio_backend == "rak3172":
            if power < RAK3172_TX_POWER_MIN_DBM:
                raise _schema(
                    f"tx_power_dbm: the RAK3172 transmits at {RAK3172_TX_POWER_MIN_DBM} dBm "
                    f"or more, got {power}"
                )
            if len(channels) != 1 or len(channels[0].spreading_factors) != 1:
                raise _schema(
                    'channels: the "rak3172" backend receives on one channel with one '
                    "spreading factor"
                )
        _int(self.batch_max_readings, "batch_max_readings", 1, BATCH_MAX_READINGS)
        _int(self.batch_max_age_ms, "batch_max_age_ms", 1, BATCH_MAX_AGE_MS)
        _int(self.health_interval_s, "health_interval_s", 1, HEALTH_INTERVAL_MAX_S)
        _int(self.outbox_max_bytes, "outbox_max_bytes", 1, OUTBOX_MAX_BYTES)
        _check_mqtt_url(_text(self.mqtt_url, "mqtt_url"))
        _int(self.mqtt_keepalive_s, "mqtt_keepalive_s", KEEPALIVE_MIN_S, KEEPALIVE_MAX_S)
        credentials = self.mqtt_credentials
        if credentials is not None and not (
            isinstance(credentials, str)
            and len(credentials.encode()) <= MAX_CREDENTIALS_BYTES
            and _CREDENTIALS.fullmatch(credentials)
        ):
            raise _schema(
                f"mqtt_credentials must be a reference of 1..{MAX_CREDENTIALS_BYTES} printable "
                f"characters without spaces (where the password is, not the password), "
                f"got {credentials!r}"
            )
        if self.log_level not in LOG_LEVELS:
            raise _schema(
                f"log_level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}"
            )
        devices = self.devices
        if not isinstance(devices, tuple) or len(devices) > MAX_DEVICES:
            raise _schema(f"devices must be a tuple of at most {MAX_DEVICES} DevEUIs")
        for dev_eui in devices:
            if not isinstance(dev_eui, bytes) or len(dev_eui) != EUI64_LENGTH:
                raise _schema(f"devices: a DevEUI is 8 bytes, got {dev_eui!r}")
        if list(devices) != sorted(set(devices)):
            raise _schema("devices must be ascending and distinct")


def _check_channel(channel: object, where: str) -> None:
    if not isinstance(channel, Channel):
        raise _schema(f"{where} must be a Channel, got {type(channel).__name__}")
    _int(channel.frequency_hz, where + ".frequency_hz", EU868_MIN_HZ, EU868_MAX_HZ)
    if channel.bandwidth_hz not in BANDWIDTHS_HZ or type(channel.bandwidth_hz) is not int:
        raise _schema(
            f"{where}.bandwidth_hz must be 125000, 250000 or 500000, got {channel.bandwidth_hz!r}"
        )
    sfs = channel.spreading_factors
    if (
        not isinstance(sfs, tuple)
        or not sfs
        or any(type(sf) is not int or sf not in SPREADING_FACTORS for sf in sfs)
        or list(sfs) != sorted(set(sfs))
    ):
        raise _schema(
            f"{where}.spreading_factors must be distinct integers 5..12 in ascending order, "
            f"got {sfs!r}"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigDocument:
    """One configuration document: ``seq`` (1 .. 2**64-1, increasing with every document a
    gateway is sent), ``target`` (a gateway id of 8 bytes, or a group name of 1..64 bytes),
    ``issued_at`` (UTC seconds), ``config``, and ``next_key`` (the raw 32-byte Ed25519
    public key documents after this one may be signed with, or None).

    ``content_hash`` is SHA-256 over the deterministic CBOR of the config map, computed on
    construction. ``signed_by`` is the key id that verified it, set by :func:`verify_config`
    (None otherwise); it is not part of the document and not compared.
    """

    seq: int
    target: bytes | str
    issued_at: int
    config: GatewayConfig
    next_key: bytes | None = None
    content_hash: bytes = field(init=False)
    signed_by: bytes | None = field(default=None, init=False, compare=False)

    def __post_init__(self) -> None:
        _int(self.seq, "seq", 1, _U64_END - 1)
        _int(self.issued_at, "issued_at", 0, _U64_END - 1)
        target = self.target
        if not (
            (isinstance(target, bytes) and len(target) == EUI64_LENGTH)
            or (isinstance(target, str) and 0 < len(target.encode()) <= 64)
        ):
            raise _schema(
                "target must be a gateway id (8 bytes) or a group name (1..64 bytes of text), "
                f"got {target!r}"
            )
        if not isinstance(self.config, GatewayConfig):
            raise _schema(f"config must be a GatewayConfig, got {type(self.config).__name__}")
        key = self.next_key
        if key is not None and not (isinstance(key, bytes) and len(key) == PUBLIC_KEY_LENGTH):
            raise _schema(f"next_key must be a raw Ed25519 public key of 32 bytes, got {key!r}")
        if key is not None:
            try:
                Ed25519PublicKey.from_public_bytes(key)
            except ValueError as err:
                raise _schema(f"next_key is not an Ed25519 public key: {err}") from err
        object.__setattr__(self, "content_hash", config_hash(self.config))

    @property
    def target_text(self) -> str:
        """The target for people: a gateway id in hex, or ``group NAME``."""
        if isinstance(self.target, bytes):
            return self.target.hex()
        return "group " + self.target


# --- CBOR -------------------------------------------------------------------------------------


def _config_map(config: GatewayConfig) -> dict[object, object]:
    content: dict[object, object] = {
        C_RADIO_BACKEND: config.radio_backend,
        C_CHANNELS: [
            [channel.frequency_hz, channel.bandwidth_hz, list(channel.spreading_factors)]
            for channel in config.channels
        ],
        C_TX_POWER: config.tx_power_dbm,
        C_BATCH_MAX_READINGS: config.batch_max_readings,
        C_BATCH_MAX_AGE_MS: config.batch_max_age_ms,
        C_HEALTH_INTERVAL: config.health_interval_s,
        C_OUTBOX_MAX_BYTES: config.outbox_max_bytes,
        C_MQTT_URL: config.mqtt_url,
        C_MQTT_KEEPALIVE: config.mqtt_keepalive_s,
        C_LOG_LEVEL: config.log_level,
        C_DEVICES: list(config.devices),
    }
    if config.mqtt_credentials is not None:
        content[C_MQTT_CREDENTIALS] = config.mqtt_credentials
    return content


def config_hash(config: GatewayConfig) -> bytes:
    """SHA-256 over the deterministic CBOR of the config map (the document's content hash)."""
    return hashlib.sha256(cbor.dumps(_config_map(config))).digest()


def _document(doc: ConfigDocument) -> signed.Document:
    if not isinstance(doc, ConfigDocument):
        raise _schema(f"a ConfigDocument is needed, got {type(doc).__name__}")
    body: dict[object, object] = {
        B_CONFIG: _config_map(doc.config),
        B_CONTENT_HASH: doc.content_hash,
    }
    if doc.next_key is not None:
        body[B_NEXT_KEY] = doc.next_key
    return signed.Document(
        kind=KIND, seq=doc.seq, target=doc.target, issued_at=doc.issued_at, body=body
    )


def encode(doc: ConfigDocument) -> bytes:
    """The deterministic CBOR of ``doc``: the payload :func:`sign_config` signs."""
    return signed.encode_document(_document(doc))


def _channel_from(item: object, index: int) -> Channel:
    where = f"channels[{index}]"
    if not isinstance(item, list) or len(item) != 3:
        raise _schema(f"{where} must be [frequency_hz, bandwidth_hz, [spreading factors]]")
    frequency, bandwidth, sfs = item
    if not isinstance(sfs, list):
        raise _schema(f"{where}.spreading_factors must be an array, got {sfs!r}")
    _int(frequency, where + ".frequency_hz", EU868_MIN_HZ, EU868_MAX_HZ)
    channel = _make_channel(frequency, bandwidth, tuple(sfs), where)
    _check_channel(channel, where)
    return channel


def _make_channel(
    frequency: object, bandwidth: object, sfs: tuple[object, ...], where: str
) -> Channel:
    try:
        return Channel(
            frequency_hz=frequency,  # type: ignore[arg-type]
            bandwidth_hz=bandwidth,  # type: ignore[arg-type]
            spreading_factors=sfs,  # type: ignore[arg-type]
        )
    except CodecError as err:
        raise _schema(f"{where}: {err.message}") from err


def _config_from(content: object) -> GatewayConfig:
    if not isinstance(content, dict):
        raise _schema(f"the config is a CBOR map, got {type(content).__name__}")
    for key in content:
        if type(key) is not int or key not in CONFIG_KEY_NAMES:
            raise _schema(f"unknown config key {key!r}; known: 1..{max(CONFIG_KEY_NAMES)}")
    for key, name in CONFIG_KEY_NAMES.items():
        if key != C_MQTT_CREDENTIALS and key not in content:
            raise _schema(f"the config has no {name} (key {key})")
    channels = content[C_CHANNELS]
    devices = content[C_DEVICES]
    if not isinstance(channels, list):
        raise _schema(f"channels must be an array, got {channels!r}")
    if not isinstance(devices, list):
        raise _schema(f"devices must be an array, got {devices!r}")
    return GatewayConfig(
        radio_backend=_text(content[C_RADIO_BACKEND], "radio_backend"),
        channels=tuple(_channel_from(item, index) for index, item in enumerate(channels)),
        tx_power_dbm=content[C_TX_POWER],
        batch_max_readings=content[C_BATCH_MAX_READINGS],
        batch_max_age_ms=content[C_BATCH_MAX_AGE_MS],
        health_interval_s=content[C_HEALTH_INTERVAL],
        outbox_max_bytes=content[C_OUTBOX_MAX_BYTES],
        mqtt_url=_text(content[C_MQTT_URL], "mqtt_url"),
        mqtt_keepalive_s=content[C_MQTT_KEEPALIVE],
        mqtt_credentials=content.get(C_MQTT_CREDENTIALS),
        log_level=_text(content[C_LOG_LEVEL], "log_level"),
        devices=tuple(devices),
    )


def _from_document(document: signed.Document) -> ConfigDocument:
    if document.kind != KIND:
        raise _schema(f"a {document.kind!r} document where {KIND!r} was expected")
    body = document.body
    if not isinstance(body, dict):
        raise _schema(f"the body is a CBOR map, got {type(body).__name__}")
    for key in body:
        if type(key) is not int or key not in (B_CONFIG, B_CONTENT_HASH, B_NEXT_KEY):
            raise _schema(f"unknown body key {key!r}; known: 1 config, 2 content_hash, 3 next_key")
    if B_CONFIG not in body or B_CONTENT_HASH not in body:
        raise _schema("the body needs a config (key 1) and a content_hash (key 2)")
    stated = body[B_CONTENT_HASH]
    if not isinstance(stated, bytes) or len(stated) != HASH_LENGTH:
        raise _schema(f"content_hash must be 32 bytes (SHA-256), got {stated!r}")
    if document.target is None:
        raise _schema("the document has no target: name a gateway id or a group")
    doc = ConfigDocument(
        seq=document.seq,
        target=document.target,
        issued_at=document.issued_at,
        config=_config_from(body[B_CONFIG]),
        next_key=body.get(B_NEXT_KEY),
    )
    if doc.content_hash != stated:
        raise ConfigDocumentError(
            f"content_hash {stated.hex()} does not match the config, whose SHA-256 is "
            f"{doc.content_hash.hex()}",
            "hash",
        )
    return doc


def decode(data: bytes) -> ConfigDocument:
    """Decode a document payload; only the bytes :func:`encode` writes are accepted.

    :class:`ConfigDocumentError` with reason ``schema`` (not deterministic CBOR, not a
    ``gateway-config`` document, a field missing, unknown or out of range) or ``hash``.
    """
    try:
        document = signed.decode_document(bytes(data))
    except (CborError, SchemaError) as err:
        raise _schema(err.message) from err
    doc = _from_document(document)
    if encode(doc) != bytes(data):
        # Everything decoded was checked; what is left is a non-canonical order (channels'
        # spreading factors, devices) that the constructors refuse too.
        raise _schema("the document is not in its canonical encoding")
    return doc


# --- JSON, for people ---------------------------------------------------------------------------

_JSON_TOP: Final = ("seq", "target", "issued_at", "config", "next_key", "content_hash")
_JSON_SECTIONS: Final = {
    "radio": ("backend", "channels", "tx_power_dbm"),
    "batch": ("max_readings", "max_age_ms"),
    "health": ("interval_s",),
    "outbox": ("max_bytes",),
    "mqtt": ("url", "keepalive_s", "credentials"),
    "log_level": (),
    "devices": (),
}


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def to_json(doc: ConfigDocument) -> str:
    """The JSON form of ``doc`` (what ``doc.json`` holds), with its content hash."""
    config = doc.config
    target: dict[str, str] = (
        {"gateway": doc.target.hex()} if isinstance(doc.target, bytes) else {"group": doc.target}
    )
    mqtt: dict[str, object] = {"url": config.mqtt_url, "keepalive_s": config.mqtt_keepalive_s}
    if config.mqtt_credentials is not None:
        mqtt["credentials"] = config.mqtt_credentials
    result: dict[str, object] = {
        "seq": doc.seq,
        "target": target,
        "issued_at": _iso(doc.issued_at) if doc.issued_at < 253402300800 else doc.issued_at,
        "config": {
            "radio": {
                "backend": config.radio_backend,
                "channels": [
                    {
                        "frequency_hz": channel.frequency_hz,
                        "bandwidth_hz": channel.bandwidth_hz,
                        "spreading_factors": list(channel.spreading_factors),
                    }
                    for channel in config.channels
                ],
                "tx_power_dbm": config.tx_power_dbm,
            },
            "batch": {
                "max_readings": config.batch_max_readings,
                "max_age_ms": config.batch_max_age_ms,
            },
            "health": {"interval_s": config.health_interval_s},
            "outbox": {"max_bytes": config.outbox_max_bytes},
            "mqtt": mqtt,
            "log_level": config.log_level,
            "devices": [dev_eui.hex() for dev_eui in config.devices],
        },
    }
    if doc.next_key is not None:
        result["next_key"] = doc.next_key.hex()
    result["content_hash"] = doc.content_hash.hex()
    return json.dumps(result, indent=2) + "\n"


def _object(value: object, where: str, known: Iterable[str]) -> dict[str, object]:
    if not isinstance(value, dict):
        raise _schema(f"{where} must be a JSON object, got {json.dumps(value)[:40]}")
    names = tuple(known)
    unknown = sorted(set(value) - set(names))
    if unknown:
        raise _schema(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(names)})")
    return value


def _hex(value: object, where: str, length: int) -> bytes:
    if isinstance(value, str) and re.fullmatch(f"[0-9a-fA-F]{{{2 * length}}}", value):
        return bytes.fromhex(value)
    raise _schema(f"{where} must be {2 * length} hex digits, got {json.dumps(value)[:80]}")


def _issued_at(value: object) -> int:
    if type(value) is int:
        return value
    if isinstance(value, str) and value.endswith("Z"):
        try:
            moment = datetime.fromisoformat(value[:-1] + "+00:00")
        except ValueError:
            pass
        else:
            if moment.microsecond == 0:
                return int(moment.timestamp())
    raise _schema(
        'issued_at must be UTC seconds or a time like "2025-10-09T08:53:20Z", '
        f"got {json.dumps(value)}"
    )


def _section(config: dict[str, object], name: str) -> dict[str, object]:
    return _object(config.get(name, {}), "config." + name, _JSON_SECTIONS[name])


def _json_config(value: object) -> GatewayConfig:
    config = _object(value, "config", _JSON_SECTIONS)
    radio = _section(config, "radio")
    batch = _section(config, "batch")
    health = _section(config, "health")
    outbox = _section(config, "outbox")
    mqtt = _section(config, "mqtt")
    if "url" not in mqtt:
        raise _schema('config.mqtt.url is required (e.g. "mqtt://broker.example:1883")')
    fields: dict[str, object] = {"mqtt_url": mqtt["url"]}
    for section, key, name in (
        (radio, "backend", "radio_backend"),
        (radio, "tx_power_dbm", "tx_power_dbm"),
        (batch, "max_readings", "batch_max_readings"),
        (batch, "max_age_ms", "batch_max_age_ms"),
        (health, "interval_s", "health_interval_s"),
        (outbox, "max_bytes", "outbox_max_bytes"),
        (mqtt, "keepalive_s", "mqtt_keepalive_s"),
        (mqtt, "credentials", "mqtt_credentials"),
        (config, "log_level", "log_level"),
    ):
        if key in section:
            fields[name] = section[key]
    if "channels" in radio:
        raw = radio["channels"]
        if not isinstance(raw, list):
            raise _schema("config.radio.channels must be an array of objects")
        channels = []
        for index, item in enumerate(raw):
            where = f"config.radio.channels[{index}]"
            entry = _object(item, where, ("frequency_hz", "bandwidth_hz", "spreading_factors"))
            if "frequency_hz" not in entry:
                raise _schema(where + ".frequency_hz is required")
            sfs = entry.get("spreading_factors", list(SPREADING_FACTORS[2:]))
            if not isinstance(sfs, list):
                raise _schema(where + ".spreading_factors must be an array of integers")
            channel = _make_channel(
                entry["frequency_hz"], entry.get("bandwidth_hz", 125_000), tuple(sfs), where
            )
            channels.append(channel)
        fields["channels"] = tuple(channels)
    elif fields.get("radio_backend") == "rak3172":
        fields["channels"] = (Channel(frequency_hz=868_100_000, spreading_factors=(7,)),)
    if "devices" in config:
        raw_devices = config["devices"]
        if not isinstance(raw_devices, list):
            raise _schema("config.devices must be an array of DevEUIs (16 hex digits)")
        fields["devices"] = tuple(
            _hex(item, f"config.devices[{index}]", EUI64_LENGTH)
            for index, item in enumerate(raw_devices)
        )
    return GatewayConfig(**fields)  # type: ignore[arg-type]  # checked on construction


def from_json(text: str | bytes) -> ConfigDocument:
    """Read the JSON form (``doc.json``). A ``content_hash``, when present, must match the
    config (reason ``hash``): a person who edits the settings drops or updates it."""
    try:
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError) as err:
        raise ConfigDocumentError(f"not JSON: {err}", "json") from err
    top = _object(value, "the document", _JSON_TOP)
    for required in ("seq", "target", "config"):
        if required not in top:
            raise _schema(f"the document needs {required!r}")
    target_value = _object(top["target"], "target", ("gateway", "group"))
    if len(target_value) != 1:
        raise _schema('target is {"gateway": "<16 hex digits>"} or {"group": "<name>"}')
    target: bytes | str
    if "gateway" in target_value:
        gateway = target_value["gateway"]
        if not (isinstance(gateway, str) and _GATEWAY_HEX.fullmatch(gateway)):
            raise _schema(f"target.gateway must be 16 lowercase hex digits, got {gateway!r}")
        target = bytes.fromhex(gateway)
    else:
        target = _text(target_value["group"], "target.group")
    issued_at = (
        _issued_at(top["issued_at"]) if "issued_at" in top else int(datetime.now(UTC).timestamp())
    )
    next_key = top.get("next_key")
    doc = ConfigDocument(
        seq=top["seq"],  # type: ignore[arg-type]  # checked on construction
        target=target,
        issued_at=issued_at,
        config=_json_config(top["config"]),
        next_key=None if next_key is None else _hex(next_key, "next_key", PUBLIC_KEY_LENGTH),
    )
    if "content_hash" in top:
        stated = _hex(top["content_hash"], "content_hash", HASH_LENGTH)
        if stated != doc.content_hash:
            raise ConfigDocumentError(
                f"content_hash {stated.hex()} does not match the config, whose SHA-256 is "
                f"{doc.content_hash.hex()} (remove content_hash after editing the config)",
                "hash",
            )
    return doc


# --- signing and verifying ------------------------------------------------------------------------


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of an Ed25519 public key (what ``next_key`` holds)."""
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def sign_config(doc: ConfigDocument, private_key: Ed25519PrivateKey) -> bytes:
    """Encode ``doc`` and sign it (COSE_Sign1, Ed25519, kid of the key) with the config key."""
    return signed.sign(encode(doc), private_key)


def trusted_keys(trusted: signed.Keys) -> dict[bytes, Ed25519PublicKey]:
    """``trusted`` (one key, or a mapping kid -> key) as a mapping by :func:`signed.key_id`."""
    if isinstance(trusted, Ed25519PublicKey):
        return {signed.key_id(trusted): trusted}
    if not isinstance(trusted, Mapping):
        raise TypeError(f"trusted must be Ed25519 public key(s), got {type(trusted).__name__}")
    return dict(trusted)


def verify_config(
    data: bytes,
    trusted: signed.Keys,
    *,
    gateway_id: bytes | None = None,
    groups: Iterable[str] = (),
    last_seq: int | None = None,
) -> ConfigDocument:
    """Verify a signed configuration document as a gateway does; return it, or raise
    :class:`ConfigRejected`.

    In order: the signature under one of the ``trusted`` keys (``signature``; a message that
    is not a well-formed COSE_Sign1 is refused the same way), the schema (``schema``), the
    content hash (``hash``), the target (``wrong_target``: checked when ``gateway_id`` or
    ``groups`` are given; a document must name this gateway or one of its groups) and the
    sequence (``replayed``: ``seq`` not above ``last_seq``, when given). The returned
    document's ``signed_by`` is the key id that verified it.
    """
    if isinstance(groups, str):
        raise TypeError("groups is a collection of group names, not one name: use (name,)")
    keys = trusted_keys(trusted)
    try:
        verified = signed.verify(bytes(data), keys)
    except (SignatureError, CborError, SchemaError) as err:
        raise ConfigRejected(Reason.SIGNATURE, err.message) from err
    try:
        doc = decode(verified.payload)
    except ConfigDocumentError as err:
        reason = Reason.HASH if err.reason == "hash" else Reason.SCHEMA
        raise ConfigRejected(reason, err.message) from err
    member = tuple(groups)
    if gateway_id is not None or member:
        if isinstance(doc.target, bytes):
            if doc.target != gateway_id:
                mine = "this gateway" if gateway_id is None else "gateway " + gateway_id.hex()
                raise ConfigRejected(
                    Reason.WRONG_TARGET,
                    f"the document is for gateway {doc.target.hex()}, not {mine}",
                )
        elif doc.target not in member:
            raise ConfigRejected(
                Reason.WRONG_TARGET,
                f"the document is for group {doc.target!r}; this gateway is in "
                + (", ".join(repr(name) for name in member) or "no group"),
            )
    if last_seq is not None and doc.seq <= last_seq:
        relation = "equal to" if doc.seq == last_seq else "below"
        raise ConfigRejected(
            Reason.REPLAYED,
            f"seq {doc.seq} is {relation} the last applied seq {last_seq} (rollback or replay)",
        )
    # verify() picked the key by this kid from the mapping, so it names the signer.
    object.__setattr__(doc, "signed_by", verified.kid)
    return doc


def next_trusted(doc: ConfigDocument, trusted: signed.Keys) -> dict[bytes, Ed25519PublicKey]:
    """The keys to trust once ``doc`` (as returned by :func:`verify_config`) is applied.

    The rule: after applying a document, a gateway trusts the key that signed it, plus the
    ``next_key`` it names, if any. So the current key introduces the next one by signing a
    document naming it; both are trusted until a document signed by the next key is applied,
    then only the next one (unless that document names yet another). A document signed by
    the current key that names no next key withdraws a pending rotation.
    """
    keys = trusted_keys(trusted)
    signer = doc.signed_by
    if signer is None or signer not in keys:
        raise ValueError(
            "next_trusted needs a document returned by verify_config with these trusted keys"
        )
    result = {signer: keys[signer]}
    if doc.next_key is not None:
        following = Ed25519PublicKey.from_public_bytes(doc.next_key)
        result[signed.key_id(following)] = following
    return result
