"""``owlgate hil gateway``: one emulated gateway's radio side in its own process.

It runs an :class:`~owlgate.hil.concentrator.EmulatedConcentrator` on a pty (its stable link
path is the first line on stdout, ``LINK <path>``, so a parent can point an edge agent at it)
and the emulated devices assigned to this gateway, built from the ``fleet seed`` manifest:
ABP devices with their session keys, OTAA devices that join first through the edge agent and
the fleet's join server. Each device is in exactly one gateway process, which owns its frame
counter.

**Neighbours.** In a city one frame is often heard by two gateways. A gateway process can
listen on a UDP port of the loopback ("the air", ``air_port``): every datagram there is a
frame a device of another gateway sent and this gateway also hears, and it is reported by this
concentrator too, a little weaker. The devices in ``shared`` have every uplink sent to each
port in ``neighbours`` as well. The fleet must merge the two receptions into one reading.

**Transmitting on the air.** With ``tx_air_ports``, every frame the host asks the concentrator
to transmit (each ``TX_REQUEST``: a join accept, a downlink) is also sent as one datagram to
each of those ports (JSON: ``phy`` in hex, ``frequency_hz``, ``sf``, ``timestamp_us``, the
counter value it was scheduled for or null): that is how an emulated module outside this
process, such as :class:`~owlgate.hil.rak3172_lorawan.EmulatedRak3172LoRaWAN` joining through
this gateway, hears it.

**Hostile input.** With ``hostile_every`` N, after every N-th uplink the emulator also sends
one bad input, taking turns: a replay of an older frame of a device, a frame whose MIC was
altered, a frame with a bad radio CRC, and line noise on the serial link. None may become a
reading; the report counts how many of each were sent.

Devices start once the host has configured the radio, or, with ``start`` given, once that
event is set too (the demo sets it when every edge agent says it is ready). Every
``interval_s`` (with jitter, so devices do not fire together) each joined device sends one
uplink. On SIGTERM or SIGINT, or after ``duration_s``, it stops and writes a JSON report of
every reading it generated (``dev_eui``, ``fcnt``, ``values``) and the counts above.

**Downlinks.** Time runs faster than in the street: ``interval_s`` plays a device's report
interval of :data:`NOMINAL_REPORT_INTERVAL_S` (what devices start with), so a device told by
a settings downlink to report every 600 s sends every ``2 * interval_s``. After each uplink
the device listens in RX1 (:meth:`~owlgate.hil.devices.EmulatedDevice.listen_rx1`); each
``TX_REQUEST`` the concentrator gets is offered to the devices, which take and apply what is
theirs and acknowledge it in their next uplinks. The report's ``downlinks`` lists each one
taken (DevEUI, FCntDown, seq, result, settings applied) and ``settings`` the settings each
device has applied, by DevEUI.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ..codecs.concentrator import CrcStatus, TxRequest
from ..codecs.errors import OwlgateError
from .concentrator import EmulatedConcentrator
from .devices import DeviceError, Downlinked, EmulatedDevice

log = logging.getLogger(__name__)

#: How often the loop looks for due devices and new transmit requests.
_TICK_S = 0.1
#: An OTAA device that heard no accept asks again after this long.
_JOIN_RETRY_S = 8.0
#: A neighbouring gateway hears a shared device this much weaker than its own gateway does.
NEIGHBOUR_LOSS_DB: Final = 12
NEIGHBOUR_SNR_LOSS_DB: Final = 5.0
AIR_HOST: Final = "127.0.0.1"
#: The kinds of bad input, in the order they take turns.
HOSTILE_KINDS: Final = ("replay", "bad_mic", "crc_bad", "line_noise")
#: The word on stdin that starts the devices when the emulator waits for it.
START_WORD: Final = "start"
#: The report interval devices start with; ``interval_s`` plays it.
NOMINAL_REPORT_INTERVAL_S: Final = 300.0


class EmulatorError(OwlgateError):
    """The gateway emulator cannot start: a bad manifest or device list."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.offset = None


