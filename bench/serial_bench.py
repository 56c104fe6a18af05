"""The serial link figures: goodput of concentrator protocol v1 on a paced line, and the time
the host's serial backend takes to recover after the concentrator is replugged.

Goodput: an emulated concentrator (``owlgate.hil.concentrator``) and a :class:`PacedLine` run
in a child process of their own, so that their work does not stall the host; the host is the
real :class:`~owlgate.edge.serial_backend.SerialConcentrator` in this process, read through
its public :meth:`frames` iterator. The emulator is handed a burst of ``RX_FRAME`` messages at
once, so it sends back to back and the line is the only limit.

Recovery: the emulator and the host in this process, on the emulator's own pty (the path the
backend reopens), with the backend's default reconnect settings.

Every frame is built from a fixed seed, and the suite fails rather than report a figure for
which a frame was lost, reordered or dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, cast

from owlgate.codecs import lorawan
from owlgate.codecs.concentrator import (
    Channel,
    CodingRate,
    CrcStatus,
    RadioConfig,
    RxFrame,
    encode_message,
    to_frame,
)
from owlgate.edge.serial_backend import SerialConcentrator
from owlgate.hil.concentrator import EmulatedConcentrator
from owlgate.hil.paced_line import BITS_PER_BYTE_8N1, PacedLine

from .codec_bench import SEED
from .figures import Figure

log = logging.getLogger(__name__)

BAUDRATES: Final = (115_200, 921_600)
#: The eight EU868 channels of a typical gateway (Regional Parameters 1.0.3 section 2.2).
EU868_CHANNELS_HZ: Final = (
    868_100_000,
    868_300_000,
    868_500_000,
    867_100_000,
    867_300_000,
    867_500_000,
    867_700_000,
    867_900_000,
)
#: Data uplinks of this many bytes of PHYPayload (MHDR, FHDR without FOpts, FPort, MIC: 13
#: bytes, so 7 to 38 bytes of FRMPayload: the sensors' readings).
PHY_SIZES: Final = range(20, 52)
SPREADING_FACTORS: Final = range(7, 13)
DEVICES: Final = 50

GOODPUT_GOAL: Final = 0.9
RECOVERY_GOAL_S: Final = 2.0
#: Recovery rounds as (seconds unplugged, rounds): the main figure's first, then the others
#: reported beside it.
RECOVERY_PLANS: Final = ((2.0, 7), (0.2, 3), (5.0, 3), (15.0, 2))
RECOVERY_PLANS_QUICK: Final = ((0.2, 1),)

_CONFIG: Final = RadioConfig(
    config_id=7,
    region="EU868",
    channels=tuple(Channel(frequency_hz=hz) for hz in EU868_CHANNELS_HZ),
    tx_frequency_min_hz=863_000_000,
    tx_frequency_max_hz=870_000_000,
    tx_power_max_dbm=16,
    token=1,
)
_WAIT_S: Final = 15.0


# --- the frame mix ----------------------------------------------------------------------------


def uplink_mix(count: int, seed: int) -> list[RxFrame]:
    """``count`` received data uplinks as the concentrator reports them: unconfirmed data
    frames of :data:`DEVICES` ABP devices (real MIC and encryption, counters counting up),
    PHYPayloads of 20 to 51 bytes, SF7 to SF12 on the eight EU868 channels, RSSI and SNR
    spread as a city's sensors are heard. ``timestamp_us`` is filled in by the caller's clock
    (the emulator's counter) when it is sent; here it is a placeholder."""
    rng = random.Random(seed)
    keys = [
        (0x26011000 + index, lorawan.AesKey(bytes([index + 1]) * 16)) for index in range(DEVICES)
    ]
    frames = []
    for index in range(count):
        dev_addr, key = keys[index % DEVICES]
        f_cnt = seed * 1000 + index // DEVICES
        frm = rng.randbytes(rng.choice(PHY_SIZES) - 13)
        encrypted = lorawan.encrypt_frm_payload(
            key, frm, dev_addr=dev_addr, f_cnt=f_cnt, uplink=True
        )
        msg = (
            b"\x40"  # MHDR: unconfirmed data up, LoRaWAN R1
            + dev_addr.to_bytes(4, "little")
            + b"\x00"  # FCtrl: no ADR, no FOpts
            + (f_cnt & 0xFFFF).to_bytes(2, "little")
            + b"\x01"  # FPort
            + encrypted
        )
        phy = msg + lorawan.data_mic(key, msg, dev_addr=dev_addr, f_cnt=f_cnt, uplink=True)
        sf = rng.choice(SPREADING_FACTORS)
        # Weaker signals at the higher spreading factors, as ADR assigns them.
        snr_db = round(rng.uniform(10 - 2.5 * (sf - 6), 12 - 2.5 * (sf - 7)) * 4) / 4
        frames.append(
            RxFrame(
                frequency_hz=rng.choice(EU868_CHANNELS_HZ),
                sf=sf,
                bandwidth_hz=125_000,
                coding_rate=CodingRate.CR_4_5,
                rssi_dbm=rng.randint(-125 + 2 * (12 - sf), -45),
                snr_db=snr_db,
                timestamp_us=0,
                crc_status=CrcStatus.OK,
                payload=phy,
                channel=rng.randrange(8),
                rf_chain=rng.randrange(2),
            )
        )
    return frames


# --- the device side (child process) ----------------------------------------------------------


async def _device_side(link_dir: Path) -> None:
    """The emulated concentrator and, per command, a paced line in front of it; one JSON
    command a line on stdin, one JSON answer a line on stdout."""
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)

    def answer(*items: object) -> None:
        sys.stdout.write(json.dumps(items) + "\n")
        sys.stdout.flush()

    line: PacedLine | None = None
    async with EmulatedConcentrator(link_dir, seed=SEED) as emulator:
        try:
            while raw := await commands.readline():
                match json.loads(raw):
                    case ["line", int(baudrate)]:
                        if line is not None:
                            await line.close()
                        line = PacedLine(
                            emulator.path, link_dir, baudrate=baudrate, link_name=f"ttyB{baudrate}"
                        )
                        await line.start()
                        answer("line", str(line.path))
                    case ["burst", int(count), int(seed)]:
                        for frame in uplink_mix(count, seed):
                            emulator.inject(
                                frame.payload,
                                frequency_hz=frame.frequency_hz,
                                sf=frame.sf,
                                rssi_dbm=frame.rssi_dbm,
                                snr_db=frame.snr_db,
                                channel=frame.channel,
                                rf_chain=frame.rf_chain,
                            )
                        answer("burst", count)
                    case ["stats"] if line is not None:
                        answer("stats", line.max_late_s, line.delivered_down, emulator.link_dropped)
                    case _:
                        break
        finally:
            if line is not None:
                await line.close()


