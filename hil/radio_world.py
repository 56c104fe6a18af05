"""The radio world: where sensors and gateways stand, and which gateway hears which frame.

Pure Python, no I/O, deterministic for a given seed. A :class:`RadioWorld` holds gateways
and devices at positions in metres and takes a batch of transmissions
(:class:`Transmission`: device, start time, channel frequency, spreading factor, payload
length). For every gateway it says which frames were received, with RSSI and SNR, and which
were lost and why (:class:`LossCause`). The model and the sources of its constants are
described in ``docs/hil-radio.md``.

**Path loss** (:class:`PathLoss`): the Okumura-Hata urban model at 868 MHz (base station
antenna 30 m, device 1.5 m, medium-sized city), written as a log-distance model,
``L(d) = 126.0 dB + 35.2 dB * log10(d / 1 km)`` (exponent 3.52), plus log-normal shadowing
with sigma 6 dB, drawn once per link when the device first transmits, from a generator
seeded by (seed, device) over the gateways near it in the order they were given: the same
seed and positions give the same links, and a link keeps its value for the world's life.
Shadowing is clamped to +-3 sigma so that a maximum range exists (it bounds the grid search).

**Noise and sensitivity**: noise floor ``-174 dBm/Hz + 10 log10(BW) + NF`` with a 6 dB
receiver noise figure; SNR is the received power minus that floor. A frame is demodulated
when its SNR is at least the floor of its spreading factor (SX1276 datasheet, table 13:
-7.5 dB at SF7 to -20 dB at SF12, 2.5 dB per step).

**Collisions**: two frames at one gateway overlapping in time on the same channel and the
same spreading factor collide; a frame survives (capture effect) only when its power is at
least :data:`CAPTURE_THRESHOLD_DB` (6 dB) above every frame it overlaps. Different spreading
factors are treated as orthogonal and different channels do not interact.

**Demodulators**: a concentrator locks one demodulation path on each frame it detects above
sensitivity, in order of start time, and holds it until the frame ends (SX1301: 8 paths;
SX1302: 16). A frame that finds every path taken is lost as ``demodulator_busy``.

**Duty cycle**: each device keeps at most 1 % of any sliding one-hour window on the air
(ETSI EN 300 220 sub-band g1 allows 1 % over an observation period of one hour); a
transmission that would exceed it is refused at the device (``duty_cycle``).

**Efficiency**: gateways are indexed in a square grid whose cell is the maximum range, and
links are computed once per device and kept sorted by path loss; a link weaker than the
most sensitive floor minus the capture threshold can neither be received nor disturb a
received frame, so it is dropped. Transmissions are processed sorted by start time with an
interval sweep per (gateway, channel, spreading factor).
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import math
import random
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, NamedTuple

from ..codecs.errors import OwlgateError

log = logging.getLogger(__name__)

#: Capture threshold for two LoRa frames of the same spreading factor on one channel
#: (Bor et al., "Do LoRa Low-Power Wide-Area Networks Scale?", MSWiM 2016, section 3).
CAPTURE_THRESHOLD_DB: Final = 6.0
#: Demodulation SNR floor per spreading factor (SX1276 datasheet rev. 7, table 13).
SNR_FLOOR_DB: Final = {7: -7.5, 8: -10.0, 9: -12.5, 10: -15.0, 11: -17.5, 12: -20.0}
#: Thermal noise density at 290 K.
THERMAL_NOISE_DBM_PER_HZ: Final = -174.0
#: Receiver noise figure used by Semtech's sensitivity figures (AN1200.22).
NOISE_FIGURE_DB: Final = 6.0
#: Bandwidths a LoRa concentrator channel uses.
BANDWIDTHS_HZ: Final = (125_000, 250_000, 500_000)
#: SX1301 demodulation paths (8 multi-SF channels); an SX1302 has 16.
DEFAULT_DEMODULATOR_PATHS: Final = 8
#: EU868 g1 sub-band duty cycle (ETSI EN 300 220-2) and its observation period.
DUTY_CYCLE_FRACTION: Final = 0.01
DUTY_CYCLE_WINDOW_S: Final = 3600.0
#: EU868 default maximum EIRP of an end device.
DEFAULT_TX_POWER_DBM: Final = 14.0
MAX_PAYLOAD_BYTES: Final = 255
#: Shadowing is clamped to this many standard deviations so that a maximum range exists.
SHADOWING_CLAMP_SIGMAS: Final = 3.0


class RadioWorldError(OwlgateError):
    """A radio world used with values no radio could have (an unknown device, SF 6, a
    payload over 255 bytes, a duty cycle budget smaller than one frame)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class LossCause(StrEnum):
    """Why a frame did not become a reception at a gateway (or was never sent)."""

    BELOW_SENSITIVITY = "below_sensitivity"
    COLLISION = "collision"
    DEMODULATOR_BUSY = "demodulator_busy"
    DUTY_CYCLE = "duty_cycle"


