"""The LoRa radio of an emulated LoRaWAN module, for the OTAA join a technician tests.

Both emulated modules that join (:class:`~owlgate.hil.rak3172_lorawan.EmulatedRak3172LoRaWAN`
and :class:`~owlgate.hil.rn2483.EmulatedRn2483`) send their join requests and hear the
answers through one :class:`JoinRadio`. Each attempt is a LoRaWAN 1.0.3 join request (the
module's DevEUI, JoinEUI and AppKey, and a fresh random DevNonce, section 6.2.4). A join
accept the module can open with its AppKey and whose MIC holds ends the join; an attempt that
hears none within ``rx_timeout_s`` is retried while attempts are left, and then the join has
failed. What the module prints for either outcome is the module's business (the callbacks).

The air is the loopback one of :mod:`owlgate.hil.gateway_emulator`: with ``air_address`` a
join request goes as one JSON datagram (``phy`` in hex, ``rssi_dbm``, ``snr_db``,
``frequency_hz``, ``sf``) to that address, a gateway emulator's ``--air-port``, and the radio
listens on ``air_receive_port`` for what gateways transmit (their ``--tx-air-port``), in the
same format. Without ``air_address`` a join request reaches no gateway.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from ..codecs.errors import LorawanError
from ..codecs.lorawan import AesKey, EncryptedJoinAccept, JoinRequest

log = logging.getLogger(__name__)

#: How long a join attempt waits for its accept: JOIN_ACCEPT_DELAY2 (LoRaWAN 1.0.3 section
#: 6.2.5, EU868 in RP002) plus the RX2 window.
JOIN_RX_TIMEOUT_S: Final = 6.5
#: How the module is heard on the emulated air, and the channel of its join request (EU868
#: join channel 868.1 MHz at DR5, SF7 / 125 kHz).
AIR_RSSI_DBM: Final = -90
AIR_SNR_DB: Final = 7.5
JOIN_FREQUENCY_HZ: Final = 868_100_000
JOIN_SF: Final = 7
#: The address a module's radio listens on for what gateways transmit.
AIR_LISTEN_HOST: Final = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class JoinKeys:
    """What a join request is made of: the module's DevEUI, JoinEUI and AppKey (big-endian
    bytes, as the module's commands print them)."""

    dev_eui: bytes
    join_eui: bytes
    app_key: bytes = field(repr=False)


Later = Callable[[float, Callable[[], object]], asyncio.TimerHandle]


class JoinRadio:
    """One module's radio on the loopback air (see the module text).

    ``later`` / ``cancel`` schedule on the module's own timers (so a module that closes
    cancels them with its others); ``on_joined(dev_addr)`` and ``on_failed()`` are called once
    per :meth:`join`, with the outcome."""

    def __init__(
        self,
        label: str,
        *,
        air_address: tuple[str, int] | None,
        air_receive_port: int,
        rx_timeout_s: float,
        later: Later,
        cancel: Callable[[asyncio.TimerHandle | None], None],
        on_joined: Callable[[int], None],
        on_failed: Callable[[], None],
    ) -> None:
        self.label = label
        self.air_address = air_address
        #: The port the radio listens on (0 before :meth:`open`: a free one is picked).
        self.air_receive_port = air_receive_port
        self.rx_timeout_s = rx_timeout_s
        #: Join requests sent; datagrams heard that were not an accept for this module.
        self.join_requests = 0
        self.air_ignored = 0
        self._later = later
        self._cancel = cancel
        self._on_joined = on_joined
        self._on_failed = on_failed
        self._keys: JoinKeys | None = None
        self._pending_nonce: int | None = None
        self._used_nonces: set[int] = set()
        self._attempts_left = 0
        self._interval_s = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._air: asyncio.DatagramTransport | None = None

    async def open(self) -> None:
        """Listen on the air, when there is one (``air_address``)."""
        if self.air_address is None:
            return
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Antenna(self), local_addr=(AIR_LISTEN_HOST, self.air_receive_port)
        )
        self._air = transport
        self.air_receive_port = transport.get_extra_info("sockname")[1]

    def close(self) -> None:
        self.stop()
        if self._air is not None:
            self._air.close()
            self._air = None

    @property
    def joining(self) -> bool:
        return self._timer is not None

    def join(self, keys: JoinKeys, *, attempts: int, interval_s: float) -> None:
        """Start joining: ``attempts`` join requests (at least one), ``interval_s`` apart."""
        self.stop()
        self._keys = keys
        self._attempts_left = max(1, attempts)
        self._interval_s = interval_s
        # The attempt follows the module's reply to the command: that is written first.
        self._timer = self._later(0.0, self._attempt)

    def stop(self) -> None:
        """Stop joining (a restart, a new command); no outcome is reported."""
        self._cancel(self._timer)
        self._timer = None
        self._pending_nonce = None
        self._attempts_left = 0

    def _attempt(self) -> None:
        keys = self._keys
        assert keys is not None
        # LoRaWAN 1.0.3 section 6.2.4: a random DevNonce, never one the server saw already.
        nonce = secrets.randbelow(0x10000)
        while nonce in self._used_nonces and len(self._used_nonces) < 0x10000:
            nonce = secrets.randbelow(0x10000)
        self._used_nonces.add(nonce)
        self._pending_nonce = nonce
        self._attempts_left -= 1
        request = JoinRequest.build(
            AesKey(keys.app_key),
            join_eui=int.from_bytes(keys.join_eui, "big"),
            dev_eui=int.from_bytes(keys.dev_eui, "big"),
            dev_nonce=nonce,
        )
        self.join_requests += 1
        if self._air is not None and self.air_address is not None:
            datagram = {
                "phy": request.to_bytes().hex(),
                "rssi_dbm": AIR_RSSI_DBM,
                "snr_db": AIR_SNR_DB,
                "frequency_hz": JOIN_FREQUENCY_HZ,
                "sf": JOIN_SF,
            }
            self._air.sendto(json.dumps(datagram).encode(), self.air_address)
        log.info("emulated %s sent a join request", self.label)
        self._timer = self._later(self.rx_timeout_s, self._timed_out)

    def _timed_out(self) -> None:
        self._pending_nonce = None
        if self._attempts_left > 0:
            wait_s = max(0.0, self._interval_s - self.rx_timeout_s)
            self._timer = self._later(wait_s, self._attempt)
            return
        self._timer = None
        log.info("emulated %s heard no join accept", self.label)
        self._on_failed()

    def heard(self, data: bytes) -> None:
        """One datagram from the air: a frame some gateway transmitted."""
        try:
            phy = bytes.fromhex(json.loads(data)["phy"])
        except (ValueError, KeyError, TypeError) as err:
            self.air_ignored += 1
            log.warning("emulated %s: not a frame on the air (%s)", self.label, err)
            return
        if self._pending_nonce is None or self._keys is None:
            self.air_ignored += 1
            return
        key = AesKey(self._keys.app_key)
        try:
            accept = EncryptedJoinAccept.from_bytes(phy).decrypt(key)
            accept.verify_mic(key)
        except LorawanError:
            # Someone else's downlink, or an accept for another device.
            self.air_ignored += 1
            return
        self.stop()
        log.info("emulated %s joined as %08x", self.label, accept.dev_addr)
        self._on_joined(accept.dev_addr)


class _Antenna(asyncio.DatagramProtocol):
    """What the radio hears: datagrams gateways transmitted."""

    def __init__(self, radio: JoinRadio) -> None:
        self.radio = radio

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.radio.heard(data)
