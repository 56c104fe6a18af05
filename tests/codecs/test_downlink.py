"""The downlink message (fleet to gateway): round trips, determinism and every refusal."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from owlgate.codecs.downlink import (
    MAX_DOWNLINK_ID,
    MAX_FRM_PAYLOAD,
    Downlink,
    decode_downlink,
    encode_downlink,
)
from owlgate.codecs.errors import CborError, SchemaError
from owlgate.codecs.node import cbor

GW = bytes.fromhex("b827ebfffe000001")
EUI = bytes.fromhex("70b3d57ed0000001")

downlinks = st.builds(
    Downlink,
    id=st.integers(1, MAX_DOWNLINK_ID),
    gateway=st.binary(min_size=8, max_size=8),
    dev_eui=st.binary(min_size=8, max_size=8),
    f_port=st.integers(1, 223),
    payload=st.binary(min_size=1, max_size=MAX_FRM_PAYLOAD),
    expires_at=st.integers(0, 2**64 - 1),
    min_f_cnt_down=st.integers(0, 2**32 - 1),
)


@settings(max_examples=200, deadline=None)
@given(downlinks)
def test_round_trip_and_canonical(message: Downlink) -> None:
    data = encode_downlink(message)
    assert decode_downlink(data) == message
    # Deterministic: the decoded message encodes to the same bytes.
    assert encode_downlink(decode_downlink(data)) == data


def test_bytes_of_a_settings_downlink() -> None:
    # Settings seq 3, report_interval_s 600 (the example of docs/formats/downlink.md).
    message = Downlink(7, GW, EUI, 21, bytes.fromhex("180301000258"), 1_800_000_000, 4)
    data = encode_downlink(message)
    assert data.hex() == (
        "a701070248" + GW.hex() + "0348" + EUI.hex() + "04150546180301000258061a6b49d2000704"
    )
    assert "payload=<6 bytes>" in repr(message)
    assert "180301000258" not in repr(message)


GOOD = {1: 7, 2: GW, 3: EUI, 4: 21, 5: b"\x18\x00\x70", 6: 10, 7: 0}


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({1: 0}, "id"),
        ({1: -1}, "id"),
        ({1: True}, "id"),
        ({2: bytes(7)}, "gateway"),
        ({3: "70b3d57ed0000001"}, "dev_eui"),
        ({4: 0}, "f_port"),
        ({4: 224}, "f_port"),
        ({5: b""}, "payload"),
        ({5: bytes(52)}, "payload"),
        ({5: "text"}, "payload"),
        ({6: -5}, "expires_at"),
        ({7: 2**32}, "min_f_cnt_down"),
        ({8: 1}, "no key"),
    ],
)
def test_decoder_refuses(change: dict[int, object], words: str) -> None:
    with pytest.raises(SchemaError, match=words):
        decode_downlink(cbor.dumps({**GOOD, **change}))


@pytest.mark.parametrize("missing", sorted(GOOD))
def test_every_key_is_required(missing: int) -> None:
    content = {key: value for key, value in GOOD.items() if key != missing}
    with pytest.raises(SchemaError, match=f"key {missing} "):
        decode_downlink(cbor.dumps(content))


def test_not_a_map_and_not_cbor() -> None:
    with pytest.raises(SchemaError, match="CBOR map"):
        decode_downlink(cbor.dumps([1, 2]))
    with pytest.raises(CborError):
        decode_downlink(b"\xa7\x01")


def test_encoder_refuses_what_the_decoder_would() -> None:
    with pytest.raises(SchemaError, match=r"payload must be 1 \.\. 51 bytes, got 52"):
        encode_downlink(Downlink(1, GW, EUI, 21, bytes(52), 10))
    with pytest.raises(SchemaError, match="f_port"):
        encode_downlink(Downlink(1, GW, EUI, 0, b"\x18", 10))
