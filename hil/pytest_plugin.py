"""The owlgate pytest plugin: emulated hardware as fixtures, real hardware when asked for.

Installed with the package (entry point ``pytest11``: ``owlgate``), so any project that has
owlgate installed gets these fixtures, markers and options without a ``conftest.py``:

Fixtures (function scope; ``docs/hil.md``, "pytest plugin", shows each in use):

- ``hil_loop``: the test's :class:`LoopThread`, an asyncio loop in a background thread. The
  emulators need a running loop; the test itself stays synchronous (pyserial, ``httpx``,
  ``asyncio.run`` of its own), and reaches the emulators through the handles' thread-safe
  helpers, which run on that loop.
- ``hil_concentrator``: a :class:`ConcentratorHandle`, an emulated concentrator (protocol v1)
  on a pty: ``.port`` to open, ``inject()`` a received packet, ``wait_for()`` a request.
- ``hil_modem``: a :class:`ModemHandle`, an emulated RAK3172 with RUI3 on a pty.
- ``hil_node``: a :class:`NodeBusHandle`, an emulated RS-485 bus of wired MicroPython nodes.
- ``hil_world``: a :class:`HilWorld`, the radio world of the scenario the test's
  ``hil_scenario`` marker (or ``--hil-scenario``) names.
- ``hil_broker``: an MQTT broker on a free port (:class:`EmbeddedBrokerThread` or a
  :class:`~owlgate.hil.processes.MosquittoProcess`, ``--hil-broker``).
- ``hil_fleet``: a :class:`HilFleet`, a real ``owlgate fleet serve`` process with a seeded
  database on a free port (its embedded broker): API URL, admin token, emulator manifest.
- ``hil_edge``: a :class:`HilEdge`, a real ``owlgate edge run`` process for the fleet's first
  gateway, its radio on ``hil_concentrator``; started once the agent says it is ready.

Markers: ``hil_scenario(name, seed=None)`` picks the scenario of ``hil_world``;
``hil_hardware`` says a test may run on real hardware; ``hil_fleet(gateways=1, nodes=4,
seed=1)`` sizes the seeded fleet.

Real hardware is opt-in (``--hil-port /dev/ttyUSB0``, ``--hil-baud``): then tests marked
``hil_hardware`` get a handle on that port from ``hil_modem`` / ``hil_concentrator`` instead of
an emulator (the same ``.port`` to open), tests that are not marked and ask for one of those
two fixtures are skipped, and a hardware test that calls an emulator-only helper (a fault, an
injected packet, what the emulator received) is skipped at that call, with the reason.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Generic, Literal, Protocol, TypeVar

import pytest

from ..codecs.concentrator import (
    GetStats,
    Hello,
    Message,
    RadioConfig,
    RxFrame,
    TxError,
    TxRequest,
)
from ..codecs.errors import OwlgateError
from ..codecs.node.wired import WiredNode
from .concentrator import EmulatedConcentrator
from .processes import (
    MODULE,
    ChildProcess,
    MosquittoProcess,
    ProcessFailed,
    find_mosquitto,
    free_tcp_port,
)
from .pty import AsyncLifecycle
from .radio_world import RadioWorld
from .rak3172 import EmulatedRak3172, SentPacket
from .scenario import SCENARIO_DIR, Expanded, Scenario, load_scenario, shipped_scenarios
from .wired_nodes import EmulatedWiredBus

if TYPE_CHECKING:
    import httpx

    from ..fleet.broker import EmbeddedBroker

log = logging.getLogger(__name__)

T = TypeVar("T")
E = TypeVar("E", bound=AsyncLifecycle)
#: The requests a host sends a concentrator (as EmulatedConcentrator.wait_for takes them).
_Request = TypeVar("_Request", Hello, RadioConfig, TxRequest, GetStats)

#: How long a handle waits for the loop thread to carry out one call.
CALL_TIMEOUT_S: Final = 10.0
#: How long an emulator or the loop thread may take to start or stop.
LIFECYCLE_TIMEOUT_S: Final = 10.0
#: ``owlgate fleet seed`` and ``fleet serve`` must be up within this (two loaded CI cores).
FLEET_START_TIMEOUT_S: Final = 60.0
#: The edge agent is ready once its radio is configured and the fleet's sessions are in.
EDGE_READY_TIMEOUT_S: Final = 60.0
#: The real modem's and concentrator's speed unless ``--hil-baud`` says otherwise.
DEFAULT_HARDWARE_BAUD: Final = 115200
#: The fleet ``hil_fleet`` seeds unless the test's ``hil_fleet`` marker says otherwise.
DEFAULT_FLEET_GATEWAYS: Final = 1
DEFAULT_FLEET_NODES: Final = 4
DEFAULT_FLEET_SEED: Final = 1

BrokerChoice = Literal["auto", "embedded", "mosquitto"]
_BROKER_CHOICES: Final = ("auto", "embedded", "mosquitto")

_MARKERS: Final = (
    "hil_scenario(name, seed=None): the scenario of hil_world, a shipped one by name "
    "(parking-street, ...) or a TOML file beside the test",
    "hil_hardware: the test may run on real hardware (--hil-port); without the option it runs "
    "on the emulators",
    "hil_fleet(gateways=1, nodes=4, seed=1): the fleet hil_fleet seeds",
)


class HilPluginError(OwlgateError):
    """The plugin's loop thread or a fixture could not do what was asked."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- options and markers ----------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("owlgate-hil", "owlgate hardware in the loop")
    group.addoption(
        "--hil-port",
        metavar="PORT",
        default=None,
        help="run the tests marked hil_hardware against the real device on PORT (a device "
        "path or a pyserial URL) instead of the emulator; other tests that need the modem or "
        "concentrator are skipped",
    )
    group.addoption(
        "--hil-baud",
        metavar="BAUD",
        type=int,
        default=DEFAULT_HARDWARE_BAUD,
        help=f"the real device's baud rate with --hil-port [{DEFAULT_HARDWARE_BAUD}]",
    )
    group.addoption(
        "--hil-scenario",
        metavar="NAME",
        default=None,
        help="run only tests of scenario NAME (deselect those marked with another) and give "
        "it to hil_world in tests without a hil_scenario marker",
    )
    group.addoption(
        "--hil-broker",
        choices=_BROKER_CHOICES,
        default="auto",
        help="the broker of hil_broker: the embedded amqtt, Mosquitto (skipped without it, "
        "failed under CI=true), or auto: Mosquitto when installed [auto]",
    )


