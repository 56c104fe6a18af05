"""The gateway's keeper of configuration documents, without a network: what it accepts and
refuses (and why), what it stores in ``state_dir/config/``, and what survives a reboot (a new
keeper on the same folder): the applied seq, rotated keys, the last good document, a trial
that was interrupted.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from owlgate.codecs.concentrator import Channel
from owlgate.codecs.configdoc import ConfigDocument, GatewayConfig, raw_public_key, sign_config
from owlgate.codecs.control import MAX_DETAIL_CHARS, ConfigStatus, decode_config_status
from owlgate.codecs.signed import sign, verify
from owlgate.edge.cli import status_lines
from owlgate.edge.config import DEFAULT_CHANNELS, load_config, load_keys
from owlgate.edge.errors import ConfigError
from owlgate.edge.remote_config import (
    ANSWER,
    APPLY,
    IGNORE,
    ConfigKeeper,
    Decision,
    Unsupported,
    changed_parts,
    overlay,
    write_atomic,
)
from tests.edge.test_agent import Fleet

GATEWAY = bytes.fromhex("0016c001ff10a0e1")
OTHER_GATEWAY = bytes.fromhex("0016c001ff10a0e2")
BROKER_URL = "mqtt://127.0.0.1:1883"


def _edge_toml(folder: Path, *, radio: str = 'port = "/dev/ttyACM0"', extra: str = "") -> Path:
    path = folder / "edge.toml"
    path.write_text(
        f"""
[gateway]
id = "{GATEWAY.hex()}"
state_dir = "state"
identity_key = "keys/identity-ed25519.pem"
sealing_key = "keys/sealing-x25519.pem"
fleet_key = "keys/fleet-ed25519.pub.pem"
{extra}

[radio]
{radio}

[mqtt]
url = "{BROKER_URL}"
"""
    )
    return path


class Setup:
    """A factory edge.toml, the fleet's keys, and keepers on its state folder."""

    def __init__(self, folder: Path, *, radio: str = 'port = "/dev/ttyACM0"', extra: str = ""):
        self.fleet = Fleet(folder / "keys")
        self.factory = load_config(_edge_toml(folder, radio=radio, extra=extra))
        self.state_dir = self.factory.gateway.state_dir
        self.groups = self.factory.gateway.groups

    def keeper(self) -> ConfigKeeper:
        """A new keeper on the same folder: what the gateway has after a reboot."""
        return ConfigKeeper(
            self.state_dir,
            gateway_id=GATEWAY,
            groups=self.groups,
            trusted=self.fleet.key.public_key(),
            signing_key=self.fleet.identity,
            clock=lambda: 1_760_000_000.0,
        )

    def statuses(self, keeper: ConfigKeeper) -> list[ConfigStatus]:
        public = self.fleet.identity.public_key()
        return [
            decode_config_status(verify(data, public).payload)
            for _, data in keeper.pending_reports()
        ]


def _doc(
    seq: int,
    *,
    target: bytes | str = GATEWAY,
    next_key: bytes | None = None,
    **settings: object,
) -> ConfigDocument:
    fields: dict[str, object] = {"mqtt_url": BROKER_URL, "channels": DEFAULT_CHANNELS}
    fields.update(settings)
    config = GatewayConfig(**fields)  # type: ignore[arg-type]
    return ConfigDocument(
        seq=seq, target=target, issued_at=1_760_000_000, config=config, next_key=next_key
    )


def _apply(keeper: ConfigKeeper, setup: Setup, payload: bytes) -> Decision:
    decision = keeper.consider(payload, setup.factory, keeper.boot(setup.factory))
    assert decision.action == APPLY, decision.note
    keeper.begin_trial(decision)
    keeper.commit(decision)
    return decision


