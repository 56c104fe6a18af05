"""Scenario files: a district in TOML, its gateways, sensors, traffic and scheduled faults.

:func:`load_scenario` reads a file into frozen dataclasses (:class:`Scenario`) or raises one
:class:`ScenarioError` naming the file, the table (with its index for arrays of tables) and
the key: ``bins.toml: [faults[2]] gateway: unknown gateway 'gw-9' (known: gw-1, gw-2)``.
Unknown tables and keys are errors too. Durations are written ``"90s"``, ``"15m"``, ``"2h"``,
``"1d"`` (parts may be combined: ``"1h30m"``); times of day ``"HH:MM"``.

:meth:`Scenario.expand` places every gateway and sensor (deterministic for a seed: the same
seed gives the same positions) and :meth:`Expanded.radio_world` puts them in a
:class:`~owlgate.hil.radio_world.RadioWorld`. The format reference is ``docs/hil.md``
("Scenarios"); :func:`shipped_scenarios` lists the scenarios that come with the package.
"""

from __future__ import annotations

import logging
import math
import random
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, get_args

from ..codecs.errors import OwlgateError
from ..codecs.payloads import PROFILES
from .faults import DIRECTIONS, Direction, Fault, FaultError
from .radio_world import DEFAULT_DEMODULATOR_PATHS, Device, Gateway, RadioWorld

log = logging.getLogger(__name__)

__all__ = [
    "BackhaulDown",
    "BinFill",
    "BrokerRestart",
    "District",
    "EnvironmentTraffic",
    "Expanded",
    "GatewaySpec",
    "NoisySerial",
    "ParkingDay",
    "PlacedGateway",
    "PlacedSensor",
    "PowerCut",
    "Scenario",
    "ScenarioError",
    "SensorSpec",
    "load_scenario",
    "parse_duration",
    "shipped_scenarios",
]

SCENARIO_DIR: Final = Path(__file__).parent / "scenarios"
Layout = Literal["grid", "random"]
Placement = Literal["line", "area", "cluster"]
Backhaul = Literal["ethernet", "lte", "wifi"]
LAYOUTS: Final[tuple[Layout, ...]] = get_args(Layout)
PLACEMENTS: Final[tuple[Placement, ...]] = get_args(Placement)
BACKHAULS: Final[tuple[Backhaul, ...]] = get_args(Backhaul)
#: The traffic pattern of each profile (a pattern drives the sensors of its profile).
PATTERN_PROFILES: Final = {
    "parking-day": "parking-v1",
    "bin-fill": "waste-bin-v1",
    "environment": "environment-v1",
}
#: Serial fault kinds a noisy cable may show, each fired at random (``hil/faults.py``).
NOISY_KINDS: Final = ("corrupt", "drop", "insert", "reset")
_SECTIONS: Final = ("district", "gateways", "sensors", "traffic", "faults")
_UNITS_S: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_TIME_OF_DAY: Final = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")
_MAX_COUNT: Final = 1_000_000


class ScenarioError(OwlgateError):
    """A scenario file that cannot be used: unreadable, not TOML, an unknown or missing key, a
    value out of range, a fault naming a gateway the scenario does not have.

    ``file`` is the file as given, ``table`` the table (``district``, ``sensors[1]``) and
    ``key`` the key (None when the problem is the file or the whole table); ``message`` puts
    them on one line: ``city.toml: [sensors[1]] count: must be ...``.
    """

    def __init__(self, file: str, table: str | None, key: str | None, problem: str) -> None:
        where = file
        if table is not None:
            where += f": [{table}]"
        if key is not None:
            where += f" {key}" if table is not None else f": {key}"
        super().__init__(f"{where}: {problem}")
        self.file = file
        self.table = table
        self.key = key
        self.problem = problem
        self.message = f"{where}: {problem}"


def parse_duration(text: str) -> float:
    """Seconds in ``"90s"``, ``"15m"``, ``"2h"``, ``"1d"`` or ``"1h30m"``; ValueError if not."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"not a duration: {text!r}")
    total = 0.0
    position = 0
    for match in _DURATION.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNITS_S[match.group(2)]
        position = match.end()
    if position != len(text):
        raise ValueError(f"not a duration: {text!r}")
    return total


@dataclass(frozen=True, slots=True)
class District:
    """The area (metres, origin at one corner), the run's seed, length and start time of day."""

    name: str
    width_m: float
    height_m: float
    seed: int
    duration_s: float
    start_s: float


