"""Wired protocol v1: a half-duplex master/slave protocol for sensor nodes on a UART or an
RS-485 bus, specified in ``docs/protocol/wired-v1.md`` and ``docs/protocol/wired-v1.cddl``.

The gateway (the **host**) is the only master: it sends one request to one node address and
waits for that node's answer before it talks again, so on a shared RS-485 pair only one
transmitter is ever active. Every message is one CBOR array (RFC 8949) in one serial frame
(``framing.py``: COBS, CRC-16, ``00`` delimiters), and every message names a node address
1..247 as its second item::

    host -> node   [1, addr, ack, ?received]              POLL
                   [2, addr, version, {name: value}]      SETTINGS
                   [3, addr]                              GET_STATUS
    node -> host   [17, addr, eui, settings_version, more, [[seq, age_s, {values}], ...]]
                                                          READINGS
                   [18, addr, eui, settings_version]      NOTHING
                   [19, addr, version]                    SETTINGS_ACK
                   [20, addr, eui, uptime_s, buffered, dropped, next_seq, settings_version]
                                                          STATUS
                   [21, addr, code, text]                 ERROR

Lossless by acknowledgment (protocol section "Acknowledgment"): a node keeps each reading,
numbered by a per-node 32-bit sequence, until a POLL's ``ack`` says the host has stored it
durably. ``received`` (the highest sequence the host has already been given in this session)
only moves the point the node sends from; it never drops anything, so a reply lost on the line
or a gateway that crashes before its store is durable costs a resend, never a reading.

:class:`WiredNode` is the node's side for its main loop; :func:`encode_message` and
:func:`decode_message` serve both sides. This module runs unchanged on MicroPython: plain
classes with slots, no typing, dataclasses or enums, integers tested without ``bool``.
"""

from ..errors import CodecError, SchemaError
from . import cbor
from .hextext import hex_text

PROTOCOL_VERSION = 1

#: Node addresses (section "Addresses"): 1..247, the range Modbus RTU uses on RS-485.
ADDRESS_MIN = 1
ADDRESS_MAX = 247

# Message types, a plain table rather than an enum (MicroPython has none). Host-to-node types
# are below 16, node-to-host types 17 and up, so a node can tell another node's answer on the
# shared bus from a request without reading further.
POLL = 1
SETTINGS = 2
GET_STATUS = 3
READINGS = 17
NOTHING = 18
SETTINGS_ACK = 19
STATUS = 20
ERROR = 21

#: (type, name, sent by the host) for every message of version 1, the one index of types.
MESSAGE_TYPES = (
    (POLL, "POLL", True),
    (SETTINGS, "SETTINGS", True),
    (GET_STATUS, "GET_STATUS", True),
    (READINGS, "READINGS", False),
    (NOTHING, "NOTHING", False),
    (SETTINGS_ACK, "SETTINGS_ACK", False),
    (STATUS, "STATUS", False),
    (ERROR, "ERROR", False),
)
_NAMES = {entry[0]: entry[1] for entry in MESSAGE_TYPES}
HOST_TYPES = (POLL, SETTINGS, GET_STATUS)

# ERROR codes (section "Errors").
ERR_MALFORMED = 1  # a frame for this node that is not a valid request
ERR_UNKNOWN_TYPE = 2  # a request type this node does not know
ERR_BAD_SETTING = 3  # SETTINGS with an unknown name or a value of the wrong type
ERROR_CODES = (
    (ERR_MALFORMED, "MALFORMED"),
    (ERR_UNKNOWN_TYPE, "UNKNOWN_TYPE"),
    (ERR_BAD_SETTING, "BAD_SETTING"),
)

