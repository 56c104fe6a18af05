"""The telemetry batcher: sealing on size and on age, signing, the outbox write, restarts."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from owlgate.codecs.errors import OwlgateError
from owlgate.codecs.node.telemetry import Batch, Reading, decode_batch
from owlgate.codecs.signed import verify
from owlgate.edge.batcher import Batcher, BatchError
from owlgate.edge.lorawan_proc import LorawanProcessor, Rejected, RejectReason
from owlgate.edge.state import StateDb
from owlgate.hil.devices import EmulatedDevice

GATEWAY = bytes.fromhex("b827ebfffe000001")
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
NWK = bytes(range(16))
APP = bytes(range(16, 32))


def _reading(i: int, dev: int = 1, time_s: int = 1_700_000_000) -> Reading:
    return Reading(
        bytes(7) + bytes((dev,)),
        time_s + i,
        {"occupied": bool(i % 2), "battery_mv": 3600 - i, "temperature_c": 21.5},
        rssi_dbm=-90,
        snr_db=7.25,
        fcnt=i,
        sf=7,
        freq_hz=868_100_000,
        gw_time_us=i * 1000,
    )


def _open(message: bytes) -> Batch:
    return decode_batch(verify(message, KEY.public_key()).payload)


@pytest.fixture
def state(tmp_path: Path) -> Iterator[StateDb]:
    with StateDb.in_dir(tmp_path) as db:
        yield db


def test_seals_on_size_signed_and_decodable(state: StateDb) -> None:
    batcher = Batcher(state, KEY, GATEWAY, max_readings=3, max_age_s=60)
    readings = [_reading(i) for i in range(7)]
    sealed = [batcher.add(reading, now=100.0 + i) for i, reading in enumerate(readings)]
    assert [s is not None for s in sealed] == [False, False, True, False, False, True, False]
    assert len(batcher) == 1
    entries = state.pending(10)
    assert len(entries) == 2
    assert all(e.topic == "telemetry" and not e.delayed for e in entries)
    first = _open(entries[0].payload)
    assert first == Batch(GATEWAY, 0, readings[0].time_s, readings[:3], False)
    assert _open(entries[1].payload) == Batch(GATEWAY, 1, readings[3].time_s, readings[3:6])
    assert sealed[2] is not None
    assert (sealed[2].seq, sealed[2].count, sealed[2].entry_id) == (0, 3, entries[0].id)
    assert sealed[2].message == entries[0].payload


def test_seals_on_age(state: StateDb) -> None:
    batcher = Batcher(state, KEY, GATEWAY, max_readings=100, max_age_s=10)
    assert batcher.poll(1000.0) is None
    assert batcher.next_due_at() is None
    assert batcher.add(_reading(0), now=1000.0) is None
    assert batcher.add(_reading(1), now=1005.0) is None
    assert batcher.next_due_at() == 1010.0
    assert batcher.poll(1009.9) is None
    sealed = batcher.poll(1010.0)
    assert sealed is not None
    assert sealed.count == 2
    assert len(batcher) == 0
    assert state.depth == 1
    assert state.oldest_age_s(1012.0) == 2.0
    # A reading arriving after the held batch came of age seals it at once.
    assert batcher.add(_reading(2), now=2000.0) is None
    assert batcher.add(_reading(3), now=2011.0) is not None


def test_delayed_flag_when_backhaul_down(state: StateDb) -> None:
    up = [False]
    batcher = Batcher(state, KEY, GATEWAY, max_readings=1, backhaul=lambda: up[0])
    batcher.add(_reading(0), now=1.0)
    up[0] = True
    batcher.add(_reading(1), now=2.0)
    entries = state.pending(10)
    assert [e.delayed for e in entries] == [True, False]
    assert [_open(e.payload).delayed for e in entries] == [True, False]


def test_seq_and_counters_persist_with_the_batch(tmp_path: Path) -> None:
    device = EmulatedDevice.abp(
        "environment-v1",
        bytes.fromhex("70b3d57ed0000007"),
        dev_addr=7,
        nwk_s_key=NWK,
        app_s_key=APP,
    )
    frames = [device.uplink(float(i)) for i in range(5)]
    with StateDb.in_dir(tmp_path) as state:
        proc = LorawanProcessor(state)
        proc.add_session(
            dev_eui=device.dev_eui,
            dev_addr=7,
            profile_id="environment-v1",
            nwk_s_key=NWK,
            app_s_key=APP,
        )
        batcher = Batcher(state, KEY, GATEWAY, max_readings=3)
        for phy, _ in frames:
            reading = proc.process(device.rx_frame(phy, timestamp_us=0), 1e9)
            assert isinstance(reading, Reading)
            batcher.add(reading, now=1.0)
        # Crash: frames 3 and 4 are held in memory, never written.
    with StateDb.in_dir(tmp_path) as state:
        proc = LorawanProcessor(state)
        proc.load_sessions()
        batcher = Batcher(state, KEY, GATEWAY, max_readings=2)
        replayed = proc.process(device.rx_frame(frames[2][0], timestamp_us=0), 1e9)
        assert isinstance(replayed, Rejected)
        assert replayed.reason is RejectReason.RETRANSMISSION
        for phy, values in frames[3:]:
            reading = proc.process(device.rx_frame(phy, timestamp_us=0), 1e9)
            assert isinstance(reading, Reading)
            assert reading.values == values
            batcher.add(reading, now=2.0)
        entries = state.pending(10)
        # The batch sealed before the crash is still pending, and the sequence continues.
        assert [_open(e.payload).seq for e in entries] == [0, 1]
        assert [len(_open(e.payload).readings) for e in entries] == [3, 2]
        assert state.sessions()[0].last_f_cnt == 4


def test_run_seals_on_age(state: StateDb) -> None:
    async def scenario(state: StateDb) -> int:
        now = [0.0]
        batcher = Batcher(state, KEY, GATEWAY, max_age_s=0.05)
        batcher.add(_reading(0), now=0.0)
        task = asyncio.create_task(batcher.run(clock=lambda: now[0], tick_s=0.01))
        now[0] = 1.0
        # The held batch is overdue by the injected clock: the first wake-up (sleep(0))
        # seals it, so a few turns of the event loop are enough.
        for _ in range(10):
            await asyncio.sleep(0)
            if state.depth:
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return state.depth

    assert asyncio.run(scenario(state)) == 1


def test_bad_settings(state: StateDb) -> None:
    with pytest.raises(BatchError, match="8-byte"):
        Batcher(state, KEY, b"\x01")
    with pytest.raises(BatchError, match="max_readings"):
        Batcher(state, KEY, GATEWAY, max_readings=0)
    with pytest.raises(BatchError, match="max_age_s"):
        Batcher(state, KEY, GATEWAY, max_age_s=0)


def test_backhaul_callable_marks_batches_sealed_while_down(state: StateDb) -> None:
    up = [True]
    batcher = Batcher(state, KEY, GATEWAY, max_readings=1, max_age_s=60, backhaul=lambda: up[0])
    batcher.add(_reading(0), now=1.0)
    up[0] = False
    batcher.add(_reading(1), now=2.0)
    up[0] = True
    batcher.add(_reading(2), now=3.0)
    entries = state.pending(10)
    assert [entry.delayed for entry in entries] == [False, True, False]
    assert [_open(entry.payload).delayed for entry in entries] == [False, True, False]
    # Live entries first, the backlog after.
    assert [entry.id for entry in state.pending(10, live_first=True)] == [
        entries[0].id,
        entries[2].id,
        entries[1].id,
    ]


def test_wired_batches_store_node_sequence_numbers(state: StateDb) -> None:
    batcher = Batcher(state, KEY, GATEWAY, max_readings=3, max_age_s=60, counters="node_seq")
    node = bytes.fromhex("70b3d57ed0001001")
    sealed = None
    for seq in (7, 9, 8):
        sealed = batcher.add(Reading(node, 1_700_000_000 + seq, {"level_pct": seq}, fcnt=seq), 1.0)
    assert sealed is not None
    assert sealed.counters == {node: 9}
    assert state.node_seqs() == {node: 9}
    with pytest.raises(BatchError, match="counters"):
        Batcher(state, KEY, GATEWAY, counters="fcnt")


def test_held_readings_are_bounded_while_the_outbox_fails(state: StateDb) -> None:
    batcher = Batcher(state, KEY, GATEWAY, max_readings=2, max_age_s=60, max_held=5)
    state.close()  # every write now fails
    failures = 0
    for i in range(12):
        try:
            batcher.add(_reading(i), now=1.0)
        except OwlgateError:
            failures += 1
    assert failures == 11  # every add from the second on tries to seal
    assert len(batcher) == 5
    assert batcher.dropped == 7
