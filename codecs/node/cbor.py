"""Deterministic CBOR (RFC 8949) for the node side and the gateway.

Why not a CBOR library: the sensor nodes run MicroPython, which ships none, and the telemetry a
node and a gateway produce must be byte-identical for the same readings. This one module runs
unchanged on both.

Encoding follows the core deterministic encoding requirements (RFC 8949 section 4.2.1):
preferred serialisation (shortest argument, section 4.2.1 and 3), definite lengths only, map
keys sorted by the bytewise lexicographic order of their encodings, and floating-point values
in the shortest of half, single or double precision that represents them exactly (section
4.2.2; NaN as the half-precision quiet NaN 0xf97e00).

Decoding accepts any well-formed CBOR (RFC 8949 section 5.3.1) except ``undefined``, simple
values other than false/true/null, and maps with repeated keys; it rejects trailing bytes, caps
nesting depth and checks every declared length against the bytes actually present before
allocating, so hostile input cannot make it allocate more than the input's size.
"""

import struct

from ..errors import CborError

MAX_DEPTH = 32
_UINT64_LIMIT = 0x10000000000000000


class Tag:
    """A tagged data item (RFC 8949 section 3.4): ``tag`` number and the enclosed ``value``."""

    # A plain class with slots, not a dataclass: this module runs on MicroPython.
    __slots__ = ("tag", "value")

    def __init__(self, tag: int, value: object) -> None:
        self.tag = tag
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tag) and other.tag == self.tag and other.value == self.value

    def __hash__(self) -> int:
        return hash((self.tag, self.value))

    def __repr__(self) -> str:
        return "Tag(" + str(self.tag) + ", " + repr(self.value) + ")"


# --- encoding ---------------------------------------------------------------------------------


def _head(major: int, argument: int) -> bytes:
    """The initial byte and argument of a data item, in its shortest form (section 4.2.1)."""
    mt = major << 5
    if argument < 24:
        return bytes((mt | argument,))
    if argument < 0x100:
        return bytes((mt | 24, argument))
    if argument < 0x10000:
        return struct.pack(">BH", mt | 25, argument)
    if argument < 0x100000000:
        return struct.pack(">BI", mt | 26, argument)
    if argument < _UINT64_LIMIT:
        return bytes((mt | 27,)) + argument.to_bytes(8, "big")
    raise CborError("integer argument does not fit 64 bits: " + str(argument))


def _float(value: float) -> bytes:
    # Shortest exact form (section 4.2.2). NaN has one canonical encoding.
    if value != value:
        return b"\xf9\x7e\x00"
    for fmt, initial in ((">e", 0xF9), (">f", 0xFA)):
        try:
            packed = struct.pack(fmt, value)
        except (OverflowError, ValueError):
            continue
        if struct.unpack(fmt, packed)[0] == value:
            return bytes((initial,)) + packed
    return b"\xfb" + struct.pack(">d", value)


def _encode(value: object, out: list[bytes]) -> None:
    # bool first: on CPython it is an int subclass, on MicroPython it is not.
    if value is False:
        out.append(b"\xf4")
    elif value is True:
        out.append(b"\xf5")
    elif value is None:
        out.append(b"\xf6")
    elif isinstance(value, int):
        if value >= 0:
            out.append(_head(0, value))
        else:
            out.append(_head(1, -1 - value))
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        out.append(_head(3, len(raw)))
        out.append(raw)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        out.append(_head(2, len(raw)))
        out.append(raw)
    elif isinstance(value, (list, tuple)):
        out.append(_head(4, len(value)))
        for item in value:
            _encode(item, out)
    elif isinstance(value, dict):
        _encode_map(value, out)
    elif isinstance(value, float):
        out.append(_float(value))
    elif isinstance(value, Tag):
        if not isinstance(value.tag, int) or value.tag < 0:
            raise CborError("tag number must be a non-negative integer: " + repr(value.tag))
        out.append(_head(6, value.tag))
        _encode(value.value, out)
    else:
        raise CborError("cannot encode a value of type " + type(value).__name__)