class _Child:
    """The device side as a process of its own (``python -m owlgate.bench.serial_bench``)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process

    @classmethod
    async def start(cls, link_dir: Path) -> _Child:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            __name__,
            str(link_dir),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def ask(self, *command: object) -> list[object]:
        stdin, stdout = self._process.stdin, self._process.stdout
        assert stdin is not None
        assert stdout is not None
        stdin.write(json.dumps(command).encode() + b"\n")
        await stdin.drain()
        async with asyncio.timeout(_WAIT_S):
            raw = await stdout.readline()
        if not raw:
            raise RuntimeError(f"the device side ended (exit code {self._process.returncode})")
        answer = json.loads(raw)
        assert isinstance(answer, list)
        return answer

    async def stop(self) -> None:
        stdin = self._process.stdin
        assert stdin is not None
        stdin.close()
        try:
            async with asyncio.timeout(_WAIT_S):
                await self._process.wait()
        except TimeoutError:
            self._process.kill()
            await self._process.wait()


# --- goodput ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GoodputRound:
    """One burst through the paced line, counted from the first frame the consumer got to the
    last (so the interval holds ``frames - 1`` whole frames)."""

    baudrate: int
    frames: int
    seconds: float
    message_bytes: int
    phy_bytes: int
    wire_bytes: int

    @property
    def capacity_bytes_per_s(self) -> float:
        return self.baudrate / BITS_PER_BYTE_8N1

    @property
    def goodput_ratio(self) -> float:
        return self.message_bytes / self.seconds / self.capacity_bytes_per_s

    @property
    def phy_ratio(self) -> float:
        return self.phy_bytes / self.seconds / self.capacity_bytes_per_s

    @property
    def line_utilisation(self) -> float:
        return self.wire_bytes / self.seconds / self.capacity_bytes_per_s

    @property
    def framing_efficiency(self) -> float:
        return self.message_bytes / self.wire_bytes


async def _goodput_round(
    child: _Child, host: SerialConcentrator, baudrate: int, count: int, seed: int
) -> GoodputRound:
    expected = uplink_mix(count, seed)
    frames = cast(AsyncGenerator[RxFrame, None], host.frames())
    answer = await child.ask("burst", count, seed)
    if answer != ["burst", count]:
        raise RuntimeError(f"the device side answered {answer!r} to a burst")
    times: list[float] = []
    got: list[RxFrame] = []
    async with asyncio.timeout(_WAIT_S + count * 100 * BITS_PER_BYTE_8N1 / baudrate):
        async for frame in frames:
            times.append(time.perf_counter())
            got.append(frame)
            if len(got) == count:
                break
    await frames.aclose()
    if [frame.payload for frame in got] != [frame.payload for frame in expected]:
        raise RuntimeError("the host did not receive the burst's frames in order")
    counted = got[1:]
    return GoodputRound(
        baudrate=baudrate,
        frames=len(counted),
        seconds=times[-1] - times[0],
        message_bytes=sum(len(encode_message(frame)) for frame in counted),
        phy_bytes=sum(len(frame.payload) for frame in counted),
        wire_bytes=sum(len(to_frame(frame)) for frame in counted),
    )


async def _goodput(quick: bool) -> dict[int, tuple[list[GoodputRound], float]]:
    """Per baud rate: the rounds, and the pacer's largest lateness."""
    rounds = 1 if quick else 3
    line_s = 0.5 if quick else 3.0
    results: dict[int, tuple[list[GoodputRound], float]] = {}
    with tempfile.TemporaryDirectory(prefix="owlgate-serial-bench-") as tmp:
        child = await _Child.start(Path(tmp))
        try:
            for baudrate in BAUDRATES:
                kind, path = await child.ask("line", baudrate)
                assert kind == "line"
                assert isinstance(path, str)
                # Frames of the mix average about 85 bytes on the wire.
                count = max(20, int(line_s * baudrate / BITS_PER_BYTE_8N1 / 85))
                async with SerialConcentrator(
                    port=path, radio_config=_CONFIG, baudrate=baudrate, rng=random.Random(SEED)
                ) as host:
                    await host.wait_connected(_WAIT_S)
                    done = [
                        await _goodput_round(child, host, baudrate, count, SEED + index)
                        for index in range(rounds)
                    ]
                    counters = host.counters
                    if (
                        counters.rx_dropped
                        or counters.link_crc_errors
                        or counters.link_frame_errors
                    ):
                        raise RuntimeError(f"the host lost frames at {baudrate} baud: {counters}")
                _, late_s, _, dropped = await child.ask("stats")
                if dropped:
                    raise RuntimeError(f"the emulator dropped {dropped} writes")
                assert isinstance(late_s, float)
                results[baudrate] = (done, late_s)
        finally:
            await child.stop()
    return results