def pytest_configure(config: pytest.Config) -> None:
    for line in _MARKERS:
        config.addinivalue_line("markers", line)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``--hil-scenario NAME`` deselects the tests marked for another scenario."""
    wanted = config.getoption("hil_scenario")
    if wanted is None:
        return
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        marker = item.get_closest_marker("hil_scenario")
        if marker is None or _marker_name(marker) == wanted:
            kept.append(item)
        else:
            dropped.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def _marker_name(marker: pytest.Mark) -> str:
    if len(marker.args) != 1 or not isinstance(marker.args[0], str):
        raise pytest.UsageError(f"hil_scenario takes one scenario name, got {marker.args!r}")
    name: str = marker.args[0]
    return name


def _fail_or_skip(message: str) -> None:
    # As tests/conftest.py's require_binary: a missing program skips locally, fails in CI.
    if os.environ.get("CI") == "true":
        pytest.fail(message + " (CI=true: a missing binary is a failure)")
    pytest.skip(message)


# --- the loop thread --------------------------------------------------------------------------


class LoopThread:
    """An asyncio event loop running in a daemon thread, driven from the test's thread.

    :meth:`run` waits for a coroutine on the loop, :meth:`call` for a plain function (so an
    emulator's state is only ever touched from its own loop). :meth:`stop` cancels what is
    left, closes the loop and joins the thread.
    """

    def __init__(self, name: str = "owlgate-hil") -> None:
        self.name = name
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self.loop.is_closed()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout_s: float = CALL_TIMEOUT_S) -> T:
        """Run ``coroutine`` on the loop and return its result; :class:`TimeoutError` (and the
        coroutine cancelled) after ``timeout_s``."""
        if not self.running:
            coroutine.close()
            raise HilPluginError(f"{self.name}: the loop thread is not running")
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return self._result(future, timeout_s)

    def call(self, func: Callable[[], T], timeout_s: float = CALL_TIMEOUT_S) -> T:
        """Call ``func()`` on the loop thread and return what it returned."""

        async def invoke() -> T:
            return func()

        return self.run(invoke(), timeout_s)

    @staticmethod
    def _result(future: Future[T], timeout_s: float) -> T:
        try:
            return future.result(timeout_s)
        except TimeoutError:
            future.cancel()
            raise

    def stop(self) -> None:
        """Cancel the loop's remaining tasks, close the loop and end the thread (idempotent)."""
        if self.loop.is_closed():
            return
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(LIFECYCLE_TIMEOUT_S)
        if self._thread.is_alive():
            raise HilPluginError(f"{self.name}: the loop thread did not stop")
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        if pending:
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()


@pytest.fixture
def hil_loop() -> Iterator[LoopThread]:
    """The test's background event loop, shared by its emulator fixtures."""
    thread = LoopThread()
    try:
        yield thread
    finally:
        thread.stop()


# --- device handles ---------------------------------------------------------------------------


class DeviceHandle(Generic[E]):
    """What a device fixture yields: the port a host opens, and the emulator behind it.

    ``port`` is a device path or a pyserial URL: the emulator's pty path, or the real device
    with ``--hil-port``. ``emulated`` tells which. On real hardware every emulator-only member
    (:attr:`device`, :meth:`call`, :meth:`run` and the helpers of the subclasses) skips the
    test with the reason, so a hardware test may use them where an emulator is needed and
    still run its hardware part first.
    """

    #: What the device is, for skip reasons and logs.
    kind = "device"

    def __init__(
        self,
        port: str,
        *,
        baudrate: int,
        loop: LoopThread | None = None,
        device: E | None = None,
    ) -> None:
        self.port = port
        self.baudrate = baudrate
        self._loop = loop
        self._device = device

    @property
    def emulated(self) -> bool:
        return self._device is not None

    @property
    def path(self) -> Path | None:
        """The emulator's stable pty path (None on real hardware)."""
        return Path(self.port) if self._device is not None else None

    @property
    def url(self) -> str | None:
        """The pyserial ``socket://`` URL of the emulator's TCP side, when it has one."""
        device = self._device
        if device is None:
            return None
        url = getattr(device, "url", None)
        return url if isinstance(url, str) else None

    @property
    def device(self) -> E:
        """The emulator itself; touch it only through :meth:`call` or :meth:`run` (it lives on
        the loop thread)."""
        return self._emulator("the emulator object")

    def _emulator(self, what: str) -> E:
        if self._device is None:
            pytest.skip(f"{what} needs the emulated {self.kind}: {self.port} is real hardware")
        return self._device

    def _thread(self) -> LoopThread:
        assert self._loop is not None
        return self._loop

    def call(self, func: Callable[[E], T], timeout_s: float = CALL_TIMEOUT_S) -> T:
        """``func(emulator)`` on the emulator's loop thread: any emulator API not wrapped here."""
        device = self._emulator("call()")
        return self._thread().call(lambda: func(device), timeout_s)

    def run(self, func: Callable[[E], Awaitable[T]], timeout_s: float = CALL_TIMEOUT_S) -> T:
        """Await ``func(emulator)`` on the emulator's loop (its ``wait_for``, say)."""
        device = self._emulator("run()")

        async def invoke() -> T:
            return await func(device)

        return self._thread().run(invoke(), timeout_s)

    def _helper(self, what: str, func: Callable[[E], T]) -> T:
        device = self._emulator(what)
        return self._thread().call(lambda: func(device))

    def __repr__(self) -> str:
        where = "emulated" if self.emulated else "hardware"
        return f"<{type(self).__name__} {where} {self.port}>"


class ConcentratorHandle(DeviceHandle[EmulatedConcentrator]):
    """``hil_concentrator``: an emulated concentrator (protocol v1) or the real one."""

    kind = "concentrator"

    def inject(self, payload: bytes, **radio: Any) -> RxFrame:
        """Report a received packet; ``radio``: the keyword arguments of
        :meth:`EmulatedConcentrator.inject` (``rssi_dbm``, ``sf``...)."""
        return self._helper("inject()", lambda c: c.inject(payload, **radio))

    def inject_frame(self, frame: RxFrame) -> RxFrame:
        """Report ``frame`` as received (an :class:`~owlgate.hil.devices.EmulatedDevice`'s
        ``rx_frame()``, say); its timestamp is the counter now."""
        return self._helper(
            "inject_frame()",
            lambda c: c.inject(
                frame.payload,
                frequency_hz=frame.frequency_hz,
                sf=frame.sf,
                bandwidth_hz=frame.bandwidth_hz,
                coding_rate=frame.coding_rate,
                rssi_dbm=frame.rssi_dbm,
                snr_db=frame.snr_db,
                crc_status=frame.crc_status,
                channel=frame.channel,
                rf_chain=frame.rf_chain,
            ),
        )

    def received(self) -> list[Message]:
        """Every valid message the host sent so far, in order (a copy)."""
        return self._helper("received()", lambda c: list(c.received))

    def wait_for(
        self, kind: type[_Request], count: int = 1, *, timeout_s: float = CALL_TIMEOUT_S
    ) -> _Request:
        """Wait until the host has sent ``count`` messages of class ``kind``; the last of them."""
        self._emulator("wait_for()")
        return self.run(lambda c: c.wait_for(kind, count, timeout_s=timeout_s), timeout_s + 1.0)

    def set_tx_error(self, error: TxError) -> None:
        """Answer every TX_REQUEST with ``error`` (``TxError.NONE``: normal again)."""

        def change(concentrator: EmulatedConcentrator) -> None:
            concentrator.tx_error = error

        self._helper("set_tx_error()", change)

    def unplug(self) -> None:
        """Pull the USB cable: the pty closes and its path is gone."""
        self._helper("unplug()", lambda c: c.unplug())

    def replug(self) -> None:
        """Plug it back: a new pty behind the same path, the MCU rebooted."""
        self._helper("replug()", lambda c: c.replug())

    def reboot(self) -> None:
        """The MCU reboots with the port open and says HELLO with token 0."""
        self._helper("reboot()", lambda c: c.reboot())

    def inject_garbage(self, size: int = 16) -> None:
        """Line noise: one bad frame of ``size`` random bytes."""
        self._helper("inject_garbage()", lambda c: c.inject_garbage(size))


class ModemHandle(DeviceHandle[EmulatedRak3172]):
    """``hil_modem``: an emulated RAK3172 (RUI3 AT firmware) or the real module."""

    kind = "modem"

    def inject(self, payload: bytes, rssi_dbm: int = -60, snr_db: int = 8, **radio: Any) -> bool:
        """A packet on the air; True when the module was listening and printed it (see
        :meth:`EmulatedRak3172.inject` for ``radio``)."""
        return self._helper("inject()", lambda m: m.inject(payload, rssi_dbm, snr_db, **radio))

    def commands(self) -> list[str]:
        """Every command line the host sent, without its line end (a copy)."""
        return self._helper("commands()", lambda m: list(m.commands))

    def sent(self) -> list[SentPacket]:
        """Every packet the module transmitted (AT+PSEND), in order (a copy)."""
        return self._helper("sent()", lambda m: list(m.sent))

    def wait_for(self, name: str, count: int = 1, *, timeout_s: float = CALL_TIMEOUT_S) -> str:
        """Wait until ``count`` command lines for ``AT+<name>`` arrived; the last of them."""
        self._emulator("wait_for()")
        return self.run(lambda m: m.wait_for(name, count, timeout_s=timeout_s), timeout_s + 1.0)

    def busy_next(self, count: int = 1) -> None:
        """Answer the next ``count`` commands with ``AT_BUSY_ERROR``."""
        self._helper("busy_next()", lambda m: m.busy_next(count))

    def set_silent(self, silent: bool = True) -> None:
        """A hung firmware: commands are recorded and none answered (or answered again)."""

        def change(modem: EmulatedRak3172) -> None:
            modem.silent = silent

        self._helper("set_silent()", change)

    def restart(self) -> None:
        """The module restarts (brown-out, watchdog): its banner, no longer receiving."""
        self._helper("restart()", lambda m: m.restart())

    def unplug(self) -> None:
        """Pull the USB cable: the pty closes and its path is gone."""
        self._helper("unplug()", lambda m: m.unplug())

    def replug(self) -> None:
        """Plug it back: a new pty behind the same path, and the module's banner."""
        self._helper("replug()", lambda m: m.replug())


class NodeBusHandle(DeviceHandle[EmulatedWiredBus]):
    """``hil_node``: an emulated RS-485 bus of wired nodes (wired protocol v1), empty until
    :meth:`add_node`."""

    kind = "wired node bus"

    def add_node(
        self,
        address: int,
        dev_eui: bytes,
        *,
        settings: dict[str, int | float | bool] | None = None,
    ) -> None:
        """Put a node on the bus at ``address``, understanding ``settings`` (with defaults)."""
        self._helper("add_node()", lambda b: b.add_node(address, dev_eui, settings=settings))

    def add_reading(self, address: int, values: dict[str, object]) -> int:
        """The node at ``address`` measures ``values``; its sequence number for them."""
        return self._helper("add_reading()", lambda b: b.node(address).add_reading(values))

    def node(self, address: int) -> WiredNode:
        """The node side of ``address``: read it here, change it with :meth:`call`."""
        return self._helper("node()", lambda b: b.node(address))

    def acked(self, address: int) -> int:
        """The highest sequence number the host acknowledged to that node."""
        return self._helper("acked()", lambda b: b.acked(address))

    def pending(self, address: int) -> list[int]:
        """The sequence numbers the node still holds (unacknowledged)."""
        return self._helper("pending()", lambda b: b.pending(address))

    def requests(self, address: int) -> list[object]:
        """The valid requests addressed to that node, in order."""
        return self._helper("requests()", lambda b: b.requests(address))

    def set_silent(self, address: int, silent: bool = True) -> None:
        """The node stops answering (or answers again)."""
        self._helper("set_silent()", lambda b: b.set_silent(address, silent))

    def corrupt_next(self, address: int) -> None:
        """That node's next answer goes out with a wrong CRC."""
        self._helper("corrupt_next()", lambda b: b.corrupt_next(address))

    def unplug(self) -> None:
        """Pull the RS-485 adapter: the pty closes and its path is gone."""
        self._helper("unplug()", lambda b: b.unplug())

    def replug(self) -> None:
        """Plug it back: a new pty behind the same path."""
        self._helper("replug()", lambda b: b.replug())


H = TypeVar("H", bound=DeviceHandle[Any])


def _hardware_port(request: pytest.FixtureRequest, kind: str) -> str | None:
    """``--hil-port`` for a test marked hil_hardware; skips an unmarked test under it."""
    port: str | None = request.config.getoption("hil_port")
    if port is None:
        return None
    if request.node.get_closest_marker("hil_hardware") is None:
        pytest.skip(
            f"emulator-only test (not marked hil_hardware) skipped: --hil-port {port} puts "
            f"the {kind} fixture on real hardware"
        )
    return port


def _emulated(
    request: pytest.FixtureRequest,
    loop: LoopThread,
    handle: type[H],
    make: Callable[[], E],
    baudrate: int,
) -> Iterator[H]:
    async def build_and_start() -> E:
        # Built on the loop thread: the emulators create their asyncio objects as they start.
        device = make()
        await device.start()
        return device

    device = loop.run(build_and_start(), LIFECYCLE_TIMEOUT_S)
    path = getattr(device, "path", None)
    if not isinstance(path, Path):
        raise HilPluginError(f"{type(device).__name__} has no pty path")
    try:
        yield handle(str(path), baudrate=baudrate, loop=loop, device=device)
    finally:
        loop.run(device.close(), LIFECYCLE_TIMEOUT_S)
        log.debug("%s closed for %s", type(device).__name__, request.node.nodeid)


@pytest.fixture
def hil_concentrator(
    request: pytest.FixtureRequest, hil_loop: LoopThread, tmp_path: Path
) -> Iterator[ConcentratorHandle]:
    """An emulated concentrator on a pty in the test's folder, or the real one with
    ``--hil-port`` in a test marked ``hil_hardware``."""
    port = _hardware_port(request, "concentrator")
    if port is not None:
        yield ConcentratorHandle(port, baudrate=request.config.getoption("hil_baud"))
        return
    folder = tmp_path / "hil-concentrator"
    folder.mkdir()
    yield from _emulated(
        request,
        hil_loop,
        ConcentratorHandle,
        lambda: EmulatedConcentrator(folder, seed=0),
        DEFAULT_HARDWARE_BAUD,
    )


@pytest.fixture
def hil_modem(
    request: pytest.FixtureRequest, hil_loop: LoopThread, tmp_path: Path
) -> Iterator[ModemHandle]:
    """An emulated RAK3172 with RUI3 (LoRaWAN work mode, as shipped) on a pty, or the real
    module with ``--hil-port`` in a test marked ``hil_hardware``."""
    port = _hardware_port(request, "modem")
    if port is not None:
        yield ModemHandle(port, baudrate=request.config.getoption("hil_baud"))
        return
    folder = tmp_path / "hil-modem"
    folder.mkdir()
    yield from _emulated(
        request, hil_loop, ModemHandle, lambda: EmulatedRak3172(folder), DEFAULT_HARDWARE_BAUD
    )


@pytest.fixture
def hil_node(
    request: pytest.FixtureRequest, hil_loop: LoopThread, tmp_path: Path
) -> Iterator[NodeBusHandle]:
    """An emulated bus of wired nodes on a pty (no node yet: ``add_node``)."""
    folder = tmp_path / "hil-node"
    folder.mkdir()
    yield from _emulated(
        request, hil_loop, NodeBusHandle, lambda: EmulatedWiredBus(folder), DEFAULT_HARDWARE_BAUD
    )


# --- the radio world --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HilWorld:
    """``hil_world``: a scenario, placed for one seed, and its radio world."""

    scenario: Scenario
    expanded: Expanded
    world: RadioWorld


def scenario_path(name: str, base: Path) -> Path:
    """A shipped scenario by name (``parking-street``), or a TOML file (relative to ``base``).
    :class:`pytest.UsageError` naming the shipped ones when there is no such file."""
    shipped = SCENARIO_DIR / f"{name}.toml"
    if shipped.is_file():
        return shipped
    if name.endswith(".toml"):
        path = (base / name).resolve()
        if path.is_file():
            return path
    known = ", ".join(path.stem for path in shipped_scenarios())
    raise pytest.UsageError(f"hil_scenario {name!r}: no such scenario (shipped: {known})")


@pytest.fixture
def hil_world(request: pytest.FixtureRequest) -> HilWorld:
    """The radio world of the test's ``hil_scenario`` marker, or of ``--hil-scenario``."""
    marker = request.node.get_closest_marker("hil_scenario")
    seed: int | None = None
    if marker is not None:
        name = _marker_name(marker)
        seed = marker.kwargs.get("seed")
        base = Path(request.node.path).parent
    else:
        option: str | None = request.config.getoption("hil_scenario")
        if option is None:
            known = ", ".join(path.stem for path in shipped_scenarios())
            raise pytest.UsageError(
                f"{request.node.nodeid}: hil_world needs a scenario: "
                f"@pytest.mark.hil_scenario(NAME) or --hil-scenario NAME (shipped: {known})"
            )
        name = option
        base = request.config.invocation_params.dir
    scenario = load_scenario(scenario_path(name, base))
    expanded = scenario.expand(seed)
    return HilWorld(scenario, expanded, expanded.radio_world())


# --- the broker -------------------------------------------------------------------------------


class HilBroker(Protocol):
    """An MQTT broker a test can stop and start again on the same port."""

    host: str
    port: int

    @property
    def url(self) -> str: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class EmbeddedBrokerThread:
    """:class:`owlgate.fleet.broker.EmbeddedBroker` (amqtt) on a loop thread of its own, so
    it outlives the test's own ``asyncio.run`` calls; blocking :meth:`start` / :meth:`stop`,
    the same port each time."""

    def __init__(self, port: int | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = free_tcp_port(self.host) if port is None else port
        self._thread: LoopThread | None = None
        self._broker: EmbeddedBroker | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self) -> None:
        if self._thread is not None:
            return
        # Imported here: amqtt is slow to import, and most test runs never need it.
        from ..fleet.broker import EmbeddedBroker

        thread = LoopThread("owlgate-hil-broker")
        broker = EmbeddedBroker(self.port)
        try:
            thread.run(broker.start(), LIFECYCLE_TIMEOUT_S)
        except BaseException:
            self._abort_transports(thread)
            thread.stop()
            raise
        self._thread, self._broker = thread, broker

    def stop(self) -> None:
        thread, broker = self._thread, self._broker
        self._thread = self._broker = None
        if thread is None:
            return
        if broker is not None:
            thread.run(broker.stop(), LIFECYCLE_TIMEOUT_S)
        self._abort_transports(thread)
        thread.stop()

    @staticmethod
    def _abort_transports(thread: LoopThread) -> None:
        # amqtt 0.12 can leave the transport of a client that vanished without a DISCONNECT
        # open after its shutdown; closing the loop would turn it into a ResourceWarning, an
        # error under -W error, in whichever test is running when it is collected. The
        # selector loop's registry of transports is not public, hence getattr.
        def abort() -> None:
            for transport in list(getattr(thread.loop, "_transports", {}).values()):
                if transport is not None and not transport.is_closing():
                    transport.abort()

        thread.call(abort)


def _broker(request: pytest.FixtureRequest, folder: Path) -> HilBroker:
    choice: BrokerChoice = request.config.getoption("hil_broker")
    binary = find_mosquitto() if choice != "embedded" else None
    if choice == "mosquitto" and binary is None:
        _fail_or_skip("--hil-broker mosquitto: mosquitto not found (Debian package mosquitto)")
    if binary is not None:
        return MosquittoProcess(binary, folder)
    return EmbeddedBrokerThread()


@pytest.fixture
def hil_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HilBroker]:
    """An MQTT broker of the test's own on a free port (``--hil-broker``), anonymous clients
    allowed; stopped at the end."""
    folder = tmp_path / "hil-broker"
    folder.mkdir()
    server = _broker(request, folder)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --- fleet and edge processes -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HilFleet:
    """``hil_fleet``: a running ``owlgate fleet serve`` and what its seed wrote.

    ``manifest`` is the emulator secrets file ``fleet seed`` wrote (``gateways`` with their
    key folders, ``devices`` with their keys); ``token`` an admin API token.
    """

    url: str
    mqtt_url: str
    token: str
    manifest: dict[str, Any]
    db: Path
    folder: Path
    log_path: Path

    def client(self, **kwargs: Any) -> httpx.Client:
        """An ``httpx.Client`` on the API, with the token (close it, or use ``with``)."""
        import httpx

        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10.0, **kwargs)


