"""``owlgate decode ...`` as an engineer runs it: JSON on stdout, one-line errors, exit code 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from owlgate.codecs import concentrator, signed
from owlgate.codecs.cli import app
from owlgate.codecs.health import Health, RadioCounters, encode_health
from owlgate.codecs.node.framing import encode_frame
from owlgate.codecs.node.telemetry import Batch, Reading, encode_batch

RUNNER = CliRunner()
GATEWAY = bytes.fromhex("b827ebfffe6c1a2b")
NWK = "44024241ed4ce9a68c6a8bc055233fd3"
APP = "ec925802ae430ca77fd3dd73cb2cc588"
UPLINK = "40F17DBE4900020001954378762B11FF0D"


def run(*args: str) -> tuple[int, str, str]:
    result = RUNNER.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def ok_json(*args: str) -> Any:
    code, out, err = run(*args)
    assert code == 0, err
    return json.loads(out)


def test_lorawan_uplink_with_keys() -> None:
    out = ok_json("decode", "lorawan", UPLINK, "--nwk-s-key", NWK, "--app-s-key", APP)
    assert out["mtype"] == "UnconfirmedDataUp"
    assert out["dev_addr"] == "49be7df1"
    assert out["mic_ok"] is True
    assert bytes.fromhex(out["payload"]) == b"test"


def test_lorawan_wrong_key_reports_the_mic_not_an_error() -> None:
    out = ok_json("decode", "lorawan", UPLINK, "--nwk-s-key", "00" * 16)
    assert out["mic_ok"] is False
    assert "payload" not in out


def test_lorawan_hex_may_carry_separators() -> None:
    spaced = " ".join(UPLINK[i : i + 2] for i in range(0, len(UPLINK), 2))
    assert ok_json("decode", "lorawan", "0x" + spaced)["f_cnt"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["decode", "lorawan", "zz"], "HEX is not hex"),
        (["decode", "lorawan", UPLINK, "--nwk-s-key", "0011"], "--nwk-s-key must be 16 bytes"),
        (["decode", "lorawan", "40F17D"], "a data frame is 12 to 255 bytes"),
        (["decode", "frame", "0102"], "error: "),
        (["decode", "telemetry", "a0"], "error: "),
        (["decode", "health", "ff"], "error: "),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    code, out, err = run(*args)
    assert code == 2
    assert out == ""
    assert message in err
    assert err.startswith("error: ")
    assert err.count("\n") == 1


def test_frame_carries_the_concentrator_message() -> None:
    rx = concentrator.RxFrame(
        frequency_hz=868_100_000,
        sf=7,
        bandwidth_hz=125_000,
        coding_rate=concentrator.CodingRate.CR_4_5,
        rssi_dbm=-57,
        snr_db=9.25,
        timestamp_us=123_456,
        crc_status=concentrator.CrcStatus.OK,
        payload=bytes.fromhex(UPLINK),
    )
    frame = concentrator.to_frame(rx)
    out = ok_json("decode", "frame", frame.hex())
    assert out["crc"]["ok"] is True
    assert out["message"]["type"] == "RX_FRAME"
    assert out["message"]["frequency_hz"] == 868_100_000
    assert out["message"]["payload"] == UPLINK.lower()


def test_frame_with_a_bad_crc_is_shown_not_hidden() -> None:
    payload = concentrator.encode_message(concentrator.GetStats(token=7))
    frame = bytearray(encode_frame(payload))
    frame[-2] ^= 0x01  # last COBS byte before the delimiter: part of the CRC
    if frame[-2] == 0:
        frame[-2] = 0x01
    out = ok_json("decode", "frame", frame.hex())
    assert out["crc"]["ok"] is False


def _batch() -> bytes:
    reading = Reading(
        bytes.fromhex("70b3d57ed0001234"),
        1_760_000_000,
        {"occupied": True, "battery_mv": 3600, "temperature_c": 21.5},
        -110,
        -7.5,
    )
    return encode_batch(Batch(GATEWAY, seq=42, base_time=1_760_000_000, readings=[reading]))


def test_telemetry_from_hex_and_from_a_raw_file(tmp_path: Path) -> None:
    data = _batch()
    from_hex = ok_json("decode", "telemetry", data.hex())
    assert from_hex["seq"] == 42
    assert from_hex["readings"][0]["values"]["temperature_c"] == 21.5
    raw = tmp_path / "batch.cbor"
    raw.write_bytes(data)
    assert ok_json("decode", "telemetry", str(raw)) == from_hex
    text = tmp_path / "batch.hex"
    text.write_text(data.hex() + "\n")
    assert ok_json("decode", "telemetry", str(text)) == from_hex


def test_signed_telemetry_is_unwrapped_but_not_called_verified() -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes(32))
    out = ok_json("decode", "telemetry", signed.sign(_batch(), key).hex())
    assert out["signed"]["kid"] == signed.key_id(key).hex()
    assert out["signed"]["verified"] is False
    assert out["gateway_id"] == GATEWAY.hex()


def test_health() -> None:
    health = Health(
        gateway_id=GATEWAY,
        time_s=1_760_000_000,
        seq=3,
        interval_s=30,
        uptime_s=86_400,
        agent_uptime_s=3_600,
        agent_version="0.1.0",
        config_hash=bytes(32),
        radio=RadioCounters(received=10, crc_ok=9, crc_bad=1, forwarded=9, transmitted=0),
    )
    out = ok_json("decode", "health", encode_health(health).hex())
    assert out["uptime_s"] == 86_400
    assert out["radio"]["crc_bad"] == 1