_U32_END = 1 << 32
_I64_MIN = -(1 << 63)
_I64_END = 1 << 64
EUI_SIZE = 8
#: Longest name of a value or a setting, in UTF-8 bytes.
MAX_NAME_BYTES = 32
#: Most values in one reading and most entries in one SETTINGS map.
MAX_ENTRIES = 32
#: Longest ERROR text, in UTF-8 bytes.
MAX_TEXT_BYTES = 64
#: Largest reply a node builds: below the framing's MAX_PAYLOAD (1024) with room to spare.
MAX_REPLY_BYTES = 1000
#: Readings a node keeps until they are acknowledged, unless told otherwise.
DEFAULT_CAPACITY = 64


class WiredError(SchemaError):
    """Well-formed CBOR that is not a valid wired protocol v1 message (or a node's own
    values that cannot be sent): the message says what was expected."""


class _Wire:
    # Compared and shown by their wire items. Plain classes with slots, not dataclasses:
    # this module runs on MicroPython.
    __slots__ = ()

    def _items(self) -> list[object]:
        # Abstract: every message class returns its wire items. (MicroPython has no abc
        # module, so no @abstractmethod; a class that forgot would fail every comparison.)
        raise NotImplementedError(type(self).__name__ + " does not define its wire items")

    def __eq__(self, other: object) -> bool:
        return (
            type(self) is type(other)
            and isinstance(other, _Wire)
            and self._items() == other._items()
        )

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __repr__(self) -> str:
        return type(self).__name__ + repr(self._items()[1:])

    __hash__ = None  # type: ignore[assignment]  # mutable


class Message(_Wire):
    """What every wired message has: the node ``address`` it is for or from. Messages compare
    equal when their wire items are equal."""

    __slots__ = ()

    address: int


class Poll(Message):
    """Host to node: "send me your readings after ``received``; I have stored every reading
    up to ``ack`` durably, drop those". ``ack`` 0 acknowledges nothing; ``received`` None
    means the host has been given nothing from this node since it started."""

    __slots__ = ("ack", "address", "received")

    def __init__(self, address: int, ack: int = 0, received: "int | None" = None) -> None:
        self.address = address
        self.ack = ack
        self.received = received

    def _items(self) -> list[object]:
        items: list[object] = [POLL, self.address, self.ack]
        if self.received is not None:
            items.append(self.received)
        return items


class Settings(Message):
    """Host to node: apply ``values`` (names to int, float or bool) as settings ``version``
    (1..2**32-1); answered by SETTINGS_ACK with the version applied, or an ERROR."""

    __slots__ = ("address", "values", "version")

    def __init__(self, address: int, version: int, values: "dict[str, object]") -> None:
        self.address = address
        self.version = version
        self.values = values

    def _items(self) -> list[object]:
        return [SETTINGS, self.address, self.version, self.values]


class GetStatus(Message):
    """Host to node: answer with STATUS."""

    __slots__ = ("address",)

    def __init__(self, address: int) -> None:
        self.address = address

    def _items(self) -> list[object]:
        return [GET_STATUS, self.address]


class WiredReading(_Wire):
    """One reading as it travels: the node's sequence number (1..2**32-1), its age in
    seconds when the reply was built, and its values by name."""

    __slots__ = ("age_s", "seq", "values")

    def __init__(self, seq: int, age_s: int, values: "dict[str, object]") -> None:
        self.seq = seq
        self.age_s = age_s
        self.values = values

    def _items(self) -> list[object]:
        return [self.seq, self.age_s, self.values]


class Readings(Message):
    """Node to host: readings not yet acknowledged, oldest first; ``more`` when the node
    holds further readings that did not fit this reply."""

    __slots__ = ("address", "eui", "more", "readings", "settings_version")

    def __init__(
        self,
        address: int,
        eui: bytes,
        settings_version: int,
        more: bool,
        readings: "list[WiredReading]",
    ) -> None:
        self.address = address
        self.eui = eui
        self.settings_version = settings_version
        self.more = more
        self.readings = readings

    def _items(self) -> list[object]:
        rows = [reading._items() for reading in self.readings]
        return [READINGS, self.address, self.eui, self.settings_version, self.more, rows]


