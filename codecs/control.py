"""Control messages between a gateway and the fleet: joins and device sessions.

Three messages, each a deterministic CBOR map with small integer keys, carried signed
(COSE_Sign1, :mod:`owlgate.codecs.signed`): by the gateway's identity key on the way up, by the
fleet's signing key (pinned on every gateway) on the way down, so that neither side acts on a
message the broker alone vouches for.

``owlgate/v1/gw/{id}/join`` — :class:`JoinForward`, gateway to fleet::

    { 1: token (uint 1..65535), 2: join request PHYPayload (23 bytes), 3: received at (uint, s) }

``owlgate/v1/gw/{id}/join/accept`` — :class:`JoinAnswer`, fleet to gateway::

    { 1: token, 2: join accept PHYPayload (17 or 33 bytes), 3: sealed session (bstr) }
    { 1: token, 4: refusal (tstr) }                       when the fleet refuses the join

``owlgate/v1/gw/{id}/keys`` — :class:`SessionUpdate`, fleet to gateway::

    { 5: [* sealed session (bstr)], ? 6: [* removed DevEUI (bstr .size 8)], ? 7: true }

``owlgate/v1/gw/{id}/config/status`` — :class:`ConfigStatus`, gateway to fleet::

    { 8: state (tstr), 9: seq (uint), 13: at (uint, s), ? 10: content hash (bstr .size 32),
      ? 11: reason (tstr), ? 12: detail (tstr), ? 14: running hash (bstr .size 32) }

What the gateway did with a configuration document (:mod:`owlgate.codecs.configdoc`):
``received`` (it verified and is applying it), ``applied`` (it runs it and passed its
self-check), ``rejected`` (refused before applying; ``reason`` is a
:class:`~owlgate.codecs.configdoc.Reason` value) or ``rolled_back`` (applied, failed its
self-check, and the last good configuration runs again; ``reason`` names the check). ``seq``
is the document's, 0 when it could not be read; ``running hash`` the content hash of the
configuration the gateway runs after this step, so the fleet sees drift at once.

Key 7, ``complete``, marks the last of the updates that answer a gateway's ``online``: with
it the gateway has every session the fleet holds for it (an answer is split over several
updates when there are many devices; MQTT keeps their order on the topic, MQTT 3.1.1 section
4.6). It is left out, never sent as ``false``, on the others and on the single-session updates
that follow a join forwarded by another gateway. The CDDL is ``docs/formats/control.cddl``.

The token lets the gateway match an answer to the join request it forwarded, whose receive
timestamp it keeps to send the accept in the RX1 window. A sealed session is
:func:`owlgate.codecs.sealed.seal_session` output: only the addressed gateway can open it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import SchemaError
from .node import cbor

__all__ = [
    "CONFIG_STATES",
    "ConfigStatus",
    "JoinAnswer",
    "JoinForward",
    "SessionUpdate",
    "decode_config_status",
    "decode_join_answer",
    "decode_join_forward",
    "decode_session_update",
    "encode_config_status",
    "encode_join_answer",
    "encode_join_forward",
    "encode_session_update",
    "short_detail",
]

_TOKEN = 1
_PHY = 2
_RECEIVED_AT = 3
_SEALED = 3
_REFUSAL = 4
_SESSIONS = 5
_REMOVED = 6
_COMPLETE = 7
_STATE = 8
_SEQ = 9
_CONTENT_HASH = 10
_REASON = 11
_DETAIL = 12
_AT = 13
_RUNNING_HASH = 14
#: What a gateway reports about a configuration document, in the order they can happen.
CONFIG_STATES = ("received", "applied", "rejected", "rolled_back")
#: A reason is a short word (``signature``, ``replayed``, ``radio``...): it is counted and
#: grouped by; the detail is the sentence for people, bounded so a report stays small. Both
#: limits are in bytes of UTF-8, as CDDL's ``.size`` counts them.
MAX_REASON_CHARS = 32
MAX_DETAIL_CHARS = 240
_HASH_SIZE = 32
_U64_END = 1 << 64


@dataclass(frozen=True, slots=True)
class JoinForward:
    """A join request a gateway heard, forwarded to the fleet's join server."""

    token: int
    phy_payload: bytes
    received_at: int


@dataclass(frozen=True, slots=True)
class JoinAnswer:
    """The join server's answer: the accept to transmit and the session sealed to the
    gateway, or a refusal saying why."""

    token: int
    accept_phy: bytes | None = None
    sealed_session: bytes | None = None
    refusal: str | None = None

    @property
    def accepted(self) -> bool:
        return self.refusal is None


