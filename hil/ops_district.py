"""An emulated district as the fleet sees it over MQTT: one client per gateway of a seeded
fleet, behaving on the wire like the edge agent, with no radio, concentrator or agent behind
it. For the dashboard's browser tests and for demos that need a live fleet quickly.

Each gateway of the ``owlgate fleet seed`` emulator secrets file (its ``gateways[].id`` and
``keys_dir``; ``devices`` are dealt to the gateways in turn):

- connects as the agent's uplink does (:mod:`owlgate.edge.uplink`): client id
  ``owlgate-gw-<id>``, user name the gateway id, the broker password when one is given, a
  Will ``offline`` (retained, QoS 1) on its state topic, then ``online`` (retained, QoS 1);
- publishes a health message signed with its identity key every ``health_interval_s``
  (short, so the fleet's offline rule of two missed heartbeats fires quickly), and a signed
  telemetry batch of its devices' readings every ``telemetry_interval_s``;
- answers configuration documents like a gateway, through
  :class:`~owlgate.hil.config_gateways.EmulatedConfigGateway` (``received``, then
  ``applied`` or ``rejected``), except the gateways named in ``unanswered``, which take their
  documents and never answer (a rollout then waits on them).

:meth:`OpsDistrict.power_cut` shuts a gateway's socket down without an MQTT DISCONNECT, so
the broker publishes its Will, as when a gateway loses power.

The district runs its own asyncio loop in a thread: callers (pytest tests driving a
browser through Playwright's sync API, a demo script) use plain blocking methods.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Coroutine, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final, Self, TypeVar

import aiomqtt

from owlgate.codecs.errors import OwlgateError
from owlgate.codecs.health import Health, RadioCounters, encode_health
from owlgate.codecs.node.telemetry import Batch, Reading, encode_batch
from owlgate.codecs.signed import sign
from owlgate.edge.agent import HEALTH_TOPIC
from owlgate.edge.batcher import TELEMETRY_TOPIC
from owlgate.edge.uplink import OFFLINE, ONLINE, STATE_SUFFIX, TOPIC_PREFIX

from .config_gateways import QOS, EmulatedConfigGateway, gateways_from_manifest

log = logging.getLogger(__name__)

DEFAULT_HEALTH_INTERVAL_S: Final = 2
DEFAULT_TELEMETRY_INTERVAL_S: Final = 5.0
DEFAULT_KEEPALIVE_S: Final = 30
CONNECT_TIMEOUT_S: Final = 10.0
AGENT_VERSION: Final = "ops-district"
#: What a gateway reports as its configuration before any document was applied.
_NO_CONFIG_HASH: Final = hashlib.sha256(b"owlgate ops district: built-in configuration").digest()

_T = TypeVar("_T")


class OpsDistrictError(OwlgateError):
    """The district cannot start (a bad manifest, a broker that does not answer)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(slots=True)
class DistrictDevice:
    """One sensor behind a gateway: what it reports, and its frame counter."""

    dev_eui: str
    profile_id: str
    fcnt: int = 0

    def reading(self, now: int, rng: random.Random) -> Reading:
        self.fcnt += 1
        values: dict[str, object]
        if self.profile_id.startswith("parking"):
            values = {"occupied": rng.random() < 0.5, "battery_mv": 3550 + rng.randrange(50)}
        elif self.profile_id.startswith("waste-bin"):
            values = {"fill_pct": min(100, self.fcnt * 7 % 101), "battery_mv": 3500}
        else:
            values = {
                "temperature_c": round(12.0 + rng.random() * 8, 1),
                "humidity_pct": round(50.0 + rng.random() * 20, 1),
                "battery_mv": 3400,
            }
        return Reading(
            bytes.fromhex(self.dev_eui),
            now,
            values,
            rssi_dbm=-100 + rng.randrange(15),
            snr_db=round(2.0 + rng.random() * 6, 1),
            fcnt=self.fcnt,
        )