def test_a_verified_document_makes_the_factory_config_its_own(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    keeper = setup.keeper()
    channels = (Channel(frequency_hz=867_100_000, spreading_factors=(7, 8)),)
    doc = _doc(
        3,
        channels=channels,
        tx_power_dbm=10,
        batch_max_readings=7,
        batch_max_age_ms=250,
        health_interval_s=45,
        outbox_max_bytes=3 * 1024 * 1024,
        mqtt_url="mqtt://broker.city.example:8883",
        mqtt_keepalive_s=20,
        log_level="debug",
        devices=(bytes.fromhex("70b3d57ed0001000"),),
    )
    decision = keeper.consider(sign_config(doc, setup.fleet.key), setup.factory, setup.factory)
    assert decision.action == APPLY
    config = decision.config
    assert config is not None
    assert config.radio.channels == channels
    assert config.radio.tx_power_dbm == 10
    # What describes the machine stays the file's.
    assert config.radio.port == setup.factory.radio.port
    assert config.gateway == setup.factory.gateway
    assert (config.batch.max_readings, config.batch.max_age_s) == (7, 0.25)
    assert config.health.interval_s == 45
    assert config.outbox.max_bytes == 3 * 1024 * 1024
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.keepalive_s) == (
        "broker.city.example",
        8883,
        20,
    )
    assert config.log_level == "debug"
    assert config.devices == (bytes.fromhex("70b3d57ed0001000"),)
    assert (config.document_seq, config.document_hash) == (3, doc.content_hash)
    assert config.running_hash == doc.content_hash != setup.factory.running_hash
    assert config.sha256 == setup.factory.sha256
    assert changed_parts(setup.factory, config) == {
        "radio",
        "mqtt",
        "outbox",
        "batch",
        "health",
        "log_level",
        "devices",
    }
    # Nothing is stored until the service applies it.
    assert not (setup.state_dir / "config" / "current.cose").exists()


