"""Emulated gateways for configuration rollouts: many in one asyncio process, each with its
own MQTT connection and identity key, each doing with configuration documents what the edge
agent does, without a radio or an agent behind it.

Each gateway subscribes to its retained ``owlgate/v1/gw/{id}/config`` topic (QoS 1) and, for
every document, verifies it as the edge does (:func:`owlgate.codecs.configdoc.verify_config`:
the trusted config keys, its own id and groups, anti-rollback against the last applied seq),
then answers on ``owlgate/v1/gw/{id}/config/status`` with a
:class:`~owlgate.codecs.control.ConfigStatus` signed by its identity key: ``rejected`` with
the reason, or ``received`` then ``applied``, or ``rolled_back`` with reason ``radio`` when
the configuration asks for more channels than the emulated concentrator has
(:data:`MAX_CHANNELS`, as :mod:`owlgate.hil.concentrator` refuses them), or when the test
says to refuse it (:attr:`EmulatedConfigGateway.refuse`). After applying, the trusted keys
follow the rotation rule (:func:`owlgate.codecs.configdoc.next_trusted`).

A document redelivered with the seq it just handled (a retained message after a reconnect)
is ignored, as the agent does: it is already answered.

Gateways come from a seeded fleet (:func:`gateways_from_manifest`: the emulator secrets file
``owlgate fleet seed`` writes, and the keys beside it) or are given directly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final, Self

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

from owlgate.codecs.configdoc import (
    ConfigDocument,
    ConfigRejected,
    next_trusted,
    trusted_keys,
    verify_config,
)
from owlgate.codecs.control import ConfigStatus, encode_config_status, short_detail
from owlgate.codecs.errors import OwlgateError
from owlgate.codecs.signed import decode_document, sign, unwrap

log = logging.getLogger(__name__)

TOPIC_PREFIX: Final = "owlgate/v1/gw/"
#: The emulated concentrator's channels (``hil.concentrator`` default capabilities).
MAX_CHANNELS: Final = 9
QOS: Final = 1
#: Files of a seeded gateway's keys under ``KEYS_DIR/<gateway id>/`` (``owlgate fleet
#: seed``; hil does not import the fleet, so the names are repeated here).
IDENTITY_KEY_FILE: Final = "identity-ed25519.pem"
FLEET_PUBLIC_KEY_FILE: Final = "fleet-ed25519.pub.pem"
CONNECT_TIMEOUT_S: Final = 10.0
#: A gateway task is cancelled again this often after this long while it has not ended: a
#: cancellation that lands while aiomqtt is leaving its client context can be used up there
#: (waiting for the broker to see the DISCONNECT), and the task then waits for good.
CANCEL_ROUNDS: Final = 10
CANCEL_WAIT_S: Final = 2.0


class ConfigGatewayError(OwlgateError):
    """An emulated gateway that cannot be set up (keys missing, broker unreachable)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(slots=True)
class EmulatedConfigGateway:
    """One emulated gateway: its id (16 hex digits), identity key and trusted config keys.

    ``refuse``: a check of the configuration after "applying" it; a reason it returns makes
    the gateway roll back (``rolled_back`` with that reason). ``reports`` are what it sent,
    ``applied`` the documents it runs, in order."""

    gateway_id: str
    identity: Ed25519PrivateKey = field(repr=False)
    trusted: dict[bytes, Ed25519PublicKey] = field(repr=False)
    groups: tuple[str, ...] = ()
    refuse: Callable[[ConfigDocument], str | None] | None = field(default=None, repr=False)
    last_seq: int = 0
    running_hash: bytes | None = None
    reports: list[ConfigStatus] = field(default_factory=list)
    applied: list[ConfigDocument] = field(default_factory=list)
    _last_handled: int = 0

    @property
    def config_topic(self) -> str:
        return f"{TOPIC_PREFIX}{self.gateway_id}/config"

    @property
    def status_topic(self) -> str:
        return f"{TOPIC_PREFIX}{self.gateway_id}/config/status"

    def _check(self, doc: ConfigDocument) -> str | None:
        if len(doc.config.channels) > MAX_CHANNELS:
            return "radio"
        return None if self.refuse is None else self.refuse(doc)

    def _status(self, state: str, seq: int, doc: ConfigDocument | None, **extra: str) -> bytes:
        status = ConfigStatus(
            state=state,
            seq=seq,
            at=int(time.time()),
            content_hash=None if doc is None else doc.content_hash,
            running_hash=self.running_hash,
            **extra,
        )
        self.reports.append(status)
        return sign(encode_config_status(status), self.identity)

    def handle(self, payload: bytes) -> list[bytes]:
        """The signed reports answering one document, in the order to publish them."""
        gateway = bytes.fromhex(self.gateway_id)
        try:
            doc = verify_config(
                payload,
                self.trusted,
                gateway_id=gateway,
                groups=self.groups,
                last_seq=self.last_seq,
            )
        except ConfigRejected as err:
            seq = _seq_of(payload)
            if err.reason.value == "replayed" and seq == self._last_handled:
                log.debug("%s: seq %d again (redelivered); answered already", self, seq)
                return []
            log.info("%s: rejected a document (%s)", self.gateway_id, err.reason.value)
            return [
                self._status(
                    "rejected",
                    seq,
                    None,
                    reason=err.reason.value,
                    detail=short_detail(err.message),
                )
            ]
        self._last_handled = doc.seq
        out = [self._status("received", doc.seq, doc)]
        problem = self._check(doc)
        if problem is not None:
            # The last good configuration keeps running; the seq is not applied, so a
            # corrected document may come with the next one.
            out.append(
                self._status(
                    "rolled_back",
                    doc.seq,
                    doc,
                    reason=problem,
                    detail=short_detail(f"self-check failed: {problem}"),
                )
            )
            return out
        self.trusted = next_trusted(doc, self.trusted)
        self.last_seq = doc.seq
        self.running_hash = doc.content_hash
        self.applied.append(doc)
        out.append(self._status("applied", doc.seq, doc))
        return out


