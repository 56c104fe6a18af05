"""The LoRaWAN codec against the independent lora-packet library (Node), both directions.

Each test sends all its cases to ONE run of ``tests/tools/lora_packet.mjs``. Cases come from a
seeded generator, so a failure names a case that can be reproduced.
"""

from __future__ import annotations

import json
import random
import subprocess
from typing import Any

import pytest

from owlgate.codecs.lorawan import (
    AesKey,
    DataFrame,
    EncryptedJoinAccept,
    FCntVerdict,
    FCtrl,
    JoinAccept,
    JoinRequest,
    MType,
    SessionKeys,
    decode_uplink,
    derive_session_keys,
)
from tests.conftest import REPO, require_node_module

pytestmark = pytest.mark.node

CASES = 200
HELPER = REPO / "tests" / "tools" / "lora_packet.mjs"
LORA_PACKET_MTYPES = {
    MType.UNCONFIRMED_DATA_UP: "Unconfirmed Data Up",
    MType.UNCONFIRMED_DATA_DOWN: "Unconfirmed Data Down",
    MType.CONFIRMED_DATA_UP: "Confirmed Data Up",
    MType.CONFIRMED_DATA_DOWN: "Confirmed Data Down",
    MType.JOIN_REQUEST: "Join Request",
    MType.JOIN_ACCEPT: "Join Accept",
}
UPLINKS = (MType.UNCONFIRMED_DATA_UP, MType.CONFIRMED_DATA_UP)