def build_devices(
    manifest: dict[str, Any], dev_euis: list[str] | None, *, interval_s: float, seed: int
) -> list[EmulatedDevice]:
    """The manifest's devices (only ``dev_euis`` if given) as emulated devices."""
    entries = {entry["dev_eui"]: entry for entry in manifest["devices"]}
    wanted = list(entries) if dev_euis is None else dev_euis
    devices = []
    for index, eui in enumerate(wanted):
        entry = entries.get(eui)
        if entry is None:
            raise EmulatorError(f"device {eui} is not in the manifest")
        common: dict[str, Any] = {
            "seed": seed + index,
            "report_interval_s": NOMINAL_REPORT_INTERVAL_S,
        }
        if entry["activation"] == "abp":
            device = EmulatedDevice.abp(
                entry["profile_id"],
                bytes.fromhex(eui),
                dev_addr=int(entry["dev_addr"], 16),
                nwk_s_key=bytes.fromhex(entry["nwk_s_key"]),
                app_s_key=bytes.fromhex(entry["app_s_key"]),
                **common,
            )
        else:
            device = EmulatedDevice.otaa(
                entry["profile_id"],
                bytes.fromhex(eui),
                join_eui=int(entry["join_eui"], 16),
                app_key=bytes.fromhex(entry["app_key"]),
                **common,
            )
        devices.append(device)
    return devices


@dataclass
class GatewayRun:
    """What one run generated; :meth:`report` is the JSON written at the end.

    ``relayed``: uplinks of this gateway's devices also sent to a neighbour; ``heard``:
    neighbours' frames this concentrator reported; ``air_rejected``: datagrams on the air port
    that were not a frame; ``hostile``: bad inputs sent, by kind (:data:`HOSTILE_KINDS`);
    ``downlinks``: downlinks the devices took; ``settings``: what each device applied.
    """

    gateway_id: str
    readings: list[dict[str, Any]] = field(default_factory=list)
    joins: int = 0
    relayed: int = 0
    heard: int = 0
    air_rejected: int = 0
    hostile: dict[str, int] = field(default_factory=lambda: dict.fromkeys(HOSTILE_KINDS, 0))
    downlinks: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, dict[str, object]] = field(default_factory=dict)

    def took(self, device: EmulatedDevice, done: Downlinked) -> None:
        """Record a downlink ``device`` took."""
        eui = device.dev_eui.hex()
        self.downlinks.append(
            {
                "dev_eui": eui,
                "f_cnt_down": done.f_cnt_down,
                "f_port": done.f_port,
                "seq": done.seq,
                "result": done.result,
                "setting": done.setting,
                "applied": dict(done.applied),
            }
        )
        if done.applied:
            self.settings.setdefault(eui, {}).update(done.applied)

    def report(self) -> dict[str, Any]:
        return {
            "gateway_id": self.gateway_id,
            "joins": self.joins,
            "relayed": self.relayed,
            "heard": self.heard,
            "air_rejected": self.air_rejected,
            "hostile": dict(self.hostile),
            "downlinks": self.downlinks,
            "settings": self.settings,
            "readings": self.readings,
        }


class Air(asyncio.DatagramProtocol):
    """The air port: each datagram is one frame a neighbour's device sent (JSON: ``phy`` in
    hex, ``rssi_dbm``, ``snr_db``, ``frequency_hz``, ``sf``), reported by ``concentrator``."""

    def __init__(self, concentrator: EmulatedConcentrator, run: GatewayRun) -> None:
        self.concentrator = concentrator
        self.run = run

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            frame = json.loads(data)
            phy = bytes.fromhex(frame["phy"])
            rssi_dbm, snr_db = int(frame["rssi_dbm"]), float(frame["snr_db"])
            frequency_hz, sf = int(frame["frequency_hz"]), int(frame["sf"])
        except (ValueError, KeyError, TypeError) as err:
            self.run.air_rejected += 1
            log.warning("air port: not a frame (%s)", err)
            return
        self.concentrator.inject(
            phy, rssi_dbm=rssi_dbm, snr_db=snr_db, frequency_hz=frequency_hz, sf=sf
        )
        self.run.heard += 1


def neighbour_frame(phy: bytes, rssi_dbm: int, snr_db: float, frequency_hz: int, sf: int) -> bytes:
    """The datagram for :class:`Air`: the frame as a neighbour hears it, weaker."""
    return json.dumps(
        {
            "phy": phy.hex(),
            "rssi_dbm": max(-139, rssi_dbm - NEIGHBOUR_LOSS_DB),
            "snr_db": max(-20.0, round((snr_db - NEIGHBOUR_SNR_LOSS_DB) * 4) / 4),
            "frequency_hz": frequency_hz,
            "sf": sf,
        }
    ).encode()