@dataclass(slots=True)
class DistrictGateway:
    """One emulated gateway: its configuration side, its devices and its counters."""

    config: EmulatedConfigGateway
    devices: list[DistrictDevice]
    password: str | None = None
    answers_config: bool = True
    health_seq: int = 0
    batch_seq: int = 0
    frames: int = 0
    started_s: float = field(default_factory=time.monotonic)
    client: aiomqtt.Client | None = field(default=None, repr=False)
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    #: Set once its ``online`` is out and its config subscription is up.
    connected: bool = False

    @property
    def gateway_id(self) -> str:
        return self.config.gateway_id

    def topic(self, suffix: str) -> str:
        return f"{TOPIC_PREFIX}{self.gateway_id}/{suffix}"

    def health(self, interval_s: int, rng: random.Random) -> bytes:
        up = int(time.monotonic() - self.started_s)
        message = Health(
            gateway_id=bytes.fromhex(self.gateway_id),
            seq=self.health_seq,
            time_s=int(time.time()),
            uptime_s=3600 + up,
            agent_uptime_s=up,
            agent_version=AGENT_VERSION,
            config_hash=self.config.running_hash or _NO_CONFIG_HASH,
            config_seq=self.config.last_seq or None,
            interval_s=interval_s,
            cpu_temp_c=round(46.0 + rng.random() * 4, 1),
            radio=RadioCounters(
                received=self.frames,
                crc_ok=self.frames,
                crc_bad=0,
                forwarded=self.frames,
                transmitted=0,
            ),
            backhaul_rtt_ms=20 + rng.randrange(30),
        )
        self.health_seq += 1
        return sign(encode_health(message), self.config.identity)

    def batch(self, rng: random.Random) -> bytes:
        now = int(time.time())
        readings = [device.reading(now, rng) for device in self.devices]
        self.frames += len(readings)
        self.batch_seq += 1
        batch = Batch(bytes.fromhex(self.gateway_id), self.batch_seq, now, readings)
        return sign(encode_batch(batch), self.config.identity)