def lora_packet(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run every case through lora-packet in one Node process; fail on any refused case."""
    node = require_node_module("lora-packet")
    done = subprocess.run(
        [node, str(HELPER)],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    results: list[dict[str, Any]] = json.loads(done.stdout)
    assert len(results) == len(cases)
    refused = [
        (case, result) for case, result in zip(cases, results, strict=True) if "error" in result
    ]
    assert not refused, refused[:3]
    return results


def random_data_case(rng: random.Random) -> dict[str, Any]:
    """Fields for one data frame, in the terms both sides understand."""
    mtype = rng.choice(list(LORA_PACKET_MTYPES)[:4])
    uplink = mtype in UPLINKS
    # FPort: absent, 0 (MAC commands, NwkSKey) or an application port.
    f_port = rng.choice([None, 0, rng.randrange(1, 256), rng.randrange(1, 256)])
    f_opts = b"" if f_port == 0 else rng.randbytes(rng.choice([0, 0, 1, 5, 15]))
    payload = b"" if f_port is None else rng.randbytes(rng.choice([0, 1, 7, 16, 17, 33, 51]))
    f_cnt = rng.choice([rng.randrange(0x10000), rng.randrange(2**32), 0, 0xFFFF, 0x10000])
    flags = {
        "ADR": rng.random() < 0.5,
        "ACK": rng.random() < 0.5,
        # lora-packet's ADRACKReq sets bit 6, its FPending bit 4: on an uplink bit 4 is ClassB.
        "ADRACKReq": uplink and rng.random() < 0.5,
        "FPending": rng.random() < 0.5,
    }
    return {
        "mtype": mtype,
        "dev_addr": rng.randrange(2**32),
        "f_cnt": f_cnt,
        "f_port": f_port,
        "f_opts": f_opts,
        "payload": payload,
        "flags": flags,
        "nwk_s_key": rng.randbytes(16),
        "app_s_key": rng.randbytes(16),
    }


def our_f_ctrl(case: dict[str, Any]) -> FCtrl:
    flags = case["flags"]
    if case["mtype"] in UPLINKS:
        return FCtrl(
            adr=flags["ADR"],
            adr_ack_req=flags["ADRACKReq"],
            ack=flags["ACK"],
            class_b=flags["FPending"],
        )
    return FCtrl(adr=flags["ADR"], ack=flags["ACK"], f_pending=flags["FPending"])


def keys_json(case: dict[str, Any]) -> dict[str, str]:
    return {
        "nwk_s_key": case["nwk_s_key"].hex(),
        "app_s_key": case["app_s_key"].hex(),
        # The upper 16 bits of FCnt, in the order they follow the lower 16 in B0 and A_i.
        "fcnt_msb": (case["f_cnt"] >> 16).to_bytes(2, "little").hex(),
    }


def test_frames_built_by_lora_packet_decode_here() -> None:
    rng = random.Random(1234)
    cases = [random_data_case(rng) for _ in range(CASES)]
    results = lora_packet(
        [
            {
                "op": "build_data",
                "mtype": LORA_PACKET_MTYPES[case["mtype"]],
                "dev_addr": case["dev_addr"].to_bytes(4, "big").hex(),
                "fcnt": case["f_cnt"] & 0xFFFF,
                "fctrl": case["flags"],
                "fport": case["f_port"],
                "fopts": case["f_opts"].hex(),
                "payload": case["payload"].hex(),
                **keys_json(case),
            }
            for case in cases
        ]
    )
    for case, result in zip(cases, results, strict=True):
        phy = bytes.fromhex(result["phy"])
        keys = SessionKeys(case["nwk_s_key"], case["app_s_key"])
        frame = DataFrame.from_bytes(phy)
        assert frame.mtype is case["mtype"]
        assert frame.fhdr.dev_addr == case["dev_addr"]
        assert frame.fhdr.f_cnt == case["f_cnt"] & 0xFFFF
        assert frame.fhdr.f_ctrl == our_f_ctrl(case)
        assert frame.fhdr.f_opts == case["f_opts"]
        assert frame.f_port == case["f_port"]
        frame.verify_mic(keys, case["f_cnt"])
        assert frame.decrypt(keys, case["f_cnt"]) == case["payload"]
        assert frame.to_bytes() == phy
        if frame.uplink:
            last = case["f_cnt"] - 1 if case["f_cnt"] else None
            decoded = decode_uplink(phy, keys, last)
            assert (decoded.f_cnt, decoded.verdict) == (case["f_cnt"], FCntVerdict.NEW)
            assert decoded.payload == case["payload"]
    # The sample covers what it should: both directions, FPort 0 and absent, FOpts, 32-bit FCnt.
    assert {case["mtype"] for case in cases} == set(list(LORA_PACKET_MTYPES)[:4])
    assert sum(case["f_port"] == 0 for case in cases) >= 3
    assert sum(case["f_port"] is None for case in cases) >= 3
    assert sum(bool(case["f_opts"]) for case in cases) >= 50
    assert sum(case["f_cnt"] > 0xFFFF for case in cases) >= 30


def test_frames_built_here_decode_in_lora_packet() -> None:
    rng = random.Random(4321)
    cases = [random_data_case(rng) for _ in range(CASES)]
    frames = [
        DataFrame.build(
            SessionKeys(case["nwk_s_key"], case["app_s_key"]),
            mtype=case["mtype"],
            dev_addr=case["dev_addr"],
            f_cnt=case["f_cnt"],
            payload=case["payload"],
            f_port=case["f_port"],
            f_ctrl=our_f_ctrl(case),
            f_opts=case["f_opts"],
        )
        for case in cases
    ]
    results = lora_packet(
        [
            {"op": "decode_data", "phy": frame.to_bytes().hex(), **keys_json(case)}
            for case, frame in zip(cases, frames, strict=True)
        ]
    )
    for case, result in zip(cases, results, strict=True):
        assert result["mic_ok"] is True
        assert result["mtype"] == LORA_PACKET_MTYPES[case["mtype"]]
        assert result["dir"] == ("up" if case["mtype"] in UPLINKS else "down")
        assert result["dev_addr"] == case["dev_addr"].to_bytes(4, "big").hex()
        assert result["fcnt"] == case["f_cnt"] & 0xFFFF
        assert result["fport"] == case["f_port"]
        assert result["fopts"] == case["f_opts"].hex()
        assert result["fctrl"] == case["flags"]
        expected_payload = None if case["f_port"] is None else case["payload"].hex()
        assert result["payload"] == expected_payload


def test_public_vectors_decode_the_same_in_lora_packet(lorawan_vectors: dict[str, Any]) -> None:
    vectors = lorawan_vectors["data_uplinks"]
    results = lora_packet(
        [
            {
                "op": "decode_data",
                "phy": vector["phy_payload"],
                "nwk_s_key": vector["nwk_s_key"],
                "app_s_key": vector["app_s_key"],
                "fcnt_msb": "0000",
            }
            for vector in vectors
        ]
    )
    for vector, result in zip(vectors, results, strict=True):
        keys = SessionKeys(bytes.fromhex(vector["nwk_s_key"]), bytes.fromhex(vector["app_s_key"]))
        frame = DataFrame.from_bytes(bytes.fromhex(vector["phy_payload"]))
        assert result["mic_ok"] is True
        assert result["dev_addr"] == f"{frame.fhdr.dev_addr:08x}"
        assert result["fcnt"] == frame.fhdr.f_cnt
        assert result["fport"] == frame.f_port
        assert result["fopts"] == frame.fhdr.f_opts.hex()
        assert result["mic"] == frame.mic.hex()
        assert result["payload"] == frame.decrypt(keys).hex()


def test_join_requests_agree_both_ways() -> None:
    rng = random.Random(99)
    cases: list[dict[str, Any]] = [
        {
            "join_eui": rng.randrange(2**64),
            "dev_eui": rng.randrange(2**64),
            "dev_nonce": rng.randrange(2**16),
            "app_key": rng.randbytes(16),
        }
        for _ in range(CASES)
    ]

    def fields(case: dict[str, Any]) -> dict[str, str]:
        return {
            "join_eui": case["join_eui"].to_bytes(8, "big").hex(),
            "dev_eui": case["dev_eui"].to_bytes(8, "big").hex(),
            "dev_nonce": case["dev_nonce"].to_bytes(2, "big").hex(),
            "app_key": case["app_key"].hex(),
        }

    ours = [
        JoinRequest.build(
            AesKey(case["app_key"]),
            join_eui=case["join_eui"],
            dev_eui=case["dev_eui"],
            dev_nonce=case["dev_nonce"],
        )
        for case in cases
    ]
    requests = [{"op": "build_join_request", **fields(case)} for case in cases]
    requests += [
        {
            "op": "decode_join_request",
            "phy": frame.to_bytes().hex(),
            "app_key": case["app_key"].hex(),
        }
        for case, frame in zip(cases, ours, strict=True)
    ]
    results = lora_packet(requests)
    built, decoded = results[:CASES], results[CASES:]
    for case, frame, theirs, check in zip(cases, ours, built, decoded, strict=True):
        # Built by lora-packet: the same bytes as ours, and our MIC check accepts them.
        assert theirs["phy"] == frame.to_bytes().hex()
        JoinRequest.from_bytes(bytes.fromhex(theirs["phy"])).verify_mic(AesKey(case["app_key"]))
        # Built here: lora-packet reads the same fields and accepts the MIC.
        expected = fields(case)
        assert check["mtype"] == "Join Request"
        assert check["mic_ok"] is True
        assert check["mic"] == frame.mic.hex()
        assert (check["join_eui"], check["dev_eui"], check["dev_nonce"]) == (
            expected["join_eui"],
            expected["dev_eui"],
            expected["dev_nonce"],
        )


def test_join_accepts_and_session_keys_agree_both_ways() -> None:
    rng = random.Random(7)
    cases: list[dict[str, Any]] = [
        {
            "join_nonce": rng.randrange(2**24),
            "net_id": rng.randrange(2**24),
            "dev_addr": rng.randrange(2**32),
            # DLSettings bit 7 is RFU in 1.0.x (OptNeg in 1.1, which lora-packet would honour).
            "dl_settings": rng.randrange(0x80),
            "rx_delay": rng.randrange(16),
            "cf_list": rng.choice([None, rng.randbytes(15) + b"\x00", rng.randbytes(16)]),
            "dev_nonce": rng.randrange(2**16),
            "app_key": rng.randbytes(16),
        }
        for _ in range(CASES)
    ]
    ours = [
        JoinAccept.build(
            AesKey(case["app_key"]),
            join_nonce=case["join_nonce"],
            net_id=case["net_id"],
            dev_addr=case["dev_addr"],
            dl_settings=case["dl_settings"],
            rx_delay=case["rx_delay"],
            cf_list=case["cf_list"],
        )
        for case in cases
    ]

    def be(value: int, size: int) -> str:
        return value.to_bytes(size, "big").hex()

    requests: list[dict[str, Any]] = [
        {
            "op": "build_join_accept",
            "join_nonce": be(case["join_nonce"], 3),
            "net_id": be(case["net_id"], 3),
            "dev_addr": be(case["dev_addr"], 4),
            "dl_settings": case["dl_settings"],
            "rx_delay": case["rx_delay"],
            "cf_list": (case["cf_list"] or b"").hex(),
            "app_key": case["app_key"].hex(),
        }
        for case in cases
    ]
    requests += [
        {
            "op": "decode_join_accept",
            "phy": frame.encrypt(AesKey(case["app_key"])).hex(),
            "app_key": case["app_key"].hex(),
        }
        for case, frame in zip(cases, ours, strict=True)
    ]
    requests += [
        {
            "op": "session_keys",
            "app_key": case["app_key"].hex(),
            "net_id": be(case["net_id"], 3),
            "join_nonce": be(case["join_nonce"], 3),
            "dev_nonce": be(case["dev_nonce"], 2),
        }
        for case in cases
    ]
    results = lora_packet(requests)
    built, decoded, derived = results[:CASES], results[CASES : 2 * CASES], results[2 * CASES :]
    for case, frame, theirs, check, keys in zip(cases, ours, built, decoded, derived, strict=True):
        app_key = AesKey(case["app_key"])
        # Encrypted by lora-packet: we decrypt it to the same fields, and its MIC verifies.
        received = EncryptedJoinAccept.from_bytes(bytes.fromhex(theirs["phy"]))
        accept = received.decrypt(app_key)
        accept.verify_mic(app_key)
        assert accept == frame
        assert bytes.fromhex(theirs["phy"]) == frame.encrypt(app_key)
        # Encrypted here: lora-packet decrypts it to our plaintext and accepts the MIC.
        assert check["plain"] == frame.to_bytes().hex()
        assert check["mic_ok"] is True
        assert check["mtype"] == "Join Accept"
        assert check["join_nonce"] == be(case["join_nonce"], 3)
        assert check["net_id"] == be(case["net_id"], 3)
        assert check["dev_addr"] == be(case["dev_addr"], 4)
        assert (check["dl_settings"], check["rx_delay"]) == (case["dl_settings"], case["rx_delay"])
        assert check["cf_list"] == (case["cf_list"] or b"").hex()
        # Session keys from the same join.
        ours_keys = derive_session_keys(
            app_key, case["join_nonce"], case["net_id"], case["dev_nonce"]
        )
        assert ours_keys.nwk_s_key is not None
        assert ours_keys.app_s_key is not None
        assert keys == {
            "nwk_s_key": ours_keys.nwk_s_key.hex(),
            "app_s_key": ours_keys.app_s_key.hex(),
        }
    assert sum(case["cf_list"] is not None for case in cases) >= 100