def test_only_batch_and_health_changed_is_a_live_change(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    same = overlay(setup.factory, _doc(1, mqtt_keepalive_s=30), config_dir=tmp_path)
    assert changed_parts(setup.factory, same) == {"log_level", "devices"}
    assert changed_parts(same, same) == set()
    faster = overlay(
        setup.factory,
        _doc(2, mqtt_keepalive_s=30, batch_max_readings=9, health_interval_s=5),
        config_dir=tmp_path,
    )
    assert changed_parts(same, faster) == {"batch", "health"}


@pytest.mark.parametrize(
    ("make", "reason", "seq"),
    [
        pytest.param(lambda s: sign_config(_doc(4), Ed25519PrivateKey.generate()), "signature", 4),
        pytest.param(
            lambda s: _flip(sign_config(_doc(4), s.fleet.key), -1), "signature", 4, id="flip"
        ),
        pytest.param(lambda s: b"\x00not cose", "signature", 0, id="not-cose"),
        pytest.param(lambda s: sign(b"\xa0", s.fleet.key), "schema", 0, id="schema"),
        pytest.param(
            lambda s: sign_config(_doc(4, target=OTHER_GATEWAY), s.fleet.key),
            "wrong_target",
            4,
        ),
        pytest.param(
            lambda s: sign_config(_doc(4, target="north"), s.fleet.key), "wrong_target", 4
        ),
        pytest.param(
            lambda s: sign_config(_doc(4, mqtt_credentials="vault:mqtt/north"), s.fleet.key),
            "unsupported",
            4,
        ),
        pytest.param(
            lambda s: sign_config(_doc(4, mqtt_credentials="file:absent"), s.fleet.key),
            "unsupported",
            4,
        ),
    ],
)
def test_refusals_are_answered_once_with_their_reason(
    tmp_path: Path, make: object, reason: str, seq: int
) -> None:
    setup = Setup(tmp_path)
    keeper = setup.keeper()
    payload = make(setup)  # type: ignore[operator]
    decision = keeper.consider(payload, setup.factory, setup.factory)
    assert decision.action == ANSWER, decision.note
    status = decision.status
    assert status is not None
    assert (status.state, status.reason, status.seq) == ("rejected", reason, seq)
    assert status.running_hash == setup.factory.sha256
    assert status.detail
    assert keeper.counters["rejected_" + reason] == 1
    # The same bytes again (a retained document after a reconnection): only logged.
    assert keeper.consider(payload, setup.factory, setup.factory).action == IGNORE


def _flip(data: bytes, index: int) -> bytes:
    changed = bytearray(data)
    changed[index] ^= 0x01
    return bytes(changed)


def test_groups_and_credentials_files(tmp_path: Path) -> None:
    setup = Setup(tmp_path, extra='groups = ["north", "pilot"]')
    keeper = setup.keeper()
    password = setup.state_dir / "config" / "credentials" / "north.pass"
    password.write_text("s3cret\n")
    password.chmod(0o600)
    doc = _doc(2, target="pilot", mqtt_credentials="file:north.pass")
    decision = keeper.consider(sign_config(doc, setup.fleet.key), setup.factory, setup.factory)
    assert decision.action == APPLY, decision.note
    assert decision.config is not None
    assert decision.config.mqtt.password_file == password
    # A password file others can read is refused before anything restarts for it.
    password.chmod(0o644)
    refused = keeper.consider(
        sign_config(_doc(3, target="north", mqtt_credentials="file:north.pass"), setup.fleet.key),
        setup.factory,
        setup.factory,
    )
    assert refused.status is not None
    assert refused.status.reason == "unsupported"
    assert "chmod 600" in (refused.status.detail or "")
    with pytest.raises(Unsupported, match="file:NAME"):
        overlay(setup.factory, _doc(4, mqtt_credentials="file:../etc/passwd"), config_dir=tmp_path)


def test_a_serial_backend_needs_the_port_from_edge_toml(tmp_path: Path) -> None:
    setup = Setup(tmp_path, radio='backend = "semtech-udp"')
    keeper = setup.keeper()
    decision = keeper.consider(
        sign_config(_doc(1, radio_backend="serial"), setup.fleet.key), setup.factory, setup.factory
    )
    assert decision.status is not None
    assert decision.status.reason == "unsupported"
    assert "no [radio] port" in (decision.status.detail or "")
    udp = keeper.consider(
        sign_config(_doc(2, radio_backend="semtech-udp"), setup.fleet.key),
        setup.factory,
        setup.factory,
    )
    assert udp.action == APPLY


def test_the_applied_seq_survives_a_reboot(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    keeper = setup.keeper()
    old = sign_config(_doc(4, batch_max_readings=10), setup.fleet.key)
    applied = sign_config(_doc(5, batch_max_readings=20), setup.fleet.key)
    _apply(keeper, setup, old)
    decision = _apply(keeper, setup, applied)
    assert decision.doc is not None
    files = sorted(path.name for path in (setup.state_dir / "config").iterdir())
    assert files == ["credentials", "current.cose", "keeper.json", "last-good.cose", "reports"]
    assert (setup.state_dir / "config" / "current.cose").read_bytes() == applied
    assert (setup.state_dir / "config" / "last-good.cose").read_bytes() == applied
    assert (setup.state_dir / "config" / "keeper.json").stat().st_mode & 0o777 == 0o600

    rebooted = setup.keeper()
    running = rebooted.boot(setup.factory)
    assert rebooted.applied_seq == 5
    assert running.document_seq == 5
    assert running.batch.max_readings == 20
    # The running document, retained, delivered again: nothing to do, nothing to report.
    assert rebooted.consider(applied, setup.factory, running).action == IGNORE
    for payload, relation in ((old, "below"), (sign_config(_doc(5), setup.fleet.key), "equal")):
        refused = rebooted.consider(payload, setup.factory, running)
        assert refused.status is not None
        assert (refused.status.state, refused.status.reason) == ("rejected", "replayed")
        assert relation in (refused.status.detail or "")
        assert refused.status.running_hash == decision.doc.content_hash
    assert (
        rebooted.consider(sign_config(_doc(6), setup.fleet.key), setup.factory, running).action
        == APPLY
    )


def test_key_rotation_is_persisted(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    current, following = setup.fleet.key, Ed25519PrivateKey.generate()
    keeper = setup.keeper()
    _apply(
        keeper,
        setup,
        sign_config(_doc(1, next_key=raw_public_key(following.public_key())), current),
    )
    # Both keys are trusted now, after a reboot too.
    rebooted = setup.keeper()
    assert len(rebooted.trusted) == 2
    _apply(rebooted, setup, sign_config(_doc(2), following))
    # A document signed by the next key and naming none retires the old key.
    again = setup.keeper()
    running = again.boot(setup.factory)
    assert (
        next(iter(again.trusted.values())).public_bytes_raw()
        == following.public_key().public_bytes_raw()
    )
    refused = again.consider(sign_config(_doc(3), current), setup.factory, running)
    assert refused.status is not None
    assert refused.status.reason == "signature"
    assert again.consider(sign_config(_doc(3), following), setup.factory, running).action == APPLY


def test_boot_falls_back_to_the_last_good_then_to_the_factory(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    keeper = setup.keeper()
    _apply(keeper, setup, sign_config(_doc(1, batch_max_readings=11), setup.fleet.key))
    folder = setup.state_dir / "config"
    current, last_good = folder / "current.cose", folder / "last-good.cose"
    good = current.read_bytes()

    # A damaged current document: the last good one runs, and becomes current again.
    current.write_bytes(_flip(good, 40))
    config = setup.keeper().boot(setup.factory)
    assert (config.document_seq, config.batch.max_readings) == (1, 11)
    assert current.read_bytes() == good

    # Both damaged (or gone): the factory edge.toml runs, and the applied seq still holds.
    current.write_bytes(b"")
    last_good.write_bytes(good[:-5])
    rebooted = setup.keeper()
    config = rebooted.boot(setup.factory)
    assert config is setup.factory
    assert rebooted.counters["stored_unusable"] == 2
    refused = rebooted.consider(good, setup.factory, config)
    assert refused.status is not None
    assert refused.status.reason == "replayed"

    # keeper.json damaged: the seq comes back from a document that still verifies.
    last_good.write_bytes(good)
    (folder / "keeper.json").write_text("{not json")
    assert setup.keeper().applied_seq is None
    rebooted = setup.keeper()
    config = rebooted.boot(setup.factory)
    assert rebooted.applied_seq == 1
    assert config.document_seq == 1
    assert rebooted.counters["keeper_file_damaged"] == 1


def test_a_document_stops_being_tried_once_rolled_back(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    keeper = setup.keeper()
    first = _apply(keeper, setup, sign_config(_doc(1), setup.fleet.key))
    assert first.doc is not None
    bad = sign_config(_doc(2, batch_max_readings=50), setup.fleet.key)
    decision = keeper.consider(bad, setup.factory, keeper.boot(setup.factory))
    keeper.begin_trial(decision)
    assert (setup.state_dir / "config" / "trial").exists()
    keeper.roll_back(decision, "radio", "the concentrator refused 10 channels")
    assert not (setup.state_dir / "config" / "trial").exists()
    assert (setup.state_dir / "config" / "current.cose").read_bytes() == first.payload
    running = keeper.boot(setup.factory)
    assert running.document_seq == 1
    # Delivered again in the same process: not tried, not answered again.
    assert keeper.consider(bad, setup.factory, running).action == IGNORE
    # After a reboot, answered once more with the earlier status, then only logged.
    rebooted = setup.keeper()
    running = rebooted.boot(setup.factory)
    again = rebooted.consider(bad, setup.factory, running)
    assert again.action == ANSWER
    assert again.status is not None
    assert (again.status.state, again.status.seq, again.status.reason) == (
        "rolled_back",
        2,
        "radio",
    )
    assert again.status.detail == "the concentrator refused 10 channels"
    assert again.status.running_hash == first.doc.content_hash
    assert rebooted.consider(bad, setup.factory, running).action == IGNORE
    # The fleet retries with a higher seq.
    retry = sign_config(_doc(3, batch_max_readings=50), setup.fleet.key)
    assert rebooted.consider(retry, setup.factory, running).action == APPLY


def test_a_trial_interrupted_by_a_crash_is_rolled_back_at_boot(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    keeper = setup.keeper()
    first = _apply(keeper, setup, sign_config(_doc(1, health_interval_s=60), setup.fleet.key))
    assert first.doc is not None
    trial = sign_config(_doc(2, health_interval_s=5), setup.fleet.key)
    decision = keeper.consider(trial, setup.factory, keeper.boot(setup.factory))
    keeper.begin_trial(decision)
    assert decision.doc is not None
    # The agent dies here. At boot the last good configuration runs, and the fleet hears why.
    rebooted = setup.keeper()
    config = rebooted.boot(setup.factory)
    assert (config.document_seq, config.health.interval_s) == (1, 60)
    assert not (setup.state_dir / "config" / "trial").exists()
    (status,) = setup.statuses(rebooted)
    assert (status.state, status.seq, status.reason) == ("rolled_back", 2, "interrupted")
    assert status.content_hash == decision.doc.content_hash
    assert status.running_hash == first.doc.content_hash
    assert rebooted.last_status is not None
    assert rebooted.last_status["reason"] == "interrupted"
    # Booting again reports nothing more, and the document is not tried again.
    for path, _ in rebooted.pending_reports():
        rebooted.report_sent(path)
    third = setup.keeper()
    assert third.boot(setup.factory).document_seq == 1
    assert setup.statuses(third) == []
    assert third.consider(trial, setup.factory, config).action == ANSWER
    assert third.consider(trial, setup.factory, config).action == IGNORE


def test_a_commit_cut_short_is_finished_at_boot(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    keeper = setup.keeper()
    _apply(keeper, setup, sign_config(_doc(1), setup.fleet.key))
    payload = sign_config(_doc(2, batch_max_readings=3), setup.fleet.key)
    decision = keeper.consider(payload, setup.factory, keeper.boot(setup.factory))
    keeper.begin_trial(decision)
    marker = (setup.state_dir / "config" / "trial").read_bytes()
    keeper.commit(decision)
    # As if the power went after keeper.json was written and before the marker was removed.
    (setup.state_dir / "config" / "trial").write_bytes(marker)
    (setup.state_dir / "config" / "last-good.cose").unlink()
    rebooted = setup.keeper()
    config = rebooted.boot(setup.factory)
    assert (config.document_seq, config.batch.max_readings) == (2, 3)
    assert (setup.state_dir / "config" / "last-good.cose").read_bytes() == payload
    assert not (setup.state_dir / "config" / "trial").exists()
    assert setup.statuses(rebooted) == []


def test_reports_are_signed_and_spooled_in_order(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    keeper = setup.keeper()
    for state in ("received", "applied"):
        keeper.report(state, 7, content_hash=bytes(32), detail="x" * 500, running_hash=bytes(32))
    statuses = setup.statuses(keeper)
    assert [status.state for status in statuses] == ["received", "applied"]
    assert statuses[0].detail is not None
    # Cut to the codec's bound (bytes of UTF-8), with an ellipsis.
    assert len(statuses[0].detail.encode()) <= MAX_DETAIL_CHARS
    assert statuses[0].detail.endswith("\u2026")
    assert statuses[0].at == 1_760_000_000
    summary = keeper.summary()
    assert summary["last_status"]["state"] == "applied"
    assert summary["counters"] == {"received": 1, "applied": 1}
    # A new keeper still has them until they are in the outbox.
    assert len(setup.keeper().pending_reports()) == 2


def test_atomic_writes_leave_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "file"
    write_atomic(target, b"one")
    write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["file"]
    assert target.stat().st_mode & 0o777 == 0o600


def test_the_running_document_follows_a_new_factory_file(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    keeper = setup.keeper()
    _apply(keeper, setup, sign_config(_doc(1, batch_max_readings=12), setup.fleet.key))
    text = setup.factory.path.read_text().replace("/dev/ttyACM0", "/dev/ttyUSB1")
    setup.factory.path.write_text(text)
    new_factory = load_config(setup.factory.path)
    config = keeper.effective(new_factory)
    assert config.radio.port == "/dev/ttyUSB1"
    assert (config.document_seq, config.batch.max_readings) == (1, 12)
    assert config.sha256 == new_factory.sha256
    # A new file the document no longer fits: the file alone.
    udp = dataclasses.replace(new_factory, radio=dataclasses.replace(new_factory.radio, port=""))
    assert keeper.effective(udp) is udp


def test_the_trial_marker_and_state_file_are_json(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    keeper = setup.keeper()
    payload = sign_config(_doc(9), setup.fleet.key)
    decision = keeper.consider(payload, setup.factory, setup.factory)
    keeper.begin_trial(decision)
    assert decision.doc is not None
    marker = json.loads((setup.state_dir / "config" / "trial").read_text())
    assert marker == {"seq": 9, "content_hash": decision.doc.content_hash.hex()}
    keeper.commit(decision)
    state = json.loads((setup.state_dir / "config" / "keeper.json").read_text())
    assert state["applied_seq"] == 9
    assert state["trusted"] == [raw_public_key(setup.fleet.key.public_key()).hex()]


def test_the_status_line_names_what_runs() -> None:
    base = {"written_at": 100.0, "ready": True, "config_hash": "ab" * 32}
    factory = base | {
        "config": {
            "source": "factory",
            "seq": None,
            "hash": "ab" * 32,
            "last_status": {"state": "rejected", "seq": 7, "reason": "signature"},
        }
    }
    lines, _ = status_lines(factory, 100.0)
    assert (
        f"config    sha256 {'ab' * 32} (factory edge.toml); last report: rejected seq 7 (signature)"
        in lines
    )
    document = base | {"config": {"source": "document", "seq": 42, "hash": "cd" * 32}}
    lines, _ = status_lines(document, 100.0)
    assert f"config    document seq 42, sha256 {'cd' * 8}" in lines


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ("[config]\napply_deadline_s = 0.5", "[config] apply_deadline_s: must be a number 1..600"),
        ("[config]\napply_deadline_s = 601", "[config] apply_deadline_s: must be a number 1..600"),
        ("[config]\nrollback = true", "[config] rollback: unknown key"),
    ],
)
def test_config_section_is_checked(tmp_path: Path, extra: str, problem: str) -> None:
    Fleet(tmp_path / "keys")
    path = _edge_toml(tmp_path)
    path.write_text(path.read_text() + "\n" + extra + "\n")
    with pytest.raises(ConfigError, match=re.escape(problem)):
        load_config(path)


def test_groups_and_config_key_in_edge_toml(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path / "keys")
    with pytest.raises(ConfigError, match=r"\[gateway\] groups: must be an array of distinct"):
        load_config(_edge_toml(tmp_path, extra='groups = ["north", "north"]'))
    offline = Ed25519PrivateKey.generate()
    (tmp_path / "keys" / "config.pub.pem").write_bytes(
        offline.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    config = load_config(
        _edge_toml(tmp_path, extra='config_key = "keys/config.pub.pem"\ngroups = ["north"]')
    )
    assert config.gateway.groups == ("north",)
    assert config.config.apply_deadline_s == 30
    keys = load_keys(config)
    assert keys.config_trusted is keys.config_signing
    assert keys.config_trusted.public_bytes_raw() == offline.public_key().public_bytes_raw()
    plain = load_keys(load_config(_edge_toml(tmp_path)))
    assert plain.config_signing is None
    assert plain.config_trusted is plain.fleet
    # The fleet key alone does not sign documents for this gateway any more.
    keeper = ConfigKeeper(
        config.gateway.state_dir,
        gateway_id=GATEWAY,
        groups=config.gateway.groups,
        trusted=keys.config_trusted,
        signing_key=fleet.identity,
    )
    refused = keeper.consider(sign_config(_doc(1), fleet.key), config, config)
    assert refused.status is not None
    assert refused.status.reason == "signature"
    accepted = keeper.consider(sign_config(_doc(1, target="north"), offline), config, config)
    assert accepted.action == APPLY
    (tmp_path / "keys" / "config.pub.pem").write_text("not a key")
    with pytest.raises(ConfigError, match=r"\[gateway\] config_key: .* is not a PEM public key"):
        load_keys(config)
