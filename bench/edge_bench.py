"""The edge figure: the cost of one uplink on the gateway's hot path, from the serial bytes of
the concentrator's RX_FRAME to a signed batch in the durable outbox.

Every input is built from a fixed seed before timing starts, so two runs measure the same work.
"""

from __future__ import annotations

import gc
import statistics
import tempfile
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from owlgate.codecs import concentrator
from owlgate.codecs.node.framing import FrameDecoder
from owlgate.codecs.node.telemetry import Reading
from owlgate.edge.batcher import Batcher
from owlgate.edge.lorawan_proc import LorawanProcessor
from owlgate.edge.state import StateDb
from owlgate.hil.devices import EmulatedDevice

from . import outbox_bench
from .codec_bench import BASE_TIME, GATEWAY, SEED
from .figures import Figure

DEVICES = 50
BATCH = 100


def _devices(processor: LorawanProcessor) -> list[EmulatedDevice]:
    devices = []
    for index in range(DEVICES):
        dev_eui = bytes.fromhex("70b3d57ed0") + (0x2000 + index).to_bytes(3, "big")
        dev_addr = 0x26010000 + index
        nwk_s_key = bytes([index + 1]) * 16
        app_s_key = bytes([index + 101]) * 16
        device = EmulatedDevice.abp(
            "parking-v1",
            dev_eui,
            dev_addr=dev_addr,
            nwk_s_key=nwk_s_key,
            app_s_key=app_s_key,
            seed=SEED + index,
        )
        processor.add_session(
            dev_eui=dev_eui,
            dev_addr=dev_addr,
            profile_id="parking-v1",
            nwk_s_key=nwk_s_key,
            app_s_key=app_s_key,
        )
        devices.append(device)
    return devices


def _serial_bytes(devices: list[EmulatedDevice], count: int) -> list[bytes]:
    """``count`` RX_FRAME serial frames, the devices taking turns, each counter fresh."""
    frames = []
    for index in range(count):
        device = devices[index % DEVICES]
        now = BASE_TIME + index
        phy, _ = device.uplink(now)
        rx = device.rx_frame(phy, timestamp_us=index * 10_000)
        frames.append(concentrator.to_frame(rx))
    return frames


def pipeline_us_per_uplink(quick: bool) -> tuple[float, float]:
    """(best, median) microseconds per uplink over rounds of fresh uplinks: frame decoding,
    message decoding, LoRaWAN checks and payload decoding, batching, signing, outbox write."""
    per_round = 1000 if quick else 5000
    repeat = 3 if quick else 7
    with tempfile.TemporaryDirectory(prefix="owlgate-bench-") as tmp:
        state = StateDb.in_dir(tmp)
        try:
            processor = LorawanProcessor(state)
            devices = _devices(processor)
            # One extra round warms caches and the database before timing.
            frames = _serial_bytes(devices, per_round * (repeat + 1))
            batcher = Batcher(state, Ed25519PrivateKey.generate(), GATEWAY, max_readings=BATCH)
            decoder = FrameDecoder()
            accepted = 0

            def run(chunk: list[bytes]) -> None:
                nonlocal accepted
                now = float(BASE_TIME)
                for data in chunk:
                    for payload in decoder.feed(data):
                        rx = concentrator.decode_message(payload)
                        assert isinstance(rx, concentrator.RxFrame)
                        result = processor.process(rx, now)
                        if isinstance(result, Reading):
                            accepted += 1
                            batcher.add(result, now)

            rounds = []
            was_enabled = gc.isenabled()
            gc.disable()
            try:
                for start in range(0, len(frames), per_round):
                    began = time.perf_counter()
                    run(frames[start : start + per_round])
                    rounds.append((time.perf_counter() - began) / per_round * 1e6)
            finally:
                if was_enabled:
                    gc.enable()
            if accepted != len(frames):
                raise RuntimeError(f"only {accepted} of {len(frames)} uplinks were accepted")
        finally:
            state.close()
    timed = rounds[1:]
    return min(timed), statistics.median(timed)


def run(*, quick: bool = False) -> list[Figure]:
    """The edge suite's figures."""
    best, median = pipeline_us_per_uplink(quick)
    pipeline = [
        Figure(
            "edge.pipeline_us_per_uplink",
            best,
            "µs",
            f"serial RX_FRAME bytes of {DEVICES} ABP parking devices -> FrameDecoder -> "
            f"decode_message -> LorawanProcessor.process -> Batcher.add (signed batches of "
            f"{BATCH} into the StateDb outbox), in process, best round per uplink",
            goal_max=50,
            median=median,
        )
    ]
    return pipeline + outbox_bench.run(quick=quick)