# --- recovery ---------------------------------------------------------------------------------


async def _recovery_round(
    emulator: EmulatedConcentrator, host: SerialConcentrator, unplugged_s: float, index: int
) -> float:
    """Unplug, wait ``unplugged_s``, replug; seconds from the replug to the first frame the
    consumer gets. The frame is injected as soon as the host has configured the rebooted MCU:
    a concentrator's radio receives nothing before its ``RADIO_CONFIG``."""
    configs = len(emulator.radio_configs)
    frames = cast(AsyncGenerator[RxFrame, None], host.frames())
    emulator.unplug()
    await host.wait_disconnected(_WAIT_S)
    await asyncio.sleep(unplugged_s)
    replugged = time.perf_counter()
    emulator.replug()
    await emulator.wait_for(RadioConfig, configs + 1, timeout_s=_WAIT_S + 10)
    sent = emulator.inject(bytes([0x40, index & 0xFF]) + bytes(18), sf=7)
    async with asyncio.timeout(_WAIT_S):
        frame = await anext(frames)
    delivered = time.perf_counter()
    await frames.aclose()
    if frame.payload != sent.payload:
        raise RuntimeError("the first frame after the replug is not the one injected")
    return delivered - replugged


async def _recovery(plans: list[tuple[float, int]]) -> dict[float, list[float]]:
    """Per unplugged time: the recovery times of its rounds."""
    results: dict[float, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="owlgate-serial-bench-") as tmp:
        emulator = EmulatedConcentrator(Path(tmp), seed=SEED)
        host = SerialConcentrator(
            port=str(emulator.path), radio_config=_CONFIG, rng=random.Random(SEED)
        )
        async with emulator, host:
            await host.wait_connected(_WAIT_S)
            for unplugged_s, rounds in plans:
                results[unplugged_s] = [
                    await _recovery_round(emulator, host, unplugged_s, index)
                    for index in range(rounds)
                ]
            if host.counters.reconnects != sum(rounds for _, rounds in plans):
                raise RuntimeError(f"unexpected reconnect count: {host.counters}")
    return results