class Hostile:
    """Sends one bad input per call, the kinds of :data:`HOSTILE_KINDS` taking turns; until a
    device has sent two frames (which the other kinds need), every call sends line noise."""

    def __init__(self, concentrator: EmulatedConcentrator, run: GatewayRun) -> None:
        self.concentrator = concentrator
        self.run = run
        self._turn = 0
        # The last two frames of each device, oldest first.
        self._frames: dict[bytes, deque[bytes]] = {}

    def sent(self, device: EmulatedDevice, phy: bytes) -> None:
        self._frames.setdefault(device.dev_eui, deque(maxlen=2)).append(phy)

    def inject(self) -> None:
        kind = HOSTILE_KINDS[self._turn % len(HOSTILE_KINDS)]
        history = [frames for frames in self._frames.values() if len(frames) == 2]
        if kind != "line_noise" and not history:
            # Not possible yet: line noise now, and this kind keeps its turn.
            kind = "line_noise"
        else:
            self._turn += 1
        if kind == "line_noise":
            self.concentrator.inject_garbage()
        else:
            older, latest = history[self._turn % len(history)]
            if kind == "replay":
                self.concentrator.inject(older)
            elif kind == "bad_mic":
                self.concentrator.inject(latest[:-1] + bytes([latest[-1] ^ 0x5A]))
            else:
                self.concentrator.inject(latest, crc_status=CrcStatus.BAD)
        self.run.hostile[kind] += 1


@dataclass(frozen=True, slots=True)
class Neighbours:
    """Who else hears some of this gateway's devices: ``shared`` DevEUIs, sent with
    ``send(datagram)`` to every neighbour's air port."""

    shared: frozenset[bytes]
    ports: tuple[int, ...]
    transport: asyncio.DatagramTransport

    def send(self, datagram: bytes) -> None:
        for port in self.ports:
            self.transport.sendto(datagram, (AIR_HOST, port))


def transmitted_frame(request: TxRequest) -> bytes:
    """The datagram for a ``--tx-air-port``: one frame the host asked to transmit."""
    return json.dumps(
        {
            "phy": request.payload.hex(),
            "frequency_hz": request.frequency_hz,
            "sf": request.sf,
            "timestamp_us": request.timestamp_us,
        }
    ).encode()


@dataclass(frozen=True, slots=True)
class TxAir:
    """Where transmitted frames go too: ``send(request)`` to every port in ``ports``."""

    ports: tuple[int, ...]
    transport: asyncio.DatagramTransport

    def send(self, request: TxRequest) -> None:
        datagram = transmitted_frame(request)
        for port in self.ports:
            self.transport.sendto(datagram, (AIR_HOST, port))


async def run_gateway(
    concentrator: EmulatedConcentrator,
    devices: list[EmulatedDevice],
    run: GatewayRun,
    stop: asyncio.Event,
    *,
    interval_s: float,
    rng: random.Random,
    start: asyncio.Event | None = None,
    neighbours: Neighbours | None = None,
    hostile_every: int = 0,
    tx_air: TxAir | None = None,
) -> None:
    """Drive ``devices`` through ``concentrator`` until ``stop`` is set; the first uplinks wait
    until the host has configured the radio (a real radio hears nothing before that) and, if
    given, until ``start`` is set."""
    while not stop.is_set() and (
        concentrator.radio_config is None or (start is not None and not start.is_set())
    ):
        await _pause(stop, _TICK_S)
    hostile = Hostile(concentrator, run)
    uplinks = 0
    start_s = time.monotonic()
    # First reports spread over one interval so the devices do not all fire at once.
    next_at = {d.dev_eui: start_s + rng.uniform(0.5, max(0.6, interval_s)) for d in devices}
    join_sent: dict[bytes, float] = {}
    seen_tx = 0
    while not stop.is_set():
        now = time.monotonic()
        tx = concentrator.tx_requests
        for request in tx[seen_tx:]:
            if tx_air is not None:
                tx_air.send(request)
            if _offer_join_accept(devices, join_sent, request.payload):
                run.joins += 1
                continue
            for device in devices:
                done = device.receive(request)
                if done is not None:
                    run.took(device, done)
                    break
        for device in devices:
            if device.joined and device.dev_eui in join_sent:
                # Joined since the last tick: its first report soon.
                del join_sent[device.dev_eui]
                next_at[device.dev_eui] = now + rng.uniform(0.2, 1.0)
        seen_tx = len(tx)
        for device in devices:
            if now < next_at[device.dev_eui]:
                continue
            if not device.joined:
                if now - join_sent.get(device.dev_eui, -_JOIN_RETRY_S) >= _JOIN_RETRY_S:
                    concentrator.inject(device.join_request())
                    join_sent[device.dev_eui] = now
                continue
            phy, values = device.uplink(now)
            frame = device.rx_frame(phy, timestamp_us=concentrator.counter_us())
            concentrator.inject(
                phy,
                rssi_dbm=frame.rssi_dbm,
                snr_db=frame.snr_db,
                frequency_hz=frame.frequency_hz,
                sf=frame.sf,
                timestamp_us=frame.timestamp_us,
            )
            device.listen_rx1(frame.timestamp_us)
            run.readings.append(
                {"dev_eui": device.dev_eui.hex(), "fcnt": device.f_cnt - 1, "values": values}
            )
            spacing_s = interval_s * device.report_interval_s / NOMINAL_REPORT_INTERVAL_S
            next_at[device.dev_eui] = now + spacing_s * rng.uniform(0.85, 1.15)
            if neighbours is not None and device.dev_eui in neighbours.shared:
                radio = device.radio
                neighbours.send(
                    neighbour_frame(phy, frame.rssi_dbm, frame.snr_db, radio.frequency_hz, radio.sf)
                )
                run.relayed += 1
            hostile.sent(device, phy)
            uplinks += 1
            if hostile_every and uplinks % hostile_every == 0:
                hostile.inject()
        await _pause(stop, _TICK_S)


