"""``owlgate config keygen|sign|verify`` through the root command, as a person runs them."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from typer.testing import CliRunner, Result

from owlgate.codecs import signed
from owlgate.codecs.cli import app
from owlgate.codecs.configdoc import decode, from_json

DOC_JSON = {
    "seq": 5,
    "target": {"gateway": "b827ebfffe6c1a2b"},
    "issued_at": "2026-12-01T00:00:00Z",
    "config": {
        "radio": {"backend": "serial", "tx_power_dbm": 10},
        "health": {"interval_s": 60},
        "mqtt": {"url": "mqtt://broker.city.example:1883", "credentials": "vault:mqtt/north"},
        "log_level": "debug",
        "devices": ["70b3d57ed0001000"],
    },
}


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(app, ["config", *map(str, args)])


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    private = tmp_path / "fleet-config.pem"
    result = run("keygen", "--out", private)
    assert result.exit_code == 0, result.stderr
    return private, tmp_path / "fleet-config.pem.pub"


@pytest.fixture
def signed_doc(tmp_path: Path, keys: tuple[Path, Path]) -> Path:
    source = tmp_path / "doc.json"
    source.write_text(json.dumps(DOC_JSON))
    out = tmp_path / "doc.cose"
    result = run("sign", "--key", keys[0], source, "--out", out)
    assert result.exit_code == 0, result.stderr
    return out


def test_keygen_writes_a_private_key_for_its_owner_only(keys: tuple[Path, Path]) -> None:
    private, public = keys
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    key = load_pem_private_key(private.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    again = run("keygen", "--out", private)
    assert again.exit_code == 2
    assert again.stderr.startswith("error: ")
    assert "exists" in again.stderr
    reread = load_pem_private_key(private.read_bytes(), password=None)
    assert isinstance(reread, Ed25519PrivateKey)
    assert reread.private_bytes_raw() == key.private_bytes_raw()  # not replaced


def test_sign_to_stdout_then_verify_round_trip(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    source = tmp_path / "doc.json"
    source.write_text(json.dumps(DOC_JSON))
    signed_result = run("sign", "--key", keys[0], source)
    assert signed_result.exit_code == 0, signed_result.stderr
    message = signed_result.stdout_bytes
    assert message[:2] == b"\xd2\x84"  # COSE_Sign1, tag 18
    expected = from_json(json.dumps(DOC_JSON))
    assert decode(signed.unwrap(message).payload) == expected
    cose = tmp_path / "stdout.cose"
    cose.write_bytes(message)
    verified = run(
        "verify", "--pubkey", keys[1], cose, "--gateway", "b827ebfffe6c1a2b", "--last-seq", "4"
    )
    assert verified.exit_code == 0, verified.stderr
    assert from_json(verified.stdout) == expected
    assert verified.stderr.strip() == (
        f"verified: seq 5, hash {expected.content_hash.hex()}, target b827ebfffe6c1a2b"
    )


def test_out_file_is_the_same_as_stdout(
    tmp_path: Path, keys: tuple[Path, Path], signed_doc: Path
) -> None:
    source = tmp_path / "doc.json"
    assert run("sign", "--key", keys[0], source).stdout_bytes == signed_doc.read_bytes()


def _rejected(result: Result, reason: str) -> str:
    assert result.exit_code == 1, (result.exit_code, result.stderr)
    assert result.stdout == ""
    line = result.stderr.strip()
    assert line.startswith(f"rejected ({reason}): "), line
    return line


def test_tampered_file_is_rejected(
    tmp_path: Path, keys: tuple[Path, Path], signed_doc: Path
) -> None:
    data = bytearray(signed_doc.read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered = tmp_path / "tampered.cose"
    tampered.write_bytes(bytes(data))
    _rejected(run("verify", "--pubkey", keys[1], tampered), "signature")


def test_wrong_key_is_rejected(tmp_path: Path, signed_doc: Path) -> None:
    other = tmp_path / "other.pem"
    assert run("keygen", "--out", other).exit_code == 0
    line = _rejected(run("verify", "--pubkey", f"{other}.pub", signed_doc), "signature")
    assert "unknown key id" in line


def test_replayed_seq_is_rejected(keys: tuple[Path, Path], signed_doc: Path) -> None:
    line = _rejected(run("verify", "--pubkey", keys[1], signed_doc, "--last-seq", "5"), "replayed")
    assert "last applied seq 5" in line


def test_wrong_target_is_rejected(keys: tuple[Path, Path], signed_doc: Path) -> None:
    _rejected(
        run("verify", "--pubkey", keys[1], signed_doc, "--gateway", "0011223344556677"),
        "wrong_target",
    )
    _rejected(run("verify", "--pubkey", keys[1], signed_doc, "--group", "north"), "wrong_target")


def test_rotation_both_keys_during_a_rotation(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    following = tmp_path / "next.pem"
    assert run("keygen", "--out", following).exit_code == 0
    source = tmp_path / "doc.json"
    source.write_text(json.dumps(DOC_JSON))
    out = tmp_path / "by-next.cose"
    assert run("sign", "--key", following, source, "--out", out).exit_code == 0
    _rejected(run("verify", "--pubkey", keys[1], out), "signature")
    both = run("verify", "--pubkey", keys[1], "--pubkey", f"{following}.pub", out)
    assert both.exit_code == 0, both.stderr


@pytest.mark.parametrize(
    ("document", "words"),
    [
        ("{", "not JSON"),
        (json.dumps({**DOC_JSON, "seq": 0}), "seq must be an integer 1.."),
        (json.dumps({**DOC_JSON, "config": {"mqtt": {"url": "mqtt://b", "pw": "x"}}}), "'pw'"),
    ],
)
def test_bad_document_is_one_error_line(
    tmp_path: Path, keys: tuple[Path, Path], document: str, words: str
) -> None:
    source = tmp_path / "bad.json"
    source.write_text(document)
    result = run("sign", "--key", keys[0], source)
    assert result.exit_code == 2
    assert result.stdout_bytes == b""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: "), lines
    assert words in lines[0]


def test_unusable_keys_and_files_exit_2(
    tmp_path: Path, keys: tuple[Path, Path], signed_doc: Path
) -> None:
    source = tmp_path / "doc.json"
    for result, words in (
        (run("sign", "--key", keys[1], source), "not an unencrypted PKCS#8"),
        (run("sign", "--key", tmp_path / "missing.pem", source), "cannot read"),
        (run("verify", "--pubkey", keys[0], signed_doc), "not a PEM public key"),
        (run("verify", "--pubkey", keys[1], tmp_path / "none.cose"), "cannot read"),
        (run("verify", "--pubkey", keys[1], signed_doc, "--gateway", "xyz"), "--gateway"),
    ):
        assert result.exit_code == 2, result.stderr
        assert result.stderr.startswith("error: "), result.stderr
        assert words in result.stderr, result.stderr


def test_bench_ota_suite_reports_the_verify_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--suite", "ota", "--quick", "--json", str(out)])
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    assert figures["units"]["ota.verify_us"] == "µs"
    assert figures["ota.verify_us"] > 0
    assert "ota.verify_us" not in figures["goals"]