class Nothing(Message):
    """Node to host: no readings to send."""

    __slots__ = ("address", "eui", "settings_version")

    def __init__(self, address: int, eui: bytes, settings_version: int) -> None:
        self.address = address
        self.eui = eui
        self.settings_version = settings_version

    def _items(self) -> list[object]:
        return [NOTHING, self.address, self.eui, self.settings_version]


class SettingsAck(Message):
    """Node to host: settings ``version`` is applied."""

    __slots__ = ("address", "version")

    def __init__(self, address: int, version: int) -> None:
        self.address = address
        self.version = version

    def _items(self) -> list[object]:
        return [SETTINGS_ACK, self.address, self.version]


class Status(Message):
    """Node to host: seconds since boot, readings held, readings dropped because the buffer
    was full, the sequence number the next reading gets, settings version in force."""

    __slots__ = (
        "address",
        "buffered",
        "dropped",
        "eui",
        "next_seq",
        "settings_version",
        "uptime_s",
    )

    def __init__(
        self,
        address: int,
        eui: bytes,
        uptime_s: int,
        buffered: int,
        dropped: int,
        next_seq: int,
        settings_version: int,
    ) -> None:
        self.address = address
        self.eui = eui
        self.uptime_s = uptime_s
        self.buffered = buffered
        self.dropped = dropped
        self.next_seq = next_seq
        self.settings_version = settings_version

    def _items(self) -> list[object]:
        return [
            STATUS,
            self.address,
            self.eui,
            self.uptime_s,
            self.buffered,
            self.dropped,
            self.next_seq,
            self.settings_version,
        ]


class Error(Message):
    """Node to host: the request could not be carried out (``code``: ``ERR_*``)."""

    __slots__ = ("address", "code", "text")

    def __init__(self, address: int, code: int, text: str = "") -> None:
        self.address = address
        self.code = code
        self.text = text

    def _items(self) -> list[object]:
        return [ERROR, self.address, self.code, self.text]


_CLASSES = (Poll, Settings, GetStatus, Readings, Nothing, SettingsAck, Status, Error)


def message_name(message_type: int) -> str:
    """The name of a message type (``"POLL"``), or ``"type N"`` for one v1 does not define."""
    name = _NAMES.get(message_type)
    return name if name is not None else "type " + str(message_type)


# --- checks shared by the encoder and the decoder ---------------------------------------------


def _int(value: object) -> "int | None":
    # bool is an int on CPython, not on MicroPython: never an integer here.
    if value is True or value is False or not isinstance(value, int):
        return None
    return value


def _check_uint(value: object, what: str, low: int = 0, end: int = _U32_END) -> int:
    number = _int(value)
    if number is None or not low <= number < end:
        raise WiredError(
            what + " must be an integer " + str(low) + ".." + str(end - 1) + ", got " + repr(value)
        )
    return number


def _check_address(value: object) -> int:
    return _check_uint(value, "address", ADDRESS_MIN, ADDRESS_MAX + 1)


def _check_eui(value: object) -> bytes:
    if not isinstance(value, bytes) or len(value) != EUI_SIZE:
        raise WiredError("eui must be an 8-byte byte string, got " + _show(value))
    return value


def _check_name(key: object, what: str) -> str:
    if not isinstance(key, str) or not key or len(key.encode("utf-8")) > MAX_NAME_BYTES:
        raise WiredError(
            what + " names must be text of 1.." + str(MAX_NAME_BYTES) + " bytes, got " + repr(key)
        )
    return key


def _check_scalar(value: object, what: str) -> object:
    if value is True or value is False:
        return value
    if isinstance(value, float):
        return value
    number = _int(value)
    if number is None or not _I64_MIN <= number < _I64_END:
        raise WiredError(
            what + " must be an integer (64 bits), a float or a bool, got " + repr(value)
        )
    return number


