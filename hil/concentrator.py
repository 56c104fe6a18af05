"""An emulated concentrator on a pseudo-terminal: the MCU side of protocol v1
(``docs/protocol/concentrator-v1.md``), built on the same codecs as the host.

:class:`EmulatedConcentrator` opens a pty, puts it in raw mode and points a stable symlink
(``<link_dir>/ttyOWL0`` by default) at its slave end, so pyserial, the edge agent or any serial
program can open it like a USB concentrator. It answers ``HELLO``, ``RADIO_CONFIG``,
``TX_REQUEST`` and ``GET_STATS`` as a concentrator does, and a test or the demo drives the
radio side: :meth:`~EmulatedConcentrator.inject` reports a received packet (what an emulated
LoRaWAN end device sends), :attr:`~EmulatedConcentrator.tx_requests` records what the host
asked to transmit (the join accept, say), and fault hooks unplug the port, reboot the MCU,
corrupt frames or send line noise.

It runs in the caller's asyncio loop. The port is a
:class:`owlgate.hil.serial_device.SerialDevice` (:attr:`EmulatedConcentrator.serial`): the pty
path, a ``socket://`` port with ``tcp=True`` (:attr:`~EmulatedConcentrator.url`), or both;
optional pacing at the host's baud rate, ``expected_baud``, and a
:class:`~owlgate.hil.faults.FaultPlan` (:attr:`~EmulatedConcentrator.plan`) on both
directions. The fault hooks above land in the same plan's log as the plan's own faults. The
requests are answered by handlers declared per message class in one
:class:`~owlgate.hil.serial_device.CommandTable`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from pathlib import Path
from typing import Final, Self, TypeVar

from ..codecs.concentrator import (
    MESSAGES,
    PROTOCOL_VERSION,
    Capabilities,
    CodingRate,
    CrcStatus,
    Error,
    ErrorCode,
    GetStats,
    Hello,
    Message,
    RadioConfig,
    RadioConfigAck,
    RxFrame,
    Stats,
    TxAck,
    TxError,
    TxRequest,
    decode_message,
    encode_message,
    peek_header,
    to_frame,
)
from ..codecs.errors import CodecError
from ..codecs.node.framing import DELIMITER, FrameDecoder, cobs_encode, crc16
from .faults import FaultKind, FaultPlan
from .pty import AsyncLifecycle
from .serial_device import BytesHandler, CommandTable, OnSerialDevice, SerialDevice

log = logging.getLogger(__name__)

#: What the emulator's HELLO names as its firmware.
EMULATOR_FIRMWARE: Final = "owlgate-emulator 0.1.0"
#: The EUI of the example board in the protocol documentation.
DEFAULT_EUI: Final = bytes.fromhex("b827ebfffe6c1a2b")
#: An SX1302 board for EU868, as in the protocol documentation's HELLO example.
DEFAULT_CAPABILITIES: Final = Capabilities(
    chip="SX1302",
    max_channels=9,
    frequency_min_hz=863_000_000,
    frequency_max_hz=870_000_000,
    tx_power_min_dbm=-6,
    tx_power_max_dbm=27,
    spreading_factors=(5, 6, 7, 8, 9, 10, 11, 12),
    bandwidths_hz=(125_000, 250_000, 500_000),
    gps=False,
)
DEFAULT_LINK_NAME: Final = "ttyOWL0"

_COUNTER_MODULUS: Final = 1 << 32

_TYPE_IDS: Final = {spec.cls: spec.message_type for spec in MESSAGES}
_KNOWN_TYPE_IDS: Final = frozenset(int(type_id) for type_id in _TYPE_IDS.values())

_Request = TypeVar("_Request", Hello, RadioConfig, TxRequest, GetStats)

#: The handlers of protocol v1's message table, one per message class the host may send
#: (and one for those only a concentrator sends).
_ANSWERS: CommandTable[type[Message], EmulatedConcentrator, Message | None] = CommandTable(
    "concentrator protocol v1"
)


class EmulatedConcentrator(OnSerialDevice, AsyncLifecycle):
    """A concentrator MCU speaking protocol v1 on a pty whose path is :attr:`path`.

    ``tx_error``: the code every ``TX_REQUEST`` is answered with while it is not
    ``TxError.NONE`` (``TOO_LATE`` to test a late downlink, say); otherwise requests outside
    the configured TX range or power get ``TX_FREQ`` / ``TX_POWER`` and the rest ``NONE``.
    ``silent``: request classes (``Hello``, ``TxRequest``, ...) that are recorded but not
    answered, to test the host's timeouts. Both may be changed at any time.
    ``seed`` fixes the counter's start value and the line noise.

    The line: ``pty`` (the path, default) and/or ``tcp`` (``tcp_port``, 0 for a free one),
    paced at the host's pty rate or ``baudrate`` with ``paced`` (off by default, as before the
    framework: a program that opens the pty without setting its speed leaves it at 38400, see
    ``docs/hil-devices.md``); ``expected_baud`` refuses a host at another rate; ``plan`` the
    faults on both directions.
    """

    def __init__(
        self,
        link_dir: str | os.PathLike[str],
        *,
        link_name: str = DEFAULT_LINK_NAME,
        eui: bytes = DEFAULT_EUI,
        firmware: str = EMULATOR_FIRMWARE,
        capabilities: Capabilities = DEFAULT_CAPABILITIES,
        seed: int | None = None,
        pty: bool = True,
        tcp: bool = False,
        tcp_port: int = 0,
        baudrate: int = 115200,
        expected_baud: int | None = None,
        plan: FaultPlan | None = None,
        paced: bool = False,
    ) -> None:
        self.path = Path(link_dir) / link_name
        self.eui = eui
        self.firmware = firmware
        self.capabilities = capabilities
        self.tx_error = TxError.NONE
        self.silent: set[type[Message]] = set()
        #: Every valid message received from the host, in order.
        self.received: list[Message] = []
        #: The configuration in use (None after boot, until a RADIO_CONFIG).
        self.radio_config: RadioConfig | None = None
        self._rng = random.Random(seed)
        self._decoder = FrameDecoder()
        self._boot_ns = 0
        self._counter_offset_us = 0
        #: The transport: pty and/or TCP, pacing, faults.
        self.serial = SerialDevice(
            lambda send: BytesHandler(self._on_bytes),
            pty_path=self.path if pty else None,
            tcp=tcp,
            tcp_port=tcp_port,
            baudrate=baudrate,
            expected_baud=expected_baud,
            plan=plan,
            paced=paced,
            label=f"emulated concentrator {self.path}",
            on_dropped=self._count_dropped,
        )
        #: The faults on the line, and the log of every fault applied or injected.
        self.plan = self.serial.plan
        self._corrupt_next = False
        self._changed = asyncio.Event()
        self._stats_task: asyncio.Task[None] | None = None
        self._stats: dict[str, int] = {}
        self._tx_errors: dict[TxError, int] = {}
        self.link_dropped = 0
        self._boot()

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> Self:
        """Create the pty and the symlink and/or the TCP port, and start answering."""
        self._decoder.reset()
        await self.serial.start()
        self._opened()
        return self

    async def close(self) -> None:
        """Close the pty and remove the symlink, close the TCP port (idempotent)."""
        await self.serial.close()
        task, self._stats_task = self._stats_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})

    def _opened(self) -> None:
        log.info("emulated concentrator on %s (%s)", self.path, self.serial.tty_path)

    # --- fault hooks --------------------------------------------------------------------------

    def unplug(self) -> None:
        """The USB cable is pulled: the pty closes (a client's reads fail) and the path is
        gone; the TCP port refuses connections."""
        log.info("emulated concentrator %s unplugged", self.path)
        self.serial.unplug_now()

    def replug(self) -> None:
        """Plugged back in: a new pty behind the same path (the TCP port listens again), and
        the MCU has rebooted (no configuration)."""
        self.serial.unplug_now()
        self._boot()
        self._decoder.reset()
        self.serial.replug_now()
        self._opened()

    def reboot(self, *, announce: bool = True) -> None:
        """The MCU reboots (watchdog) with the port still open: it forgets its configuration
        and says ``HELLO`` with token 0 (protocol v1, "Concentrator reboot"), unless
        ``announce`` is false (that HELLO was lost on the line)."""
        detail = "MCU reboot" + ("" if announce else ", its HELLO lost")
        self.plan.log.record("to_host", "reset", self.plan.position("to_host"), b"", detail)
        self._boot()
        if announce:
            self._send(self._hello(0))

    def inject_garbage(self, size: int = 16) -> None:
        """Line noise: ``size`` random non-zero bytes between two delimiters, one bad frame
        for the host's decoder (a bad CRC or bad COBS)."""
        noise = bytes(self._rng.randrange(1, 256) for _ in range(size))
        self._write_fault(DELIMITER + noise + DELIMITER, "insert", "line noise")

    def send_raw(self, data: bytes) -> None:
        """Write ``data`` to the line as it is (a frame in pieces, say, to test the host's
        reassembly)."""
        self._write_fault(data, "insert", "raw bytes")

    def corrupt_next(self) -> None:
        """Send the next frame with a wrong CRC (well-formed COBS), as a flipped bit would."""
        self._corrupt_next = True

    # --- the radio side -----------------------------------------------------------------------

    def counter_us(self) -> int:
        """The free-running 32-bit microsecond counter (Semtech's ``tmst``) now."""
        elapsed_us = (time.monotonic_ns() - self._boot_ns) // 1000
        return (self._counter_offset_us + elapsed_us) % _COUNTER_MODULUS

    def inject(
        self,
        payload: bytes,
        *,
        frequency_hz: int = 868_100_000,
        sf: int = 7,
        bandwidth_hz: int = 125_000,
        coding_rate: CodingRate = CodingRate.CR_4_5,
        rssi_dbm: int = -57,
        snr_db: float = 9.25,
        crc_status: CrcStatus = CrcStatus.OK,
        channel: int | None = 0,
        rf_chain: int | None = 0,
        timestamp_us: int | None = None,
    ) -> RxFrame:
        """Report a packet "received" now (``timestamp_us``: the counter, unless given) and
        return the ``RX_FRAME`` sent; dropped (and counted) while unplugged."""
        frame = RxFrame(
            frequency_hz=frequency_hz,
            sf=sf,
            bandwidth_hz=bandwidth_hz,
            coding_rate=coding_rate,
            rssi_dbm=rssi_dbm,
            snr_db=snr_db,
            timestamp_us=self.counter_us() if timestamp_us is None else timestamp_us,
            crc_status=crc_status,
            payload=payload,
            channel=channel,
            rf_chain=rf_chain,
        )
        self._stats["rx"] += 1
        if crc_status is CrcStatus.OK:
            self._stats["rx_ok"] += 1
        elif crc_status is CrcStatus.BAD:
            self._stats["rx_bad"] += 1
        self._send(frame)
        return frame

    # --- what the host sent -------------------------------------------------------------------

    def requests(self, kind: type[_Request]) -> list[_Request]:
        """The valid messages of class ``kind`` received from the host, in order."""
        return [message for message in self.received if isinstance(message, kind)]

    @property
    def hellos(self) -> list[Hello]:
        """The host's HELLOs."""
        return self.requests(Hello)

    @property
    def radio_configs(self) -> list[RadioConfig]:
        """Every RADIO_CONFIG received (answered or not)."""
        return self.requests(RadioConfig)

    @property
    def tx_requests(self) -> list[TxRequest]:
        """Every TX_REQUEST received (the downlinks the host wanted sent)."""
        return self.requests(TxRequest)

    @property
    def link_errors(self) -> int:
        """Frames from the host dropped by the emulator's decoder (CRC, COBS, overflow)."""
        decoder = self._decoder
        return decoder.crc_errors + decoder.frame_errors + decoder.overflows

    async def wait_for(self, kind: type[_Request], count: int = 1, *, timeout_s: float) -> _Request:
        """Wait until ``count`` messages of class ``kind`` have arrived; return the last of
        them. ``TimeoutError`` after ``timeout_s``."""
        async with asyncio.timeout(timeout_s):
            while True:
                found = self.requests(kind)
                if len(found) >= count:
                    return found[count - 1]
                self._changed.clear()
                await self._changed.wait()

    # --- the MCU's side of the protocol -------------------------------------------------------

    def _boot(self) -> None:
        # What an MCU has after power-up: no configuration, fresh counters, and a counter
        # that starts anywhere (the host cannot know when the board booted).
        self.radio_config = None
        self._schedule_stats(0)
        self._boot_ns = time.monotonic_ns()
        self._counter_offset_us = self._rng.randrange(_COUNTER_MODULUS)
        self._stats = dict.fromkeys(("rx", "rx_ok", "rx_bad", "tx_requested", "tx_sent"), 0)
        self._tx_errors = {}
        self.link_dropped = 0

    def _hello(self, token: int) -> Hello:
        return Hello(
            protocol_version=PROTOCOL_VERSION,
            firmware=self.firmware,
            eui=self.eui,
            capabilities=self.capabilities,
            token=token,
        )

    def _on_bytes(self, data: bytes) -> None:
        for payload in self._decoder.feed(data):
            self._handle(payload)

    def _answer(self, message: Message) -> Message | None:
        handler = _ANSWERS.get(type(message))
        if handler is None:
            return self._not_a_request(message)
        return handler(self, message)

    def _handle(self, payload: bytes) -> None:
        try:
            message = decode_message(payload)
        except CodecError as err:
            # Protocol v1, "Errors", layer 2: answer with the token when it can be read.
            try:
                type_id, token = peek_header(payload)
            except CodecError:
                type_id, token = 0, 0
            known = type_id == 0 or type_id in _KNOWN_TYPE_IDS
            self._send(
                Error(
                    code=ErrorCode.MALFORMED if known else ErrorCode.UNKNOWN_TYPE,
                    message=err.message[:128],
                    ref_type=type_id if 1 <= type_id <= 255 else None,
                    token=token,
                )
            )
            return
        self.received.append(message)
        self._changed.set()
        if type(message) in self.silent:
            return
        answer = self._answer(message)
        if answer is not None:
            self._send(answer)

    @_ANSWERS.on(Hello)
    def _on_hello(self, hello: Hello) -> Message | None:
        if hello.protocol_version != PROTOCOL_VERSION:
            return Error(
                code=ErrorCode.UNSUPPORTED_VERSION,
                message=(
                    f"protocol version {hello.protocol_version}; this side speaks "
                    f"{PROTOCOL_VERSION}"
                ),
                ref_type=1,
                token=hello.token,
            )
        return self._hello(hello.token)

    @_ANSWERS.on(GetStats)
    def _on_get_stats(self, request: GetStats) -> Message | None:
        return self._stats_message(request.token)

    @_ANSWERS.on(Error)
    def _on_error(self, error: Error) -> Message | None:
        # Never answered (protocol v1, ERROR): two confused peers must not ping-pong.
        log.info("host reports an error: %s %s", error.code.name, error.message)
        return None

    @_ANSWERS.on(RadioConfigAck, RxFrame, TxAck, Stats)
    def _not_a_request(self, message: Message) -> Message | None:
        return Error(
            code=ErrorCode.MALFORMED,
            message=f"{type(message).__name__} is sent by the concentrator, not to it",
            ref_type=int(_TYPE_IDS[type(message)]),
            token=message.token,
        )

    @_ANSWERS.on(RadioConfig)
    def _configure(self, config: RadioConfig) -> Message | None:
        caps = self.capabilities
        if len(config.channels) > caps.max_channels or any(
            not caps.frequency_min_hz <= channel.frequency_hz <= caps.frequency_max_hz
            for channel in config.channels
        ):
            return Error(
                code=ErrorCode.INVALID_CONFIG,
                message="channels outside this concentrator's capabilities",
                ref_type=2,
                token=config.token,
            )
        self.radio_config = config
        self._schedule_stats(config.stats_interval_s)
        return RadioConfigAck(config_id=config.config_id, token=config.token)

    def _schedule_stats(self, interval_s: int) -> None:
        # RADIO_CONFIG key 8: STATS every stats_interval_s seconds, token 0; 0 means never.
        if self._stats_task is not None:
            self._stats_task.cancel()
            self._stats_task = None
        if interval_s > 0:
            self._stats_task = asyncio.get_running_loop().create_task(
                self._periodic_stats(interval_s), name=f"stats {self.path}"
            )

    async def _periodic_stats(self, interval_s: int) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self._send(self._stats_message(0))

    @_ANSWERS.on(TxRequest)
    def _transmit(self, request: TxRequest) -> Message | None:
        self._stats["tx_requested"] += 1
        config = self.radio_config
        if config is None:
            return Error(
                code=ErrorCode.NOT_CONFIGURED,
                message="no RADIO_CONFIG accepted since boot",
                ref_type=5,
                token=request.token,
            )
        error = self.tx_error
        if error is TxError.NONE:
            if not config.tx_frequency_min_hz <= request.frequency_hz <= config.tx_frequency_max_hz:
                error = TxError.TX_FREQ
            elif request.power_dbm > config.tx_power_max_dbm:
                error = TxError.TX_POWER
        if error is TxError.NONE:
            self._stats["tx_sent"] += 1
        else:
            self._tx_errors[error] = self._tx_errors.get(error, 0) + 1
        return TxAck(error=error, timestamp_us=self.counter_us(), token=request.token)

    def _stats_message(self, token: int) -> Stats:
        counts = self._stats
        return Stats(
            uptime_s=(time.monotonic_ns() - self._boot_ns) // 1_000_000_000,
            rx_received=counts["rx"],
            rx_crc_ok=counts["rx_ok"],
            rx_crc_bad=counts["rx_bad"],
            tx_requested=counts["tx_requested"],
            tx_sent=counts["tx_sent"],
            tx_errors=dict(self._tx_errors),
            config_id=0 if self.radio_config is None else self.radio_config.config_id,
            link_errors=self.link_errors,
            link_dropped=self.link_dropped,
            temperature_c=41.5,
            token=token,
        )

    # --- writing ------------------------------------------------------------------------------

    def _send(self, message: Message) -> None:
        if self._corrupt_next:
            self._corrupt_next = False
            payload = encode_message(message)
            wrong = crc16(payload) ^ 0x0001
            frame = DELIMITER + cobs_encode(payload + wrong.to_bytes(2, "big")) + DELIMITER
            self._write_fault(frame, "corrupt", f"{type(message).__name__} with a wrong CRC")
            return
        self.serial.send(to_frame(message))

    def _write_fault(self, data: bytes, kind: FaultKind, detail: str) -> None:
        # A fault hook's bytes: logged with the plan's faults, then sent as any answer is.
        self.plan.log.record("to_host", kind, self.plan.position("to_host"), data, detail)
        self.serial.send(data)

    def _count_dropped(self) -> None:
        # A frame lost to the line (unplugged, or a failed write): STATS.link_dropped.
        self.link_dropped += 1