_BELOW: Final = LossCause.BELOW_SENSITIVITY
_COLLISION: Final = LossCause.COLLISION
_BUSY: Final = LossCause.DEMODULATOR_BUSY
_COUNTER: Final = {cause: f"lost_{cause.value}" for cause in LossCause}


def _check_radio(sf: int, bw_hz: int, payload_bytes: int) -> None:
    if sf not in SNR_FLOOR_DB:
        raise RadioWorldError(f"spreading factor must be 7..12, not {sf}")
    if bw_hz not in BANDWIDTHS_HZ:
        raise RadioWorldError(f"bandwidth must be one of {BANDWIDTHS_HZ} Hz, not {bw_hz}")
    if not 0 <= payload_bytes <= MAX_PAYLOAD_BYTES:
        raise RadioWorldError(f"payload must be 0..{MAX_PAYLOAD_BYTES} bytes, not {payload_bytes}")


def airtime_s(
    payload_bytes: int,
    sf: int,
    bw_hz: int = 125_000,
    cr: int = 1,
    preamble: int = 8,
    *,
    explicit_header: bool = True,
    crc: bool = True,
    low_data_rate_optimize: bool | None = None,
) -> float:
    """Time on air of one LoRa frame, in seconds (Semtech AN1200.13; SX1276 datasheet 4.1.1.7).

    ``payload_bytes`` is the PHY payload (for LoRaWAN the whole PHYPayload, 13 bytes for an
    empty data uplink); ``cr`` 1..4 is coding rate 4/5..4/8. ``low_data_rate_optimize``
    ``None`` turns it on when a symbol lasts longer than 16 ms (SF11 and SF12 at 125 kHz),
    as LoRaWAN requires. Published values it reproduces (125 kHz, CR 4/5, 8 symbols of
    preamble, explicit header, CRC): The Things Network's airtime calculator, 13 bytes,
    46.3 ms at SF7 and 1,155.1 ms at SF12; Thomas Telkamp's LoRa airtime spreadsheet
    (AN1200.13 formulas), 13 bytes at SF9, 164.864 ms; RF Wireless World's calculator,
    10 bytes, 41.216 ms at SF7 and 577.536 ms at SF11.
    """
    _check_radio(sf, bw_hz, payload_bytes)
    if not 1 <= cr <= 4:
        raise RadioWorldError(f"coding rate index must be 1..4 (4/5..4/8), not {cr}")
    if preamble < 6:
        raise RadioWorldError(f"preamble must be at least 6 symbols, not {preamble}")
    symbol_s = (1 << sf) / bw_hz
    if low_data_rate_optimize is None:
        low_data_rate_optimize = symbol_s > 0.016
    de = 1 if low_data_rate_optimize else 0
    ih = 0 if explicit_header else 1
    numerator = 8 * payload_bytes - 4 * sf + 28 + 16 * int(crc) - 20 * ih
    payload_symbols = 8 + max(math.ceil(numerator / (4 * (sf - 2 * de))) * (cr + 4), 0)
    return (preamble + 4.25 + payload_symbols) * symbol_s


def noise_floor_dbm(bw_hz: int) -> float:
    """Receiver noise power over the channel bandwidth."""
    return THERMAL_NOISE_DBM_PER_HZ + 10 * math.log10(bw_hz) + NOISE_FIGURE_DB


