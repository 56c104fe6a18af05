"""The codec showcase behind ``owlgate demo``: one parking reading along the whole wire path.

An emulated parking sensor (profile ``parking-v1``) measures; its payload is encrypted into a
LoRaWAN uplink under ABP session keys made up for the run; an emulated concentrator wraps the
uplink in an ``RX_FRAME`` message and a serial frame; the gateway side takes the frame out of a
noisy byte stream, checks the MIC, decrypts, decodes the payload, batches the reading as
compact CBOR telemetry and signs the batch; the fleet side verifies the signature and decodes
the batch. Every hop is decoded back and compared with what was sent.

Then the things that must go wrong do: a corrupted serial frame, a tampered uplink, a replayed
uplink, a tampered batch and a batch signed by another gateway, each refused with its typed
error while the good data around it survives.

Everything is derived from one seed, so a run can be repeated exactly. This module only
computes; :mod:`owlgate.hil.cli` prints.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from owlgate.codecs import concentrator, lorawan, senml, signed
from owlgate.codecs.chirpstack import chirpstack_uplink_json
from owlgate.codecs.errors import MicError, OwlgateError
from owlgate.codecs.node import framing
from owlgate.codecs.node.telemetry import Batch, Reading, decode_batch, encode_batch
from owlgate.codecs.payloads import decode_uplink, encode_uplink

PROFILE = "parking-v1"
# 2026-11-23T00:00:00Z; each run picks a moment of that day from its seed.
DAY_START = 1_795_392_000
# Channels 1..3 of EU868 (LoRaWAN Regional Parameters, EU863-870 default channels).
EU868_CHANNELS_HZ = (868_100_000, 868_300_000, 868_500_000)


@dataclass(frozen=True, slots=True)
class Hop:
    """One step of the wire path: the bytes on that wire and whether they decoded back."""

    name: str
    wire: str
    data: bytes
    decoded: str
    ok: bool


@dataclass(frozen=True, slots=True)
class Fault:
    """Bad input injected on purpose, and what the receiving side made of it."""

    name: str
    outcome: str
    ok: bool  # refused (and counted) as it must be, with the good data around it intact


@dataclass(frozen=True, slots=True)
class Size:
    """The same readings in another format."""

    format: str
    bytes_single: int
    bytes_per_reading: float


@dataclass(slots=True)
class Showcase:
    """Everything one run produced."""

    seed: int
    readings: int
    hops: list[Hop] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    sizes: list[Size] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(hop.ok for hop in self.hops) and all(fault.ok for fault in self.faults)


@dataclass(frozen=True, slots=True)
class _Sensor:
    dev_eui: bytes
    dev_addr: int
    keys: lorawan.SessionKeys
    values: dict[str, object]


def _sensor(rng: random.Random, index: int) -> _Sensor:
    return _Sensor(
        dev_eui=bytes.fromhex("70b3d57ed0") + (0x1000 + index).to_bytes(3, "big"),
        # 0x26 0x0B: a DevAddr of NetID 000013 type 0, as public networks in Europe hand out.
        dev_addr=0x260B0000 | rng.randrange(0x10000),
        keys=lorawan.SessionKeys(rng.randbytes(16), rng.randbytes(16)),
        values={
            "occupied": rng.random() < 0.5,
            "battery_mv": rng.randrange(2900, 3650),
            "temperature_c": rng.randrange(-100, 350) / 10,
        },
    )


def _uplink(sensor: _Sensor, f_cnt: int) -> bytes:
    f_port, payload = encode_uplink(PROFILE, sensor.values)
    return lorawan.DataFrame.build(
        sensor.keys,
        mtype=lorawan.MType.UNCONFIRMED_DATA_UP,
        dev_addr=sensor.dev_addr,
        f_cnt=f_cnt,
        f_port=f_port,
        payload=payload,
    ).to_bytes()


def _refused(action: Callable[[], object], expected: type[OwlgateError]) -> str | None:
    """The message of the ``expected`` error ``action`` raised; None when it accepted."""
    try:
        action()
    except expected as err:
        return f"{type(err).__name__}: {err}"
    return None


def _short(text: str, limit: int = 110) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_showcase(seed: int, readings: int = 100) -> Showcase:
    """Run the showcase for ``seed``; ``readings`` is the size of the batch used for the
    per-reading size comparison."""
    rng = random.Random(seed)
    show = Showcase(seed=seed, readings=readings)
    sensor = _sensor(rng, 0)
    gateway_key = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
    gateway_id = bytes.fromhex("b827ebfffe") + rng.randbytes(3)
    now = DAY_START + rng.randrange(86_400)
    last_f_cnt = rng.randrange(1, 60_000)
    f_cnt = last_f_cnt + 1

    # 1. The sensor measures and encodes its payload.
    f_port, payload = encode_uplink(PROFILE, sensor.values)
    values_back = decode_uplink(PROFILE, f_port, payload)
    show.hops.append(
        Hop(
            f"device payload ({PROFILE}, FPort {f_port})",
            "sensor firmware",
            payload,
            _short(repr(values_back)),
            values_back == sensor.values,
        )
    )

    # 2. The LoRaWAN uplink: FRMPayload encrypted with AppSKey, MIC with NwkSKey.
    phy = _uplink(sensor, f_cnt)
    frame = lorawan.DataFrame.from_bytes(phy)
    show.hops.append(
        Hop(
            "LoRaWAN uplink (UnconfirmedDataUp)",
            "radio, 868 MHz",
            phy,
            f"DevAddr {sensor.dev_addr:08x}, FCnt {f_cnt}, FPort {frame.f_port}, "
            f"MIC {frame.mic.hex()}",
            frame.fhdr.dev_addr == sensor.dev_addr and frame.decrypt(sensor.keys, f_cnt) == payload,
        )
    )

    # 3. The concentrator reports it over serial.
    rx = concentrator.RxFrame(
        frequency_hz=rng.choice(EU868_CHANNELS_HZ),
        sf=rng.randrange(7, 13),
        bandwidth_hz=125_000,
        coding_rate=concentrator.CodingRate.CR_4_5,
        rssi_dbm=rng.randrange(-125, -60),
        snr_db=rng.randrange(-80, 40) / 4,
        timestamp_us=rng.randrange(2**32),
        crc_status=concentrator.CrcStatus.OK,
        payload=phy,
    )
    message = concentrator.encode_message(rx)
    show.hops.append(
        Hop(
            "RX_FRAME message (CBOR)",
            "inside the serial frame",
            message,
            f"{rx.frequency_hz / 1e6:.1f} MHz SF{rx.sf} BW125, RSSI {rx.rssi_dbm} dBm, "
            f"SNR {rx.snr_db} dB, tmst {rx.timestamp_us}",
            concentrator.decode_message(message) == rx,
        )
    )
    wire = concentrator.to_frame(rx)

    # 4. The gateway reads the serial line: line noise first, then the frame in small chunks.
    decoder = framing.FrameDecoder()
    noise = bytes(rng.randrange(1, 256) for _ in range(rng.randrange(3, 12)))
    stream = noise + wire
    received: list[bytes] = []
    at = 0
    while at < len(stream):
        step = rng.randrange(1, 9)
        received.extend(decoder.feed(stream[at : at + step]))
        at += step
    got_rx = concentrator.decode_message(received[0]) if len(received) == 1 else None
    show.hops.append(
        Hop(
            "serial frame (COBS, CRC-16/CCITT-FALSE)",
            "serial line, after noise",
            wire,
            f"{len(received)} frame(s) out of {len(stream)} bytes; "
            f"{decoder.bytes_discarded} noise byte(s) dropped",
            got_rx == rx,
        )
    )

    uplink = lorawan.decode_uplink(phy, sensor.keys, last_f_cnt)
    gateway_values = decode_uplink(PROFILE, uplink.f_port or 0, uplink.payload)
    show.hops.append(
        Hop(
            "gateway: MIC checked, FCnt widened, payload decrypted and decoded",
            "in the edge agent",
            uplink.payload,
            _short(f"FCnt {uplink.f_cnt} ({uplink.verdict.value}): {gateway_values!r}"),
            uplink.verdict is lorawan.FCntVerdict.NEW and gateway_values == sensor.values,
        )
    )

    # 5. Telemetry: the reading in a batch, then the batch signed with the gateway's key.
    reading = Reading(
        sensor.dev_eui,
        now,
        gateway_values,
        rssi_dbm=rx.rssi_dbm,
        snr_db=rx.snr_db,
        fcnt=uplink.f_cnt,
    )
    seq = rng.randrange(1, 100_000)
    batch = Batch(gateway_id, seq=seq, base_time=now, readings=[reading])
    data = encode_batch(batch)
    show.hops.append(
        Hop(
            "telemetry batch (compact CBOR)",
            "edge outbox",
            data,
            f"gateway {gateway_id.hex()}, seq {seq}, 1 reading",
            decode_batch(data) == batch,
        )
    )
    cose = signed.sign(data, gateway_key)
    verified = signed.verify(cose, gateway_key.public_key())
    show.hops.append(
        Hop(
            "signed batch (COSE_Sign1, Ed25519)",
            "MQTT .../telemetry",
            cose,
            f"kid {verified.kid.hex() if verified.kid else None}, alg {verified.alg}, "
            "signature verified",
            verified.payload == data and decode_batch(verified.payload) == batch,
        )
    )

    show.faults.extend(_faults(rng, sensor, phy, wire, f_cnt, cose, gateway_key))
    show.sizes.extend(_sizes(rng, readings, gateway_id, now, reading, payload))
    return show


def _faults(
    rng: random.Random,
    sensor: _Sensor,
    phy: bytes,
    wire: bytes,
    f_cnt: int,
    cose: bytes,
    gateway_key: Ed25519PrivateKey,
) -> list[Fault]:
    faults = []

    # A byte of a serial frame hit by noise: counted as a CRC error, the next frame survives.
    decoder = framing.FrameDecoder()
    damaged = bytearray(wire)
    spot = rng.randrange(2, len(damaged) - 2)
    damaged[spot] = damaged[spot] ^ (1 << rng.randrange(8)) or 0x55
    frames = decoder.feed(bytes(damaged) + wire)
    faults.append(
        Fault(
            f"serial frame with byte {spot} corrupted, then a good frame",
            f"{decoder.crc_errors} CRC error(s), {decoder.frame_errors} framing error(s) "
            f"counted; {len(frames)} good frame(s) delivered",
            decoder.crc_errors + decoder.frame_errors == 1
            and frames == [framing.decode_frame(wire)],
        )
    )

    # A bit flipped on air: the MIC no longer verifies.
    tampered = bytearray(phy)
    tampered[9] ^= 0x01
    refusal = _refused(
        lambda: lorawan.decode_uplink(bytes(tampered), sensor.keys, f_cnt - 1), MicError
    )
    faults.append(
        Fault(
            "LoRaWAN uplink with one payload bit flipped",
            _short(refusal or "accepted"),
            bool(refusal),
        )
    )

    # A recorded older uplink played back after this one was accepted.
    old = _uplink(sensor, f_cnt - 3)
    verdict = lorawan.decode_uplink(old, sensor.keys, f_cnt).verdict
    faults.append(
        Fault(
            f"uplink with FCnt {f_cnt - 3} replayed after FCnt {f_cnt}",
            f"MIC verifies, verdict: {verdict.value}",
            verdict is lorawan.FCntVerdict.REPLAY,
        )
    )

    # The signed batch altered in transit, and a batch signed by another gateway's key.
    # The last payload byte: the signature (64 bytes) and its head (2 bytes) follow it.
    altered = bytearray(cose)
    altered[-67] ^= 0x04
    public = gateway_key.public_key()
    refusal = _refused(lambda: signed.verify(bytes(altered), public), OwlgateError)
    faults.append(
        Fault(
            "signed batch with its last payload byte altered",
            _short(refusal or "accepted"),
            bool(refusal),
        )
    )
    other = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
    forged = signed.sign(signed.verify(cose, public).payload, other)
    refusal = _refused(lambda: signed.verify(forged, public), OwlgateError)
    faults.append(
        Fault("batch signed by another gateway's key", _short(refusal or "accepted"), bool(refusal))
    )
    return faults


def _sizes(
    rng: random.Random,
    count: int,
    gateway_id: bytes,
    now: int,
    reading: Reading,
    payload: bytes,
) -> list[Size]:
    rows = [reading]
    time_s = now
    for index in range(1, count):
        other = _sensor(rng, index)
        time_s += rng.randrange(0, 8)
        rows.append(
            Reading(
                other.dev_eui,
                time_s,
                other.values,
                rssi_dbm=rng.randrange(-125, -60),
                snr_db=rng.randrange(-80, 40) / 4,
            )
        )
    plain = Reading(reading.dev_eui, now, reading.values, reading.rssi_dbm, reading.snr_db)
    single = Batch(gateway_id, seq=1, base_time=now, readings=[plain])
    many = Batch(gateway_id, seq=1, base_time=now, readings=rows)

    def chirpstack(row: Reading) -> int:
        _, data = encode_uplink(PROFILE, row.values)
        return len(chirpstack_uplink_json(row, gateway_id=gateway_id, payload=data))

    return [
        Size("owlgate compact CBOR", len(encode_batch(single)), len(encode_batch(many)) / count),
        Size(
            "SenML-CBOR (RFC 8428)",
            len(senml.senml_cbor(single)),
            len(senml.senml_cbor(many)) / count,
        ),
        Size(
            "SenML-JSON (RFC 8428)",
            len(senml.senml_json(single)),
            len(senml.senml_json(many)) / count,
        ),
        Size(
            "ChirpStack-style JSON uplink event",
            chirpstack(plain),
            sum(chirpstack(row) for row in rows) / count,
        ),
    ]