@dataclass(frozen=True, slots=True)
class GatewaySpec:
    """One ``[[gateways]]`` entry: either one gateway (``ids`` of one, ``position``) or
    ``count`` gateways laid out as a grid or at random, named ``{prefix}-{n}``."""

    ids: tuple[str, ...]
    layout: Layout | None
    position: tuple[float, float] | None
    demodulator_paths: int
    backhaul: Backhaul


@dataclass(frozen=True, slots=True)
class SensorSpec:
    """One ``[[sensors]]`` entry: ``count`` sensors of ``profile`` named ``{prefix}-{n}``."""

    profile: str
    count: int
    prefix: str
    placement: Placement
    # line: the two ends; area: (x0, y0), (x1, y1); cluster: the centres.
    points: tuple[tuple[float, float], ...]
    radius_m: float
    report_interval_s: float


@dataclass(frozen=True, slots=True)
class ParkingDay:
    """Parking bays: ``occupancy[h]`` is the chance a bay is taken in hour ``h`` of the day."""

    occupancy: tuple[float, ...]
    profile: str = "parking-v1"


@dataclass(frozen=True, slots=True)
class BinFill:
    """Bins fill by ``fill_per_hour`` percent and are emptied at these times of day (s)."""

    fill_per_hour: float
    emptied_at_s: tuple[float, ...]
    profile: str = "waste-bin-v1"


@dataclass(frozen=True, slots=True)
class EnvironmentTraffic:
    """Environment sensors report steadily at their interval."""

    profile: str = "environment-v1"


Traffic = ParkingDay | BinFill | EnvironmentTraffic


@dataclass(frozen=True, slots=True)
class BackhaulDown:
    """The backhaul of ``gateways`` is down from ``at_s`` (since the start) for ``duration_s``."""

    gateways: tuple[str, ...]
    at_s: float
    duration_s: float


@dataclass(frozen=True, slots=True)
class PowerCut:
    """``gateway`` loses power at ``at_s`` and comes back ``duration_s`` later."""

    gateway: str
    at_s: float
    duration_s: float


@dataclass(frozen=True, slots=True)
class NoisySerial:
    """The serial cable of ``gateway`` is noisy from ``at_s`` for ``duration_s``."""

    gateway: str
    at_s: float
    duration_s: float
    kinds: tuple[str, ...]
    probability: float
    direction: Direction

    def serial_faults(self) -> tuple[Fault, ...]:
        """The :class:`~owlgate.hil.faults.Fault` plan the cable applies while noisy."""
        return tuple(
            Fault(kind, self.direction, probability=self.probability)  # type: ignore[arg-type]
            for kind in self.kinds
        )


@dataclass(frozen=True, slots=True)
class BrokerRestart:
    """The MQTT broker stops at ``at_s`` and is back ``duration_s`` later."""

    at_s: float
    duration_s: float


ScheduledFault = BackhaulDown | PowerCut | NoisySerial | BrokerRestart


@dataclass(frozen=True, slots=True)
class PlacedGateway:
    """A gateway of an expanded scenario, ready for the radio world."""

    gateway: Gateway
    backhaul: Backhaul


@dataclass(frozen=True, slots=True)
class PlacedSensor:
    """A sensor of an expanded scenario, ready for the radio world."""

    device: Device
    profile: str
    report_interval_s: float


@dataclass(frozen=True, slots=True)
class Expanded:
    """Every gateway and sensor of a scenario at its position, for one seed."""

    seed: int
    gateways: tuple[PlacedGateway, ...]
    sensors: tuple[PlacedSensor, ...]

    def radio_world(self) -> RadioWorld:
        """A :class:`RadioWorld` of these gateways and sensors, shadowing seeded alike."""
        return RadioWorld(
            (g.gateway for g in self.gateways), (s.device for s in self.sensors), seed=self.seed
        )