@dataclass(frozen=True, slots=True)
class SessionUpdate:
    """Device sessions (ABP, or OTAA after a join another gateway forwarded) a gateway should
    know, each sealed to it, and DevEUIs whose sessions it should forget; ``complete`` on the
    last update answering the gateway's ``online``."""

    sealed_sessions: list[bytes] = field(default_factory=list)
    removed: list[bytes] = field(default_factory=list)
    complete: bool = False


@dataclass(frozen=True, slots=True)
class ConfigStatus:
    """What a gateway did with configuration document ``seq`` (see the module docstring)."""

    state: str
    seq: int
    at: int
    content_hash: bytes | None = None
    reason: str | None = None
    detail: str | None = None
    running_hash: bytes | None = None


def _map(data: bytes, what: str, allowed: set[int]) -> dict[int, object]:
    item = cbor.loads(data)
    if not isinstance(item, dict):
        raise SchemaError(f"a {what} is a CBOR map, got {type(item).__name__}", 0)
    unknown = sorted(repr(key) for key in item if key not in allowed)
    if unknown:
        raise SchemaError(f"a {what} has no key(s) {', '.join(unknown)}", 0)
    return item


def _token(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 0xFFFF:
        raise SchemaError(f"{what}: token must be an integer 1 .. 65535, got {value!r}")
    return value


def _bytes(value: object, what: str, sizes: tuple[int, ...] | None = None) -> bytes:
    if not isinstance(value, bytes) or (sizes is not None and len(value) not in sizes):
        wanted = "bytes" if sizes is None else " or ".join(str(size) for size in sizes) + " bytes"
        raise SchemaError(f"{what} must be {wanted}, got {value!r:.60}")
    return value


def encode_join_forward(message: JoinForward) -> bytes:
    """The CBOR of a :class:`JoinForward` (sign it before publishing)."""
    _token(message.token, "join forward")
    _bytes(message.phy_payload, "join forward: the join request", (23,))
    if not 0 <= message.received_at < _U64_END:
        raise SchemaError(f"join forward: received_at out of range: {message.received_at}")
    return cbor.dumps(
        {_TOKEN: message.token, _PHY: message.phy_payload, _RECEIVED_AT: message.received_at}
    )


def decode_join_forward(data: bytes) -> JoinForward:
    """A :class:`JoinForward` from its CBOR; CborError or SchemaError when malformed."""
    item = _map(data, "join forward", {_TOKEN, _PHY, _RECEIVED_AT})
    received = item.get(_RECEIVED_AT)
    if isinstance(received, bool) or not isinstance(received, int) or received < 0:
        raise SchemaError(f"join forward: received_at must be a uint, got {received!r}")
    return JoinForward(
        _token(item.get(_TOKEN), "join forward"),
        _bytes(item.get(_PHY), "join forward: the join request", (23,)),
        received,
    )


def encode_join_answer(message: JoinAnswer) -> bytes:
    """The CBOR of a :class:`JoinAnswer` (sign it before publishing)."""
    content: dict[int, object] = {_TOKEN: _token(message.token, "join answer")}
    if message.refusal is not None:
        if message.accept_phy is not None or message.sealed_session is not None:
            raise SchemaError("join answer: a refusal carries no accept and no session")
        content[_REFUSAL] = message.refusal
    else:
        content[_PHY] = _bytes(message.accept_phy, "join answer: the accept", (17, 33))
        content[_SEALED] = _bytes(message.sealed_session, "join answer: the sealed session")
    return cbor.dumps(content)


def decode_join_answer(data: bytes) -> JoinAnswer:
    """A :class:`JoinAnswer` from its CBOR; CborError or SchemaError when malformed."""
    item = _map(data, "join answer", {_TOKEN, _PHY, _SEALED, _REFUSAL})
    token = _token(item.get(_TOKEN), "join answer")
    if _REFUSAL in item:
        refusal = item[_REFUSAL]
        if not isinstance(refusal, str) or _PHY in item or _SEALED in item:
            raise SchemaError("join answer: a refusal is text, without accept or session")
        return JoinAnswer(token, refusal=refusal)
    return JoinAnswer(
        token,
        _bytes(item.get(_PHY), "join answer: the accept", (17, 33)),
        _bytes(item.get(_SEALED), "join answer: the sealed session"),
    )


def encode_session_update(message: SessionUpdate) -> bytes:
    """The CBOR of a :class:`SessionUpdate` (sign it before publishing)."""
    content: dict[int, object] = {
        _SESSIONS: [_bytes(item, "a sealed session") for item in message.sealed_sessions]
    }
    if message.removed:
        content[_REMOVED] = [_bytes(eui, "a removed DevEUI", (8,)) for eui in message.removed]
    if message.complete is True:
        content[_COMPLETE] = True
    elif message.complete is not False:
        raise SchemaError(f"session update: complete must be a bool, got {message.complete!r}")
    return cbor.dumps(content)


def decode_session_update(data: bytes) -> SessionUpdate:
    """A :class:`SessionUpdate` from its CBOR; CborError or SchemaError when malformed."""
    item = _map(data, "session update", {_SESSIONS, _REMOVED, _COMPLETE})
    sessions = item.get(_SESSIONS)
    removed = item.get(_REMOVED, [])
    if not isinstance(sessions, list) or not isinstance(removed, list):
        raise SchemaError("session update: sessions and removed DevEUIs are arrays")
    # Deterministic: "not complete" has one encoding, the key left out.
    if _COMPLETE in item and item[_COMPLETE] is not True:
        raise SchemaError(f"session update: key 7 (complete) is only ever true, got {item[7]!r}")
    return SessionUpdate(
        [_bytes(entry, "a sealed session") for entry in sessions],
        [_bytes(entry, "a removed DevEUI", (8,)) for entry in removed],
        complete=_COMPLETE in item,
    )


def _status_checked(message: ConfigStatus) -> dict[int, object]:
    what = "config status"
    if message.state not in CONFIG_STATES:
        raise SchemaError(f"{what}: state must be one of {', '.join(CONFIG_STATES)}")
    for name, number in (("seq", message.seq), ("at", message.at)):
        if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number < _U64_END:
            raise SchemaError(f"{what}: {name} must be a uint below 2**64, got {number!r}")
    content: dict[int, object] = {_STATE: message.state, _SEQ: message.seq, _AT: message.at}
    for key, name, value in (
        (_CONTENT_HASH, "content hash", message.content_hash),
        (_RUNNING_HASH, "running hash", message.running_hash),
    ):
        if value is not None:
            content[key] = _bytes(value, f"{what}: {name}", (_HASH_SIZE,))
    for key, name, text, limit in (
        (_REASON, "reason", message.reason, MAX_REASON_CHARS),
        (_DETAIL, "detail", message.detail, MAX_DETAIL_CHARS),
    ):
        if text is None:
            continue
        if not isinstance(text, str) or not 0 < len(text.encode()) <= limit:
            raise SchemaError(f"{what}: {name} must be text of 1..{limit} bytes (UTF-8)")
        content[key] = text
    return content


def encode_config_status(message: ConfigStatus) -> bytes:
    """The CBOR of a :class:`ConfigStatus` (sign it with the gateway's identity key).

    A detail longer than :data:`MAX_DETAIL_CHARS` is refused, not cut: shorten it first
    (:func:`short_detail`)."""
    return cbor.dumps(_status_checked(message))


def short_detail(text: str) -> str:
    """``text`` on one line, cut to :data:`MAX_DETAIL_CHARS` bytes with an ellipsis if longer."""
    line = " ".join(text.split()) or "-"
    if len(line.encode()) <= MAX_DETAIL_CHARS:
        return line
    # The ellipsis is 3 bytes of UTF-8; cut whole characters, never half of one.
    cut = line.encode()[: MAX_DETAIL_CHARS - 3].decode(errors="ignore")
    return cut + "\u2026"


def decode_config_status(data: bytes) -> ConfigStatus:
    """A :class:`ConfigStatus` from its CBOR; CborError or SchemaError when malformed."""
    item = _map(
        data,
        "config status",
        {_STATE, _SEQ, _CONTENT_HASH, _REASON, _DETAIL, _AT, _RUNNING_HASH},
    )
    for key, name in ((_STATE, "state"), (_SEQ, "seq"), (_AT, "at")):
        if key not in item:
            raise SchemaError(f"config status: key {key} ({name}) is missing")
    message = ConfigStatus(
        state=item[_STATE],  # type: ignore[arg-type]  # checked below
        seq=item[_SEQ],  # type: ignore[arg-type]
        at=item[_AT],  # type: ignore[arg-type]
        content_hash=item.get(_CONTENT_HASH),  # type: ignore[arg-type]
        reason=item.get(_REASON),  # type: ignore[arg-type]
        detail=item.get(_DETAIL),  # type: ignore[arg-type]
        running_hash=item.get(_RUNNING_HASH),  # type: ignore[arg-type]
    )
    _status_checked(message)
    return message