def _seq_of(payload: bytes) -> int:
    """The seq of a document that was refused, when it can be read at all (else 0)."""
    try:
        return decode_document(unwrap(payload).payload).seq
    except OwlgateError:
        return 0


class ConfigGateways:
    """Emulated gateways on a broker, as an async context manager: each connected gateway
    has an MQTT client of its own. Gateways named in ``offline`` start disconnected;
    :meth:`connect` brings one up later (it then gets its retained document)."""

    def __init__(
        self,
        gateways: Iterable[EmulatedConfigGateway],
        host: str,
        port: int,
        *,
        offline: Iterable[str] = (),
    ) -> None:
        self.gateways = {gateway.gateway_id: gateway for gateway in gateways}
        self.host = host
        self.port = port
        self._offline = set(offline)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._ready: dict[str, asyncio.Event] = {}
        self._changed = asyncio.Condition()
        self.errors: list[str] = []

    async def __aenter__(self) -> Self:
        await asyncio.gather(
            *(self.connect(gid) for gid in self.gateways if gid not in self._offline)
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        await _cancel(tasks)

    async def connect(self, gateway_id: str) -> None:
        """Connect ``gateway_id`` and return once it is subscribed to its config topic."""
        if gateway_id in self._tasks:
            return
        ready = self._ready[gateway_id] = asyncio.Event()
        self._tasks[gateway_id] = asyncio.create_task(
            self._run(self.gateways[gateway_id], ready), name=f"config-gw-{gateway_id}"
        )
        waiter = asyncio.create_task(ready.wait())
        done, _ = await asyncio.wait(
            {waiter, self._tasks[gateway_id]},
            timeout=CONNECT_TIMEOUT_S,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if waiter not in done:
            waiter.cancel()
            raise ConfigGatewayError(
                f"gateway {gateway_id} did not subscribe on {self.host}:{self.port} "
                f"within {CONNECT_TIMEOUT_S:.0f} s"
            )

    async def disconnect(self, gateway_id: str) -> None:
        """Take ``gateway_id`` off the broker."""
        task = self._tasks.pop(gateway_id, None)
        if task is not None:
            await _cancel([task])

    async def _run(self, gateway: EmulatedConfigGateway, ready: asyncio.Event) -> None:
        async with aiomqtt.Client(
            self.host, self.port, identifier=f"owlgate-emulated-config-{gateway.gateway_id}"
        ) as client:
            await client.subscribe(gateway.config_topic, qos=QOS)
            ready.set()
            async for message in client.messages:
                if str(message.topic) != gateway.config_topic:
                    # amqtt 0.12 may hand a new session retained messages of other topics.
                    log.debug("%s: ignored a message on %s", gateway.gateway_id, message.topic)
                    continue
                payload: object = message.payload
                if not isinstance(payload, bytes | bytearray):
                    self.errors.append(f"{gateway.gateway_id}: a payload that is not bytes")
                    continue
                for report in gateway.handle(bytes(payload)):
                    await client.publish(gateway.status_topic, report, qos=QOS)
                async with self._changed:
                    self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[], bool], *, timeout_s: float = 30.0) -> None:
        """Return once ``predicate()`` holds (checked after every document handled); raise
        TimeoutError after ``timeout_s``."""
        async with self._changed:
            async with asyncio.timeout(timeout_s):
                await self._changed.wait_for(predicate)


async def _cancel(tasks: Iterable[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait until they have ended, cancelling again the ones a round of
    :data:`CANCEL_WAIT_S` did not end (at most :data:`CANCEL_ROUNDS` rounds; then a warning
    names what is left). What a task raised other than its cancellation is logged."""
    every = list(tasks)
    pending = set(every)
    for _ in range(CANCEL_ROUNDS):
        if not pending:
            break
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=CANCEL_WAIT_S)
    for task in every:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.warning("%s ended with %r", task.get_name(), task.exception())
    if pending:
        log.warning("still running after cancelling: %s", sorted(t.get_name() for t in pending))


def gateways_from_manifest(
    manifest: Path, *, limit: int | None = None, trusted_key: Ed25519PublicKey | None = None
) -> list[EmulatedConfigGateway]:
    """The gateways of an ``owlgate fleet seed`` emulator secrets file, each with its identity
    key and, as trusted config key, the fleet public key it pinned (or ``trusted_key``)."""
    try:
        document = json.loads(manifest.read_text(encoding="utf-8"))
        entries = document["gateways"][:limit]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigGatewayError(f"{manifest}: not an emulator secrets file ({err})") from err
    out = []
    for entry in entries:
        folder = Path(entry["keys_dir"])
        try:
            identity = load_pem_private_key((folder / IDENTITY_KEY_FILE).read_bytes(), None)
            pinned = trusted_key or load_pem_public_key(
                (folder / FLEET_PUBLIC_KEY_FILE).read_bytes()
            )
        except (OSError, ValueError) as err:
            raise ConfigGatewayError(f"{folder}: gateway keys unreadable ({err})") from err
        if not isinstance(identity, Ed25519PrivateKey) or not isinstance(pinned, Ed25519PublicKey):
            raise ConfigGatewayError(f"{folder}: the keys are not Ed25519")
        out.append(
            EmulatedConfigGateway(
                gateway_id=entry["id"], identity=identity, trusted=trusted_keys(pinned)
            )
        )
    return out
