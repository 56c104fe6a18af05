"""Gateway configuration documents: codec, JSON form, signing, every refusal, key rotation,
the CDDL schema (zcbor and pycddl) and the limits shared with edge.toml."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json

import cbor2
import pycddl
import pytest
import zcbor
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from owlgate.codecs import configdoc, signed
from owlgate.codecs.concentrator import Channel
from owlgate.codecs.configdoc import (
    ConfigDocument,
    ConfigDocumentError,
    ConfigRejected,
    GatewayConfig,
    Reason,
    config_hash,
    decode,
    encode,
    from_json,
    next_trusted,
    raw_public_key,
    sign_config,
    to_json,
    verify_config,
)
from owlgate.codecs.node import cbor
from owlgate.edge import config as edge_config
from tests.conftest import REPO

GATEWAY = bytes.fromhex("b827ebfffe6c1a2b")
OTHER_GATEWAY = bytes.fromhex("b827ebfffe6c1a2c")
FLEET_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
NEXT_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
STRANGER = Ed25519PrivateKey.from_private_bytes(bytes(range(2, 34)))

CONFIG = GatewayConfig(
    radio_backend="serial",
    channels=(
        Channel(frequency_hz=868_100_000),
        Channel(frequency_hz=868_300_000, bandwidth_hz=250_000, spreading_factors=(7,)),
    ),
    tx_power_dbm=12,
    batch_max_readings=50,
    batch_max_age_ms=250,
    health_interval_s=60,
    outbox_max_bytes=64 * 1024 * 1024,
    mqtt_url="mqtt://broker.city.example:1883",
    mqtt_keepalive_s=45,
    mqtt_credentials="file:/etc/owlgate/mqtt.pass",
    log_level="warning",
    devices=(bytes.fromhex("70b3d57ed0001000"), bytes.fromhex("70b3d57ed0001001")),
)
DOC = ConfigDocument(seq=7, target=GATEWAY, issued_at=1_760_000_000, config=CONFIG)


def _doc(**changes: object) -> ConfigDocument:
    return dataclasses.replace(DOC, **changes)  # type: ignore[arg-type]


def _config(**changes: object) -> GatewayConfig:
    return dataclasses.replace(CONFIG, **changes)  # type: ignore[arg-type]


# --- strategies -------------------------------------------------------------------------------

channels = st.lists(
    st.builds(
        lambda hz, bw, sfs: Channel(frequency_hz=hz, bandwidth_hz=bw, spreading_factors=sfs),
        st.integers(863_000_000, 870_000_000),
        st.sampled_from((125_000, 250_000, 500_000)),
        st.sets(st.integers(5, 12), min_size=1).map(lambda sfs: tuple(sorted(sfs))),
    ),
    min_size=1,
    max_size=16,
    unique_by=lambda channel: channel.frequency_hz,
).map(tuple)

configs = st.builds(
    GatewayConfig,
    radio_backend=st.sampled_from(("serial", "semtech-udp")),
    channels=channels,
    tx_power_dbm=st.integers(0, 14),
    batch_max_readings=st.integers(1, 10_000),
    batch_max_age_ms=st.integers(1, 3_600_000),
    health_interval_s=st.integers(1, 86_400),
    outbox_max_bytes=st.integers(1, configdoc.OUTBOX_MAX_BYTES),
    mqtt_url=st.sampled_from(("mqtt://b", "mqtt://10.0.0.1:1883", "mqtt://[::1]:8883")),
    mqtt_keepalive_s=st.integers(5, 3600),
    mqtt_credentials=st.none() | st.from_regex(r"[A-Za-z0-9._:/@+-]{1,128}", fullmatch=True),
    log_level=st.sampled_from(configdoc.LOG_LEVELS),
    devices=st.sets(st.binary(min_size=8, max_size=8), max_size=5).map(
        lambda found: tuple(sorted(found))
    ),
)

documents = st.builds(
    ConfigDocument,
    seq=st.integers(1, 2**64 - 1),
    target=st.binary(min_size=8, max_size=8) | st.text(min_size=1, max_size=16),
    issued_at=st.integers(0, 2**64 - 1),
    config=configs,
    next_key=st.none() | st.just(raw_public_key(NEXT_KEY.public_key())),
)


# --- the codec --------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(documents)
def test_cbor_round_trip(doc: ConfigDocument) -> None:
    data = encode(doc)
    assert decode(data) == doc
    assert encode(decode(data)) == data


@settings(max_examples=150, deadline=None)
@given(documents)
def test_json_round_trip(doc: ConfigDocument) -> None:
    assert from_json(to_json(doc)) == doc


def test_layout_is_the_documented_one() -> None:
    content = cbor2.loads(encode(_doc(next_key=raw_public_key(NEXT_KEY.public_key()))))
    assert content[1] == "gateway-config"
    assert (content[2], content[3], content[4]) == (7, GATEWAY, 1_760_000_000)
    body = content[5]
    assert sorted(body) == [1, 2, 3]
    assert body[3] == raw_public_key(NEXT_KEY.public_key())
    assert body[1] == {
        1: "serial",
        2: [[868_100_000, 125_000, [7, 8, 9, 10, 11, 12]], [868_300_000, 250_000, [7]]],
        3: 12,
        4: 50,
        5: 250,
        6: 60,
        7: 64 * 1024 * 1024,
        8: "mqtt://broker.city.example:1883",
        9: 45,
        10: "file:/etc/owlgate/mqtt.pass",
        11: "warning",
        12: [bytes.fromhex("70b3d57ed0001000"), bytes.fromhex("70b3d57ed0001001")],
    }
    # The content hash is SHA-256 over the deterministic CBOR of the config map alone.
    assert body[2] == hashlib.sha256(cbor2.dumps(body[1], canonical=True)).digest()
    assert body[2] == DOC.content_hash == config_hash(CONFIG)


def test_content_hash_names_the_settings_not_the_envelope() -> None:
    assert _doc(seq=8, target="north").content_hash == DOC.content_hash
    assert _doc(config=_config(log_level="debug")).content_hash != DOC.content_hash


def _body_map(**config_changes: object) -> dict[object, object]:
    content: dict[object, object] = cbor2.loads(encode(DOC))
    config = dict(cbor2.loads(encode(DOC))[5][1])
    for key, value in config_changes.items():
        number = int(key[1:])
        if value is None:
            del config[number]
        else:
            config[number] = value
    content[5] = {1: config, 2: hashlib.sha256(cbor.dumps(config)).digest()}
    return content


@pytest.mark.parametrize(
    ("content", "reason", "words"),
    [
        pytest.param(_body_map(k1="lora"), "schema", "radio_backend", id="unknown backend"),
        pytest.param(_body_map(k2=[]), "schema", "1..16 channels", id="no channel"),
        pytest.param(
            _body_map(k2=[[868_100_000, 125_000, [7]]] * 2), "schema", "share", id="same freq"
        ),
        pytest.param(
            _body_map(k2=[[915_000_000, 125_000, [7]]]), "schema", "frequency", id="US915"
        ),
        pytest.param(
            _body_map(k2=[[868_100_000, 125_000, [8, 7]]]),
            "schema",
            "increasing order",
            id="sf order",
        ),
        pytest.param(_body_map(k3=15), "schema", "tx_power_dbm", id="tx power 15"),
        pytest.param(_body_map(k4=0), "schema", "batch_max_readings", id="no readings"),
        pytest.param(_body_map(k5=3_600_001), "schema", "batch_max_age_ms", id="age"),
        pytest.param(_body_map(k6=86_401), "schema", "health_interval_s", id="interval"),
        pytest.param(_body_map(k7=0), "schema", "outbox_max_bytes", id="outbox 0"),
        pytest.param(_body_map(k8="http://b"), "schema", "mqtt_url", id="http url"),
        pytest.param(_body_map(k8="mqtt://u:p@b"), "schema", "mqtt_url", id="password in url"),
        pytest.param(_body_map(k9=4), "schema", "mqtt_keepalive_s", id="keepalive"),
        pytest.param(_body_map(k10="pass word"), "schema", "mqtt_credentials", id="cred"),
        pytest.param(_body_map(k11="trace"), "schema", "log_level", id="log level"),
        pytest.param(_body_map(k12=[bytes(7)]), "schema", "DevEUI", id="short DevEUI"),
        pytest.param(_body_map(k12=[bytes(8), bytes(8)]), "schema", "distinct", id="dup dev"),
        pytest.param(_body_map(k11=None), "schema", "no log_level", id="missing key"),
        pytest.param(_body_map(k13=1), "schema", "unknown config key 13", id="unknown key"),
        pytest.param(_body_map(k6=True), "schema", "health_interval_s", id="bool"),
        pytest.param(
            {**cbor2.loads(encode(DOC)), 1: "node-config"}, "schema", "node-config", id="kind"
        ),
        pytest.param(
            {k: v for k, v in cbor2.loads(encode(DOC)).items() if k != 3},
            "schema",
            "target",
            id="no target",
        ),
        pytest.param({**cbor2.loads(encode(DOC)), 2: 0}, "schema", "seq", id="seq 0"),
        pytest.param(
            {**cbor2.loads(encode(DOC)), 5: {**cbor2.loads(encode(DOC))[5], 2: bytes(32)}},
            "hash",
            "does not match",
            id="wrong hash",
        ),
        pytest.param(
            {**cbor2.loads(encode(DOC)), 5: {**cbor2.loads(encode(DOC))[5], 3: bytes(31)}},
            "schema",
            "next_key",
            id="short next key",
        ),
    ],
)
def test_decode_refuses_with_a_reason(
    content: dict[object, object], reason: str, words: str
) -> None:
    with pytest.raises(ConfigDocumentError) as caught:
        decode(cbor.dumps(content))
    assert caught.value.reason == reason
    assert words in caught.value.message, caught.value.message


def test_decode_refuses_non_deterministic_cbor() -> None:
    content = cbor2.loads(encode(DOC))
    with pytest.raises(ConfigDocumentError, match="deterministic"):
        decode(cbor2.dumps(dict(reversed(list(content.items())))))
    with pytest.raises(ConfigDocumentError):
        decode(encode(DOC) + b"\x00")


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"radio_backend": "rak3172"}, "one channel with one spreading factor"),
        (
            {
                "radio_backend": "rak3172",
                "channels": (Channel(frequency_hz=868_100_000, spreading_factors=(7,)),),
                "tx_power_dbm": 4,
            },
            "5 dBm",
        ),
        ({"channels": ()}, "channels"),
        ({"devices": (bytes(8), bytes(7) + b"\x01")[::-1]}, "ascending"),
        ({"mqtt_url": "mqtt://b:0"}, "mqtt_url"),
        ({"mqtt_credentials": "x" * 129}, "mqtt_credentials"),
    ],
)
def test_config_refuses_what_the_edge_would(changes: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigDocumentError) as caught:
        _config(**changes)
    assert caught.value.reason == "schema"
    assert words in caught.value.message


def test_rak3172_with_one_channel_is_accepted() -> None:
    single = _config(
        radio_backend="rak3172",
        channels=(Channel(frequency_hz=868_100_000, spreading_factors=(9,)),),
        tx_power_dbm=5,
    )
    assert decode(encode(_doc(config=single))).config == single


def test_limits_are_those_of_edge_toml() -> None:
    assert configdoc.RADIO_BACKENDS == edge_config.RADIO_BACKENDS
    assert configdoc.EU868_MIN_HZ == edge_config.EU868_MIN_HZ
    assert configdoc.EU868_MAX_HZ == edge_config.EU868_MAX_HZ
    assert configdoc.BANDWIDTHS_HZ == edge_config.BANDWIDTHS_HZ
    assert configdoc.MAX_CHANNELS == edge_config.MAX_CHANNELS
    assert configdoc.TX_POWER_MAX_DBM == edge_config.EU868_TX_POWER_MAX_DBM
    assert configdoc.RAK3172_TX_POWER_MIN_DBM == edge_config.RAK3172_TX_POWER_MIN_DBM
    defaults = GatewayConfig(mqtt_url="mqtt://b")
    assert defaults.channels == edge_config.DEFAULT_CHANNELS
    assert defaults.batch_max_readings == edge_config.DEFAULT_MAX_READINGS
    assert defaults.batch_max_age_ms == round(edge_config.DEFAULT_MAX_AGE_S * 1000)
    assert defaults.health_interval_s == edge_config.DEFAULT_HEALTH_INTERVAL_S
    assert defaults.outbox_max_bytes == int(edge_config.DEFAULT_OUTBOX_MB * 1024 * 1024)
    assert defaults.mqtt_keepalive_s == edge_config.DEFAULT_KEEPALIVE_S


# --- the JSON form ----------------------------------------------------------------------------


def test_json_is_readable_and_minimal_json_gets_the_defaults() -> None:
    shown = json.loads(to_json(DOC))
    assert shown["target"] == {"gateway": "b827ebfffe6c1a2b"}
    assert shown["issued_at"] == "2025-10-09T08:53:20Z"
    assert shown["config"]["mqtt"]["credentials"] == "file:/etc/owlgate/mqtt.pass"
    assert shown["content_hash"] == DOC.content_hash.hex()
    minimal = from_json(
        '{"seq": 1, "target": {"group": "north"}, "issued_at": 0,'
        ' "config": {"mqtt": {"url": "mqtt://b"}}}'
    )
    assert minimal.config == GatewayConfig(mqtt_url="mqtt://b")
    assert minimal.target == "north"


@pytest.mark.parametrize(
    ("text", "reason", "words"),
    [
        ("{", "json", "not JSON"),
        ("[]", "schema", "JSON object"),
        ('{"seq": 1, "target": {"group": "n"}}', "schema", "'config'"),
        ('{"seq": 1, "target": {"group": "n"}, "config": {}}', "schema", "mqtt.url"),
        ('{"seq": 1, "target": {"gw": "n"}, "config": {}}', "schema", "unknown key 'gw'"),
        (
            '{"seq": 1, "target": {"gateway": "B827EBFFFE6C1A2B"}, "config": {}}',
            "schema",
            "lowercase",
        ),
        (
            '{"seq": 1, "target": {"group": "n"}, "config": {"mqtt": {"url": "mqtt://b",'
            ' "password": "hunter2"}}}',
            "schema",
            "unknown key 'password'",
        ),
        (
            '{"seq": 1, "target": {"group": "n"}, "issued_at": "yesterday",'
            ' "config": {"mqtt": {"url": "mqtt://b"}}}',
            "schema",
            "issued_at",
        ),
        (
            '{"seq": 1, "target": {"group": "n"}, "content_hash": "' + "00" * 32 + '",'
            ' "config": {"mqtt": {"url": "mqtt://b"}}}',
            "hash",
            "does not match",
        ),
    ],
)
def test_from_json_refuses_with_a_reason(text: str, reason: str, words: str) -> None:
    with pytest.raises(ConfigDocumentError) as caught:
        from_json(text)
    assert caught.value.reason == reason
    assert words in caught.value.message, caught.value.message


# --- signing and verification -----------------------------------------------------------------

SIGNED = sign_config(DOC, FLEET_KEY)
PINNED = FLEET_KEY.public_key()


def test_sign_verify_round_trip() -> None:
    doc = verify_config(SIGNED, PINNED, gateway_id=GATEWAY, last_seq=6)
    assert doc == DOC
    assert doc.signed_by == signed.key_id(FLEET_KEY)
    # The envelope is the signed-document codec's: any of its verifiers reads the payload.
    assert signed.verify(SIGNED, PINNED).payload == encode(DOC)
    assert sign_config(DOC, FLEET_KEY) == SIGNED  # deterministic


def _rejected(data: bytes, trusted: signed.Keys = PINNED, **checks: object) -> ConfigRejected:
    with pytest.raises(ConfigRejected) as caught:
        verify_config(data, trusted, **checks)  # type: ignore[arg-type]
    return caught.value


def test_other_key_is_refused_as_signature() -> None:
    refused = _rejected(sign_config(DOC, STRANGER))
    assert refused.reason is Reason.SIGNATURE
    assert "unknown key id" in refused.message
    assert str(refused).startswith("rejected (signature): ")


def test_every_flipped_byte_is_refused() -> None:
    for at in range(len(SIGNED)):
        for bit in (0x01, 0x80):
            mutated = bytearray(SIGNED)
            mutated[at] ^= bit
            assert _rejected(bytes(mutated)).reason is Reason.SIGNATURE, (at, bit)


def test_truncated_and_garbage_input_are_refused() -> None:
    assert _rejected(SIGNED[:-1]).reason is Reason.SIGNATURE
    assert _rejected(b"").reason is Reason.SIGNATURE
    assert _rejected(encode(DOC)).reason is Reason.SIGNATURE  # unsigned


def test_signed_but_invalid_schema_or_hash_is_refused() -> None:
    broken = cbor.dumps(_body_map(k11="trace"))
    assert _rejected(signed.sign(broken, FLEET_KEY)).reason is Reason.SCHEMA
    content = cbor2.loads(encode(DOC))
    content[5][2] = bytes(32)
    refused = _rejected(signed.sign(cbor.dumps(content), FLEET_KEY))
    assert refused.reason is Reason.HASH
    other_kind = signed.sign_document(
        signed.Document(kind="node-config", seq=1, issued_at=0, target=GATEWAY, body={}),
        FLEET_KEY,
    )
    assert _rejected(other_kind).reason is Reason.SCHEMA


def test_replayed_seq_is_refused() -> None:
    for last in (7, 8, 2**64 - 1):
        refused = _rejected(SIGNED, last_seq=last)
        assert refused.reason is Reason.REPLAYED
        assert f"last applied seq {last}" in refused.message
    assert verify_config(SIGNED, PINNED, last_seq=None).seq == 7


def test_wrong_target_is_refused() -> None:
    refused = _rejected(SIGNED, gateway_id=OTHER_GATEWAY)
    assert refused.reason is Reason.WRONG_TARGET
    assert "b827ebfffe6c1a2b" in refused.message
    group_doc = sign_config(_doc(target="north"), FLEET_KEY)
    assert verify_config(group_doc, PINNED, gateway_id=GATEWAY, groups=["south", "north"])
    assert _rejected(group_doc, gateway_id=GATEWAY, groups=["south"]).reason is (
        Reason.WRONG_TARGET
    )
    assert _rejected(group_doc, gateway_id=GATEWAY).reason is Reason.WRONG_TARGET
    assert _rejected(SIGNED, groups=["north"]).reason is Reason.WRONG_TARGET


# --- key rotation -----------------------------------------------------------------------------


def test_rotation_current_key_introduces_the_next_then_only_the_next_is_trusted() -> None:
    current_id = signed.key_id(FLEET_KEY)
    next_id = signed.key_id(NEXT_KEY)
    trusted = {current_id: PINNED}
    introducing = _doc(seq=10, next_key=raw_public_key(NEXT_KEY.public_key()))
    # A document signed by the next key is refused before the current key introduced it.
    assert _rejected(sign_config(_doc(seq=10), NEXT_KEY), trusted).reason is Reason.SIGNATURE

    applied = verify_config(sign_config(introducing, FLEET_KEY), trusted, last_seq=9)
    trusted = next_trusted(applied, trusted)
    assert sorted(trusted) == sorted([current_id, next_id])
    # Both are trusted now: the current key may still sign (e.g. a retry).
    assert verify_config(sign_config(_doc(seq=11), FLEET_KEY), trusted).signed_by == current_id

    from_next = verify_config(sign_config(_doc(seq=12), NEXT_KEY), trusted, last_seq=11)
    assert from_next.signed_by == next_id
    trusted = next_trusted(from_next, trusted)
    assert list(trusted) == [next_id]
    # The old key is retired: what it signs now is refused.
    assert _rejected(sign_config(_doc(seq=13), FLEET_KEY), trusted).reason is Reason.SIGNATURE


def test_rotation_can_be_withdrawn_by_the_current_key() -> None:
    trusted = {signed.key_id(FLEET_KEY): PINNED}
    introducing = _doc(seq=10, next_key=raw_public_key(NEXT_KEY.public_key()))
    trusted = next_trusted(verify_config(sign_config(introducing, FLEET_KEY), trusted), trusted)
    withdrawn = verify_config(sign_config(_doc(seq=11), FLEET_KEY), trusted)
    assert list(next_trusted(withdrawn, trusted)) == [signed.key_id(FLEET_KEY)]


def test_next_trusted_needs_a_verified_document() -> None:
    with pytest.raises(ValueError, match="verify_config"):
        next_trusted(DOC, PINNED)


def test_next_key_must_be_an_ed25519_point() -> None:
    with pytest.raises(ConfigDocumentError, match="next_key"):
        _doc(next_key=b"\x01" + bytes(30))


# --- the CDDL schema --------------------------------------------------------------------------

SPEC_PATH = REPO / "docs" / "formats" / "config-document.cddl"
SPEC = SPEC_PATH.read_text()
ENTRY = "config-document"


@functools.cache
def zcbor_doc() -> zcbor.DataTranslator:
    return zcbor.DataTranslator.from_cddl(SPEC, 10).my_types[ENTRY]


@functools.cache
def pycddl_doc() -> pycddl.Schema:
    return pycddl.Schema(SPEC)


@settings(max_examples=100, deadline=None)
@given(documents)
def test_every_encoded_document_validates_against_the_cddl(doc: ConfigDocument) -> None:
    data = encode(doc)
    zcbor_doc().validate_str(data)
    pycddl_doc().validate_cbor(data)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(_body_map(k1="lora"), id="unknown backend"),
        pytest.param(_body_map(k3=15), id="tx power 15"),
        pytest.param(_body_map(k11="trace"), id="log level"),
        pytest.param(_body_map(k11=None), id="missing log level"),
        pytest.param(_body_map(k13=1), id="unknown key"),
        pytest.param(_body_map(k2=[[868_100_000, 125_001, [7]]]), id="bandwidth"),
        pytest.param({**cbor2.loads(encode(DOC)), 2: 0}, id="seq 0"),
    ],
)
def test_cddl_refuses_what_the_decoder_refuses(content: dict[object, object]) -> None:
    data = cbor.dumps(content)
    with pytest.raises(zcbor.CddlValidationError):
        zcbor_doc().validate_str(data)
    with pytest.raises(pycddl.ValidationError):
        pycddl_doc().validate_cbor(data)
    with pytest.raises(ConfigDocumentError):
        decode(data)


def test_the_signed_envelope_validates_against_signed_document_cddl() -> None:
    envelope = (REPO / "docs" / "formats" / "signed-document.cddl").read_text()
    zcbor.DataTranslator.from_cddl(envelope, 10).my_types["signed-document"].validate_str(SIGNED)


# --- the documentation ------------------------------------------------------------------------


def test_json_example_of_the_docs_gives_the_documented_hash_and_sizes() -> None:
    page = (REPO / "docs" / "formats" / "config-document.md").read_text()
    example = page.split("```json\n", 1)[1].split("```", 1)[0]
    doc = from_json(example)
    assert doc.content_hash.hex() in page
    rfc8032_test1 = Ed25519PrivateKey.from_private_bytes(
        bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    )
    assert f"payload is {len(encode(doc))} bytes" in page
    assert f"document is\n{len(sign_config(doc, rfc8032_test1))} bytes" in page