def _offer_join_accept(
    devices: list[EmulatedDevice], join_sent: dict[bytes, float], payload: bytes
) -> bool:
    """Give a transmitted frame to the devices waiting for a join accept; True if one took it."""
    for device in devices:
        if device.joined or device.dev_eui not in join_sent:
            continue
        try:
            device.accept_join(payload)
        except DeviceError:
            continue
        return True
    return False


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less if ``stop`` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()


async def emulate(
    *,
    link_dir: Path,
    manifest: dict[str, Any],
    gateway_id: str,
    dev_euis: list[str] | None,
    duration_s: float | None,
    interval_s: float,
    seed: int,
    wait_for_start: bool = False,
    air_port: int | None = None,
    neighbour_ports: tuple[int, ...] = (),
    shared: list[str] | None = None,
    hostile_every: int = 0,
    tx_air_ports: tuple[int, ...] = (),
) -> GatewayRun:
    """The whole process but the report: concentrator up, ``LINK`` printed, devices run until
    SIGTERM, SIGINT or ``duration_s``; returns what was generated. With ``wait_for_start``
    the devices wait for the line ``start`` on stdin (``READY_FOR_START`` is printed when
    the emulator listens for it)."""
    devices = build_devices(manifest, dev_euis, interval_s=interval_s, seed=seed)
    own = {device.dev_eui for device in devices}
    shared_euis = frozenset(bytes.fromhex(eui) for eui in shared or [])
    if not shared_euis <= own:
        raise EmulatorError("--shared-devices names a device this gateway does not emulate")
    run = GatewayRun(gateway_id)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if duration_s is not None:
        loop.call_later(duration_s, stop.set)
    async with (
        EmulatedConcentrator(link_dir, eui=bytes.fromhex(gateway_id), seed=seed) as concentrator,
        contextlib.AsyncExitStack() as stack,
    ):
        if air_port is not None:
            try:
                listening, _ = await loop.create_datagram_endpoint(
                    lambda: Air(concentrator, run), local_addr=(AIR_HOST, air_port)
                )
            except OSError as err:
                raise EmulatorError(f"--air-port {air_port}: {err.strerror or err}") from err
            stack.callback(listening.close)
        neighbours = None
        if neighbour_ports and shared_euis:
            sending, _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=(AIR_HOST, 0)
            )
            stack.callback(sending.close)
            neighbours = Neighbours(shared_euis, neighbour_ports, sending)
        tx_air = None
        if tx_air_ports:
            transmitting, _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=(AIR_HOST, 0)
            )
            stack.callback(transmitting.close)
            tx_air = TxAir(tx_air_ports, transmitting)
        start = None
        if wait_for_start:
            start = asyncio.Event()
            stack.push_async_callback(_cancelled, asyncio.create_task(_start_on_stdin(start)))
        print(f"LINK {concentrator.path}", flush=True)
        if wait_for_start:
            print("READY_FOR_START", flush=True)
        await run_gateway(
            concentrator,
            devices,
            run,
            stop,
            interval_s=interval_s,
            rng=random.Random(seed),
            start=start,
            neighbours=neighbours,
            hostile_every=hostile_every,
            tx_air=tx_air,
        )
    return run


async def _start_on_stdin(start: asyncio.Event) -> None:
    """Set ``start`` when the line ``start`` arrives on stdin."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    try:
        while line := await reader.readline():
            if line.strip().decode(errors="replace") == START_WORD:
                start.set()
                return
        log.warning("stdin closed before %r arrived: the devices do not start", START_WORD)
    finally:
        transport.close()


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def write_report(run: GatewayRun, report: Path) -> None:
    """Write ``run``'s report as JSON, atomically (a reader never sees half a file)."""
    partial = report.with_suffix(".partial")
    partial.write_text(json.dumps(run.report()))
    partial.replace(report)