def sensitivity_dbm(sf: int, bw_hz: int = 125_000) -> float:
    """Weakest received power demodulated: noise floor plus the SF's SNR floor."""
    _check_radio(sf, bw_hz, 0)
    return noise_floor_dbm(bw_hz) + SNR_FLOOR_DB[sf]


@dataclass(frozen=True, slots=True)
class PathLoss:
    """Log-distance path loss with log-normal shadowing.

    The defaults are the Okumura-Hata urban model at 868 MHz, base antenna 30 m, mobile
    antenna 1.5 m, medium city: ``69.55 + 26.16 log f - 13.82 log hb - a(hm) + (44.9 - 6.55
    log hb) log d`` gives 126.0 dB at 1 km and 35.2 dB per decade. ``sigma_db`` 6 dB is a
    typical urban shadowing spread. Distances under ``min_distance_m`` count as that.
    """

    loss_at_reference_db: float = 126.0
    reference_m: float = 1000.0
    exponent: float = 3.52
    sigma_db: float = 6.0
    min_distance_m: float = 10.0

    def path_loss_db(self, distance_m: float) -> float:
        """The median loss at ``distance_m`` (no shadowing)."""
        distance = max(distance_m, self.min_distance_m)
        return self.loss_at_reference_db + 10 * self.exponent * math.log10(
            distance / self.reference_m
        )

    def distance_for_loss_m(self, loss_db: float) -> float:
        """Inverse of :meth:`path_loss_db`: the distance where the median loss is ``loss_db``."""
        return self.reference_m * 10 ** (
            (loss_db - self.loss_at_reference_db) / (10 * self.exponent)
        )

    def shadowing_db(self, seed: int, device_id: str, count: int) -> list[float]:
        """``count`` shadowing values for one device's links, normal draws from a generator
        seeded by (seed, device), clamped to +-3 sigma: the same seed gives the same links."""
        digest = hashlib.blake2b(f"{seed}\x00{device_id}".encode(), digest_size=8).digest()
        gauss = random.Random(int.from_bytes(digest, "big")).gauss
        limit = SHADOWING_CLAMP_SIGMAS * self.sigma_db
        sigma = self.sigma_db
        values = []
        for _ in range(count):
            value = gauss(0.0, sigma)
            if value > limit:
                value = limit
            elif value < -limit:
                value = -limit
            values.append(value)
        return values


DEFAULT_PATH_LOSS: Final = PathLoss()


def path_loss_db(distance_m: float) -> float:
    """The default model's median path loss at ``distance_m`` (see :class:`PathLoss`)."""
    return DEFAULT_PATH_LOSS.path_loss_db(distance_m)


class DutyCycle:
    """A device's duty cycle: at most ``fraction`` of any ``window_s`` sliding window on air.

    ``now`` must not go backwards between calls.
    """

    __slots__ = ("_sent", "_used_s", "budget_s", "fraction", "window_s")

    def __init__(
        self, fraction: float = DUTY_CYCLE_FRACTION, window_s: float = DUTY_CYCLE_WINDOW_S
    ) -> None:
        if not 0 < fraction <= 1 or window_s <= 0:
            raise RadioWorldError(f"duty cycle {fraction} over {window_s} s is not a budget")
        self.fraction = fraction
        self.window_s = window_s
        self.budget_s = fraction * window_s
        self._sent: deque[tuple[float, float]] = deque()
        self._used_s = 0.0

    def _expire(self, now: float) -> None:
        while self._sent and self._sent[0][0] <= now - self.window_s:
            self._used_s -= self._sent.popleft()[1]
        if not self._sent:
            self._used_s = 0.0  # no float drift once the window is empty

    def can_send(self, now: float, airtime: float) -> bool:
        """Whether a frame of ``airtime`` seconds starting at ``now`` fits the budget."""
        self._expire(now)
        return self._used_s + airtime <= self.budget_s + 1e-9

    def next_allowed(self, now: float, airtime: float) -> float:
        """The earliest time at or after ``now`` when a frame of ``airtime`` seconds fits."""
        if airtime > self.budget_s + 1e-9:
            raise RadioWorldError(
                f"a {airtime:.3f} s frame exceeds the whole duty cycle budget of "
                f"{self.budget_s:.3f} s"
            )
        if self.can_send(now, airtime):
            return now
        used = self._used_s
        for start, length in self._sent:
            used -= length
            if used + airtime <= self.budget_s + 1e-9:
                return start + self.window_s
        return now  # unreachable: the budget check above guarantees a fit once all expire

    def record(self, now: float, airtime: float) -> None:
        """Count a frame sent at ``now``."""
        self._expire(now)
        self._sent.append((now, airtime))
        self._used_s += airtime