def _check_map(value: object, what: str, minimum: int) -> "dict[str, object]":
    if not isinstance(value, dict):
        raise WiredError(what + " must be a map, got " + _show(value))
    if not minimum <= len(value) <= MAX_ENTRIES:
        raise WiredError(
            what
            + " must have "
            + str(minimum)
            + ".."
            + str(MAX_ENTRIES)
            + " entries, got "
            + str(len(value))
        )
    result: dict[str, object] = {}
    for key, item in value.items():
        name = _check_name(key, what)
        result[name] = _check_scalar(item, what + " " + repr(name))
    return result


def _check_bool(value: object, what: str) -> bool:
    if value is True or value is False:
        return value
    raise WiredError(what + " must be true or false, got " + repr(value))


def _check_text(value: object, what: str) -> str:
    if not isinstance(value, str) or len(value.encode("utf-8")) > MAX_TEXT_BYTES:
        raise WiredError(what + " must be text of at most " + str(MAX_TEXT_BYTES) + " bytes")
    return value


def _show(value: object) -> str:
    if isinstance(value, bytes):
        return "bytes " + (hex_text(value, 16) or "(empty)")
    return type(value).__name__ + " " + repr(value)[:40]


# --- decoding ---------------------------------------------------------------------------------


def _expect_length(items: "list[object]", low: int, high: int, name: str, shape: str) -> None:
    if not low <= len(items) <= high:
        raise WiredError(name + " is " + shape + "; got " + str(len(items)) + " items")


def _decode_reading(row: object) -> WiredReading:
    if not isinstance(row, list) or len(row) != 3:
        raise WiredError("a reading is [seq, age_s, {values}], got " + _show(row))
    seq = _check_uint(row[0], "seq", 1)
    age_s = _check_uint(row[1], "age_s")
    return WiredReading(seq, age_s, _check_map(row[2], "values", 0))


def _decode_items(
    items: "list[object]",
) -> "Poll | Settings | GetStatus | Readings | Nothing | SettingsAck | Status | Error":
    kind = _int(items[0])
    if kind is None:
        raise WiredError("the message type must be an integer, got " + repr(items[0]))
    name = message_name(kind)
    if kind not in _NAMES:
        raise WiredError("unknown message type " + str(kind))
    if len(items) < 2:
        raise WiredError(name + " has no address")
    address = _check_address(items[1])
    if kind == POLL:
        _expect_length(items, 3, 4, name, "[1, address, ack, ?received]")
        received = None
        if len(items) == 4:
            received = _check_uint(items[3], "received")
        return Poll(address, _check_uint(items[2], "ack"), received)
    if kind == SETTINGS:
        _expect_length(items, 4, 4, name, "[2, address, version, {settings}]")
        version = _check_uint(items[2], "settings version", 1)
        return Settings(address, version, _check_map(items[3], "settings", 0))
    if kind == GET_STATUS:
        _expect_length(items, 2, 2, name, "[3, address]")
        return GetStatus(address)
    if kind == READINGS:
        _expect_length(items, 6, 6, name, "[17, address, eui, settings_version, more, [+ reading]]")
        rows = items[5]
        if not isinstance(rows, list) or not rows:
            raise WiredError("READINGS needs a non-empty array of readings, got " + _show(rows))
        readings = [_decode_reading(row) for row in rows]
        for at in range(1, len(readings)):
            # Section "READINGS": oldest first, each sequence number once.
            if readings[at].seq <= readings[at - 1].seq:
                raise WiredError("READINGS sequence numbers must increase")
        return Readings(
            address,
            _check_eui(items[2]),
            _check_uint(items[3], "settings_version"),
            _check_bool(items[4], "more"),
            readings,
        )
    if kind == NOTHING:
        _expect_length(items, 4, 4, name, "[18, address, eui, settings_version]")
        return Nothing(address, _check_eui(items[2]), _check_uint(items[3], "settings_version"))
    if kind == SETTINGS_ACK:
        _expect_length(items, 3, 3, name, "[19, address, version]")
        return SettingsAck(address, _check_uint(items[2], "settings version", 1))
    if kind == STATUS:
        _expect_length(items, 8, 8, name, "[20, address, eui, uptime_s, buffered, dropped, ...]")
        return Status(
            address,
            _check_eui(items[2]),
            _check_uint(items[3], "uptime_s"),
            _check_uint(items[4], "buffered"),
            _check_uint(items[5], "dropped"),
            _check_uint(items[6], "next_seq", 1),
            _check_uint(items[7], "settings_version"),
        )
    _expect_length(items, 4, 4, name, "[21, address, code, text]")
    return Error(
        address, _check_uint(items[2], "error code", 1, 256), _check_text(items[3], "text")
    )


