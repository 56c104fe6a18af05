"""The district simulation: every sensor of a scenario on its schedule, through the radio world.

A :class:`DistrictSim` drives the :class:`~owlgate.hil.devices.EmulatedDevice` of each sensor of
an expanded :class:`~owlgate.hil.scenario.Scenario` in simulated time (t = 0 is the district's
``start`` time of day) and decides, with the scenario's
:class:`~owlgate.hil.radio_world.RadioWorld`, which gateway hears each frame. It is pure and
in-process: no I/O, no clock; the caller (the HIL runner) calls :meth:`~DistrictSim.step` with
the simulated time it has reached, feeds each :class:`Uplink`'s receptions to the gateways'
concentrators, reports the counter values it used (:meth:`~DistrictSim.heard_at`) and hands the
concentrators' TX requests back (:meth:`~DistrictSim.downlink`). The same scenario, devices and
seed give the same uplinks.

**Schedules** follow the scenario's traffic patterns. Environment sensors report every
``report_interval_s`` from a random phase, each interval jittered by +-1 %. Parking bays
alternate between taken and free: a stay lasts :data:`PARKING_MIN_STAY_S` plus an exponential
draw (mean :data:`PARKING_MEAN_STAY_S` in all), and cars arrive at a free bay at a rate set
hour by hour so that the share of time taken is the hour's ``occupancy`` chance ``p`` (an
alternating renewal process: arrival rate = p / ((1 - p) x mean stay)); a bay reports on every
change and otherwise sends a heartbeat one interval after its last uplink. Bins fill at
``fill_per_hour`` (x0.6..1.4 per bin), are emptied (to 0..3 %) at each ``emptied_at`` time of
day plus a per-bin offset of up to :data:`BIN_ROUND_S` (the truck's round), and report at the
interval. The devices carry those values
(:meth:`~owlgate.hil.devices.EmulatedDevice.set_state`). A settings downlink that changes a
device's ``report_interval_s`` reschedules its next report.

**Radio**: each transmission goes out on one of the eight EU868 default uplink channels
(:data:`EU868_UPLINK_CHANNELS_HZ`) at random, at the device's spreading factor: the lowest of
SF7..SF12 whose sensitivity its strongest link clears by :data:`SF_MARGIN_DB` (a static ADR),
SF12 if none does. A transmission the device's 1 % duty cycle does not allow is deferred to
the earliest time it fits (``duty_deferred``); a device does not start a frame before its
receive windows after the previous one have closed. Transmissions are batched per
:meth:`~DistrictSim.step`, so collisions are decided among the frames of one step.

**Confirmed uplinks** (``EmulatedDevice.confirmed``): until a data down frame with the ACK bit
arrives, the same frame (same FCnt) is sent again ACK_TIMEOUT (2 +- 1 s) after the RX2 window,
up to :data:`MAX_TRANSMISSIONS` transmissions in all (LoRaWAN 1.0.3 section 18.1, NbTrans).

**Joins**: an OTAA device without a session sends join requests, each with a new DevNonce,
:data:`JOIN_BACKOFF_S` apart (30 s doubling to at most 10 min, +-20 % jitter), until it takes a
join accept; then it sends data. Downlinks are matched to the device's receive window by the
counter value of the gateway that heard the uplink: RX1 is RECEIVE_DELAY1 (1 s) after a data
uplink and JOIN_ACCEPT_DELAY1 (5 s) after a join request, on the uplink's channel and SF
(LoRaWAN 1.0.3 sections 3.3 and 6.2.6, EU868 defaults); a device takes one downlink per window.
"""

from __future__ import annotations

import heapq
import logging
import math
import random
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Final, Literal

from ..codecs.concentrator import TxRequest
from ..codecs.errors import LorawanError, OwlgateError
from ..codecs.lorawan import DataFrame, MType
from .devices import RECEIVE_DELAY1_US, DeviceError, EmulatedDevice
from .radio_world import (
    SNR_FLOOR_DB,
    DutyCycle,
    LossCause,
    RadioWorld,
    Transmission,
    airtime_s,
    sensitivity_dbm,
)
from .scenario import BinFill, Expanded, ParkingDay, PlacedSensor, Scenario

log = logging.getLogger(__name__)

__all__ = [
    "EU868_UPLINK_CHANNELS_HZ",
    "DistrictError",
    "DistrictSim",
    "DistrictTruth",
    "Heard",
    "SensorTruth",
    "Uplink",
]

