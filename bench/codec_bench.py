"""The codec figures: telemetry size against JSON and SenML, and the per-message costs on the
gateway's hot path (LoRaWAN decode, serial frame round trip, telemetry encoding, signing).

Every input is built from a fixed seed, so two runs measure the same work.
"""

from __future__ import annotations

import random

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from owlgate.codecs import concentrator, lorawan, senml, signed
from owlgate.codecs.chirpstack import chirpstack_uplink_json
from owlgate.codecs.node import framing, telemetry
from owlgate.codecs.node.telemetry import Batch, Reading
from owlgate.codecs.payloads import encode_uplink

from .figures import Figure
from .timing import Timing, per_call

GATEWAY = bytes.fromhex("b827ebfffe6c1a2b")
BASE_TIME = 1_760_000_000
SEED = 2026


def parking_readings(count: int, seed: int = SEED) -> list[Reading]:
    """What one gateway hears from ``count`` parking sensors, a few seconds apart: the
    fields the size target names (device EUI, occupied, battery, temperature, RSSI, SNR,
    time), with plausible values."""
    rng = random.Random(seed)
    return [
        Reading(
            dev_eui=bytes.fromhex("70b3d57ed0") + (0x1000 + index).to_bytes(3, "big"),
            time_s=BASE_TIME + 4 * index + rng.randrange(4),
            values={
                "occupied": rng.random() < 0.5,
                "battery_mv": rng.randrange(2900, 3650),
                "temperature_c": rng.randrange(-100, 350) / 10,
            },
            rssi_dbm=rng.randrange(-125, -60),
            snr_db=rng.randrange(-80, 40) / 4,
        )
        for index in range(count)
    ]


# A gateway that has sent a batch every 10 s for half a day: a two-byte CBOR argument.
SEQ = 4711


def _batch(readings: list[Reading]) -> Batch:
    # The batcher takes the first reading's time as the base time.
    return Batch(GATEWAY, seq=SEQ, base_time=readings[0].time_s, readings=readings)


def _mean(sizes: list[int]) -> float:
    return sum(sizes) / len(sizes)


def _size_figures() -> list[Figure]:
    hundred = parking_readings(100)
    batch100 = _batch(hundred)
    singles = [_batch([reading]) for reading in hundred]

    def chirpstack(reading: Reading) -> int:
        _, payload = encode_uplink("parking-v1", reading.values)
        return len(chirpstack_uplink_json(reading, gateway_id=GATEWAY, payload=payload))

    json_per_reading = _mean([chirpstack(reading) for reading in hundred])
    return [
        Figure(
            "codec.telemetry_bytes_per_reading_batch100",
            len(telemetry.encode_batch(batch100)) / 100,
            "bytes",
            "compact CBOR batch of 100 parking readings (device EUI, occupied, battery mV, "
            "temperature, RSSI, SNR, time), bytes per reading",
            goal_max=24,
            comparisons={
                "chirpstack_json": json_per_reading,
                "senml_cbor": len(senml.senml_cbor(batch100)) / 100,
                "senml_json": len(senml.senml_json(batch100)) / 100,
            },
        ),
        Figure(
            "codec.telemetry_bytes_single",
            _mean([len(telemetry.encode_batch(batch)) for batch in singles]),
            "bytes",
            f"compact CBOR batch holding one parking reading, batch seq {SEQ}: mean over the "
            "same 100 readings, each alone",
            goal_max=40,
            comparisons={
                "chirpstack_json": json_per_reading,
                "senml_cbor": _mean([len(senml.senml_cbor(batch)) for batch in singles]),
                "senml_json": _mean([len(senml.senml_json(batch)) for batch in singles]),
            },
        ),
    ]


def _timed(
    name: str, timing: Timing, unit: str, description: str, goal_max: float | None = None
) -> Figure:
    return Figure(
        name, timing.best_us, unit, description, goal_max=goal_max, median=timing.median_us
    )


def _lorawan_figure(number: int) -> Figure:
    keys = lorawan.SessionKeys(bytes(range(16)), bytes(range(16, 32)))
    phy = lorawan.DataFrame.build(
        keys,
        mtype=lorawan.MType.UNCONFIRMED_DATA_UP,
        dev_addr=0x260B1234,
        f_cnt=70_001,
        f_port=10,
        payload=bytes(range(20)),
    ).to_bytes()
    decode = lorawan.decode_uplink
    timing = per_call(lambda: decode(phy, keys, 70_000), number=number)
    return _timed(
        "codec.lorawan_decode_us",
        timing,
        "µs",
        f"parse, FCnt widening, MIC check and decryption of a data uplink with a 20-byte "
        f"FRMPayload ({len(phy)}-byte PHYPayload), session keys prepared",
        goal_max=6,
    )


def _frame_figure(number: int) -> Figure:
    phy = bytes(random.Random(SEED).randbytes(33))
    rx = concentrator.RxFrame(
        frequency_hz=868_300_000,
        sf=9,
        bandwidth_hz=125_000,
        coding_rate=concentrator.CodingRate.CR_4_5,
        rssi_dbm=-97,
        snr_db=7.25,
        timestamp_us=3_512_348_611,
        crc_status=concentrator.CrcStatus.OK,
        payload=phy,
    )
    decoder = framing.FrameDecoder()
    to_frame = concentrator.to_frame
    decode_message = concentrator.decode_message

    def round_trip() -> object:
        (payload,) = decoder.feed(to_frame(rx))
        return decode_message(payload)

    timing = per_call(round_trip, number=number)
    return _timed(
        "codec.frame_roundtrip_us",
        timing,
        "µs",
        "an RX_FRAME message around a 33-byte uplink: CBOR, COBS and CRC out, then the "
        "streaming decoder and the message decoder back",
    )


def _telemetry_figures(number: int) -> list[Figure]:
    batch = _batch(parking_readings(100))
    data = telemetry.encode_batch(batch)
    encode = per_call(lambda: telemetry.encode_batch(batch), number=max(1, number // 100))
    decode = per_call(lambda: telemetry.decode_batch(data), number=max(1, number // 200))
    scale = 1 / len(batch.readings)
    return [
        Figure(
            "codec.telemetry_encode_us_per_reading",
            encode.best_us * scale,
            "µs",
            "encoding a batch of 100 parking readings, per reading",
            median=encode.median_us * scale,
        ),
        Figure(
            "codec.telemetry_decode_us_per_reading",
            decode.best_us * scale,
            "µs",
            "decoding (and canonical-form check of) a batch of 100 parking readings, per reading",
            # The fleet decodes every batch it ingests: 20,000 readings/s on 2 cores.
            goal_max=5,
            median=decode.median_us * scale,
        ),
    ]


def _signing_figures(number: int) -> list[Figure]:
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    public = key.public_key()
    data = telemetry.encode_batch(_batch(parking_readings(100)))
    cose = signed.sign(data, key)
    count = max(1, number // 20)
    sign = per_call(lambda: signed.sign(data, key), number=count)
    check = per_call(lambda: signed.verify(cose, public), number=count)
    return [
        _timed("codec.sign_batch_us", sign, "µs", "COSE_Sign1 (Ed25519) of a 100-reading batch"),
        _timed("codec.verify_batch_us", check, "µs", "verifying that signature, as the fleet does"),
    ]


def run(*, quick: bool = False) -> list[Figure]:
    """Every codec figure; ``quick`` runs few rounds (a smoke run, not a measurement)."""
    number = 200 if quick else 20_000
    return [
        *_size_figures(),
        _lorawan_figure(number),
        _frame_figure(number),
        *_telemetry_figures(number),
        *_signing_figures(number),
    ]