def _cli(args: list[str], log_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", MODULE, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=FLEET_START_TIMEOUT_S,
    )
    log_path.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise ProcessFailed(f"owlgate {args[0]} {args[1]} failed: {done.stderr.strip()}")


def _fleet_size(request: pytest.FixtureRequest) -> tuple[int, int, int]:
    marker = request.node.get_closest_marker("hil_fleet")
    options = dict(marker.kwargs) if marker is not None else {}
    gateways = options.pop("gateways", DEFAULT_FLEET_GATEWAYS)
    nodes = options.pop("nodes", DEFAULT_FLEET_NODES)
    seed = options.pop("seed", DEFAULT_FLEET_SEED)
    if options or (marker is not None and marker.args):
        raise pytest.UsageError(
            f"hil_fleet takes gateways=, nodes= and seed=, got {marker.args if marker else ()!r}"
            f" {sorted(options)}"
        )
    return int(gateways), int(nodes), int(seed)


@pytest.fixture
def hil_fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HilFleet]:
    """``owlgate fleet seed`` into the test's folder, then ``owlgate fleet serve`` on a free
    port with its embedded broker; stopped at the end (its log stays in the folder)."""
    gateways, nodes, seed = _fleet_size(request)
    folder = tmp_path / "hil-fleet"
    folder.mkdir()
    db = folder / "fleet.db"
    _cli(
        ["fleet", "seed", "--db", str(db), "--gateways", str(gateways), "--nodes", str(nodes),
         "--seed", str(seed)],
        folder / "seed.log",
    )  # fmt: skip
    manifest: dict[str, Any] = json.loads((folder / "emulator-secrets.json").read_text())
    token = (folder / "admin-token").read_text().strip()
    serve = ["fleet", "serve", "--db", str(db), "--http-port", str(free_tcp_port())]
    serve += ["--signing-key", manifest["fleet_signing_key"]]
    log_path = folder / "fleet.log"
    process = ChildProcess("fleet", serve, log_path)
    try:
        mqtt_url = _expect(process, r"MQTT broker: (mqtt://\S+)", FLEET_START_TIMEOUT_S, log_path)
        url = _expect(process, r"Uvicorn running on (http://\S+)", FLEET_START_TIMEOUT_S, log_path)
        yield HilFleet(url, mqtt_url, token, manifest, db, folder, log_path)
    finally:
        process.stop()


