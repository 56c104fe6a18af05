"""Device profiles: which decoder reads a device's uplinks and which encoder writes its settings.

A *profile* names one kind of device payload (``parking-v1``, ``waste-bin-v1``,
``environment-v1``): the FPorts it uses, the values its decoder produces with their units and
ranges, the settings its downlinks carry, and the functions that do the work. The edge looks
a device's profile up when it decrypts an uplink (:func:`decode_uplink`), the fleet when it
sends node settings (:func:`encode_settings`), the hardware emulators when they play the
device (:func:`encode_uplink`, :func:`decode_settings`).

The built-in profiles wrap the node-side codecs of :mod:`owlgate.codecs.node.payloads`, which
also run on MicroPython; the byte layouts are in ``docs/formats/device-payloads.md``. A
registry is a read-only mapping: :meth:`ProfileRegistry.with_profiles` returns a new one with
more profiles, and every function here takes ``registry=`` for that. Every error is a
:class:`PayloadError` (an unknown or clashing profile the subclass :class:`ProfileError`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from .errors import PayloadError
from .node import payloads as node

__all__ = [
    "MAX_PAYLOAD_SF12",
    "PROFILES",
    "Profile",
    "ProfileError",
    "ProfileRegistry",
    "Quantity",
    "SettingsDownlink",
    "decode_settings",
    "decode_uplink",
    "describe",
    "encode_settings",
    "encode_uplink",
    "get_profile",
]

#: EU868 DR0 (SF12) application payload limit, LoRaWAN Regional Parameters (see the node module).
MAX_PAYLOAD_SF12: Final = node.MAX_PAYLOAD_SF12


class ProfileError(PayloadError):
    """A device profile that is not registered, registered twice, or malformed."""


@dataclass(frozen=True, slots=True)
class Quantity:
    """One value a profile's decoder produces, or one setting its downlinks carry.

    ``kind`` is ``"bool"``, ``"int"``, ``"float"`` or ``"command"`` (a setting without a value,
    given as True). A float travels as a whole number of ``step``; ``minimum`` and ``maximum``
    bound what the encoder accepts. ``optional`` values may be missing from a decoded
    measurement (the sensor sent "not measured").
    """

    name: str
    unit: str
    kind: str
    minimum: int | float | None = None
    maximum: int | float | None = None
    step: int | float | None = None
    optional: bool = False

    def describe(self) -> dict[str, object]:
        """A JSON-ready description."""
        return {
            "name": self.name,
            "unit": self.unit,
            "kind": self.kind,
            "minimum": self.minimum,
            "maximum": self.maximum,
            "step": self.step,
            "optional": self.optional,
        }


@dataclass(frozen=True, slots=True)
class Profile:
    """A device payload profile: identity, FPorts, the values it carries, and its codecs.

    ``fports`` are the uplink FPorts; ``decode(f_port, payload)`` turns an uplink into values
    and ``encode(values)`` returns ``(f_port, payload)``. ``settings_fport`` and the settings
    codecs are None for a profile without settings downlinks: ``encode_settings(seq,
    settings)`` returns the downlink, ``decode_settings(payload)`` ``(seq, settings)``.
    ``quantise(values)`` rounds floats to the steps the payload carries, where the profile has
    steps. Every callable raises :class:`PayloadError` and nothing else on bad input.
    """

    id: str
    name: str
    description: str
    vendor: str
    fports: tuple[int, ...]
    values: tuple[Quantity, ...]
    decode: Callable[[int, bytes], dict[str, object]] = field(compare=False, repr=False)
    encode: Callable[[dict[str, object]], tuple[int, bytes]] = field(compare=False, repr=False)
    settings_fport: int | None = None
    settings: tuple[Quantity, ...] = ()
    encode_settings: Callable[[int, dict[str, object]], bytes] | None = field(
        default=None, compare=False, repr=False
    )
    decode_settings: Callable[[bytes], tuple[int, dict[str, object]]] | None = field(
        default=None, compare=False, repr=False
    )
    quantise: Callable[[dict[str, object]], dict[str, object]] | None = field(
        default=None, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ProfileError(f"a profile id must be non-empty text, got {self.id!r}")
        ports = (*self.fports, *(() if self.settings_fport is None else (self.settings_fport,)))
        for port in ports:
            # LoRaWAN 1.0.3 section 4.3.2: 1..223 are the application's; 0 is MAC, 224 test.
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 223:
                raise ProfileError(f"profile {self.id}: FPort {port!r} is not 1 .. 223")
        if self.settings_fport in self.fports:
            raise ProfileError(f"profile {self.id}: settings FPort is also an uplink FPort")
        if (self.encode_settings is None) != (self.settings_fport is None) or (
            self.decode_settings is None
        ) != (self.settings_fport is None):
            raise ProfileError(
                f"profile {self.id}: settings_fport, encode_settings and decode_settings go "
                "together"
            )

    def describe(self) -> dict[str, object]:
        """A JSON-ready description: identity, FPorts, values and settings with units."""
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "vendor": self.vendor,
            "fports": list(self.fports),
            "settings_fport": self.settings_fport,
            "values": [quantity.describe() for quantity in self.values],
            "settings": [quantity.describe() for quantity in self.settings],
        }


class ProfileRegistry(Mapping[str, Profile]):
    """Profiles by id; read-only. :meth:`with_profiles` makes a larger one."""

    __slots__ = ("_profiles",)

    def __init__(self, profiles: Iterable[Profile] = ()) -> None:
        table: dict[str, Profile] = {}
        for profile in profiles:
            if not isinstance(profile, Profile):
                raise ProfileError(f"a registry holds Profile objects, got {profile!r}")
            if profile.id in table:
                raise ProfileError(f"device profile {profile.id!r} is registered twice")
            table[profile.id] = profile
        self._profiles = table

    def __getitem__(self, profile_id: str) -> Profile:
        return self._profiles[profile_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._profiles)

    def __len__(self) -> int:
        return len(self._profiles)

    def __repr__(self) -> str:
        return f"ProfileRegistry({sorted(self._profiles)})"

    def with_profiles(self, *profiles: Profile) -> ProfileRegistry:
        """A new registry with these profiles added; ProfileError for an id already present."""
        return ProfileRegistry((*self._profiles.values(), *profiles))


# --- the built-in profiles --------------------------------------------------------------------

_VENDOR = "owlgate reference layout"
_DESCRIPTIONS = {
    "parking-v1": (
        "Ground sensor in a parking bay (magnetometer or radar). Sends a measurement when the "
        "bay becomes occupied or free and at every report interval: occupied, battery, "
        "temperature in 0.1 degC."
    ),
    "waste-bin-v1": (
        "Ultrasonic fill-level sensor under a bin's lid. Sends the fill level (percent of the "
        "configured bin depth), the distance to the rubbish surface, temperature in 0.1 degC "
        "(a fire shows as heat), battery, and a tilt alarm when the bin is knocked over or "
        "being emptied."
    ),
    "environment-v1": (
        "Indoor or outdoor environment sensor: temperature in 0.01 degC, relative humidity in "
        "0.1 %, CO2 in ppm, battery."
    ),
}


def _quantity(name: str, divisor: int, low: int, high: int, unit: str, optional: bool) -> Quantity:
    if divisor == 1:
        return Quantity(name, unit, "int", low, high, None, optional)
    return Quantity(name, unit, "float", low / divisor, high / divisor, 1 / divisor, optional)


def _builtin(profile_id: str) -> Profile:
    name, port, flags, fields, setting_names = node.PROFILES[profile_id]
    values = tuple(Quantity(flag, "", "bool") for flag in flags) + tuple(
        _quantity(value, divisor, low, high, unit, True)
        for value, _, _, divisor, low, high, unit in fields
    )
    settings = tuple(
        Quantity(setting, "", "command")
        if size == 0
        else _quantity(setting, divisor, low, high, unit, False)
        for _, setting, size, _, divisor, low, high, unit in node.SETTINGS_TABLE
        if setting in setting_names
    )

    def decode(f_port: int, payload: bytes) -> dict[str, object]:
        return node.decode_uplink(profile_id, f_port, payload)

    def encode(values: dict[str, object]) -> tuple[int, bytes]:
        return node.encode_uplink(profile_id, values)

    def encode_settings(seq: int, settings: dict[str, object]) -> bytes:
        return node.encode_settings(seq, settings, profile_id)

    def decode_settings(payload: bytes) -> tuple[int, dict[str, object]]:
        return node.decode_settings(payload, profile_id)

    def quantise(values: dict[str, object]) -> dict[str, object]:
        return node.quantise(profile_id, values)

    return Profile(
        id=profile_id,
        name=name,
        description=_DESCRIPTIONS[profile_id],
        vendor=_VENDOR,
        fports=(port, node.PORT_DEVICE),
        values=values,
        decode=decode,
        encode=encode,
        settings_fport=node.PORT_SETTINGS,
        settings=settings,
        encode_settings=encode_settings,
        decode_settings=decode_settings,
        quantise=quantise,
    )


#: The built-in profiles, by id.
PROFILES: Final = ProfileRegistry(_builtin(profile_id) for profile_id in node.PROFILES)

# Units of the device messages every built-in profile shares (FPort 20), for describe().
_DEVICE_UNITS: Final = {
    field[0]: field[6] for field in (*node.STATUS_FIELDS, *node.BOOT_FIELDS) if field[6]
}


class SettingsDownlink(NamedTuple):
    """A decoded settings downlink: its sequence number and the settings, commands as True."""

    seq: int
    settings: dict[str, object]


# --- the calls ----------------------------------------------------------------------------------


def get_profile(profile_id: str, *, registry: Mapping[str, Profile] = PROFILES) -> Profile:
    """The profile registered as ``profile_id``; ProfileError naming the known ids otherwise."""
    profile = registry.get(profile_id) if isinstance(profile_id, str) else None
    if profile is None:
        known = ", ".join(sorted(registry)) or "none"
        raise ProfileError(f"unknown device profile {profile_id!r}; known: {known}")
    return profile


def _payload(payload: object) -> bytes:
    if isinstance(payload, bytes | bytearray | memoryview):
        return bytes(payload)
    raise PayloadError(f"a payload must be bytes, got {type(payload).__name__}")


def _values(values: object, what: str) -> dict[str, object]:
    if not isinstance(values, Mapping):
        raise PayloadError(f"{what} must be a mapping, got {type(values).__name__}")
    return dict(values)


def decode_uplink(
    profile_id: str,
    f_port: int,
    payload: bytes | bytearray | memoryview,
    *,
    registry: Mapping[str, Profile] = PROFILES,
) -> dict[str, object]:
    """The values of an uplink from a device of ``profile_id``, received on ``f_port``.

    A measurement gives the profile's values (names and units of the telemetry table); a
    device message (status, boot, settings ack) gives a dict with ``message`` and its values.
    """
    return get_profile(profile_id, registry=registry).decode(f_port, _payload(payload))


def encode_uplink(
    profile_id: str,
    values: Mapping[str, object],
    *,
    quantise: bool = False,
    registry: Mapping[str, Profile] = PROFILES,
) -> tuple[int, bytes]:
    """``(f_port, payload)`` that a device of ``profile_id`` sends for ``values``.

    What emulated devices call. With ``quantise=True`` floats are first rounded to the steps
    the payload carries (else a value between steps is refused).
    """
    profile = get_profile(profile_id, registry=registry)
    plain = _values(values, "values")
    if quantise and profile.quantise is not None:
        plain = profile.quantise(plain)
    return profile.encode(plain)


def encode_settings(
    profile_id: str,
    settings: Mapping[str, object],
    *,
    seq: int,
    registry: Mapping[str, Profile] = PROFILES,
) -> tuple[int, bytes]:
    """``(f_port, payload)`` of a settings downlink to a device of ``profile_id``.

    ``seq`` (0..255) comes back in the device's settings ack. Settings the profile does not
    have are refused; the payload always fits one downlink at SF12 (:data:`MAX_PAYLOAD_SF12`).
    """
    profile = get_profile(profile_id, registry=registry)
    if profile.encode_settings is None or profile.settings_fport is None:
        raise ProfileError(f"device profile {profile_id} takes no settings downlinks")
    payload = profile.encode_settings(seq, _values(settings, "settings"))
    if len(payload) > MAX_PAYLOAD_SF12:
        raise PayloadError(
            f"settings for {profile_id}: {len(payload)} bytes, more than the "
            f"{MAX_PAYLOAD_SF12} of one downlink at SF12"
        )
    return profile.settings_fport, payload


def decode_settings(
    profile_id: str,
    f_port: int,
    payload: bytes | bytearray | memoryview,
    *,
    registry: Mapping[str, Profile] = PROFILES,
) -> SettingsDownlink:
    """The sequence number and settings of a downlink to a device of ``profile_id``."""
    profile = get_profile(profile_id, registry=registry)
    if profile.decode_settings is None or profile.settings_fport is None:
        raise ProfileError(f"device profile {profile_id} takes no settings downlinks")
    if f_port != profile.settings_fport or isinstance(f_port, bool):
        raise PayloadError(
            f"{profile_id} settings downlinks use FPort {profile.settings_fport}, got {f_port!r}"
        )
    seq, settings = profile.decode_settings(_payload(payload))
    return SettingsDownlink(seq, settings)


def _jsonable(value: object) -> object:
    if isinstance(value, bytes):
        return value.hex()
    return value


def describe(
    profile_id: str,
    f_port: int,
    payload: bytes | bytearray | memoryview,
    *,
    registry: Mapping[str, Profile] = PROFILES,
) -> dict[str, object]:
    """A JSON-ready description of a payload of ``profile_id`` on ``f_port``, either way.

    The settings FPort is read as a downlink, every other FPort as an uplink.
    """
    profile = get_profile(profile_id, registry=registry)
    data = _payload(payload)
    units = {quantity.name: quantity.unit for quantity in profile.values + profile.settings}
    units.update((name, unit) for name, unit in _DEVICE_UNITS.items() if name not in units)
    result: dict[str, object] = {
        "format": "owlgate device payload",
        "profile": profile.id,
        "profile_name": profile.name,
        "f_port": f_port,
    }
    if profile.settings_fport is not None and f_port == profile.settings_fport:
        downlink = decode_settings(profile_id, f_port, data, registry=registry)
        result.update(direction="downlink", message="settings", seq=downlink.seq)
        values = downlink.settings
    else:
        values = decode_uplink(profile_id, f_port, data, registry=registry)
        result.update(direction="uplink", message=values.pop("message", "measurement"))
    result.update(
        size_bytes=len(data),
        max_bytes_sf12=MAX_PAYLOAD_SF12,
        payload=data.hex(),
        values={name: _jsonable(value) for name, value in values.items()},
        units={name: units[name] for name in values if units.get(name)},
    )
    return result