@dataclass(frozen=True, slots=True)
class Scenario:
    """A scenario file, validated (see the module text)."""

    file: str
    district: District
    gateways: tuple[GatewaySpec, ...]
    sensors: tuple[SensorSpec, ...]
    traffic: tuple[Traffic, ...]
    faults: tuple[ScheduledFault, ...]

    @property
    def gateway_ids(self) -> tuple[str, ...]:
        return tuple(gateway_id for spec in self.gateways for gateway_id in spec.ids)

    @property
    def sensor_count(self) -> int:
        return sum(spec.count for spec in self.sensors)

    def expand(self, seed: int | None = None) -> Expanded:
        """Place every gateway and sensor; ``seed`` defaults to the district's."""
        seed = self.district.seed if seed is None else seed
        width, height = self.district.width_m, self.district.height_m
        gateways: list[PlacedGateway] = []
        for index, gw in enumerate(self.gateways):
            rng = random.Random(f"{seed}:gateways:{index}")
            if gw.position is not None:
                positions = [gw.position]
            elif gw.layout == "grid":
                positions = _grid(len(gw.ids), width, height)
            else:
                positions = [(rng.uniform(0, width), rng.uniform(0, height)) for _ in gw.ids]
            gateways.extend(
                PlacedGateway(Gateway(gateway_id, x, y, gw.demodulator_paths), gw.backhaul)
                for gateway_id, (x, y) in zip(gw.ids, positions, strict=True)
            )
        sensors: list[PlacedSensor] = []
        for index, spec in enumerate(self.sensors):
            rng = random.Random(f"{seed}:sensors:{index}")
            for n, (x, y) in enumerate(_place(spec, rng)):
                x = min(max(x, 0.0), width)
                y = min(max(y, 0.0), height)
                device = Device(f"{spec.prefix}-{n + 1:05d}", x, y)
                sensors.append(PlacedSensor(device, spec.profile, spec.report_interval_s))
        return Expanded(seed, tuple(gateways), tuple(sensors))