#: EU868's three mandatory channels and the five more of a full eight-channel gateway
#: (RP002-1.0.3 section 2.4.2; the usual network plan for 867.1..867.9 MHz).
EU868_UPLINK_CHANNELS_HZ: Final = (
    868_100_000,
    868_300_000,
    868_500_000,
    867_100_000,
    867_300_000,
    867_500_000,
    867_700_000,
    867_900_000,
)
#: The static ADR: the strongest link must clear the SF's sensitivity by this much.
SF_MARGIN_DB: Final = 5.0
#: A confirmed frame is sent at most this many times (NbTrans for confirmed uplinks).
MAX_TRANSMISSIONS: Final = 4
#: RX2 opens RECEIVE_DELAY2 after the end of an uplink (EU868: 2 s); ACK_TIMEOUT 2 +- 1 s.
RECEIVE_DELAY2_S: Final = 2.0
ACK_TIMEOUT_S: Final = 2.0
#: JOIN_ACCEPT_DELAY1 (5 s) and DELAY2 (6 s): a device listens that long after a join request.
JOIN_ACCEPT_DELAY1_US: Final = 5_000_000
JOIN_ACCEPT_DELAY2_S: Final = 6.0
#: The wait before join attempt n + 1 is JOIN_BACKOFF_S[n] (the last repeats), +-20 %.
JOIN_BACKOFF_S: Final = (30.0, 60.0, 120.0, 240.0, 480.0, 600.0)
JOIN_JITTER: Final = 0.2
#: The first data uplink after a join accept, this many seconds later (uniform).
AFTER_JOIN_S: Final = (2.0, 10.0)
#: Each report interval is jittered by this fraction, either way.
REPORT_JITTER: Final = 0.01
#: A parking stay: at least 5 minutes, 90 minutes on average.
PARKING_MIN_STAY_S: Final = 300.0
PARKING_MEAN_STAY_S: Final = 5400.0
#: The occupancy chance is kept inside this range so that every gap and stay is finite.
PARKING_P_RANGE: Final = (0.02, 0.98)
#: A bin is emptied up to this long after the scheduled time (the truck's round).
BIN_ROUND_S: Final = 1200.0
#: The fill a bin keeps after emptying, percent (uniform).
BIN_RESIDUAL_PCT: Final = (0.0, 3.0)
#: Per-bin variation of the fill rate (factor, uniform).
BIN_RATE_FACTOR: Final = (0.6, 1.4)
#: A deferred frame goes this long after the duty cycle budget allows it.
DUTY_MARGIN_S: Final = 0.001
#: Receive windows this many recent uplinks of a device are kept for (heard_at, downlink).
WINDOWS_KEPT: Final = 4
#: How a concentrator reports what the radio world says: RSSI in whole dBm inside the
#: protocol's range, SNR in 0.25 dB steps, saturating as an SX130x does at high SNR.
RSSI_RANGE_DBM: Final = (-139, -30)
SNR_RANGE_DB: Final = (-25.0, 15.0)

_U32: Final = 0xFFFFFFFF
_DAY_S: Final = 86_400.0
_GATEWAY_OFF: Final = "gateway_off"
_BELOW: Final = LossCause.BELOW_SENSITIVITY.value
# Event kinds, in the order they are handled when due at the same time.
_CHANGE: Final = 0
_REPORT: Final = 1
_SEND: Final = 2
_JOIN: Final = 3


class DistrictError(OwlgateError):
    """A district simulation used with inputs it cannot run: sensors of the scenario without a
    device, devices of no sensor, a profile mismatch, an unknown gateway."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class Heard:
    """One gateway's reception of one uplink, as its concentrator reports it."""

    gateway_id: str
    rssi_dbm: int
    snr_db: float


@dataclass(frozen=True, slots=True)
class Uplink:
    """One transmission of a sensor and its fate at every gateway in range.

    ``fcnt`` is the 32-bit frame counter (None for a join request); ``values`` the reading the
    payload carries ({} for a join); ``sent_s`` the start in simulated seconds since the
    scenario's start; ``attempt`` 1 for the first transmission of a frame, 2.. for
    retransmissions of the same frame. ``heard``: the gateways that received it, strongest
    first; ``lost``: (gateway id, cause) for each gateway in range that did not, the cause a
    :class:`~owlgate.hil.radio_world.LossCause` value or ``"gateway_off"`` (gateways where it
    stayed below sensitivity are listed only when no gateway heard it); a gateway id of None
    means the device itself did not send it (``duty_cycle``).
    """

    sensor_id: str
    dev_eui: str
    kind: Literal["data", "join"]
    fcnt: int | None
    phy: bytes
    values: dict[str, object]
    sent_s: float
    frequency_hz: int
    sf: int
    airtime_s: float
    confirmed: bool
    attempt: int
    heard: tuple[Heard, ...]
    lost: tuple[tuple[str | None, str], ...]