def run(*, quick: bool = False) -> list[Figure]:
    """The serial suite's figures."""
    # The backend logs every unplug as a warning: right in the field, noise in a table.
    backend_log = logging.getLogger("owlgate.edge.serial_backend")
    level = backend_log.level
    backend_log.setLevel(logging.ERROR)
    try:
        goodput = asyncio.run(_goodput(quick))
        plans = list(RECOVERY_PLANS_QUICK if quick else RECOVERY_PLANS)
        recovery = asyncio.run(_recovery(plans))
    finally:
        backend_log.setLevel(level)
    figures = []
    for baudrate, (rounds, late_s) in goodput.items():
        ratios = [r.goodput_ratio for r in rounds]
        best = max(rounds, key=lambda r: r.goodput_ratio)
        figures.append(
            Figure(
                f"serial.goodput_ratio_{baudrate}",
                best.goodput_ratio,
                "ratio",
                f"RX_FRAME message bytes (CBOR inside the frames) delivered by "
                f"SerialConcentrator.frames() per second over the line capacity "
                f"{baudrate}/10 bytes/s, emulator sending back to back through a paced line; "
                f"best of {len(rounds)} bursts of {best.frames + 1} frames",
                goal_min=GOODPUT_GOAL,
                comparisons={
                    "phy_payload": best.phy_ratio,
                    "line_utilisation": best.line_utilisation,
                    "framing_efficiency": best.framing_efficiency,
                    "pacer_max_late_ms": late_s * 1000,
                },
                median=statistics.median(ratios),
            )
        )
    main_s = plans[0][0]
    main = recovery[main_s]
    figures.append(
        Figure(
            "edge.recovery_s",
            min(main),
            "s",
            f"emulated concentrator unplugged for {main_s:g} s, then replugged: seconds to the "
            f"first RX_FRAME from SerialConcentrator.frames() (reopen, HELLO, RADIO_CONFIG, "
            f"then the frame), default reconnect backoff; best of {len(main)} rounds",
            goal_max=RECOVERY_GOAL_S,
            comparisons={
                "max": max(main),
                **{f"unplugged_{s:g}s.median": statistics.median(recovery[s]) for s in recovery},
                **{f"unplugged_{s:g}s.max": max(recovery[s]) for s in recovery},
            },
            median=statistics.median(main),
        )
    )
    return figures


if __name__ == "__main__":
    asyncio.run(_device_side(Path(sys.argv[1])))