def _grid(count: int, width: float, height: float) -> list[tuple[float, float]]:
    columns = max(1, math.ceil(math.sqrt(count * width / height)))
    rows = math.ceil(count / columns)
    return [
        ((n % columns + 0.5) * width / columns, (n // columns + 0.5) * height / rows)
        for n in range(count)
    ]


def _place(spec: SensorSpec, rng: random.Random) -> list[tuple[float, float]]:
    if spec.placement == "line":
        (x0, y0), (x1, y1) = spec.points
        steps = [(n + 0.5) / spec.count for n in range(spec.count)]
        return [(x0 + (x1 - x0) * t, y0 + (y1 - y0) * t) for t in steps]
    if spec.placement == "area":
        (x0, y0), (x1, y1) = spec.points
        return [(rng.uniform(x0, x1), rng.uniform(y0, y1)) for _ in range(spec.count)]
    out = []
    for n in range(spec.count):
        cx, cy = spec.points[n % len(spec.points)]
        # Uniform over the disc: the radius goes with the square root of a uniform draw.
        r = spec.radius_m * math.sqrt(rng.random())
        a = rng.uniform(0.0, 2.0 * math.pi)
        out.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return out


def _show(value: object) -> str:
    return repr(value) if isinstance(value, str) else str(value)


class _Table:
    """One table of the file, read key by key; :meth:`done` refuses the keys left over."""

    def __init__(self, file: str, name: str, table: object) -> None:
        self.file = file
        self.name = name
        if not isinstance(table, dict):
            raise ScenarioError(file, name, None, f"must be a table, got {_show(table)}")
        self._table: dict[str, object] = dict(table)

    def fail(self, key: str | None, problem: str) -> ScenarioError:
        return ScenarioError(self.file, self.name, key, problem)

    def has(self, key: str) -> bool:
        return key in self._table

    def raw(self, key: str, wanted: str, default: object = None) -> object:
        if key not in self._table:
            if default is None:
                raise self.fail(key, f"required ({wanted})")
            return default
        return self._table.pop(key)

    def text(self, key: str, default: str | None = None) -> str:
        value = self.raw(key, "a non-empty string", default)
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"must be a non-empty string, got {_show(value)}")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str | None = None) -> str:
        wanted = f"one of {', '.join(choices)}"
        value = self.raw(key, wanted, default)
        if value not in choices:
            raise self.fail(key, f"must be {wanted}, got {_show(value)}")
        return str(value)

    def integer(self, key: str, low: int, high: int, default: int | None = None) -> int:
        wanted = f"an integer {low}..{high}"
        value = self.raw(key, wanted, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(key, f"must be {wanted}, got {_show(value)}")
        return value

    def number(self, key: str, low: float, high: float, default: float | None = None) -> float:
        wanted = f"a number {low:g}..{high:g}"
        value = self.raw(key, wanted, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, f"must be {wanted}, got {_show(value)}")
        if not low <= value <= high:
            raise self.fail(key, f"must be {wanted}, got {_show(value)}")
        return float(value)

    def duration(self, key: str, default: str | None = None, *, positive: bool = True) -> float:
        wanted = 'a duration such as "90s", "15m", "2h", "1d"'
        value = self.raw(key, wanted, default)
        try:
            seconds = parse_duration(value)  # type: ignore[arg-type]
        except ValueError:
            raise self.fail(key, f"must be {wanted}, got {_show(value)}") from None
        if positive and seconds <= 0:
            raise self.fail(key, f"must be longer than zero, got {_show(value)}")
        return seconds

    def time_of_day(self, value: object, key: str) -> float:
        match = _TIME_OF_DAY.fullmatch(value) if isinstance(value, str) else None
        if match is None:
            raise self.fail(key, f'must be a time of day "HH:MM", got {_show(value)}')
        return int(match.group(1)) * 3600.0 + int(match.group(2)) * 60.0

    def point(self, key: str, district: District, value: object = None) -> tuple[float, float]:
        value = self.raw(key, "[x, y] in metres") if value is None else value
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        ):
            raise self.fail(key, f"must be [x, y] in metres, got {_show(value)}")
        x, y = float(value[0]), float(value[1])
        if not (0 <= x <= district.width_m and 0 <= y <= district.height_m):
            raise self.fail(
                key,
                f"[{x:g}, {y:g}] is outside the district "
                f"(0..{district.width_m:g} x 0..{district.height_m:g} m)",
            )
        return x, y

    def done(self) -> None:
        if self._table:
            raise self.fail(sorted(self._table)[0], "unknown key")


def _array(file: str, data: dict[str, object], name: str) -> list[object]:
    value = data.get(name, [])
    if not isinstance(value, list):
        raise ScenarioError(file, name, None, f"must be an array of tables ([[{name}]])")
    return value


def load_scenario(path: str | Path) -> Scenario:
    """Read and check a scenario file (see the module text); :class:`ScenarioError` if bad."""
    try:
        return _load(path)
    except ScenarioError as err:
        log.warning("scenario refused: %s", err.message)
        raise


def _load(path: str | Path) -> Scenario:
    file = str(path)
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise ScenarioError(file, None, None, f"cannot read: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise ScenarioError(file, None, None, f"not UTF-8 text: {err.reason}") from err
    except tomllib.TOMLDecodeError as err:
        raise ScenarioError(file, None, None, f"not valid TOML: {err}") from err
    unknown = sorted(set(data) - set(_SECTIONS))
    if unknown:
        raise ScenarioError(
            file, unknown[0], None, f"unknown table (known: {', '.join(_SECTIONS)})"
        )
    if "district" not in data:
        raise ScenarioError(file, "district", None, "required table missing")
    district = _district(_Table(file, "district", data["district"]))
    gateways = tuple(
        _gateway(_Table(file, f"gateways[{i}]", t), district)
        for i, t in enumerate(_array(file, data, "gateways"))
    )
    if not gateways:
        raise ScenarioError(file, "gateways", None, "at least one [[gateways]] entry is required")
    ids = [gateway_id for spec in gateways for gateway_id in spec.ids]
    duplicates = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) < len(ids) else []
    if duplicates:
        raise ScenarioError(file, "gateways", "id", f"gateway {duplicates[0]!r} is declared twice")
    sensors = tuple(
        _sensor(_Table(file, f"sensors[{i}]", t), district)
        for i, t in enumerate(_array(file, data, "sensors"))
    )
    prefixes = [spec.prefix for spec in sensors]
    for index, prefix in enumerate(prefixes):
        if prefix in prefixes[:index]:
            raise ScenarioError(
                file, f"sensors[{index}]", "prefix", f"{prefix!r} is used by another entry"
            )
    profiles = {spec.profile for spec in sensors}
    traffic: list[Traffic] = []
    for i, t in enumerate(_array(file, data, "traffic")):
        pattern = _traffic(_Table(file, f"traffic[{i}]", t), profiles)
        if any(type(p) is type(pattern) for p in traffic):
            raise ScenarioError(file, f"traffic[{i}]", "pattern", "the pattern is given twice")
        traffic.append(pattern)
    known = set(ids)
    faults = tuple(
        _fault(_Table(file, f"faults[{i}]", t), district, known)
        for i, t in enumerate(_array(file, data, "faults"))
    )
    scenario = Scenario(file, district, gateways, sensors, tuple(traffic), faults)
    log.debug(
        "scenario %s: %d gateways, %d sensors, %d faults",
        district.name,
        len(ids),
        scenario.sensor_count,
        len(faults),
    )
    return scenario


