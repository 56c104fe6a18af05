"""The edge agent's configuration: every key validated, every error naming the file and key.

A valid base file is written, then one key at a time is changed to a bad value; the error
must be exactly one :class:`ConfigError` whose message starts with the file, the section and
the key. The CLI turns it into one line on stderr and exit code 2.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from typer.testing import CliRunner

from owlgate.codecs.concentrator import Channel
from owlgate.edge.cli import edge_command
from owlgate.edge.config import (
    DEFAULT_CHANNELS,
    GatewayKeys,
    load_config,
    load_keys,
)
from owlgate.edge.errors import ConfigError

GATEWAY_HEX = "0016c001ff10a0e1"


def base() -> dict[str, dict[str, str]]:
    # Values are TOML source text, so a test can put any type in.
    return {
        "gateway": {
            "id": f'"{GATEWAY_HEX}"',
            "state_dir": '"state"',
            "identity_key": '"keys/identity.pem"',
            "sealing_key": '"keys/sealing.pem"',
            "fleet_key": '"keys/fleet.pub.pem"',
        },
        "radio": {"port": '"/dev/ttyACM0"'},
        "mqtt": {"url": '"mqtt://broker.example:1884"'},
    }


def render(sections: dict[str, dict[str, str]]) -> str:
    lines = []
    for name, keys in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {value}" for key, value in keys.items())
        lines.append("")
    return "\n".join(lines)


def write(tmp_path: Path, sections: dict[str, dict[str, str]]) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(render(sections))
    return path


def error_of(tmp_path: Path, sections: dict[str, dict[str, str]]) -> ConfigError:
    path = write(tmp_path, sections)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, base()))
    folder = tmp_path.resolve()
    assert config.gateway.gateway_id == bytes.fromhex(GATEWAY_HEX)
    assert config.gateway.state_dir == folder / "state"
    assert config.gateway.identity_key == folder / "keys/identity.pem"
    assert config.gateway.sealing_key == folder / "keys/sealing.pem"
    assert config.gateway.fleet_key == folder / "keys/fleet.pub.pem"
    assert (config.radio.backend, config.radio.port) == ("serial", "/dev/ttyACM0")
    assert config.radio.baudrate == 115_200
    assert config.radio.channels == DEFAULT_CHANNELS
    assert [c.frequency_hz for c in DEFAULT_CHANNELS] == [868_100_000, 868_300_000, 868_500_000]
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.keepalive_s) == (
        "broker.example",
        1884,
        30,
    )
    assert (config.batch.max_readings, config.batch.max_age_s) == (100, 0.1)
    assert config.outbox.max_mb == 256.0
    assert config.outbox.max_bytes == 256 * 1024 * 1024
    assert config.wired is None
    assert config.health.interval_s == 30
    radio_config = config.radio.radio_config(7)
    assert radio_config.config_id == 7
    assert radio_config.region == "EU868"
    assert radio_config.channels == DEFAULT_CHANNELS
    assert 1 <= config.radio_config_id() < 1 << 32


def test_every_key_set(tmp_path: Path) -> None:
    sections = base()
    sections["radio"] |= {
        "backend": '"serial"',
        "port": '"rfc2217://concentrator.local:4000"',
        "baudrate": "921600",
        "channels": "[{frequency_hz = 867100000}, "
        "{frequency_hz = 868800000, bandwidth_hz = 250000, spreading_factors = [7]}]",
    }
    sections["mqtt"] = {"url": '"mqtt://10.0.0.5"', "keepalive_s": "60"}
    sections["batch"] = {"max_readings": "10", "max_age_s": "2"}
    sections["outbox"] = {"max_mb": "0.5"}
    sections["health"] = {"interval_s": "5"}
    config = load_config(write(tmp_path, sections))
    assert config.radio.port == "rfc2217://concentrator.local:4000"
    assert config.radio.baudrate == 921_600
    assert config.radio.channels == (
        Channel(frequency_hz=867_100_000),
        Channel(frequency_hz=868_800_000, bandwidth_hz=250_000, spreading_factors=(7,)),
    )
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.keepalive_s) == ("10.0.0.5", 1883, 60)
    assert (config.batch.max_readings, config.batch.max_age_s) == (10, 2.0)
    assert config.outbox.max_bytes == 512 * 1024
    assert config.health.interval_s == 5


def test_relative_port_resolves_against_the_file(tmp_path: Path) -> None:
    sections = base()
    sections["radio"]["port"] = '"dev/ttyOWL0"'
    assert load_config(write(tmp_path, sections)).radio.port == str(
        tmp_path.resolve() / "dev/ttyOWL0"
    )


BAD = [
    ("gateway", "id", '"0016C001FF10A0E1"', "must be 16 lowercase hex digits"),
    ("gateway", "id", '"0016c001"', "must be 16 lowercase hex digits"),
    ("gateway", "id", "12", "got 12"),
    ("gateway", "state_dir", '""', "must be a non-empty string"),
    ("gateway", "identity_key", "1", "must be a non-empty string, got 1"),
    ("gateway", "sealing_key", "true", "got true"),
    ("gateway", "fleet_key", "[]", "got an array"),
    ("gateway", "colour", '"red"', "unknown key"),
    ("radio", "backend", '"udp"', 'must be one of "serial", "rak3172", "semtech-udp"'),
    ("radio", "tx_power_dbm", "20", "must be an integer 0..14, got 20"),
    ("radio", "listen", '"127.0.0.1:1700"', 'is for "semtech-udp", not "serial"'),
    ("radio", "port", '""', "must be a non-empty string"),
    ("radio", "baudrate", '"fast"', 'must be an integer 1200..4000000, got "fast"'),
    ("radio", "baudrate", "0", "got 0"),
    ("radio", "channels", "[]", "must be an array of 1..16 tables"),
    ("radio", "channels[0]", "[1]", "must be a table, got 1"),
    ("radio", "channels[0].frequency_hz", "[{frequency_hz = 915000000}]", "got 915000000"),
    ("radio", "channels[0].frequency_hz", "[{bandwidth_hz = 125000}]", "required"),
    (
        "radio",
        "channels[0].bandwidth_hz",
        "[{frequency_hz = 868100000, bandwidth_hz = 200000}]",
        "must be 125000, 250000 or 500000",
    ),
    (
        "radio",
        "channels[0].spreading_factors",
        "[{frequency_hz = 868100000, spreading_factors = [13]}]",
        "distinct integers 5..12",
    ),
    (
        "radio",
        "channels[0].spreading_factors",
        "[{frequency_hz = 868100000, spreading_factors = []}]",
        "distinct integers 5..12",
    ),
    ("radio", "channels[0].power", "[{frequency_hz = 868100000, power = 3}]", "unknown key"),
    (
        "radio",
        "channels",
        "[{frequency_hz = 868100000}, {frequency_hz = 868100000}]",
        "share a frequency",
    ),
    ("mqtt", "url", '"http://broker:1883"', "must be an URL"),
    ("mqtt", "url", '"mqtt://:1883"', "must be an URL"),
    ("mqtt", "url", '"mqtt://broker:99999"', "must be an URL"),
    ("mqtt", "url", '"mqtt://user@broker"', "must be an URL"),
    ("mqtt", "keepalive_s", "1", "must be an integer 5..3600, got 1"),
    ("batch", "max_readings", '"x"', 'must be an integer 1..10000, got "x"'),
    ("batch", "max_readings", "0", "got 0"),
    ("batch", "max_readings", "1.5", "got 1.5"),
    ("batch", "max_age_s", "0", "must be a number above 0 and at most 3600, got 0"),
    ("batch", "max_age_s", "false", "got false"),
    ("outbox", "max_mb", "-1", "got -1"),
    ("outbox", "size", "1", "unknown key"),
    ("health", "interval_s", "0", "must be an integer 1..86400, got 0"),
    ("health", "interval_s", "2.5", "got 2.5"),
]


@pytest.mark.parametrize(
    ("section", "key", "value", "problem"), BAD, ids=[f"{s}.{k}={v}" for s, k, v, _ in BAD]
)
def test_bad_values_name_file_section_and_key(
    tmp_path: Path, section: str, key: str, value: str, problem: str
) -> None:
    sections = base()
    toml_key = key.split("[")[0]
    sections.setdefault(section, {})[toml_key] = value
    error = error_of(tmp_path, sections)
    assert (error.section, error.key) == (section, key)
    assert error.message.startswith(f"{tmp_path / 'edge.toml'}: [{section}] {key}: ")
    assert problem in error.message


def test_the_example_message(tmp_path: Path) -> None:
    sections = base()
    sections["batch"] = {"max_readings": '"x"'}
    path = write(tmp_path, sections)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.message == (
        f'{path}: [batch] max_readings: must be an integer 1..10000, got "x"'
    )


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("gateway", "id"),
        ("gateway", "state_dir"),
        ("gateway", "identity_key"),
        ("gateway", "sealing_key"),
        ("gateway", "fleet_key"),
        ("radio", "port"),
        ("mqtt", "url"),
    ],
)
def test_required_keys(tmp_path: Path, section: str, key: str) -> None:
    sections = base()
    del sections[section][key]
    error = error_of(tmp_path, sections)
    assert (error.section, error.key) == (section, key)
    assert "required" in error.message


@pytest.mark.parametrize("section", ["gateway", "radio", "mqtt"])
def test_required_sections(tmp_path: Path, section: str) -> None:
    sections = base()
    del sections[section]
    error = error_of(tmp_path, sections)
    assert (error.section, error.key) == (section, None)
    assert error.message == f"{tmp_path / 'edge.toml'}: [{section}]: required section missing"


def test_unknown_section_and_bad_files(tmp_path: Path) -> None:
    sections = base()
    sections["lora"] = {"x": "1"}
    assert error_of(tmp_path, sections).section == "lora"
    path = tmp_path / "edge.toml"
    path.write_text("[gateway\nid = 1\n")
    with pytest.raises(ConfigError, match=r"edge\.toml: not valid TOML: .*line 1"):
        load_config(path)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"missing\.toml: cannot read"):
        load_config(tmp_path / "missing.toml")
    path.write_text("gateway = 3\n[radio]\n[mqtt]\n")
    assert error_of_path(path).message.endswith("[gateway]: must be a table, got 3")
    (tmp_path / "state").write_text("a file")
    error = error_of(tmp_path, base())
    assert (error.section, error.key) == ("gateway", "state_dir")


def error_of_path(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value


def write_keys(folder: Path) -> tuple[Ed25519PrivateKey, X25519PrivateKey, Ed25519PrivateKey]:
    folder.mkdir()
    identity, sealing, fleet = (
        Ed25519PrivateKey.generate(),
        X25519PrivateKey.generate(),
        Ed25519PrivateKey.generate(),
    )
    pkcs8 = (
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (folder / "identity.pem").write_bytes(identity.private_bytes(*pkcs8))
    (folder / "sealing.pem").write_bytes(sealing.private_bytes(*pkcs8))
    (folder / "fleet.pub.pem").write_bytes(
        fleet.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return identity, sealing, fleet


def test_keys_load_and_are_checked(tmp_path: Path) -> None:
    identity, sealing, fleet = write_keys(tmp_path / "keys")
    config = load_config(write(tmp_path, base()))
    keys = load_keys(config)
    assert isinstance(keys, GatewayKeys)
    assert repr(keys) == "GatewayKeys(<secret>)"
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    assert keys.identity.public_key().public_bytes(*raw) == identity.public_key().public_bytes(*raw)
    assert keys.sealing.public_key().public_bytes(*raw) == sealing.public_key().public_bytes(*raw)
    assert keys.fleet.public_bytes(*raw) == fleet.public_key().public_bytes(*raw)

    folder = tmp_path / "keys"
    # The identity and sealing keys swapped: each is the wrong kind of key.
    (folder / "swap.pem").write_bytes((folder / "identity.pem").read_bytes())
    (folder / "identity.pem").write_bytes((folder / "sealing.pem").read_bytes())
    with pytest.raises(ConfigError, match=r"\[gateway\] identity_key: .* not an Ed25519 key"):
        load_keys(config)
    (folder / "identity.pem").write_bytes((folder / "swap.pem").read_bytes())
    (folder / "sealing.pem").write_bytes((folder / "swap.pem").read_bytes())
    with pytest.raises(ConfigError, match=r"\[gateway\] sealing_key: .* not an X25519 key"):
        load_keys(config)
    (folder / "sealing.pem").write_bytes(
        sealing.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    # A private key where the fleet's public key belongs, then garbage, then nothing.
    (folder / "fleet.pub.pem").write_bytes((folder / "identity.pem").read_bytes())
    with pytest.raises(ConfigError, match=r"\[gateway\] fleet_key: .* not a PEM public key"):
        load_keys(config)
    (folder / "identity.pem").write_text("not a key")
    with pytest.raises(ConfigError, match=r"\[gateway\] identity_key: .* not an unencrypted"):
        load_keys(config)
    (folder / "identity.pem").unlink()
    with pytest.raises(ConfigError, match=r"\[gateway\] identity_key: cannot read"):
        load_keys(config)


def test_cli_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    sections = base()
    sections["batch"] = {"max_readings": '"x"'}
    path = write(tmp_path, sections)
    result = CliRunner().invoke(edge_command, ["run", "--config", str(path)])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == (
        f'error: {path}: [batch] max_readings: must be an integer 1..10000, got "x"\n'
    )


def test_cli_missing_key_file_is_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, base())
    result = CliRunner().invoke(edge_command, ["run", "--config", str(path)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {path}: [gateway] identity_key: cannot read ")
    assert result.stderr.count("\n") == 1


def test_rak3172_backend_takes_one_channel_and_one_spreading_factor(tmp_path: Path) -> None:
    sections = base()
    sections["radio"] |= {"backend": '"rak3172"', "tx_power_dbm": "10"}
    config = load_config(write(tmp_path, sections))
    assert config.radio.backend == "rak3172"
    assert config.radio.tx_power_dbm == 10
    assert config.radio.channels == (
        Channel(frequency_hz=868_100_000, bandwidth_hz=125_000, spreading_factors=(7,)),
    )
    sections["radio"]["channels"] = "[{frequency_hz = 869525000, spreading_factors = [9]}]"
    config = load_config(write(tmp_path, sections))
    assert config.radio.channels[0].frequency_hz == 869_525_000
    assert config.radio.channels[0].spreading_factors == (9,)
    for channels in (
        "[{frequency_hz = 868100000}]",
        "[{frequency_hz = 868100000, spreading_factors = [7]},"
        " {frequency_hz = 868300000, spreading_factors = [7]}]",
    ):
        sections["radio"]["channels"] = channels
        error = error_of(tmp_path, sections)
        assert (error.section, error.key) == ("radio", "channels")
        assert "one channel with one spreading factor" in error.message


def test_semtech_udp_backend_listens_on_udp(tmp_path: Path) -> None:
    sections = base()
    sections["radio"] = {"backend": '"semtech-udp"'}
    config = load_config(write(tmp_path, sections))
    assert (config.radio.listen_host, config.radio.listen_port) == ("127.0.0.1", 1700)
    assert config.radio.gateway_eui is None
    assert config.radio.where == "udp://127.0.0.1:1700"
    sections["radio"] |= {"listen": '"0.0.0.0:1701"', "gateway_eui": '"aa555a0000000101"'}
    config = load_config(write(tmp_path, sections))
    assert (config.radio.listen_host, config.radio.listen_port) == ("0.0.0.0", 1701)
    assert config.radio.gateway_eui == bytes.fromhex("aa555a0000000101")
    for key, value, problem in (
        ("listen", '"1700"', 'a "host:port" UDP address'),
        ("listen", '"host:0"', 'a "host:port" UDP address'),
        ("gateway_eui", '"AA55"', "16 lowercase hex digits"),
        ("port", '"/dev/ttyACM0"', 'is for serial backends; "semtech-udp" uses listen'),
    ):
        bad = base()
        bad["radio"] = {"backend": '"semtech-udp"', key: value}
        error = error_of(tmp_path, bad)
        assert (error.section, error.key) == ("radio", key)
        assert problem in error.message


WIRED_NODES = (
    '[{address = 1, dev_eui = "70b3d57ed0001001", settings = {interval_s = 60, alarm = true}},'
    ' {address = 2, dev_eui = "70b3d57ed0001002"}]'
)


def test_wired_nodes(tmp_path: Path) -> None:
    sections = base()
    sections["wired"] = {
        "port": '"/dev/ttyAMA0"',
        "baudrate": "19200",
        "poll_interval_s": "2",
        "nodes": WIRED_NODES,
    }
    config = load_config(write(tmp_path, sections))
    wired = config.wired
    assert wired is not None
    assert (wired.port, wired.baudrate, wired.poll_interval_s) == ("/dev/ttyAMA0", 19200, 2.0)
    assert (wired.response_timeout_s, wired.silent_after_polls) == (0.5, 3)
    assert [(node.address, node.dev_eui.hex(), node.settings) for node in wired.nodes] == [
        (1, "70b3d57ed0001001", (("alarm", True), ("interval_s", 60))),
        (2, "70b3d57ed0001002", None),
    ]


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("nodes", "[]", "must be an array of 1..247 tables"),
        ("nodes", '[{address = 0, dev_eui = "70b3d57ed0001001"}]', "integer 1..247, got 0"),
        ("nodes", '[{address = 1, dev_eui = "xyz"}]', "16 lowercase hex digits"),
        ("nodes", '[{address = 1, dev_eui = "70b3d57ed0001001", settings = {a = "x"}}]', "table"),
        (
            "nodes",
            '[{address = 1, dev_eui = "70b3d57ed0001001"},'
            ' {address = 1, dev_eui = "70b3d57ed0001002"}]',
            "two nodes share an address",
        ),
        ("poll_interval_s", "0", "must be a number above 0"),
        ("speed", "1", "unknown key"),
    ],
)
def test_bad_wired_settings(tmp_path: Path, key: str, value: str, problem: str) -> None:
    sections = base()
    sections["wired"] = {"port": '"/dev/ttyAMA0"', "nodes": WIRED_NODES, key: value}
    error = error_of(tmp_path, sections)
    assert error.section == "wired"
    assert error.key is not None
    assert error.key.startswith(key)
    assert problem in error.message