@dataclass(frozen=True, slots=True)
class Gateway:
    """A gateway at ``(x_m, y_m)`` with ``demodulator_paths`` (SX1301: 8, SX1302: 16)."""

    gateway_id: str
    x_m: float
    y_m: float
    demodulator_paths: int = DEFAULT_DEMODULATOR_PATHS


@dataclass(frozen=True, slots=True)
class Device:
    """An end device at ``(x_m, y_m)`` transmitting at ``tx_power_dbm`` (EIRP)."""

    device_id: str
    x_m: float
    y_m: float
    tx_power_dbm: float = DEFAULT_TX_POWER_DBM


@dataclass(frozen=True, slots=True)
class Transmission:
    """One frame a device sends: start time in seconds, channel, SF, PHY payload length."""

    device_id: str
    start_s: float
    frequency_hz: int
    sf: int
    payload_bytes: int
    bw_hz: int = 125_000
    cr: int = 1


class Reception(NamedTuple):
    """A frame a gateway received."""

    transmission: Transmission
    gateway_id: str
    rssi_dbm: float
    snr_db: float


class Loss(NamedTuple):
    """A frame a gateway heard but lost (``gateway_id`` ``None``: refused at the device)."""

    transmission: Transmission
    gateway_id: str | None
    cause: LossCause
    rssi_dbm: float | None = None


@dataclass(slots=True)
class GatewayResult:
    """One gateway's share of a batch: frames received, frames heard but lost."""

    received: list[Reception] = field(default_factory=list)
    lost: list[Loss] = field(default_factory=list)


@dataclass(slots=True)
class WorldResult:
    """Per gateway its receptions and losses; ``refused``: frames the duty cycle stopped;
    ``counters``: frames sent, refused, received and lost by cause, over all gateways."""

    gateways: dict[str, GatewayResult]
    refused: list[Loss]
    counters: Counter[str]

    def heard_by(self, transmission: Transmission) -> dict[str, Reception]:
        """The gateways that received ``transmission``, by gateway id."""
        return {
            gateway_id: reception
            for gateway_id, result in self.gateways.items()
            for reception in result.received
            if reception.transmission is transmission
        }


class _Candidate:
    """A frame arriving at one gateway while the batch is swept."""

    __slots__ = ("end_s", "gateway", "lost", "rssi_dbm", "snr_db", "start_s", "transmission")

    def __init__(
        self,
        transmission: Transmission,
        gateway: int,
        rssi_dbm: float,
        snr_db: float,
        end_s: float,
    ) -> None:
        self.transmission = transmission
        self.gateway = gateway
        self.rssi_dbm = rssi_dbm
        self.snr_db = snr_db
        self.start_s = transmission.start_s
        self.end_s = end_s
        self.lost: LossCause | None = None