def decode_message(
    payload: bytes,
) -> "Poll | Settings | GetStatus | Readings | Nothing | SettingsAck | Status | Error":
    """The message a frame's payload holds: :class:`Poll`, :class:`Readings`, ...

    Raises :class:`~owlgate.codecs.errors.CborError` for bytes that are not one CBOR item,
    :class:`WiredError` for CBOR that is not a v1 message; never anything else.
    """
    raw = bytes(payload)
    items = cbor.loads(raw)
    if not isinstance(items, list) or not items:
        raise WiredError("a wired message is a non-empty CBOR array, got " + _show(items), 0)
    return _decode_items(items)


def peek_address(payload: bytes) -> "tuple[int, int] | None":
    """``(type, address)`` of a payload whose head can be read, even when the rest cannot;
    None when not even that can (a node then stays silent: it cannot know the frame is its)."""
    items = None
    try:
        items = cbor.loads(bytes(payload))
    except CodecError:
        items = None
    if not isinstance(items, list) or len(items) < 2:
        return None
    kind = _int(items[0])
    address = _int(items[1])
    if kind is None or address is None:
        return None
    return kind, address


# --- encoding ---------------------------------------------------------------------------------


def encode_message(message: Message) -> bytes:
    """The deterministic CBOR payload of ``message``; :class:`WiredError` when a field is out
    of range (the encoder writes only what the decoder accepts)."""
    if not isinstance(message, _CLASSES):
        raise WiredError("not a wired protocol message: " + type(message).__name__)
    items = message._items()
    # Checked by decoding the items back: one rule set for both directions.
    _decode_items(items)
    return cbor.dumps(items)


# --- the node's side ----------------------------------------------------------------------------


def _default_clock() -> float:
    # Imported here so that a node passing its own clock needs no time module.
    import time  # type: ignore[import-not-found, unused-ignore]

    return float(time.time())