@dataclass(slots=True)
class SensorTruth:
    """What one sensor did: ``fcnts`` the data frames it sent (each FCnt once, however often it
    was transmitted), ``transmissions`` every frame on air, joins and retransmissions
    included."""

    sensor_id: str
    dev_eui: str
    profile: str
    fcnts: list[int] = field(default_factory=list)
    transmissions: int = 0
    retransmissions: int = 0
    join_requests: int = 0
    joined_at_s: float | None = None
    duty_deferred: int = 0
    acked: int = 0

    @property
    def data_sent(self) -> int:
        """Data frames sent (unique FCnt): the denominator of the delivery ratio."""
        return len(self.fcnts)


@dataclass(frozen=True, slots=True)
class DistrictTruth:
    """The ground truth of a run so far: per sensor, and the totals."""

    until_s: float
    sensors: dict[str, SensorTruth]

    @property
    def data_sent(self) -> int:
        return sum(truth.data_sent for truth in self.sensors.values())


class _Frame:
    """A frame a device has built and not finished sending."""

    __slots__ = ("airtime_s", "attempt", "fcnt", "kind", "phy", "sent", "values")

    def __init__(
        self,
        kind: Literal["data", "join"],
        phy: bytes,
        fcnt: int | None,
        values: dict[str, object],
        airtime: float,
    ) -> None:
        self.kind: Literal["data", "join"] = kind
        self.phy = phy
        self.fcnt = fcnt
        self.values = values
        self.airtime_s = airtime
        self.attempt = 0
        self.sent = 0


class _Window:
    """The receive windows after one uplink: the counter value each gateway stamped it with."""

    __slots__ = ("stamps", "uplink", "used")

    def __init__(self, uplink: Uplink) -> None:
        self.uplink = uplink
        self.stamps: dict[str, int] = {}
        self.used = False


class _Sensor:
    """One sensor's schedule and state in the simulation."""

    __slots__ = (
        "bin_emptied",
        "bin_offset_s",
        "bin_rate",
        "bin_residual",
        "busy_until_s",
        "device",
        "frame",
        "gen",
        "index",
        "interval_s",
        "join_attempts",
        "joining",
        "next_report_s",
        "occupied",
        "placed",
        "sensor_id",
        "sf",
        "truth",
        "windows",
    )

    def __init__(self, index: int, placed: PlacedSensor, device: EmulatedDevice) -> None:
        self.index = index
        self.placed = placed
        self.sensor_id = placed.device.device_id
        self.device = device
        self.interval_s = device.report_interval_s
        self.sf: int | None = None
        self.frame: _Frame | None = None
        # Bumped to cancel the scheduled report / send / join entries of this sensor.
        self.gen = 0
        self.next_report_s = 0.0
        self.busy_until_s = 0.0
        self.join_attempts = 0
        self.joining = False
        self.occupied = False
        self.bin_rate = 0.0
        self.bin_offset_s = 0.0
        self.bin_residual = 0.0
        self.bin_emptied: float | None = None
        self.windows: deque[_Window] = deque(maxlen=WINDOWS_KEPT)
        self.truth = SensorTruth(self.sensor_id, device.dev_eui.hex(), placed.profile)


def _clamp(value: float, low: float, high: float) -> float:
    return low if value < low else high if value > high else value