class OpsDistrict:
    """The gateways of a seeded fleet on ``host:port``, started by :meth:`start` (or on entering
    the ``with`` block) and stopped by :meth:`stop`. ``passwords``: broker passwords by
    gateway id, for a broker that enforces the credentials the fleet issued."""

    def __init__(
        self,
        manifest: Path,
        host: str,
        port: int,
        *,
        health_interval_s: int = DEFAULT_HEALTH_INTERVAL_S,
        telemetry_interval_s: float = DEFAULT_TELEMETRY_INTERVAL_S,
        passwords: Mapping[str, str] | None = None,
        unanswered: Iterable[str] = (),
        seed: int = 1,
    ) -> None:
        if health_interval_s < 1 or telemetry_interval_s <= 0:
            raise OpsDistrictError("health_interval_s must be >= 1 and telemetry_interval_s > 0")
        self.host = host
        self.port = port
        self.health_interval_s = health_interval_s
        self.telemetry_interval_s = telemetry_interval_s
        self.gateways = _from_manifest(manifest, passwords or {}, set(unanswered))
        self.errors: list[str] = []
        self._rng = random.Random(seed)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="ops-district", daemon=True
        )

    @property
    def gateway_ids(self) -> list[str]:
        return list(self.gateways)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Connect every gateway; return once each has announced itself ``online``."""
        self._thread.start()
        try:
            self._call(self._connect_all())
        except BaseException:
            self.stop()
            raise

    def power_cut(self, gateway_id: str) -> None:
        """Cut ``gateway_id`` off as a power cut does: no DISCONNECT, so its Will goes out."""
        self._call(self._cut(self._gateway(gateway_id)))

    def reconnect(self, gateway_id: str) -> None:
        """Bring a gateway that was cut back, as after the power returns."""
        self._call(self._connect(self._gateway(gateway_id)))

    def stop(self) -> None:
        """Disconnect every gateway (cleanly) and end the loop's thread."""
        if not self._thread.is_alive():
            return
        self._call(self._stop_all())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CONNECT_TIMEOUT_S)
        self._loop.close()

    def _gateway(self, gateway_id: str) -> DistrictGateway:
        try:
            return self.gateways[gateway_id]
        except KeyError:
            raise OpsDistrictError(f"no gateway {gateway_id} in this district") from None

    def _call(self, coroutine: Coroutine[object, object, _T]) -> _T:
        done: Future[_T] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return done.result(timeout=CONNECT_TIMEOUT_S * 3)

    # --- on the district's loop ---------------------------------------------------------------

    async def _connect_all(self) -> None:
        await asyncio.gather(*(self._connect(gateway) for gateway in self.gateways.values()))

    async def _connect(self, gateway: DistrictGateway) -> None:
        if gateway.task is not None and not gateway.task.done():
            return
        ready = asyncio.Event()
        gateway.task = asyncio.create_task(
            self._run(gateway, ready), name=f"district-{gateway.gateway_id}"
        )
        waiter = asyncio.create_task(ready.wait())
        done, _ = await asyncio.wait(
            {waiter, gateway.task}, timeout=CONNECT_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
        if waiter not in done:
            waiter.cancel()
            raise OpsDistrictError(
                f"gateway {gateway.gateway_id} did not come online on {self.host}:{self.port}"
                f" within {CONNECT_TIMEOUT_S:.0f} s: {'; '.join(self.errors) or 'no answer'}"
            )

    async def _run(self, gateway: DistrictGateway, ready: asyncio.Event) -> None:
        state_topic = gateway.topic(STATE_SUFFIX)
        client = aiomqtt.Client(
            self.host,
            self.port,
            identifier=f"owlgate-gw-{gateway.gateway_id}",
            username=gateway.gateway_id,
            password=gateway.password,
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=True,
            will=aiomqtt.Will(state_topic, OFFLINE, qos=1, retain=True),
            keepalive=DEFAULT_KEEPALIVE_S,
            timeout=CONNECT_TIMEOUT_S,
        )
        try:
            async with client:
                gateway.client = client
                await client.subscribe(gateway.config.config_topic, qos=QOS)
                await client.publish(state_topic, ONLINE, qos=1, retain=True)
                gateway.connected = True
                ready.set()
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._heartbeats(gateway, client))
                    group.create_task(self._telemetry(gateway, client))
                    group.create_task(self._configs(gateway, client))
        except* aiomqtt.MqttError as group:
            # The emulated gateway stays down, as a real one would stay down until its
            # supervisor reconnects it: a test that wants it back calls reconnect().
            what = "connection lost" if gateway.connected else "could not connect"
            for err in group.exceptions:
                self.errors.append(f"{gateway.gateway_id}: {what} ({err})")
                log.warning("district gateway %s: %s (%s)", gateway.gateway_id, what, err)
        finally:
            gateway.connected = False
            gateway.client = None
            # After a power cut paho reports the lost connection on aiomqtt's private
            # future, which nobody awaits once the tasks are cancelled: read it here, or
            # asyncio logs "Future exception was never retrieved".
            ended = client._disconnected
            if ended.done() and not ended.cancelled():
                ended.exception()

    async def _heartbeats(self, gateway: DistrictGateway, client: aiomqtt.Client) -> None:
        while True:
            payload = gateway.health(self.health_interval_s, self._rng)
            await client.publish(gateway.topic(HEALTH_TOPIC), payload, qos=1)
            await asyncio.sleep(self.health_interval_s)

    async def _telemetry(self, gateway: DistrictGateway, client: aiomqtt.Client) -> None:
        if not gateway.devices:
            return
        while True:
            await client.publish(gateway.topic(TELEMETRY_TOPIC), gateway.batch(self._rng), qos=1)
            await asyncio.sleep(self.telemetry_interval_s)

    async def _configs(self, gateway: DistrictGateway, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            if str(message.topic) != gateway.config.config_topic:
                # amqtt 0.12 may hand a new session retained messages of other topics.
                continue
            payload: object = message.payload
            if not isinstance(payload, bytes | bytearray):
                self.errors.append(f"{gateway.gateway_id}: a config payload that is not bytes")
                continue
            if not gateway.answers_config:
                log.info("district gateway %s: keeps a document unanswered", gateway.gateway_id)
                continue
            for report in gateway.config.handle(bytes(payload)):
                await client.publish(gateway.config.status_topic, report, qos=QOS)

    async def _cut(self, gateway: DistrictGateway) -> None:
        client, task = gateway.client, gateway.task
        if client is None or task is None:
            raise OpsDistrictError(f"gateway {gateway.gateway_id} is not connected")
        raw = client._client.socket()  # the paho client's socket: there is no public handle
        if isinstance(raw, socket.socket):
            # Both directions shut: the broker reads EOF with no DISCONNECT before it, and
            # nothing this client tries afterwards (its DISCONNECT on exit) reaches it.
            with contextlib.suppress(OSError):
                raw.shutdown(socket.SHUT_RDWR)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        gateway.task = None

    async def _stop_all(self) -> None:
        tasks = [g.task for g in self.gateways.values() if g.task is not None]
        for gateway in self.gateways.values():
            client = gateway.client
            if client is not None and gateway.connected:
                # A gateway that stops cleanly says so before its DISCONNECT discards the Will.
                with contextlib.suppress(aiomqtt.MqttError):
                    await client.publish(gateway.topic(STATE_SUFFIX), OFFLINE, qos=1, retain=True)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _from_manifest(
    manifest: Path, passwords: Mapping[str, str], unanswered: set[str]
) -> dict[str, DistrictGateway]:
    configs = gateways_from_manifest(manifest)
    try:
        devices = json.loads(manifest.read_text(encoding="utf-8"))["devices"]
        pairs = [(str(entry["dev_eui"]), str(entry["profile_id"])) for entry in devices]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise OpsDistrictError(f"{manifest}: not an emulator secrets file ({err})") from err
    unknown = unanswered - {config.gateway_id for config in configs}
    if unknown:
        raise OpsDistrictError(f"unanswered names gateways not in {manifest}: {sorted(unknown)}")
    out: dict[str, DistrictGateway] = {}
    for index, config in enumerate(configs):
        mine = pairs[index :: len(configs)]
        out[config.gateway_id] = DistrictGateway(
            config=config,
            devices=[DistrictDevice(eui, profile) for eui, profile in mine],
            password=passwords.get(config.gateway_id),
            answers_config=config.gateway_id not in unanswered,
        )
    return out
