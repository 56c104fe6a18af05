"""What every radio backend of the gateway offers (serial concentrator; later RAK3172, Semtech
UDP): an async context manager that delivers received packets and transmits on request.

Packets and requests are those of the concentrator protocol v1
(``owlgate.codecs.concentrator``: :class:`RxFrame`, :class:`TxRequest`, :class:`TxAck`), the
common language of the backends: each one maps its own wire onto them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

from ..codecs.concentrator import Hello, RxFrame, TxAck, TxRequest


@dataclass(slots=True)
class RadioCounters:
    """What a backend counted since it was created (across reconnections).

    - ``rx_received``: packets the radio reported, any CRC status;
    - ``rx_crc_ok`` / ``rx_crc_bad``: by the radio's CRC check (a packet without CRC counts in
      neither); packets with a bad CRC are counted and dropped, never delivered;
    - ``rx_delivered``: packets handed to the consumer;
    - ``rx_dropped``: packets dropped because the consumer fell behind (queue full);
    - ``link_crc_errors`` / ``link_frame_errors``: frames on the host link dropped for a bad
      CRC, or for bad framing (bad COBS, too short, too long, overflow);
    - ``link_invalid``: frames that were intact but held no valid message;
    - ``tx_requested``: transmit requests sent; ``tx_scheduled``: accepted by the radio;
      ``tx_refused``: answered with a TX error code or a protocol error; ``tx_timeouts``:
      unanswered;
    - ``reconnects``: connections re-established after a loss.
    """

    rx_received: int = 0
    rx_crc_ok: int = 0
    rx_crc_bad: int = 0
    rx_delivered: int = 0
    rx_dropped: int = 0
    link_crc_errors: int = 0
    link_frame_errors: int = 0
    link_invalid: int = 0
    tx_requested: int = 0
    tx_scheduled: int = 0
    tx_refused: int = 0
    tx_timeouts: int = 0
    reconnects: int = 0


@dataclass(frozen=True, slots=True)
class RadioStatus:
    """The backend's state now: ``connected`` once the radio is configured and receiving;
    ``hello`` is the radio's last :class:`Hello` (firmware, EUI, capabilities), ``config_id``
    the radio configuration it acknowledged, ``last_error`` why the last connection ended or
    failed (None if none did)."""

    connected: bool
    port: str
    hello: Hello | None
    config_id: int | None
    last_error: str | None


class RadioBackend(Protocol):
    """A radio the gateway receives and transmits through.

    Usage::

        async with backend as radio:
            async for rx in radio.frames():
                ...
            ack = await radio.transmit(request)

    A backend reconnects by itself: ``frames()`` does not end when the radio goes away, only
    when the backend is closed.
    """

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def frames(self) -> AsyncIterator[RxFrame]:
        """The received packets with a good (or no) CRC, in order, until the backend closes."""
        ...

    async def transmit(self, request: TxRequest, *, timeout_s: float | None = None) -> TxAck:
        """Ask the radio to transmit ``request`` (its token is replaced by the backend's own)
        and return the radio's answer; ``ack.error`` is ``TxError.NONE`` when scheduled.

        Raises :class:`~owlgate.edge.errors.RadioTimeout` without an answer in ``timeout_s``
        (the backend's default when None), :class:`~owlgate.edge.errors.RadioDisconnected`
        when not connected, :class:`~owlgate.edge.errors.RadioRefused` on a protocol error.
        """
        ...

    @property
    def counters(self) -> RadioCounters:
        """A copy of the counters now."""
        ...

    @property
    def status(self) -> RadioStatus:
        """The connection state now."""
        ...