class DistrictSim:
    """Every sensor of ``scenario`` on its schedule through the radio world (see the module
    text).

    ``devices``: sensor id -> :class:`~owlgate.hil.devices.EmulatedDevice`, one for every sensor
    of the expanded scenario (ABP with its session, or OTAA not yet joined), built by the
    caller from the fleet's keys. ``expanded`` defaults to ``scenario.expand(seed)``; ``seed``
    (default: the district's) fixes every random choice. ``ack_timeout_s`` is ACK_TIMEOUT, the
    wait after RX2 before a confirmed frame is sent again (+- half of it, at most 1 s), and
    ``join_backoff_s`` the waits between join attempts (the last repeats, +-20 %): a runner far
    faster than real time may lengthen both so that an answer that takes wall-clock time can
    still arrive before the device gives up on it.
    """

    def __init__(
        self,
        scenario: Scenario,
        devices: Mapping[str, EmulatedDevice],
        *,
        expanded: Expanded | None = None,
        seed: int | None = None,
        ack_timeout_s: float = ACK_TIMEOUT_S,
        join_backoff_s: Sequence[float] = JOIN_BACKOFF_S,
    ) -> None:
        self.scenario = scenario
        self.seed = scenario.district.seed if seed is None else seed
        self.expanded = scenario.expand(self.seed) if expanded is None else expanded
        self.world: RadioWorld = self.expanded.radio_world()
        self.end_s = scenario.district.duration_s
        self.start_of_day_s = scenario.district.start_s
        if ack_timeout_s <= 0:
            raise DistrictError(f"ack_timeout_s must be above 0, not {ack_timeout_s}")
        self.ack_timeout_s = ack_timeout_s
        if not join_backoff_s or min(join_backoff_s) <= 0:
            raise DistrictError(f"join_backoff_s must be waits above 0, not {join_backoff_s!r}")
        self.join_backoff_s = tuple(join_backoff_s)
        self.counters: Counter[str] = Counter()
        self._rng = random.Random(f"district:{self.seed}")
        ids = [placed.device.device_id for placed in self.expanded.sensors]
        missing = [sensor_id for sensor_id in ids if sensor_id not in devices]
        if missing:
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise DistrictError(f"{len(missing)} sensors of the scenario have no device: {shown}")
        extra = sorted(set(devices) - set(ids))
        if extra:
            shown = ", ".join(extra[:5]) + (", ..." if len(extra) > 5 else "")
            raise DistrictError(f"devices for sensors the scenario does not have: {shown}")
        self._parking: ParkingDay | None = None
        self._bins: BinFill | None = None
        for pattern in scenario.traffic:
            if isinstance(pattern, ParkingDay):
                self._parking = pattern
            elif isinstance(pattern, BinFill):
                self._bins = pattern
        self._gateways = {placed.gateway.gateway_id for placed in self.expanded.gateways}
        self._off: set[str] = set()
        self._sensors: list[_Sensor] = []
        self._by_id: dict[str, _Sensor] = {}
        self._by_addr: dict[int, list[_Sensor]] = {}
        self._joining: dict[str, _Sensor] = {}
        self._duty: list[DutyCycle] = []
        self._heap: list[tuple[float, int, int, int, int]] = []
        self._seq = 0
        self.now_s = 0.0
        for index, placed in enumerate(self.expanded.sensors):
            device = devices[placed.device.device_id]
            if device.profile_id != placed.profile:
                raise DistrictError(
                    f"sensor {placed.device.device_id} is a {placed.profile} sensor, its device "
                    f"a {device.profile_id}"
                )
            sensor = _Sensor(index, placed, device)
            self._sensors.append(sensor)
            self._by_id[sensor.sensor_id] = sensor
            self._duty.append(DutyCycle())
            self._start(sensor)

    # --- scheduling ---------------------------------------------------------------------------

    def _push(self, at_s: float, sensor: _Sensor, kind: int) -> None:
        # Nothing is scheduled before the time the caller has stepped to (a downlink may
        # reschedule a report that would have been due earlier).
        at_s = max(at_s, self.now_s)
        self._seq += 1
        heapq.heappush(self._heap, (at_s, kind, self._seq, sensor.index, sensor.gen))

    def _start(self, sensor: _Sensor) -> None:
        device = sensor.device
        rng = self._rng
        if sensor.placed.profile == "parking-v1" and self._parking is not None:
            sensor.occupied = rng.random() < self._occupancy(0.0)
            device.set_state(occupied=sensor.occupied)
            self._push(self._dwell(sensor, 0.0), sensor, _CHANGE)
        elif sensor.placed.profile == "waste-bin-v1" and self._bins is not None:
            sensor.bin_rate = self._bins.fill_per_hour * rng.uniform(*BIN_RATE_FACTOR) / 3600.0
            sensor.bin_offset_s = rng.uniform(0.0, BIN_ROUND_S)
            # With no collection in the scenario a bin starts anywhere up to 40 % full.
            residual = BIN_RESIDUAL_PCT if self._bins.emptied_at_s else (0.0, 40.0)
            sensor.bin_residual = rng.uniform(*residual)
        if device.keys is None and device.app_key is not None:
            sensor.joining = True
            self._joining[sensor.sensor_id] = sensor
            self._push(rng.uniform(0.0, min(sensor.interval_s, 300.0)), sensor, _JOIN)
            return
        if device.keys is None:
            raise DistrictError(
                f"sensor {sensor.sensor_id}: its device has no session and no AppKey"
            )
        self._index_addr(sensor)
        sensor.next_report_s = rng.uniform(0.0, sensor.interval_s)
        self._push(sensor.next_report_s, sensor, _REPORT)

    def _index_addr(self, sensor: _Sensor) -> None:
        addr = sensor.device.dev_addr
        if addr is not None:
            self._by_addr.setdefault(addr, []).append(sensor)

    def _interval(self, sensor: _Sensor) -> float:
        jitter = self._rng.uniform(-REPORT_JITTER, REPORT_JITTER)
        return sensor.interval_s * (1.0 + jitter)

    def _occupancy(self, t_s: float) -> float:
        assert self._parking is not None
        hour = int(((self.start_of_day_s + t_s) % _DAY_S) // 3600)
        low, high = PARKING_P_RANGE
        return _clamp(self._parking.occupancy[hour], low, high)

    def _dwell(self, sensor: _Sensor, t_s: float) -> float:
        """When the bay that just became taken or free (at ``t_s``) changes again.

        A stay has a fixed distribution; cars arrive at a free bay at the rate
        ``p / ((1 - p) * mean stay)`` of the hour's chance ``p``, hour by hour (a bay left
        free at night fills in the morning), so that the bay is taken ``p`` of the time."""
        rng = self._rng
        if sensor.occupied:
            extra = PARKING_MEAN_STAY_S - PARKING_MIN_STAY_S
            return t_s + PARKING_MIN_STAY_S + rng.expovariate(1.0 / extra)
        # Inverse transform of a piecewise-constant rate: walk the hours until the
        # integrated rate reaches an exponential draw.
        need = rng.expovariate(1.0)
        at = t_s
        horizon = t_s + 7 * _DAY_S
        while at < horizon:
            p = self._occupancy(at)
            rate = p / ((1.0 - p) * PARKING_MEAN_STAY_S)
            hour_end = (math.floor((self.start_of_day_s + at) / 3600.0) + 1) * 3600.0
            span = hour_end - self.start_of_day_s - at
            if rate * span >= need:
                return at + need / rate
            need -= rate * span
            at += span
        return horizon

    def _fill_pct(self, sensor: _Sensor, t_s: float) -> float:
        """The bin's fill at ``t_s``: grown since its last emptying (or since the start)."""
        assert self._bins is not None
        absolute = self.start_of_day_s + t_s
        emptied: float | None = None
        rounds = self._bins.emptied_at_s
        if rounds:
            day = math.floor(absolute / _DAY_S)
            # Three days back find the last round even when a late one spills past midnight.
            for back in range(3):
                for at in reversed(rounds):
                    candidate = (day - back) * _DAY_S + at + sensor.bin_offset_s
                    if candidate <= absolute:
                        emptied = candidate
                        break
                if emptied is not None:
                    break
        if emptied is None:
            since = self.start_of_day_s
        else:
            since = emptied
            if emptied != sensor.bin_emptied:
                if sensor.bin_emptied is not None:
                    sensor.bin_residual = self._rng.uniform(*BIN_RESIDUAL_PCT)
                if emptied >= self.start_of_day_s:
                    self.counters["bins_emptied"] += 1
                sensor.bin_emptied = emptied
        return _clamp(sensor.bin_residual + sensor.bin_rate * (absolute - since), 0.0, 100.0)

    # --- the public interface -----------------------------------------------------------------

    def next_due_s(self) -> float | None:
        """The earliest pending transmission (or parking change, which sends at once); None if
        nothing is due before the end of the scenario."""
        heap = self._heap
        while heap:
            at_s, kind, _, index, gen = heap[0]
            if kind != _CHANGE and gen != self._sensors[index].gen:
                heapq.heappop(heap)
                continue
            return at_s if at_s < self.end_s else None
        return None

    def set_powered(self, gateway_id: str, on: bool) -> None:
        """Power a gateway on or off; an unpowered gateway hears nothing (``gateway_off``)."""
        self._gateway(gateway_id)
        if on:
            self._off.discard(gateway_id)
        else:
            self._off.add(gateway_id)

    def _gateway(self, gateway_id: str) -> None:
        if gateway_id not in self._gateways:
            shown = ", ".join(sorted(self._gateways)[:5])
            raise DistrictError(f"unknown gateway {gateway_id!r} (known: {shown}, ...)")

    def step(self, until_s: float) -> list[Uplink]:
        """Every transmission that starts before ``until_s`` (and before the end of the
        scenario), in start order, with its fate at each gateway; collisions are decided among
        the transmissions of this step."""
        until_s = min(until_s, self.end_s)
        pending: list[tuple[_Sensor, _Frame, Transmission]] = []
        heap = self._heap
        sensors = self._sensors
        while heap and heap[0][0] < until_s:
            at_s, kind, _, index, gen = heapq.heappop(heap)
            sensor = sensors[index]
            if kind == _CHANGE:
                self._change(sensor, at_s)
            elif gen == sensor.gen:
                sent = self._due(sensor, kind, at_s)
                if sent is not None:
                    pending.append(sent)
        self.now_s = max(self.now_s, until_s)
        if not pending:
            return []
        return self._decide(pending)

    def _change(self, sensor: _Sensor, t_s: float) -> None:
        sensor.occupied = not sensor.occupied
        sensor.device.set_state(occupied=sensor.occupied)
        self.counters["occupancy_changes"] += 1
        self._push(self._dwell(sensor, t_s), sensor, _CHANGE)
        if sensor.frame is None and not sensor.joining:
            # Report the change now: the heartbeat is due one interval after this uplink.
            sensor.gen += 1
            self._push(t_s, sensor, _REPORT)
        # A frame still being sent (or a join) goes first; its report follows (see _due).

    def _due(
        self, sensor: _Sensor, kind: int, t_s: float
    ) -> tuple[_Sensor, _Frame, Transmission] | None:
        if t_s < sensor.busy_until_s:
            # The radio is still sending or listening after the previous frame.
            self.counters["busy_deferred"] += 1
            self._push(sensor.busy_until_s, sensor, kind)
            return None
        if kind == _REPORT:
            if sensor.frame is not None:
                # The previous frame is not done (retransmissions, a deferral): finishing it
                # schedules the report (_done).
                return None
            sensor.frame = self._build(sensor, t_s)
            sensor.next_report_s = t_s + self._interval(sensor)
        elif kind == _JOIN:
            sensor.frame = self._build_join(sensor)
        frame = sensor.frame
        if frame is None:
            return None
        budget = self._duty[sensor.index]
        if not budget.can_send(t_s, frame.airtime_s):
            # A millisecond past the time the budget allows: the frame that frees it has then
            # left the window whatever the rounding of start + window - window.
            allowed = budget.next_allowed(t_s, frame.airtime_s)
            self.counters["duty_deferred"] += 1
            sensor.truth.duty_deferred += 1
            self._push(max(allowed, t_s) + DUTY_MARGIN_S, sensor, _SEND)
            return None
        budget.record(t_s, frame.airtime_s)
        return sensor, frame, self._transmit(sensor, frame, t_s)

    def _sf(self, sensor: _Sensor) -> int:
        if sensor.sf is None:
            links = self.world.links(sensor.sensor_id)
            sf = 12
            if links:
                rssi = sensor.placed.device.tx_power_dbm - links[0][0]
                for candidate in SNR_FLOOR_DB:
                    if rssi >= sensitivity_dbm(candidate) + SF_MARGIN_DB:
                        sf = candidate
                        break
            sensor.sf = sf
        return sensor.sf

    def _build(self, sensor: _Sensor, t_s: float) -> _Frame:
        device = sensor.device
        if self._bins is not None and sensor.placed.profile == "waste-bin-v1":
            device.set_state(fill_pct=self._fill_pct(sensor, t_s))
        fcnt = device.f_cnt
        phy, values = device.uplink(t_s)
        return _Frame("data", phy, fcnt, values, airtime_s(len(phy), self._sf(sensor)))

    def _build_join(self, sensor: _Sensor) -> _Frame:
        try:
            phy = sensor.device.join_request()
        except DeviceError as err:
            raise DistrictError(f"sensor {sensor.sensor_id} cannot join: {err.message}") from err
        return _Frame("join", phy, None, {}, airtime_s(len(phy), self._sf(sensor)))

    def _transmit(self, sensor: _Sensor, frame: _Frame, t_s: float) -> Transmission:
        frame.attempt += 1
        frequency = self._rng.choice(EU868_UPLINK_CHANNELS_HZ)
        sf = self._sf(sensor)
        device = sensor.device
        device.radio = replace(device.radio, frequency_hz=frequency, sf=sf)
        end = t_s + frame.airtime_s
        truth = sensor.truth
        truth.transmissions += 1
        self.counters["transmissions"] += 1
        if frame.kind == "join":
            sensor.join_attempts += 1
            truth.join_requests += 1
            self.counters["joins"] += 1
            sensor.busy_until_s = end + JOIN_ACCEPT_DELAY2_S
            sensor.frame = None
            steps = self.join_backoff_s
            backoff = steps[min(sensor.join_attempts, len(steps)) - 1]
            wait = backoff * self._rng.uniform(1.0 - JOIN_JITTER, 1.0 + JOIN_JITTER)
            self._push(t_s + wait, sensor, _JOIN)
        else:
            assert frame.fcnt is not None
            self.counters["uplinks"] += 1
            if frame.attempt == 1:
                truth.fcnts.append(frame.fcnt)
                self.counters["data_frames"] += 1
            else:
                truth.retransmissions += 1
                self.counters["retransmissions"] += 1
            sensor.busy_until_s = end + RECEIVE_DELAY2_S
            if device.confirmed and frame.attempt < MAX_TRANSMISSIONS:
                spread = min(1.0, self.ack_timeout_s / 2)
                timeout = self.ack_timeout_s + self._rng.uniform(-spread, spread)
                sensor.busy_until_s = end + RECEIVE_DELAY2_S + timeout
                self._push(sensor.busy_until_s, sensor, _SEND)
            else:
                self._done(sensor)
        return Transmission(sensor.sensor_id, t_s, frequency, sf, len(frame.phy))

    def _done(self, sensor: _Sensor) -> None:
        """The frame is finished (sent, acknowledged, or out of retransmissions): the next
        report is due at its time."""
        sensor.frame = None
        sensor.gen += 1
        self._push(max(sensor.next_report_s, sensor.busy_until_s), sensor, _REPORT)

    def _decide(self, pending: list[tuple[_Sensor, _Frame, Transmission]]) -> list[Uplink]:
        result = self.world.run(t for _, _, t in pending)
        heard: dict[int, list[Heard]] = {}
        lost: dict[int, list[tuple[str | None, str]]] = {}
        off = self._off
        low_rssi, high_rssi = RSSI_RANGE_DBM
        low_snr, high_snr = SNR_RANGE_DB
        for gateway_id, outcome in result.gateways.items():
            powered = gateway_id not in off
            for reception in outcome.received:
                key = id(reception.transmission)
                if not powered:
                    lost.setdefault(key, []).append((gateway_id, _GATEWAY_OFF))
                    continue
                rssi = int(_clamp(round(reception.rssi_dbm), low_rssi, high_rssi))
                snr = round(_clamp(reception.snr_db, low_snr, high_snr) * 4) / 4
                heard.setdefault(key, []).append(Heard(gateway_id, rssi, snr))
            for loss in outcome.lost:
                cause = loss.cause.value if powered else _GATEWAY_OFF
                lost.setdefault(id(loss.transmission), []).append((gateway_id, cause))
        for refusal in result.refused:
            # The district's own duty cycle ledger should make this impossible.
            self.counters["refused_duty_cycle"] += 1
            lost.setdefault(id(refusal.transmission), []).append((None, LossCause.DUTY_CYCLE.value))
        uplinks: list[Uplink] = []
        counters = self.counters
        for sensor, frame, transmission in pending:
            key = id(transmission)
            receptions = heard.get(key, [])
            receptions.sort(key=lambda h: (-h.rssi_dbm, -h.snr_db, h.gateway_id))
            losses = lost.get(key, [])
            if receptions:
                # Gateways too far to hear it matter only when nobody heard it: say why then.
                losses = [item for item in losses if item[1] != _BELOW]
            counters["heard"] += len(receptions)
            for _, cause in losses:
                counters[f"lost_{cause}"] += 1
            if not receptions:
                counters["unheard"] += 1
            uplink = Uplink(
                sensor_id=sensor.sensor_id,
                dev_eui=sensor.truth.dev_eui,
                kind=frame.kind,
                fcnt=frame.fcnt,
                phy=frame.phy,
                values=frame.values,
                sent_s=transmission.start_s,
                frequency_hz=transmission.frequency_hz,
                sf=transmission.sf,
                airtime_s=frame.airtime_s,
                confirmed=frame.kind == "data" and sensor.device.confirmed,
                attempt=frame.attempt,
                heard=tuple(receptions),
                lost=tuple(losses),
            )
            sensor.windows.append(_Window(uplink))
            uplinks.append(uplink)
        return uplinks

    # --- the concentrators' side --------------------------------------------------------------

    def heard_at(self, uplink: Uplink, gateway_id: str, timestamp_us: int) -> None:
        """``uplink`` went into ``gateway_id``'s concentrator stamped ``timestamp_us`` (its
        counter at the end of the frame): a downlink from that gateway is matched to the
        device's receive window by it."""
        self._gateway(gateway_id)
        sensor = self._by_id.get(uplink.sensor_id)
        if sensor is None:
            raise DistrictError(f"unknown sensor {uplink.sensor_id!r}")
        for window in sensor.windows:
            if window.uplink is uplink:
                window.stamps[gateway_id] = timestamp_us & _U32
                return
        # An uplink older than the windows kept: its receive windows are long over.
        self.counters["heard_at_stale"] += 1

    def downlink(self, gateway_id: str, request: TxRequest) -> str | None:
        """A transmission ``gateway_id``'s concentrator was asked for: a join accept (taken by
        the device with a join pending whose RX1 it falls in and whose AppKey it verifies
        with) or a data down frame (taken by the device of that DevAddr whose RX1 it falls
        in). Returns the sensor id that took it; None, counted by reason, if nobody did."""
        self._gateway(gateway_id)
        self.counters["downlinks"] += 1
        taken: str | None
        if gateway_id in self._off:
            taken = self._ignored("gateway_off")
        elif request.timestamp_us is None or not request.payload:
            taken = self._ignored("no_window")
        else:
            mtype = request.payload[0] >> 5
            if mtype == MType.JOIN_ACCEPT:
                taken = self._join_accept(gateway_id, request)
            elif mtype in (MType.UNCONFIRMED_DATA_DOWN, MType.CONFIRMED_DATA_DOWN):
                taken = self._data_down(gateway_id, request)
            else:
                taken = self._ignored("not_a_downlink")
        if taken is not None:
            self.counters["downlinks_taken"] += 1
        return taken

    def _ignored(self, reason: str) -> str | None:
        """Count a downlink nobody took, by ``reason``; None (the sensor that took it)."""
        self.counters["downlinks_ignored"] += 1
        self.counters[f"downlink_{reason}"] += 1
        return None

    @staticmethod
    def _in_window(window: _Window, gateway_id: str, request: TxRequest, delay_us: int) -> bool:
        stamp = window.stamps.get(gateway_id)
        if stamp is None or window.used:
            return False
        up = window.uplink
        return (
            request.timestamp_us == (stamp + delay_us) & _U32
            and request.frequency_hz == up.frequency_hz
            and request.sf == up.sf
        )

    def _join_accept(self, gateway_id: str, request: TxRequest) -> str | None:
        matched = False
        for sensor in list(self._joining.values()):
            if not sensor.windows:
                continue
            window = sensor.windows[-1]
            if window.uplink.kind != "join" or not self._in_window(
                window, gateway_id, request, JOIN_ACCEPT_DELAY1_US
            ):
                continue
            matched = True
            try:
                sensor.device.accept_join(request.payload)
            except DeviceError:
                continue  # another device's accept (its AppKey does not verify it)
            window.used = True
            self._joined(sensor)
            return sensor.sensor_id
        return self._ignored("refused" if matched else "no_window")

    def _joined(self, sensor: _Sensor) -> None:
        sensor.joining = False
        del self._joining[sensor.sensor_id]
        sensor.gen += 1  # the next join attempt is off
        sensor.frame = None
        sensor.truth.joined_at_s = self.now_s
        self.counters["joined"] += 1
        self._index_addr(sensor)
        sensor.next_report_s = self.now_s + self._rng.uniform(*AFTER_JOIN_S)
        self._push(max(sensor.next_report_s, sensor.busy_until_s), sensor, _REPORT)

    def _data_down(self, gateway_id: str, request: TxRequest) -> str | None:
        try:
            frame = DataFrame.from_bytes(request.payload)
        except LorawanError:
            return self._ignored("not_a_downlink")
        candidates = self._by_addr.get(frame.fhdr.dev_addr, [])
        if not candidates:
            return self._ignored("unknown_dev_addr")
        reason = "no_window"
        for sensor in candidates:
            if sensor.device.dev_addr != frame.fhdr.dev_addr:
                continue  # the device joined again with another DevAddr
            window = sensor.windows[-1] if sensor.windows else None
            if window is None or window.uplink.kind != "data":
                continue
            if not self._in_window(window, gateway_id, request, RECEIVE_DELAY1_US):
                if any(
                    self._in_window(w, gateway_id, request, RECEIVE_DELAY1_US)
                    for w in sensor.windows
                ):
                    reason = "late"  # the device has sent again since: that window is over
                continue
            device = sensor.device
            up = window.uplink
            device.radio = replace(device.radio, frequency_hz=up.frequency_hz, sf=up.sf)
            device.listen_rx1(window.stamps[gateway_id])
            done = device.receive(request)
            if done is None:
                reason = "refused"
                continue
            window.used = True
            self._took(sensor, frame, up)
            return sensor.sensor_id
        return self._ignored(reason)

    def _took(self, sensor: _Sensor, frame: DataFrame, up: Uplink) -> None:
        held = sensor.frame
        if (
            frame.fhdr.f_ctrl.ack
            and held is not None
            and held.kind == "data"
            and held.fcnt == up.fcnt
            and sensor.device.confirmed
        ):
            self.counters["acks"] += 1
            sensor.truth.acked += 1
            self._done(sensor)
        if sensor.device.report_interval_s != sensor.interval_s:
            sensor.interval_s = sensor.device.report_interval_s
            self.counters["rescheduled"] += 1
            sensor.next_report_s = self.now_s + self._interval(sensor)
            if sensor.frame is None:
                sensor.gen += 1
                self._push(max(sensor.next_report_s, sensor.busy_until_s), sensor, _REPORT)

    # --- the report ---------------------------------------------------------------------------

    def truth(self) -> DistrictTruth:
        """What every sensor sent so far (see :class:`SensorTruth`)."""
        return DistrictTruth(self.now_s, {s.sensor_id: s.truth for s in self._sensors})
