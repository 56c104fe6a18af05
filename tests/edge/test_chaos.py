"""Zero silently lost readings: the real agent, fleet and Mosquitto as processes, under
SIGKILL, broker outages and serial unplugs at seeded random moments (``owlgate.hil.chaos``).

Every frame an emulated device sent is accounted for: stored by the fleet exactly once, or
evicted from a bounded outbox and counted, or sent while the agent could not have taken it
(dead, unplugged, or held in memory within ``max_age_s`` plus a margin before a kill). The
seed is in every failure message; ``OWLGATE_CHAOS_SEED=N`` runs the chaos tests with seed N.

The first tests check the accounting itself on made-up timelines, so that a frame outside
every window is known to fail a run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from owlgate.hil.chaos import (
    Accounting,
    ChaosEvent,
    ChaosSettings,
    EventKind,
    Injection,
    Window,
    account,
    eviction_windows,
    loss_windows,
    run_chaos,
)
from tests.mqtt_servers import mosquitto_binary

SEED_VARIABLE = "OWLGATE_CHAOS_SEED"
DEV_A = bytes.fromhex("70b3d57ed0000001")
DEV_B = bytes.fromhex("70b3d57ed0000002")


def chaos_seed(default: int) -> int:
    """The seed of a chaos run: ``OWLGATE_CHAOS_SEED`` if set, else ``default``."""
    value = os.environ.get(SEED_VARIABLE)
    return default if value is None else int(value)


def frame(dev_eui: bytes, f_cnt: int, at_s: float, plugged: bool = True) -> Injection:
    return Injection(dev_eui, f_cnt, at_s, plugged, {"occupied": f_cnt % 2 == 0})


TIMELINE = [
    ChaosEvent(0.0, EventKind.RADIO_CONFIGURED),
    ChaosEvent(10.0, EventKind.AGENT_KILLED),
    ChaosEvent(11.0, EventKind.AGENT_STARTED),
    ChaosEvent(12.5, EventKind.RADIO_CONFIGURED),
    ChaosEvent(20.0, EventKind.UNPLUGGED),
    ChaosEvent(21.0, EventKind.REPLUGGED),
    ChaosEvent(22.0, EventKind.RADIO_CONFIGURED),
    ChaosEvent(30.0, EventKind.BROKER_STOPPED),
    ChaosEvent(33.0, EventKind.BROKER_STARTED),
    ChaosEvent(34.0, EventKind.UPLINK_CONNECTED),
    ChaosEvent(40.0, EventKind.AGENT_KILLED),
]


def test_windows_run_from_before_the_disruption_to_the_next_radio_configuration() -> None:
    windows = loss_windows(TIMELINE, held_s=0.6, in_flight_s=0.5, end_s=50.0)
    assert windows == [
        Window(9.4, 12.5, "agent killed", 10.0),
        Window(19.5, 22.0, "serial unplugged", 20.0),
        # Never recovered before the end: open until then.
        Window(39.4, 50.0, "agent killed", 40.0),
    ]
    evictable = eviction_windows(TIMELINE, in_flight_s=0.5, drain_s=2.0, end_s=50.0)
    assert evictable == [Window(29.5, 36.0, "broker outage", 30.0)]


def test_a_missing_frame_outside_every_window_is_lost() -> None:
    loss = loss_windows(TIMELINE, held_s=0.6, in_flight_s=0.5, end_s=50.0)
    evictable = eviction_windows(TIMELINE, in_flight_s=0.5, drain_s=2.0, end_s=50.0)
    sent = [
        frame(DEV_A, 0, 5.0),  # delivered
        frame(DEV_A, 1, 9.5),  # held in memory at the kill
        frame(DEV_A, 2, 11.0),  # agent dead
        frame(DEV_B, 0, 20.5, plugged=False),  # unplugged
        frame(DEV_B, 1, 31.0),  # broker down: may only be missing if evictions were counted
        frame(DEV_B, 2, 25.0),  # nothing explains this one
    ]
    stored: dict[tuple[str, int], list[object]] = {
        sent[0].key: [dict(sent[0].values)],
    }

    def filed(evicted_batches: int, batch_seqs: list[int]) -> Accounting:
        return account(
            sent,
            stored,
            loss=loss,
            evictable=evictable,
            evicted_batches=evicted_batches,
            batch_seqs=batch_seqs,
            max_readings=4,
        )

    result = filed(0, [0, 1, 2])
    assert result.delivered == 1
    assert [item.key for item, _ in result.not_acknowledged] == [
        sent[1].key,
        sent[2].key,
        sent[3].key,
    ]
    assert [window.reason for _, window in result.not_acknowledged] == [
        "agent killed",
        "agent killed",
        "serial unplugged",
    ]
    # Without evictions counted, a frame missing across an outage is lost too.
    assert result.lost == [sent[4], sent[5]]
    assert not result.ok
    problems = result.problems()
    assert problems[1] == (f"lost: device {DEV_B.hex()} fcnt 2 injected at 25.000 s (plugged)")

    # With one eviction counted and one batch missing, the outage frame is evicted; the
    # other is still lost.
    result = filed(1, [0, 2])
    assert [item for item, _ in result.evicted] == [sent[4]]
    assert result.lost == [sent[5]]
    assert result.eviction_consistent


def test_duplicates_unexpected_readings_and_eviction_counts_fail_the_account() -> None:
    sent = [frame(DEV_A, f_cnt, 1.0 + f_cnt) for f_cnt in range(3)]
    values = [dict(item.values) for item in sent]
    stored: dict[tuple[str, int], list[object]] = {
        sent[0].key: [values[0], values[0]],
        sent[1].key: [{"occupied": "something else"}],
        sent[2].key: [values[2]],
        (DEV_B.hex(), 7): [{}],
    }
    result = account(
        sent, stored, loss=[], evictable=[], evicted_batches=0, batch_seqs=[0, 1], max_readings=4
    )
    assert result.delivered == 3
    assert result.duplicates == {sent[0].key: 2}
    assert result.unexpected == [(DEV_B.hex(), 7)]
    assert [item for item, _ in result.wrong_values] == [sent[1]]
    assert result.eviction_consistent
    assert not result.ok
    # Batches missing beyond the evictions counted: something was dropped uncounted.
    result = account(
        sent[:1],
        {sent[0].key: [values[0]]},
        loss=[],
        evictable=[],
        evicted_batches=1,
        batch_seqs=[0, 3],
        max_readings=4,
    )
    assert result.missing_batches == [1, 2]
    assert not result.eviction_consistent
    assert not result.ok
    # The agent sealed five batches: the last one never arriving is seen too.
    result = account(
        sent[:1],
        {sent[0].key: [values[0]]},
        loss=[],
        evictable=[],
        evicted_batches=0,
        batch_seqs=[0, 1, 2, 3],
        max_readings=4,
        sealed_batches=5,
    )
    assert result.missing_batches == [4]
    assert not result.ok


@pytest.mark.slow
def test_no_reading_silently_lost_through_kills_outages_and_unplugs(tmp_path: Path) -> None:
    settings = ChaosSettings(seed=chaos_seed(20261201), kills=3, outages=2, unplugs=2)
    report = run_chaos(settings, tmp_path / "chaos", mosquitto=mosquitto_binary())
    print(report.figures())
    assert report.ok, report.describe()
    accounting = report.accounting
    kinds = [event.kind for event in report.events]
    # The chaos happened: every disruption, and the agent came back after each kill.
    assert kinds.count(EventKind.AGENT_KILLED) == 3, report.describe()
    assert kinds.count(EventKind.AGENT_STARTED) == 4, report.describe()
    assert kinds.count(EventKind.BROKER_STARTED) == 2, report.describe()
    assert kinds.count(EventKind.REPLUGGED) == 2, report.describe()
    # The outbox was never bounded below what an outage needs: nothing evicted, no batch
    # missing, and every frame outside the windows delivered.
    assert accounting.evicted_batches == 0, report.describe()
    assert accounting.missing_batches == [], report.describe()
    assert accounting.evicted == []
    assert accounting.delivered + len(accounting.not_acknowledged) == accounting.injected
    assert accounting.delivered >= accounting.injected / 2, report.describe()
    # Nor were held readings dropped for an outbox that could not be written.
    assert report.agent_status["outbox"].get("held_dropped", 0) == 0, report.describe()
    # Some frames went into the unplugged port: the emulator dropped them, none was stored.
    assert any(not item.plugged for item, _ in accounting.not_acknowledged), report.describe()


@pytest.mark.slow
def test_a_small_outbox_evicts_and_counts_during_long_outages(tmp_path: Path) -> None:
    settings = ChaosSettings(
        seed=chaos_seed(7),
        kills=1,
        outages=2,
        unplugs=0,
        outage_s=(3.0, 4.0),
        gap_s=(1.5, 3.0),
        outbox_max_mb=0.002,
    )
    report = run_chaos(settings, tmp_path / "chaos", mosquitto=mosquitto_binary())
    print(report.figures())
    assert report.ok, report.describe()
    accounting = report.accounting
    # Evictions did happen, were counted in status.json, and explain every missing batch.
    assert accounting.evicted_batches > 0, report.describe()
    assert 0 < len(accounting.missing_batches) <= accounting.evicted_batches, report.describe()
    # Each missing batch held at least one of the frames put down to eviction.
    assert len(accounting.evicted) >= len(accounting.missing_batches), report.describe()