class RadioWorld:
    """Gateways and devices at fixed positions; :meth:`run` decides each frame's fate.

    ``seed`` fixes every link's shadowing. Duty cycle state carries over from one
    :meth:`run` to the next (time must not go backwards); collisions and demodulator
    occupancy are decided within one batch, so a batch should cover a closed time window.
    """

    def __init__(
        self,
        gateways: Iterable[Gateway],
        devices: Iterable[Device],
        *,
        seed: int = 0,
        path_loss: PathLoss = DEFAULT_PATH_LOSS,
        duty_cycle_fraction: float = DUTY_CYCLE_FRACTION,
        duty_cycle_window_s: float = DUTY_CYCLE_WINDOW_S,
    ) -> None:
        self.seed = seed
        self.path_loss = path_loss
        self.gateways = list(gateways)
        self.devices = {device.device_id: device for device in devices}
        if len({g.gateway_id for g in self.gateways}) != len(self.gateways):
            raise RadioWorldError("gateway ids must be unique")
        for gateway in self.gateways:
            if gateway.demodulator_paths < 1:
                raise RadioWorldError(f"gateway {gateway.gateway_id}: no demodulator paths")
        self._duty_fraction = duty_cycle_fraction
        self._duty_window_s = duty_cycle_window_s
        self._duty: dict[str, DutyCycle] = {}
        self.counters: Counter[str] = Counter()
        # A link weaker than this can neither be received nor break a received frame.
        self._relevant_floor_dbm = (
            min(sensitivity_dbm(sf, bw) for sf in SNR_FLOOR_DB for bw in BANDWIDTHS_HZ)
            - CAPTURE_THRESHOLD_DB
        )
        strongest = max(
            (d.tx_power_dbm for d in self.devices.values()), default=DEFAULT_TX_POWER_DBM
        )
        max_loss = (
            strongest - self._relevant_floor_dbm + SHADOWING_CLAMP_SIGMAS * path_loss.sigma_db
        )
        self.max_range_m = path_loss.distance_for_loss_m(max_loss)
        self._cell_m = self.max_range_m
        self._grid: dict[tuple[int, int], list[int]] = {}
        for index, gateway in enumerate(self.gateways):
            self._grid.setdefault(self._cell(gateway.x_m, gateway.y_m), []).append(index)
        self._links: dict[str, list[tuple[float, int]]] = {}
        self._positions = [(gateway.x_m, gateway.y_m) for gateway in self.gateways]

    def _cell(self, x_m: float, y_m: float) -> tuple[int, int]:
        return math.floor(x_m / self._cell_m), math.floor(y_m / self._cell_m)

    def links(self, device_id: str) -> list[tuple[float, int]]:
        """The device's relevant links as (path loss dB with shadowing, gateway index),
        strongest first; computed once per device."""
        found = self._links.get(device_id)
        if found is not None:
            return found
        device = self.devices.get(device_id)
        if device is None:
            raise RadioWorldError(f"unknown device {device_id!r}")
        cx, cy = self._cell(device.x_m, device.y_m)
        nearby = sorted(
            index
            for dx in (-1, 0, 1)
            for dy in (-1, 0, 1)
            for index in self._grid.get((cx + dx, cy + dy), ())
        )
        model = self.path_loss
        # The model inlined: loss = a + b * log10(d) = a + b / 2 * log10(d squared).
        slope = 10 * model.exponent
        offset = model.loss_at_reference_db - slope * math.log10(model.reference_m)
        half_slope = slope / 2
        min_squared = model.min_distance_m**2
        max_loss = device.tx_power_dbm - self._relevant_floor_dbm
        shadows = model.shadowing_db(self.seed, device_id, len(nearby))
        x, y = device.x_m, device.y_m
        positions = self._positions
        log10 = math.log10
        links = []
        for index, shadow in zip(nearby, shadows, strict=True):
            gx, gy = positions[index]
            squared = (gx - x) * (gx - x) + (gy - y) * (gy - y)
            if squared < min_squared:
                squared = min_squared
            loss = offset + half_slope * log10(squared) + shadow
            if loss <= max_loss:
                links.append((loss, index))
        links.sort()
        self._links[device_id] = links
        return links

    def duty_cycle(self, device_id: str) -> DutyCycle:
        """The device's duty cycle budget (made on first use)."""
        budget = self._duty.get(device_id)
        if budget is None:
            budget = DutyCycle(self._duty_fraction, self._duty_window_s)
            self._duty[device_id] = budget
        return budget

    def _reject(self, transmission: Transmission, err: RadioWorldError) -> RadioWorldError:
        self.counters["rejected"] += 1
        log.warning("radio world: refused transmission of %s: %s", transmission.device_id, err)
        return err

    def run(self, transmissions: Iterable[Transmission]) -> WorldResult:
        """Every transmission's fate at every gateway in range, processed by start time.

        Raises :class:`RadioWorldError` (counted as ``rejected``) for a transmission of an
        unknown device or with impossible radio settings, before any is processed.
        """
        batch = sorted(transmissions, key=lambda t: t.start_s)
        airtimes = []
        for transmission in batch:
            if transmission.device_id not in self.devices:
                raise self._reject(
                    transmission, RadioWorldError(f"unknown device {transmission.device_id!r}")
                )
            try:
                airtimes.append(
                    airtime_s(
                        transmission.payload_bytes,
                        transmission.sf,
                        transmission.bw_hz,
                        transmission.cr,
                    )
                )
            except RadioWorldError as err:
                raise self._reject(transmission, err) from err
        counters: Counter[str] = Counter()
        refused: list[Loss] = []
        candidates: list[_Candidate] = []
        # (gateway, frequency, sf, bw) -> frames on air there, for the collision sweep
        on_air: dict[tuple[int, int, int, int], list[_Candidate]] = {}
        # gateway -> heap of end times of the demodulation paths in use
        paths: list[list[float]] = [[] for _ in self.gateways]
        floor_cache: dict[tuple[int, int], tuple[float, float, float]] = {}
        for transmission, airtime in zip(batch, airtimes, strict=True):
            start = transmission.start_s
            budget = self.duty_cycle(transmission.device_id)
            if not budget.can_send(start, airtime):
                refused.append(Loss(transmission, None, LossCause.DUTY_CYCLE))
                counters["refused_duty_cycle"] += 1
                continue
            budget.record(start, airtime)
            counters["sent"] += 1
            end = start + airtime
            sf, bw = transmission.sf, transmission.bw_hz
            floors = floor_cache.get((sf, bw))
            if floors is None:
                noise = noise_floor_dbm(bw)
                floors = (
                    noise,
                    noise + SNR_FLOOR_DB[sf],
                    noise + SNR_FLOOR_DB[sf] - CAPTURE_THRESHOLD_DB,
                )
                floor_cache[(sf, bw)] = floors
            noise, sensitivity, relevant = floors
            power = self.devices[transmission.device_id].tx_power_dbm
            for loss_db, index in self.links(transmission.device_id):
                rssi = power - loss_db
                if rssi < relevant:
                    break  # links are sorted: every further one is weaker still
                candidate = _Candidate(transmission, index, rssi, rssi - noise, end)
                candidates.append(candidate)
                if rssi < sensitivity:
                    candidate.lost = _BELOW
                else:
                    in_use = paths[index]
                    while in_use and in_use[0] <= start:
                        heapq.heappop(in_use)
                    if len(in_use) >= self.gateways[index].demodulator_paths:
                        candidate.lost = _BUSY
                    else:
                        heapq.heappush(in_use, end)
                key = (index, transmission.frequency_hz, sf, bw)
                active = on_air.get(key)
                if active is None:
                    on_air[key] = [candidate]
                    continue
                active[:] = [other for other in active if other.end_s > start]
                for other in active:
                    # Capture (CAPTURE_THRESHOLD_DB): each frame survives only if it is that
                    # much stronger than every frame it overlaps.
                    if rssi < other.rssi_dbm + CAPTURE_THRESHOLD_DB and candidate.lost is None:
                        candidate.lost = _COLLISION
                    if other.rssi_dbm < rssi + CAPTURE_THRESHOLD_DB and other.lost is None:
                        other.lost = _COLLISION
                active.append(candidate)
        results = {gateway.gateway_id: GatewayResult() for gateway in self.gateways}
        for candidate in candidates:
            gateway_id = self.gateways[candidate.gateway].gateway_id
            if candidate.lost is None:
                results[gateway_id].received.append(
                    Reception(
                        candidate.transmission, gateway_id, candidate.rssi_dbm, candidate.snr_db
                    )
                )
                counters["received"] += 1
            else:
                results[gateway_id].lost.append(
                    Loss(candidate.transmission, gateway_id, candidate.lost, candidate.rssi_dbm)
                )
                counters[_COUNTER[candidate.lost]] += 1
        self.counters.update(counters)
        return WorldResult(results, refused, counters)
