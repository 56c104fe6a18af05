"""The emulated gateway (``owlgate hil gateway``): its bad input is refused for the reason it
claims, neighbours hear shared devices over the air port, and the devices wait for ``start``.

The host side is the edge's own serial backend and LoRaWAN processor, so "refused" means
refused by the code a gateway runs."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from owlgate.codecs.concentrator import RxFrame
from owlgate.codecs.node.telemetry import Reading
from owlgate.edge.config import RadioSettings
from owlgate.edge.lorawan_proc import LorawanProcessor, RejectReason
from owlgate.edge.serial_backend import SerialConcentrator
from owlgate.edge.state import StateDb
from owlgate.hil.concentrator import EmulatedConcentrator
from owlgate.hil.devices import EmulatedDevice
from owlgate.hil.gateway_emulator import (
    AIR_HOST,
    HOSTILE_KINDS,
    NEIGHBOUR_LOSS_DB,
    START_WORD,
    Air,
    GatewayRun,
    Hostile,
    neighbour_frame,
)

WAIT_S = 10.0
GATEWAY = "0016c001ff10a0e1"


def _device(index: int) -> EmulatedDevice:
    return EmulatedDevice.abp(
        "parking-v1",
        bytes.fromhex(f"70b3d57ed00002{index:02x}"),
        dev_addr=0x26030000 + index,
        nwk_s_key=bytes([index + 1]) * 16,
        app_s_key=bytes([index + 0x41]) * 16,
        seed=index,
    )


def _manifest(devices: list[EmulatedDevice]) -> dict[str, Any]:
    entries = []
    for device in devices:
        assert device.keys is not None
        assert device.keys.nwk_s_key is not None
        assert device.keys.app_s_key is not None
        assert device.dev_addr is not None
        entries.append(
            {
                "dev_eui": device.dev_eui.hex(),
                "profile_id": device.profile_id,
                "activation": "abp",
                "dev_addr": f"{device.dev_addr:08x}",
                "nwk_s_key": device.keys.nwk_s_key.hex(),
                "app_s_key": device.keys.app_s_key.hex(),
            }
        )
    return {"devices": entries}


@asynccontextmanager
async def _host(path: str) -> AsyncIterator[tuple[SerialConcentrator, asyncio.Queue[RxFrame]]]:
    """The edge's serial backend on the emulator's pty, its frames in a queue."""
    radio = SerialConcentrator(
        port=path,
        radio_config=RadioSettings("serial", path, 115_200).radio_config(),
        reconnect_initial_s=0.05,
        reconnect_max_s=0.2,
        rng=random.Random(1),
    )
    frames: asyncio.Queue[RxFrame] = asyncio.Queue()

    async def pump() -> None:
        async for frame in radio.frames():
            frames.put_nowait(frame)

    async with radio:
        task = asyncio.create_task(pump())
        try:
            yield radio, frames
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def _next(frames: asyncio.Queue[RxFrame]) -> RxFrame:
    async with asyncio.timeout(WAIT_S):
        return await frames.get()


def test_every_kind_of_bad_input_is_refused_for_its_reason(tmp_path: Path) -> None:
    async def scenario() -> None:
        device = _device(1)
        with StateDb.in_dir(tmp_path) as state:
            processor = LorawanProcessor(state)
            assert device.keys is not None
            assert device.dev_addr is not None
            assert device.keys.nwk_s_key is not None
            assert device.keys.app_s_key is not None
            processor.add_session(
                dev_eui=device.dev_eui,
                dev_addr=device.dev_addr,
                profile_id=device.profile_id,
                nwk_s_key=device.keys.nwk_s_key,
                app_s_key=device.keys.app_s_key,
            )
            async with EmulatedConcentrator(tmp_path / "dev", seed=2) as concentrator:
                run = GatewayRun(GATEWAY)
                hostile = Hostile(concentrator, run)
                async with _host(str(concentrator.path)) as (radio, frames):
                    async with asyncio.timeout(WAIT_S):
                        while not radio.status.connected:  # noqa: ASYNC110
                            await asyncio.sleep(0.01)
                    # Before any device sent twice, only line noise is possible.
                    hostile.inject()
                    for _ in range(2):
                        phy, _ = device.uplink(0.0)
                        hostile.sent(device, phy)
                        concentrator.inject(phy)
                        result = processor.process(await _next(frames), 0.0)
                        assert isinstance(result, Reading)
                    for _ in range(len(HOSTILE_KINDS)):
                        hostile.inject()
                    # The CRC-bad frame and the noise never reach the processor; the replay
                    # and the altered MIC do, and are refused.
                    for _ in range(2):
                        assert not isinstance(processor.process(await _next(frames), 0.0), Reading)
                    await asyncio.sleep(0.2)
                    assert frames.empty()
                    counters = radio.counters
            assert run.hostile == {"replay": 1, "bad_mic": 1, "crc_bad": 1, "line_noise": 2}
            assert processor.counters.rejected[RejectReason.REPLAY] == 1
            assert processor.counters.rejected[RejectReason.MIC_FAILED] == 1
            assert processor.counters.accepted == 2
            assert counters.rx_crc_bad == 1
            link = counters.link_crc_errors + counters.link_frame_errors + counters.link_invalid
            assert link == 2

    asyncio.run(scenario())


def test_a_neighbour_hears_a_shared_frame_weaker_and_refuses_junk(tmp_path: Path) -> None:
    async def scenario() -> None:
        device = _device(2)
        phy, _ = device.uplink(0.0)
        loop = asyncio.get_running_loop()
        async with EmulatedConcentrator(tmp_path / "dev", seed=3) as concentrator:
            run = GatewayRun(GATEWAY)
            transport, _ = await loop.create_datagram_endpoint(
                lambda: Air(concentrator, run), local_addr=(AIR_HOST, 0)
            )
            port = transport.get_extra_info("sockname")[1]
            try:
                async with _host(str(concentrator.path)) as (radio, frames):
                    async with asyncio.timeout(WAIT_S):
                        while not radio.status.connected:  # noqa: ASYNC110
                            await asyncio.sleep(0.01)
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
                        sender.sendto(b"not json", (AIR_HOST, port))
                        sender.sendto(b'{"phy": "zz"}', (AIR_HOST, port))
                        sender.sendto(
                            neighbour_frame(phy, -80, 6.0, 868_300_000, 9), (AIR_HOST, port)
                        )
                    frame = await _next(frames)
            finally:
                transport.close()
        assert frame.payload == phy
        assert frame.rssi_dbm == -80 - NEIGHBOUR_LOSS_DB
        assert frame.snr_db == 1.0
        assert (frame.frequency_hz, frame.sf) == (868_300_000, 9)
        assert (run.heard, run.air_rejected) == (1, 2)

    asyncio.run(scenario())


def test_devices_wait_for_start_on_stdin(tmp_path: Path) -> None:
    # Through the command line, as the demo runs it: LINK, READY_FOR_START, then nothing on
    # the radio until "start" arrives, however long the radio has been configured.
    devices = [_device(3), _device(4)]
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(_manifest(devices)))
    report = tmp_path / "report.json"

    async def scenario() -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "owlgate.codecs.cli", "hil", "gateway",
            "--link-dir", str(tmp_path / "dev"), "--manifest", str(manifest),
            "--gateway", GATEWAY, "--interval-s", "0.3", "--duration", "20",
            "--report", str(report), "--wait-for-start",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        assert process.stdin is not None
        assert process.stdout is not None
        try:
            async with asyncio.timeout(WAIT_S):
                link = (await process.stdout.readline()).decode().split()
                assert link[0] == "LINK"
                assert (await process.stdout.readline()).strip() == b"READY_FOR_START"
            async with _host(link[1]) as (radio, frames):
                async with asyncio.timeout(WAIT_S):
                    while not radio.status.connected:  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
                await asyncio.sleep(1.5)
                assert frames.empty()
                process.stdin.write(START_WORD.encode() + b"\n")
                await process.stdin.drain()
                heard = {(await _next(frames)).payload[1:5] for _ in range(4)}
            assert len(heard) == 2  # both devices' DevAddrs
            process.terminate()
            async with asyncio.timeout(WAIT_S):
                assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        generated = json.loads(report.read_text())
        assert len(generated["readings"]) >= 4
        assert generated["hostile"] == dict.fromkeys(HOSTILE_KINDS, 0)

    asyncio.run(scenario())


@pytest.mark.parametrize("shared", [["70b3d57ed00002ff"]])
def test_shared_devices_must_be_its_own(tmp_path: Path, shared: list[str]) -> None:
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(_manifest([_device(5)])))
    result = subprocess.run(
        [sys.executable, "-m", "owlgate.codecs.cli", "hil", "gateway",
         "--link-dir", str(tmp_path / "dev"), "--manifest", str(manifest),
         "--gateway", GATEWAY, "--duration", "1", "--neighbour-port", "9",
         "--shared-devices", ",".join(shared)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--shared-devices names a device this gateway does not emulate" in result.stderr