def _district(table: _Table) -> District:
    name = table.text("name")
    size = table.raw("size", "[width, height] in metres")
    if (
        not isinstance(size, list)
        or len(size) != 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise table.fail("size", f"must be [width, height] in metres above 0, got {_show(size)}")
    seed = table.integer("seed", 0, 2**63 - 1, 0)
    duration_s = table.duration("duration", "1d")
    start = table.raw("start", '"HH:MM"', "00:00")
    start_s = table.time_of_day(start, "start")
    table.done()
    return District(name, float(size[0]), float(size[1]), seed, duration_s, start_s)


def _gateway(table: _Table, district: District) -> GatewaySpec:
    demodulator_paths = table.integer("demodulator_paths", 1, 64, DEFAULT_DEMODULATOR_PATHS)
    backhaul = table.choice("backhaul", BACKHAULS, "ethernet")
    if table.has("count"):
        if table.has("id"):
            raise table.fail("id", "give either id (one gateway) or count (several), not both")
        count = table.integer("count", 1, _MAX_COUNT)
        layout = table.choice("layout", LAYOUTS, "grid")
        prefix = table.text("prefix", "gw")
        table.done()
        ids = tuple(f"{prefix}-{n + 1:03d}" for n in range(count))
        return GatewaySpec(ids, layout, None, demodulator_paths, backhaul)  # type: ignore[arg-type]
    gateway_id = table.text("id")
    position = table.point("position", district)
    table.done()
    return GatewaySpec((gateway_id,), None, position, demodulator_paths, backhaul)  # type: ignore[arg-type]


def _sensor(table: _Table, district: District) -> SensorSpec:
    profile = table.text("profile")
    if profile not in PROFILES:
        raise table.fail(
            "profile", f"unknown profile {profile!r} (known: {', '.join(sorted(PROFILES))})"
        )
    count = table.integer("count", 1, _MAX_COUNT)
    prefix = table.text("prefix", profile.removesuffix("-v1"))
    placement = table.choice("placement", PLACEMENTS)
    radius_m = 0.0
    points: tuple[tuple[float, float], ...]
    if placement == "line":
        points = (table.point("from", district), table.point("to", district))
    elif placement == "area":
        if table.has("area"):
            area = table.raw("area", "[x0, y0, x1, y1]")
            if not isinstance(area, list) or len(area) != 4:
                raise table.fail("area", f"must be [x0, y0, x1, y1] in metres, got {_show(area)}")
            low = table.point("area", district, area[:2])
            high = table.point("area", district, area[2:])
            if not (low[0] < high[0] and low[1] < high[1]):
                raise table.fail("area", "x0 < x1 and y0 < y1 are required")
            points = (low, high)
        else:
            points = ((0.0, 0.0), (district.width_m, district.height_m))
    else:
        centres = table.raw("centres", "a list of [x, y]")
        if not isinstance(centres, list) or not centres:
            raise table.fail("centres", f"must be a list of [x, y], got {_show(centres)}")
        points = tuple(table.point("centres", district, c) for c in centres)
        radius_m = table.number("radius_m", 0.0, 1e6)
    report_interval_s = table.duration("report_interval", "10m")
    table.done()
    return SensorSpec(
        profile,
        count,
        prefix,
        placement,  # type: ignore[arg-type]
        points,
        radius_m,
        report_interval_s,
    )


def _traffic(table: _Table, profiles: set[str]) -> Traffic:
    pattern = table.choice("pattern", tuple(PATTERN_PROFILES))
    profile = PATTERN_PROFILES[pattern]
    if profile not in profiles:
        raise table.fail("pattern", f"{pattern} drives {profile} sensors, and there are none")
    result: Traffic
    if pattern == "parking-day":
        occupancy = table.raw("occupancy", "24 probabilities, one per hour")
        if (
            not isinstance(occupancy, list)
            or len(occupancy) != 24
            or not all(
                isinstance(p, int | float) and not isinstance(p, bool) and 0 <= p <= 1
                for p in occupancy
            )
        ):
            raise table.fail(
                "occupancy", f"must be 24 numbers 0..1 (one per hour), got {_show(occupancy)}"
            )
        result = ParkingDay(tuple(float(p) for p in occupancy))
    elif pattern == "bin-fill":
        fill = table.number("fill_per_hour", 0.0, 100.0)
        emptied = table.raw("emptied_at", 'a list of "HH:MM"', [])
        if not isinstance(emptied, list):
            raise table.fail("emptied_at", f'must be a list of "HH:MM", got {_show(emptied)}')
        times = tuple(sorted(table.time_of_day(t, "emptied_at") for t in emptied))
        result = BinFill(fill, times)
    else:
        result = EnvironmentTraffic()
    table.done()
    return result


def _gateway_ref(table: _Table, key: str, value: object, known: set[str]) -> str:
    if not isinstance(value, str) or value not in known:
        shown = ", ".join(sorted(known)[:5]) + (", ..." if len(known) > 5 else "")
        raise table.fail(key, f"unknown gateway {_show(value)} (known: {shown})")
    return value


def _fault(table: _Table, district: District, known: set[str]) -> ScheduledFault:
    kind = table.choice("kind", ("backhaul_down", "power_cut", "noisy_serial", "broker_restart"))
    at_s = table.duration("at", positive=False)
    duration_s = table.duration("duration", "30s" if kind == "broker_restart" else None)
    if at_s >= district.duration_s:
        raise table.fail("at", "must be before the end of the scenario ([district] duration)")
    result: ScheduledFault
    if kind == "backhaul_down":
        gateways = table.raw("gateways", "a list of gateway ids")
        if not isinstance(gateways, list) or not gateways:
            raise table.fail("gateways", f"must be a list of gateway ids, got {_show(gateways)}")
        ids = tuple(_gateway_ref(table, "gateways", g, known) for g in gateways)
        result = BackhaulDown(ids, at_s, duration_s)
    elif kind == "broker_restart":
        result = BrokerRestart(at_s, duration_s)
    else:
        gateway = _gateway_ref(table, "gateway", table.raw("gateway", "a gateway id"), known)
        if kind == "power_cut":
            result = PowerCut(gateway, at_s, duration_s)
        else:
            kinds = table.raw("kinds", "a list of serial fault kinds", ["corrupt"])
            if not isinstance(kinds, list) or not kinds or not all(k in NOISY_KINDS for k in kinds):
                raise table.fail(
                    "kinds", f"must be a list of {', '.join(NOISY_KINDS)}, got {_show(kinds)}"
                )
            probability = table.number("probability", 0.0, 1.0)
            direction = table.choice("direction", DIRECTIONS, "to_host")
            result = NoisySerial(
                gateway,
                at_s,
                duration_s,
                tuple(str(k) for k in kinds),
                probability,
                direction,  # type: ignore[arg-type]
            )
            try:
                result.serial_faults()
            except FaultError as err:
                raise table.fail("kinds", str(err)) from err
    table.done()
    return result


def shipped_scenarios() -> tuple[Path, ...]:
    """The scenario files that come with the package, sorted by name."""
    return tuple(sorted(SCENARIO_DIR.glob("*.toml")))