def _encode_map(value: dict[object, object], out: list[bytes]) -> None:
    pairs: list[tuple[bytes, object]] = []
    for key, item in value.items():
        parts: list[bytes] = []
        _encode(key, parts)
        pairs.append((b"".join(parts), item))
    # Section 4.2.1: keys sorted by the bytewise lexicographic order of their encodings.
    pairs.sort(key=_first)
    out.append(_head(5, len(pairs)))
    previous = b""
    for encoded_key, item in pairs:
        if encoded_key == previous:
            raise CborError("map has two keys with the same encoding: " + encoded_key.hex())
        previous = encoded_key
        out.append(encoded_key)
        _encode(item, out)


def _first(pair: tuple[bytes, object]) -> bytes:
    return pair[0]


def dumps(value: object) -> bytes:
    """Encode ``value`` as deterministic CBOR."""
    out: list[bytes] = []
    _encode(value, out)
    return b"".join(out)


# --- decoding ---------------------------------------------------------------------------------

_BREAK = object()


class _Reader:
    __slots__ = ("data", "end")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.end = len(data)

    def need(self, offset: int, count: int) -> None:
        if count > self.end - offset:
            raise CborError(
                "truncated: need "
                + str(count)
                + " byte(s) at offset "
                + str(offset)
                + ", have "
                + str(self.end - offset),
                offset,
            )

    def argument(self, info: int, offset: int) -> tuple[int, int]:
        """Read the argument that follows the initial byte; return (argument, next offset)."""
        if info < 24:
            return info, offset
        if info == 24:
            self.need(offset, 1)
            return self.data[offset], offset + 1
        if info == 25:
            self.need(offset, 2)
            return struct.unpack(">H", self.data[offset : offset + 2])[0], offset + 2
        if info == 26:
            self.need(offset, 4)
            return struct.unpack(">I", self.data[offset : offset + 4])[0], offset + 4
        if info == 27:
            self.need(offset, 8)
            return int.from_bytes(self.data[offset : offset + 8], "big"), offset + 8
        raise CborError(
            "reserved additional information " + str(info) + " at offset " + str(offset - 1),
            offset - 1,
        )

    def item(self, offset: int, depth: int) -> tuple[object, int]:
        if depth > MAX_DEPTH:
            raise CborError("nesting deeper than " + str(MAX_DEPTH), offset)
        self.need(offset, 1)
        initial = self.data[offset]
        major = initial >> 5
        info = initial & 0x1F
        start = offset
        offset += 1
        if major == 7:
            return self.simple(info, offset, start)
        if info == 31:
            return self.indefinite(major, offset, depth, start)
        argument, offset = self.argument(info, offset)
        if major == 0:
            return argument, offset
        if major == 1:
            return -1 - argument, offset
        if major == 2 or major == 3:
            self.need(offset, argument)
            raw = self.data[offset : offset + argument]
            return self.text(raw, offset) if major == 3 else raw, offset + argument
        if major == 4:
            # Every item takes at least one byte: a count beyond the input is a lie.
            self.need(offset, argument)
            items: list[object] = []
            for _ in range(argument):
                value, offset = self.item(offset, depth + 1)
                items.append(value)
            return items, offset
        if major == 5:
            self.need(offset, 2 * argument)
            result: dict[object, object] = {}
            for _ in range(argument):
                offset = self.pair(result, offset, depth)
            return result, offset
        value, offset = self.item(offset, depth + 1)
        return Tag(argument, value), offset

    def pair(self, result: dict[object, object], offset: int, depth: int) -> int:
        key_at = offset
        key, offset = self.item(offset, depth + 1)
        if key is _BREAK:
            raise CborError("unexpected break at offset " + str(key_at), key_at)
        # An array, a map, or a tag around one of them: valid CBOR, but no Python dict key.
        # (MicroPython warns on exception chaining, so the error is raised outside the handler.)
        hashable = True
        try:
            hash(key)
        except TypeError:
            hashable = False
        if not hashable:
            raise CborError("map key at offset " + str(key_at) + " is not hashable", key_at)
        if key in result:
            raise CborError("repeated map key at offset " + str(key_at), key_at)
        value, offset = self.item(offset, depth + 1)
        if value is _BREAK:
            raise CborError("unexpected break at offset " + str(offset - 1), offset - 1)
        result[key] = value
        return offset

    def text(self, raw: bytes, offset: int) -> str:
        # The error is raised outside the handler: MicroPython warns on exception chaining.
        decoded = None
        try:
            decoded = raw.decode("utf-8")
        except UnicodeError:
            decoded = None
        if decoded is None:
            raise CborError("text string is not valid UTF-8 at offset " + str(offset), offset)
        return decoded

    def simple(self, info: int, offset: int, start: int) -> tuple[object, int]:
        if info == 20:
            return False, offset
        if info == 21:
            return True, offset
        if info == 22:
            return None, offset
        if info == 25:
            self.need(offset, 2)
            return struct.unpack(">e", self.data[offset : offset + 2])[0], offset + 2
        if info == 26:
            self.need(offset, 4)
            return struct.unpack(">f", self.data[offset : offset + 4])[0], offset + 4
        if info == 27:
            self.need(offset, 8)
            return struct.unpack(">d", self.data[offset : offset + 8])[0], offset + 8
        if info == 31:
            return _BREAK, offset
        raise CborError("unsupported simple value " + str(info) + " at offset " + str(start), start)

    def indefinite(self, major: int, offset: int, depth: int, start: int) -> tuple[object, int]:
        # Indefinite lengths (section 3.2) are accepted on input, never produced.
        if major == 2 or major == 3:
            chunks: list[bytes] = []
            while True:
                self.need(offset, 1)
                if self.data[offset] == 0xFF:
                    raw = b"".join(chunks)
                    return (self.text(raw, start) if major == 3 else raw), offset + 1
                chunk_start = offset
                if self.data[offset] >> 5 != major or self.data[offset] & 0x1F == 31:
                    raise CborError(
                        "indefinite string chunk of the wrong type at offset " + str(offset),
                        offset,
                    )
                length, offset = self.argument(self.data[offset] & 0x1F, offset + 1)
                self.need(offset, length)
                chunks.append(self.data[offset : offset + length])
                offset += length
                if len(chunks) > self.end:
                    raise CborError("too many chunks at offset " + str(chunk_start), chunk_start)
        if major == 4:
            items: list[object] = []
            while True:
                value, offset = self.item(offset, depth + 1)
                if value is _BREAK:
                    return items, offset
                items.append(value)
        if major == 5:
            result: dict[object, object] = {}
            while True:
                self.need(offset, 1)
                if self.data[offset] == 0xFF:
                    return result, offset + 1
                offset = self.pair(result, offset, depth)
        raise CborError(
            "major type " + str(major) + " has no indefinite length; offset " + str(start),
            start,
        )


def load_prefix(data: bytes, offset: int = 0, depth: int = 0) -> tuple[object, int]:
    """Decode the one data item that starts at ``offset``; return it and the offset after it.

    ``depth`` is how deeply the item is nested in an enclosing one (0 for a top-level item):
    the nesting limit counts from there, as it would if the whole were decoded.
    """
    reader = _Reader(bytes(data))
    value, end = reader.item(offset, depth)
    if value is _BREAK:
        raise CborError("unexpected break at offset " + str(offset), offset)
    return value, end


def loads(data: bytes) -> object:
    """Decode exactly one CBOR data item; trailing bytes are an error."""
    raw = bytes(data)
    value, end = load_prefix(raw)
    if end != len(raw):
        raise CborError(
            str(len(raw) - end) + " trailing byte(s) after the item at offset " + str(end), end
        )
    return value