class WiredNode:
    """The node's side of wired protocol v1, for a MicroPython main loop.

    ``address`` 1..247 and ``eui`` (8 bytes) identify the node. ``settings``: the settings the
    node understands with their defaults (name to int, float or bool); a SETTINGS request may
    only change those, with values of the same type (an int is accepted for a float).
    ``capacity``: readings held until acknowledged; when full, the oldest is dropped and
    counted in :attr:`dropped`. ``next_seq``: the sequence number of the next reading, which a
    node should restore from flash after a reboot (section "Sequence numbers"). ``clock``:
    seconds as a float or int (default ``time.time``); only differences are used.

    Usage (the framing is the caller's)::

        node = WiredNode(7, EUI, settings={"interval_s": 60})
        node.add_reading({"temperature_c": 21.5})
        for payload in decoder.feed(uart.read()):
            reply = node.handle(payload)
            if reply is not None:
                uart.write(encode_frame(reply))
    """

    __slots__ = (
        "_booted",
        "_buffer",
        "_clock",
        "acked_seq",
        "address",
        "capacity",
        "dropped",
        "eui",
        "ignored",
        "invalid",
        "max_reply_bytes",
        "next_seq",
        "renumbered",
        "settings",
        "settings_version",
    )

    def __init__(
        self,
        address: int,
        eui: bytes,
        settings: "dict[str, object] | None" = None,
        capacity: int = DEFAULT_CAPACITY,
        next_seq: int = 1,
        clock: "object | None" = None,
        max_reply_bytes: int = MAX_REPLY_BYTES,
    ) -> None:
        self.address = _check_address(address)
        self.eui = _check_eui(eui)
        self.settings: dict[str, object] = {}
        if settings is not None:
            self.settings = _check_map(settings, "settings", 0)
        self.capacity = _check_uint(capacity, "capacity", 1, 1 << 16)
        self.next_seq = _check_uint(next_seq, "next_seq", 1)
        self.max_reply_bytes = _check_uint(max_reply_bytes, "max_reply_bytes", 64, 1025)
        self._clock = clock if clock is not None else _default_clock
        #: The settings version in force: 0 until the host sends one.
        self.settings_version = 0
        #: The highest sequence number the host has acknowledged as stored.
        self.acked_seq = 0
        #: Readings dropped unsent because the buffer was full.
        self.dropped = 0
        #: Frames that held no valid message (answered with ERROR when addressed here).
        self.invalid = 0
        #: Valid messages for other nodes, or other nodes' answers, seen on the bus.
        self.ignored = 0
        #: Times the node renumbered its readings because the host had seen higher numbers.
        self.renumbered = 0
        # [seq, taken_at, values] oldest first; lists, not tuples, so renumbering is in place.
        self._buffer: list[list[object]] = []
        self._booted = self._now()

    def _now(self) -> float:
        now: float = self._clock()  # type: ignore[operator]
        return now

    @property
    def buffered(self) -> int:
        """Readings held now (sent or not) until the host acknowledges them."""
        return len(self._buffer)

    def pending(self) -> "list[int]":
        """The sequence numbers held, oldest first."""
        return [self._seq(entry) for entry in self._buffer]

    def add_reading(self, values: "dict[str, object]") -> int:
        """Keep a reading taken now; return its sequence number. :class:`WiredError` for
        values the protocol cannot carry (nothing is kept then)."""
        checked = _check_map(values, "values", 0)
        seq = self.next_seq
        entry: list[object] = [seq, self._now(), checked]
        # A reading that cannot travel alone would stop the buffer forever: refuse it now.
        size = len(cbor.dumps([READINGS, self.address, self.eui, 0xFFFFFFFF, True, []]))
        if size + len(cbor.dumps(self._row(entry, 0))) > self.max_reply_bytes:
            raise WiredError("a reading with these values does not fit one reply")
        self.next_seq = seq + 1 if seq + 1 < _U32_END else 1
        if len(self._buffer) >= self.capacity:
            # Oldest dropped and counted (section "Buffer"): the newest are the most useful.
            self._buffer = self._buffer[1:]
            self.dropped += 1
        self._buffer.append(entry)
        return seq

    def handle(self, payload: bytes) -> "bytes | None":
        """Process one frame's payload from the bus; return the reply payload to send, or None
        when this node must stay silent (not addressed, or not a request)."""
        message = None
        try:
            message = decode_message(payload)
        except CodecError as err:
            return self._malformed(payload, err)
        if isinstance(message, (Readings, Nothing, SettingsAck, Status, Error)):
            # Another node's answer on the shared bus.
            self.ignored += 1
            return None
        if message.address != self.address:
            self.ignored += 1
            return None
        if isinstance(message, Poll):
            return encode_message(self._poll(message))
        if isinstance(message, Settings):
            return encode_message(self._apply(message))
        return encode_message(self.status())

    def status(self) -> Status:
        """This node's STATUS message now."""
        uptime = int(self._now() - self._booted)
        return Status(
            self.address,
            self.eui,
            min(max(uptime, 0), _U32_END - 1),
            len(self._buffer),
            min(self.dropped, _U32_END - 1),
            self.next_seq,
            self.settings_version,
        )

    def _malformed(self, payload: bytes, err: CodecError) -> "bytes | None":
        self.invalid += 1
        head = peek_address(payload)
        if head is None or head[1] != self.address or head[0] not in HOST_TYPES:
            if head is not None and head[1] == self.address and head[0] not in _NAMES:
                text = "unknown message type " + str(head[0])
                return encode_message(Error(self.address, ERR_UNKNOWN_TYPE, text))
            # Not provably ours: silence, or two nodes would answer at once (section "Errors").
            return None
        return encode_message(Error(self.address, ERR_MALFORMED, _clip(err.message)))

    @staticmethod
    def _seq(entry: "list[object]") -> int:
        seq: int = entry[0]  # type: ignore[assignment]
        return seq

    def _row(self, entry: "list[object]", now: float) -> "list[object]":
        taken: float = entry[1]  # type: ignore[assignment]
        age = int(now - taken) if now > taken else 0
        return [entry[0], min(age, _U32_END - 1), entry[2]]

    def _poll(self, poll: Poll) -> "Readings | Nothing":
        ack = poll.ack
        cursor = ack if poll.received is None or poll.received < ack else poll.received
        if cursor >= self.next_seq:
            # The host has seen numbers this node has not issued yet: the node lost its counter
            # (rebooted without restoring it). Renumber what it holds from above the host's
            # mark, so nothing is mistaken for a duplicate (section "Sequence numbers").
            seq = cursor + 1
            for entry in self._buffer:
                entry[0] = seq
                seq += 1
            self.next_seq = seq
            self.renumbered += 1
            if ack > self.acked_seq:
                self.acked_seq = ack
        elif ack > self.acked_seq:
            self.acked_seq = ack
            self._buffer = [entry for entry in self._buffer if self._seq(entry) > ack]
        now = self._now()
        rows: list[list[object]] = []
        size = len(cbor.dumps([READINGS, self.address, self.eui, self.settings_version, True, []]))
        more = False
        for entry in self._buffer:
            if self._seq(entry) <= cursor:
                continue
            row = self._row(entry, now)
            row_size = len(cbor.dumps(row))
            # +2: the array head may grow from one byte to three.
            if rows and size + row_size + 2 > self.max_reply_bytes:
                more = True
                break
            size += row_size
            rows.append(row)
        if not rows:
            return Nothing(self.address, self.eui, self.settings_version)
        readings = [_decode_reading(row) for row in rows]
        return Readings(self.address, self.eui, self.settings_version, more, readings)

    def _apply(self, request: Settings) -> "SettingsAck | Error":
        if request.version == self.settings_version:
            return SettingsAck(self.address, request.version)
        updated = {}
        for name, value in request.values.items():
            current = self.settings.get(name)
            if current is None and name not in self.settings:
                return Error(self.address, ERR_BAD_SETTING, _clip("unknown setting " + name))
            fitted = _fit(current, value)
            if fitted is None:
                return Error(
                    self.address,
                    ERR_BAD_SETTING,
                    _clip(name + " must be " + _kind(current)),
                )
            updated[name] = fitted
        # All or nothing: a refused request leaves every setting as it was.
        for name, value in updated.items():
            self.settings[name] = value
        self.settings_version = request.version
        return SettingsAck(self.address, request.version)


def _kind(value: object) -> str:
    if value is True or value is False:
        return "a bool"
    return "a float" if isinstance(value, float) else "an integer"


def _fit(current: object, value: object) -> object:
    # The new value in the type of the default, or None when it does not fit.
    if current is True or current is False:
        return value if value is True or value is False else None
    if isinstance(current, float):
        if isinstance(value, float):
            return value
        number = _int(value)
        return None if number is None else float(number)
    return _int(value)


def _clip(text: str) -> str:
    raw = text.encode("utf-8")
    if len(raw) <= MAX_TEXT_BYTES:
        return text
    # Cut on a character boundary: UTF-8 continuation bytes are 0b10xxxxxx.
    end = MAX_TEXT_BYTES
    while end > 0 and raw[end] & 0xC0 == 0x80:
        end -= 1
    return raw[:end].decode("utf-8")
