"""The wired bus master against emulated wired nodes (the node-side code), over a real pty."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from owlgate.codecs.node.telemetry import Reading
from owlgate.codecs.node.wired import Poll, Settings, WiredNode
from owlgate.edge.wired import (
    WiredBus,
    WiredBusError,
    WiredNodeSpec,
    WiredNodeStatus,
    settings_version,
)
from owlgate.hil.wired_nodes import EmulatedWiredBus

WAIT_S = 10.0  # generous bound for anything that should happen soon; never reached

EUIS = {
    1: bytes.fromhex("70b3d57ed0000001"),
    2: bytes.fromhex("70b3d57ed0000002"),
    3: bytes.fromhex("70b3d57ed0000003"),
}
NODE_SETTINGS: dict[str, int | float | bool] = {"interval_s": 60, "threshold": 1.0, "on": True}
SPECS = [WiredNodeSpec(address, eui, None) for address, eui in EUIS.items()]

Scenario = Callable[[EmulatedWiredBus, WiredBus], Awaitable[None]]


def make_bus(
    port: Path, specs: list[WiredNodeSpec], committed: Mapping[bytes, int] | None = None, **kw: Any
) -> WiredBus:
    options: dict[str, Any] = {
        "poll_interval_s": 0.05,
        "response_timeout_s": 0.5,
        "silent_after_polls": 2,
        "reconnect_initial_s": 0.05,
        "reconnect_max_s": 0.2,
        "rng": random.Random(4),
    }
    options.update(kw)
    return WiredBus(str(port), specs, committed=committed, **options)


def run(
    tmp_path: Path,
    scenario: Scenario,
    specs: list[WiredNodeSpec] = SPECS,
    *,
    node_euis: Mapping[int, bytes] = EUIS,
    **kw: Any,
) -> None:
    """Run ``scenario`` with three emulated nodes and a bus master on them."""

    async def main() -> None:
        async with EmulatedWiredBus(tmp_path) as emulator:
            for address, eui in node_euis.items():
                emulator.add_node(address, eui, settings=NODE_SETTINGS)
            async with make_bus(emulator.path, specs, **kw) as bus:
                await bus.wait_connected(WAIT_S)
                await scenario(emulator, bus)

    asyncio.run(main())


async def take(readings: AsyncIterator[Reading], count: int) -> list[Reading]:
    async with asyncio.timeout(WAIT_S):
        return [await anext(readings) for _ in range(count)]


async def until(emulator: EmulatedWiredBus, predicate: Callable[[], bool]) -> None:
    """Wait until ``predicate()`` holds, checked after each request on the bus (the bus
    master has then handled the answer before it); fail after WAIT_S."""
    async with asyncio.timeout(WAIT_S):
        while not predicate():
            await emulator.next_request(timeout_s=WAIT_S)


def status_of(bus: WiredBus, address: int) -> WiredNodeStatus:
    return next(node for node in bus.nodes() if node.address == address)


def polls_to(emulator: EmulatedWiredBus, address: int) -> list[Poll]:
    return [item for item in emulator.requests(address) if isinstance(item, Poll)]


def test_readings_arrive_with_their_node_eui_and_sequence(tmp_path: Path) -> None:
    async def scenario(emulator: EmulatedWiredBus, bus: WiredBus) -> None:
        before = int(time.time())
        for address in EUIS:
            emulator.node(address).add_reading({"temperature_c": 20.0 + address, "n": address})
            emulator.node(address).add_reading({"alarm": address == 2})
        got = await take(bus.readings(), 6)
        by_eui: dict[bytes, list[Reading]] = {}
        for reading in got:
            by_eui.setdefault(reading.dev_eui, []).append(reading)
        assert sorted(by_eui) == sorted(EUIS.values())
        for address, eui in EUIS.items():
            first, second = by_eui[eui]
            assert (first.fcnt, second.fcnt) == (1, 2)
            assert first.values == {"temperature_c": 20.0 + address, "n": address}
            assert second.values == {"alarm": address == 2}
            # Wired readings carry no radio metadata.
            assert (first.rssi_dbm, first.snr_db, first.sf, first.freq_hz) == (None,) * 4
            assert before - 2 <= first.time_s <= int(time.time())
        statuses = bus.nodes()
        assert [node.address for node in statuses] == [1, 2, 3]
        assert all(node.answering and node.readings == 2 for node in statuses)
        assert all(node.duplicates == 0 and node.last_seen is not None for node in statuses)
        counters = bus.counters
        assert (counters.crc_errors, counters.invalid_messages, counters.wrong_address) == (0, 0, 0)
        assert bus.status.connected is True
        assert bus.status.port == str(emulator.path)

    run(tmp_path, scenario)


def test_nothing_is_acknowledged_before_commit(tmp_path: Path) -> None:
    async def scenario(emulator: EmulatedWiredBus, bus: WiredBus) -> None:
        for value in range(3):
            emulator.node(1).add_reading({"v": value})
        got = await take(bus.readings(), 3)
        assert [reading.fcnt for reading in got] == [1, 2, 3]
        polled = len(polls_to(emulator, 1))
        await emulator.wait_for(1, Poll, polled + 3, timeout_s=WAIT_S)
        # Delivered but not committed: every POLL so far acknowledged nothing.
        assert [poll.ack for poll in polls_to(emulator, 1)] == [0] * len(polls_to(emulator, 1))
        assert emulator.acked(1) == 0
        assert emulator.pending(1) == [1, 2, 3]
        assert polls_to(emulator, 1)[-1].received == 3

        bus.commit(EUIS[1], 2)
        await until(emulator, lambda: emulator.acked(1) == 2)
        assert emulator.pending(1) == [3]
        bus.commit(EUIS[1], 3)
        await until(emulator, lambda: emulator.pending(1) == [])
        assert status_of(bus, 1).committed_seq == 3
        # Commits never move backwards, and never past what was delivered.
        bus.commit(EUIS[1], 1)
        assert status_of(bus, 1).committed_seq == 3
        with pytest.raises(WiredBusError, match="only 3 was delivered"):
            bus.commit(EUIS[1], 4)
        with pytest.raises(WiredBusError, match="no wired node"):
            bus.commit(bytes(8), 1)

    run(tmp_path, scenario)


def test_restart_with_committed_drops_resent_readings_as_duplicates(tmp_path: Path) -> None:
    async def main() -> None:
        async with EmulatedWiredBus(tmp_path) as emulator:
            for address, eui in EUIS.items():
                emulator.add_node(address, eui)
            node = emulator.node(1)
            for value in range(4):
                node.add_reading({"v": value})
            async with make_bus(emulator.path, SPECS) as first:
                got = await take(first.readings(), 4)
                assert [reading.fcnt for reading in got] == [1, 2, 3, 4]
                first.commit(EUIS[1], 2)
                await until(emulator, lambda: emulator.acked(1) == 2)
            # The previous run stored up to 3 durably but crashed before acknowledging it;
            # and the node answers the first POLL with its stale reply of readings 1..4.
            emulator.replay_next(1)
            async with make_bus(emulator.path, SPECS, committed={EUIS[1]: 3}) as second:
                again = await take(second.readings(), 1)
                assert [(reading.fcnt, reading.values) for reading in again] == [(4, {"v": 3})]
                await until(emulator, lambda: emulator.acked(1) == 3)
                status = status_of(second, 1)
                assert status.duplicates == 3
                assert second.counters.duplicates == 3
                assert (status.committed_seq, status.delivered_seq, status.readings) == (3, 4, 1)
                assert emulator.pending(1) == [4]
                # Nothing else comes: the stale copies were dropped, not delivered.
                polled = len(polls_to(emulator, 1))
                await emulator.wait_for(1, Poll, polled + 2, timeout_s=WAIT_S)
                assert status_of(second, 1).readings == 1

    asyncio.run(main())


def test_restart_resends_what_was_delivered_but_not_committed(tmp_path: Path) -> None:
    async def main() -> None:
        async with EmulatedWiredBus(tmp_path) as emulator:
            emulator.add_node(1, EUIS[1])
            for value in range(3):
                emulator.node(1).add_reading({"v": value})
            async with make_bus(emulator.path, SPECS[:1]) as first:
                assert len(await take(first.readings(), 3)) == 3
            # Crash before anything was stored: all three come again, none is a duplicate.
            async with make_bus(emulator.path, SPECS[:1], committed={EUIS[1]: 0}) as second:
                again = await take(second.readings(), 3)
                assert [reading.fcnt for reading in again] == [1, 2, 3]
                assert status_of(second, 1).duplicates == 0

    asyncio.run(main())


def test_silent_node_is_reported_and_the_others_keep_flowing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(emulator: EmulatedWiredBus, bus: WiredBus) -> None:
        await until(emulator, lambda: all(node.answering for node in bus.nodes()))
        emulator.set_silent(2)
        await until(emulator, lambda: not status_of(bus, 2).answering)
        stream = bus.readings()
        emulator.node(1).add_reading({"v": 1})
        emulator.node(2).add_reading({"v": 2})  # held by the node while it is silent
        emulator.node(3).add_reading({"v": 3})
        got = await take(stream, 2)
        assert sorted(reading.dev_eui for reading in got) == [EUIS[1], EUIS[3]]
        timeouts = status_of(bus, 2).timeouts
        await until(emulator, lambda: status_of(bus, 2).timeouts >= timeouts + 3)
        silent = status_of(bus, 2)
        assert silent.answering is False
        assert silent.last_error == "no answer to 2 requests in a row"
        assert status_of(bus, 1).answering
        assert status_of(bus, 3).answering
        warnings = [r for r in caplog.records if "is silent" in r.getMessage()]
        assert len(warnings) == 1
        assert warnings[0].levelno == logging.WARNING

        emulator.set_silent(2, False)
        back = await take(stream, 1)
        assert [(reading.dev_eui, reading.fcnt) for reading in back] == [(EUIS[2], 1)]
        assert status_of(bus, 2).answering is True
        infos = [r for r in caplog.records if "answers again" in r.getMessage()]
        assert len(infos) == 1
        assert infos[0].levelno == logging.INFO

    caplog.set_level(logging.INFO, logger="owlgate.edge.wired")
    run(tmp_path, scenario)


def test_settings_are_applied_and_the_version_reported(tmp_path: Path) -> None:
    wanted = {"interval_s": 30, "threshold": 2.5}
    specs = [
        WiredNodeSpec(1, EUIS[1], wanted),
        WiredNodeSpec(2, EUIS[2], None),
        WiredNodeSpec(3, EUIS[3], {"no_such_setting": 1}),
    ]
    version = settings_version(wanted)

    async def scenario(emulator: EmulatedWiredBus, bus: WiredBus) -> None:
        await until(emulator, lambda: status_of(bus, 1).settings_version == version)
        assert status_of(bus, 1).settings_wanted == version
        assert emulator.applied_settings(1) == (
            version,
            {"interval_s": 30, "threshold": 2.5, "on": True},
        )
        # No settings configured: none sent, the node keeps its defaults.
        await until(emulator, lambda: status_of(bus, 2).settings_version is not None)
        assert emulator.applied_settings(2) == (0, NODE_SETTINGS)
        assert status_of(bus, 2).settings_version == 0
        assert status_of(bus, 2).settings_wanted is None
        # A setting the node does not know: refused once, and not sent again.
        await until(emulator, lambda: bus.counters.node_errors == 1)
        refused = status_of(bus, 3)
        assert refused.last_error is not None
        assert "BAD_SETTING" in refused.last_error
        assert "no_such_setting" in refused.last_error
        polled = len(polls_to(emulator, 3))
        await emulator.wait_for(3, Poll, polled + 3, timeout_s=WAIT_S)
        sent_to_3 = [item for item in emulator.requests(3) if isinstance(item, Settings)]
        assert len(sent_to_3) == 1
        assert emulator.applied_settings(3) == (0, NODE_SETTINGS)

        # The node reboots to its defaults: the version it reports changes, the bus resends.
        emulator.replace_node(1, WiredNode(1, EUIS[1], settings=dict(NODE_SETTINGS)))
        await until(emulator, lambda: emulator.applied_settings(1)[0] == version)
        assert emulator.applied_settings(1)[1]["interval_s"] == 30

    run(tmp_path, scenario, specs)


def test_unplug_and_replug_recovers(tmp_path: Path) -> None:
    async def scenario(emulator: EmulatedWiredBus, bus: WiredBus) -> None:
        stream = bus.readings()
        emulator.node(1).add_reading({"v": 1})
        assert [reading.fcnt for reading in await take(stream, 1)] == [1]
        emulator.unplug()
        status = await bus.wait_disconnected(WAIT_S)
        assert status.connected is False
        assert status.last_error is not None
        emulator.node(1).add_reading({"v": 2})
        emulator.node(3).add_reading({"v": 3})
        emulator.replug()
        await bus.wait_connected(WAIT_S)
        got = await take(stream, 2)
        assert sorted((reading.dev_eui, reading.fcnt) for reading in got) == [
            (EUIS[1], 2),
            (EUIS[3], 1),
        ]
        assert bus.counters.reconnects == 1
        assert bus.counters.duplicates == 0

    run(tmp_path, scenario)


def test_corrupted_reply_is_counted_and_the_reading_comes_next_poll(tmp_path: Path) -> None:
    async def scenario(emulator: EmulatedWiredBus, bus: WiredBus) -> None:
        await until(emulator, lambda: all(node.answering for node in bus.nodes()))
        stream = bus.readings()
        emulator.corrupt_next(2)
        emulator.node(2).add_reading({"v": 42})
        got = await take(stream, 1)
        assert [(r.dev_eui, r.fcnt, r.values) for r in got] == [(EUIS[2], 1, {"v": 42})]
        assert bus.counters.crc_errors == 1
        assert status_of(bus, 2).readings == 1
        assert status_of(bus, 2).duplicates == 0
        # The corrupted answer was one of node 2's, and the others were not disturbed.
        assert status_of(bus, 2).timeouts >= 1
        assert status_of(bus, 1).timeouts == 0
        assert status_of(bus, 3).timeouts == 0

    run(tmp_path, scenario)


def test_wrong_address_and_garbage_are_counted_and_disturb_no_one(tmp_path: Path) -> None:
    async def scenario(emulator: EmulatedWiredBus, bus: WiredBus) -> None:
        await until(emulator, lambda: all(node.answering for node in bus.nodes()))
        stream = bus.readings()
        emulator.answer_as(2, 9)
        emulator.garble_next(3)
        emulator.inject_garbage()
        emulator.node(2).add_reading({"v": 2})
        emulator.node(3).add_reading({"v": 3})
        emulator.node(1).add_reading({"v": 1})
        got = await take(stream, 2)
        assert sorted((reading.dev_eui, reading.fcnt) for reading in got) == [
            (EUIS[1], 1),
            (EUIS[3], 1),
        ]
        await until(emulator, lambda: not status_of(bus, 2).answering)
        counters = bus.counters
        assert counters.wrong_address >= 2
        assert counters.invalid_messages == 1
        assert counters.crc_errors + counters.frame_errors == 1
        # Node 2's reading is not taken from an answer under another address...
        assert status_of(bus, 2).readings == 0
        assert emulator.pending(2) == [1]
        # ...and arrives once the node answers as itself again.
        emulator.answer_as(2, None)
        back = await take(stream, 1)
        assert [(reading.dev_eui, reading.fcnt) for reading in back] == [(EUIS[2], 1)]
        assert status_of(bus, 1).timeouts == 0

    run(tmp_path, scenario)


def test_wrong_eui_is_refused_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    impostor = bytes.fromhex("0011223344556677")

    async def scenario(emulator: EmulatedWiredBus, bus: WiredBus) -> None:
        emulator.node(3).add_reading({"v": 3})
        emulator.node(1).add_reading({"v": 1})
        got = await take(bus.readings(), 1)
        assert [(reading.dev_eui, reading.fcnt) for reading in got] == [(EUIS[1], 1)]
        await until(emulator, lambda: status_of(bus, 3).refused >= 1)
        node = status_of(bus, 3)
        assert node.readings == 0
        assert node.last_error is not None
        assert impostor.hex() in node.last_error
        assert bus.counters.eui_mismatches >= 1
        # Never acknowledged: the impostor keeps its reading.
        assert emulator.pending(3) == [1]
        # Logged once, however often it is refused.
        await until(emulator, lambda: status_of(bus, 3).refused >= 3)
        warnings = [r for r in caplog.records if impostor.hex() in r.getMessage()]
        assert len(warnings) == 1
        assert warnings[0].levelno == logging.WARNING

    caplog.set_level(logging.INFO, logger="owlgate.edge.wired")
    run(tmp_path, scenario, node_euis={1: EUIS[1], 2: EUIS[2], 3: impostor})


def test_many_readings_are_fetched_at_once_while_the_node_has_more(tmp_path: Path) -> None:
    async def main() -> None:
        async with EmulatedWiredBus(tmp_path) as emulator:
            node = emulator.add_node(1, EUIS[1], capacity=200)
            for value in range(150):
                node.add_reading({"value": value, "label_of_some_length": value * 0.5})
            # A poll interval far beyond the wait: only the "more" polls can fetch them all.
            async with make_bus(emulator.path, SPECS[:1], poll_interval_s=3600.0) as bus:
                got = await take(bus.readings(), 150)
                assert [reading.fcnt for reading in got] == list(range(1, 151))
                assert got[149].values == {"value": 149, "label_of_some_length": 74.5}
                polls = polls_to(emulator, 1)
                assert len(polls) > 1  # more than one reply was needed
                assert [poll.received for poll in polls][:2] == [None, polls[1].received]
                assert polls[1].received is not None

    asyncio.run(main())


def test_invalid_node_specs_are_refused() -> None:
    with pytest.raises(WiredBusError, match=r"address must be 1\.\.247"):
        WiredNodeSpec(0, EUIS[1], None)
    with pytest.raises(WiredBusError, match=r"address must be 1\.\.247"):
        WiredNodeSpec(248, EUIS[1], None)
    with pytest.raises(WiredBusError, match="dev_eui must be 8 bytes"):
        WiredNodeSpec(1, EUIS[1][:7], None)
    with pytest.raises(WiredBusError, match="settings"):
        WiredNodeSpec(1, EUIS[1], {"x": "text"})  # type: ignore[dict-item]
    with pytest.raises(WiredBusError, match="two nodes at address 1"):
        WiredBus("/dev/null", [SPECS[0], WiredNodeSpec(1, EUIS[2], None)])
    with pytest.raises(WiredBusError, match="two nodes with DevEUI"):
        WiredBus("/dev/null", [SPECS[0], WiredNodeSpec(2, EUIS[1], None)])
    bus = WiredBus("/dev/null", SPECS, committed={EUIS[2]: 9})
    assert [node.committed_seq for node in bus.nodes()] == [0, 9, 0]
    assert bus.status.connected is False


def test_settings_version_names_the_content() -> None:
    assert settings_version({"a": 1, "b": 2.5}) == settings_version({"b": 2.5, "a": 1})
    assert settings_version({"a": 1}) != settings_version({"a": 2})
    assert 1 <= settings_version({}) < 2**32