def _expect(process: ChildProcess, pattern: str, timeout_s: float, log_path: Path) -> str:
    """The first group of ``pattern`` in the process's output; the failure names its log."""
    try:
        return process.expect(pattern, timeout_s).group(1)
    except ProcessFailed as err:
        raise ProcessFailed(f"{err.message}: {log_path}") from err


@dataclass(frozen=True, slots=True)
class HilEdge:
    """``hil_edge``: a running ``owlgate edge run`` for one gateway of the fleet."""

    gateway_id: str
    config_path: Path
    state_dir: Path
    log_path: Path
    process: ChildProcess

    def status(self) -> dict[str, Any]:
        """What the agent last wrote to ``status.json`` (every 10 s, and when it stops);
        empty before the first write."""
        path = self.state_dir / "status.json"
        if not path.exists():
            return {}
        status: dict[str, Any] = json.loads(path.read_text())
        return status

    def stop(self) -> dict[str, Any]:
        """Stop the agent (SIGTERM) and return the ``status.json`` it wrote on the way out."""
        self.process.stop()
        return self.status()

    def log(self) -> str:
        """The agent's output so far."""
        return "".join(self.process.lines)


@pytest.fixture
def hil_edge(
    hil_fleet: HilFleet, hil_concentrator: ConcentratorHandle, tmp_path: Path
) -> Iterator[HilEdge]:
    """``owlgate edge run`` for the fleet's first gateway, its radio on ``hil_concentrator``
    (the real one with ``--hil-port``), its MQTT on the fleet's broker; yielded once it logs
    that it is ready (radio configured, device sessions in), stopped at the end."""
    # Imported here: the demo module brings the CLI's dependencies (typer, rich, aiomqtt).
    from .demo import edge_config

    gateway = hil_fleet.manifest["gateways"][0]
    folder = tmp_path / "hil-edge"
    folder.mkdir()
    state_dir = folder / "state"
    config_path = folder / "edge.toml"
    config_path.write_text(
        edge_config(
            gateway, state_dir=state_dir, port=hil_concentrator.port, mqtt_url=hil_fleet.mqtt_url
        )
    )
    log_path = folder / "edge.log"
    process = ChildProcess(
        f"edge {gateway['id']}", ["edge", "run", "--config", str(config_path)], log_path
    )
    try:
        _expect(process, r"(ready: )", EDGE_READY_TIMEOUT_S, log_path)
        yield HilEdge(gateway["id"], config_path, state_dir, log_path, process)
    finally:
        process.stop()


def wait_until(
    check: Callable[[], T], *, timeout_s: float, interval_s: float = 0.1, what: str
) -> T:
    """Poll ``check()`` until it returns a true value (a non-empty list, say) and return it;
    :class:`TimeoutError` naming ``what`` after ``timeout_s``. For state that another process
    changes, such as the readings the fleet has stored."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not within {timeout_s:g} s")
        time.sleep(interval_s)


__all__ = [
    "ConcentratorHandle",
    "DeviceHandle",
    "EmbeddedBrokerThread",
    "HilBroker",
    "HilEdge",
    "HilFleet",
    "HilPluginError",
    "HilWorld",
    "LoopThread",
    "ModemHandle",
    "NodeBusHandle",
    "scenario_path",
    "wait_until",
]
