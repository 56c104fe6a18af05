"""Serial framing: COBS-encoded frames with a CRC-16, delimited by 0x00.

Every message between the gateway and a concentrator MCU (and between a wired sensor node and
its host) travels on the serial line as one frame, specified in
``docs/formats/serial-framing.md``::

    00 | COBS( payload | CRC-16 high byte | CRC-16 low byte ) | 00

- The CRC is CRC-16/CCITT-FALSE (polynomial 0x1021, initial value 0xFFFF, no reflection, no
  final XOR) over the payload, sent most significant byte first.
- COBS (Cheshire and Baker, "Consistent Overhead Byte Stuffing", IEEE/ACM Transactions on
  Networking, 1999) removes every 0x00 from the payload and CRC, at a cost of one byte per 254,
  so 0x00 can only ever be a delimiter.
- A sender writes a delimiter before and after each frame. The leading one costs a byte per
  frame and makes a receiver drop any line noise it has buffered before the frame starts, so
  the frame after a glitch survives; a receiver therefore sees empty frames between delimiters
  and ignores them.

:class:`FrameDecoder` is the receiving side for a byte stream: it never raises on bad input,
it drops and counts bad frames, resynchronises at the next 0x00, and bounds its memory.

This module runs unchanged on MicroPython: no typing, dataclasses or enums, and the CRC falls
back to a table when ``binascii.crc_hqx`` is missing (it is, on MicroPython).
"""

# MicroPython has binascii (without crc_hqx); micropython-stdlib-stubs ships no stub for it,
# hence the ignore, which only the MicroPython type check needs.
import binascii  # type: ignore[import-not-found, unused-ignore]

from ..errors import CrcError, FrameError
from .hextext import hex_text

#: Largest payload a frame carries. LoRa PHYPayloads are at most 255 bytes; the concentrator
#: protocol's largest message (a radio configuration of 64 channels) stays well below this.
MAX_PAYLOAD = 1024
#: Bytes of CRC at the end of every decoded frame.
CRC_SIZE = 2
#: Largest COBS-encoded frame (between delimiters) that can carry MAX_PAYLOAD: COBS adds at
#: most one code byte, plus one per 254 bytes of input.
MAX_FRAME = MAX_PAYLOAD + CRC_SIZE + 1 + (MAX_PAYLOAD + CRC_SIZE) // 254
#: The frame delimiter.
DELIMITER = b"\x00"

_CODES = [bytes((code,)) for code in range(256)]
_HEX_LIMIT = 32


def _hex(data: bytes) -> str:
    return hex_text(data, _HEX_LIMIT)


# --- CRC-16/CCITT-FALSE -----------------------------------------------------------------------


def _make_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return table


_TABLE = _make_table()


def crc16_table(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE of ``data`` by table lookup: the portable path (MicroPython).

    ``crc`` is the value to continue from, so a CRC can be computed over pieces.
    """
    table = _TABLE
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[(crc >> 8) ^ byte]
    return crc


# CPython's binascii.crc_hqx is this same CRC (polynomial 0x1021, no reflection) with the
# initial value as its argument, computed in C. MicroPython's binascii has no crc_hqx.
_CRC_HQX = getattr(binascii, "crc_hqx", None)


def crc16(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE of ``data`` (check value: ``crc16(b"123456789") == 0x29B1``)."""
    if _CRC_HQX is not None:
        return int(_CRC_HQX(data, crc))
    return crc16_table(data, crc)


# --- COBS -------------------------------------------------------------------------------------


def cobs_encode(data: bytes | bytearray | memoryview) -> bytes:
    """COBS-encode ``data``: the result has no 0x00 and is at most 1 + len/254 bytes longer.

    A run of 254 non-zero bytes is one block with code 0xFF (no zero implied). Input that ends
    exactly after such a block gets no closing empty block (the ``01`` a byte-at-a-time
    encoder following the paper's code writes there); :func:`cobs_decode` accepts both forms.
    """
    data = bytes(data)
    size = len(data)
    # Fast path: the common short frame without zeros is one block.
    if size < 254 and DELIMITER not in data:
        return _CODES[size + 1] + data
    out = []
    parts = data.split(DELIMITER)
    last = len(parts) - 1
    index = 0
    for part in parts:
        length = len(part)
        start = 0
        while length - start >= 254:
            out.append(b"\xff")
            out.append(part[start : start + 254])
            start += 254
        # The implied zero after each part but the last; the last part ending on a full block
        # needs no closing code.
        if index < last or start < length or length == 0:
            out.append(_CODES[length - start + 1])
            out.append(part[start:])
        index += 1
    return b"".join(out)


def cobs_decode(data: bytes | bytearray | memoryview) -> bytes:
    """Decode one COBS block sequence (no delimiters); FrameError with the offset if invalid."""
    data = bytes(data)
    size = len(data)
    zero = data.find(DELIMITER)
    if zero >= 0:
        raise FrameError("COBS data has a 00 byte at offset " + str(zero) + ": " + _hex(data), zero)
    if size == 0:
        return b""
    # Fast path: one block that covers everything.
    if data[0] == size:
        return data[1:]
    # Without a 0xFF block, every code byte after the first stands for one zero of the
    # decoded data, in its place: put the zeros in and drop the first code.
    zeros = bytearray(data)
    at = 0
    while at < size:
        code = data[at]
        if code == 0xFF:
            break
        zeros[at] = 0
        at += code
    if at == size:
        return bytes(zeros)[1:]
    # Blocks of 254 bytes, or a code that runs past the end: block by block.
    out = []
    at = 0
    while at < size:
        code = data[at]
        end = at + code
        if end > size:
            raise FrameError(
                "COBS code "
                + str(code)
                + " at offset "
                + str(at)
                + " runs past the end ("
                + str(size)
                + " bytes): "
                + _hex(data),
                at,
            )
        out.append(data[at + 1 : end])
        at = end
        if code != 0xFF and at < size:
            out.append(DELIMITER)
    return b"".join(out)


# --- frames -----------------------------------------------------------------------------------


def encode_frame(payload: bytes | bytearray | memoryview) -> bytes:
    """The on-wire frame for ``payload``: ``00 | COBS(payload | CRC-16 big-endian) | 00``."""
    payload = bytes(payload)
    if len(payload) > MAX_PAYLOAD:
        raise FrameError(
            "payload of "
            + str(len(payload))
            + " bytes is longer than MAX_PAYLOAD ("
            + str(MAX_PAYLOAD)
            + ")"
        )
    crc = crc16(payload)
    return DELIMITER + cobs_encode(payload + bytes((crc >> 8, crc & 0xFF))) + DELIMITER


def _unframe(body: bytes) -> bytes:
    # One frame between delimiters back to its payload; the caller has removed the delimiters.
    decoded = cobs_decode(body)
    size = len(decoded)
    if size < CRC_SIZE:
        raise FrameError(
            "frame too short: "
            + str(size)
            + " byte(s) after COBS decoding, need at least "
            + str(CRC_SIZE)
            + " (the CRC-16): "
            + _hex(body)
        )
    if size - CRC_SIZE > MAX_PAYLOAD:
        raise FrameError(
            "frame too long: payload of "
            + str(size - CRC_SIZE)
            + " bytes, MAX_PAYLOAD is "
            + str(MAX_PAYLOAD)
            + ": "
            + _hex(body)
        )
    payload = decoded[:-CRC_SIZE]
    # crc16() without its call: this runs for every frame.
    expected = int(_CRC_HQX(payload, 0xFFFF)) if _CRC_HQX is not None else crc16_table(payload)
    got = (decoded[-2] << 8) | decoded[-1]
    if got != expected:
        raise CrcError(
            "CRC mismatch: frame carries "
            + _hex4(got)
            + ", payload computes "
            + _hex4(expected)
            + "; payload: "
            + _hex(payload),
            size - CRC_SIZE,
        )
    return payload


def _hex4(value: int) -> str:
    text = hex(value)[2:]
    return "0x" + "0" * (4 - len(text)) + text


def decode_frame(frame: bytes | bytearray | memoryview) -> bytes:
    """The payload of one frame, given with or without its 0x00 delimiters.

    Raises :class:`FrameError` for bad COBS, a frame too short to hold a CRC, or too long, and
    its subclass :class:`CrcError` when the CRC does not match.
    """
    data = bytes(frame)
    body = data.strip(DELIMITER)
    if not body:
        raise FrameError("no frame: only delimiters or nothing: " + _hex(data))
    if len(body) > MAX_FRAME:
        raise FrameError(
            "frame too long: "
            + str(len(body))
            + " bytes between delimiters, at most "
            + str(MAX_FRAME)
            + ": "
            + _hex(body)
        )
    inner = body.find(DELIMITER)
    if inner >= 0:
        # The body starts after the leading delimiters: its first occurrence in data.
        at = data.find(body) + inner
        raise FrameError(
            "more than one frame: a 00 delimiter inside, at offset " + str(at) + ": " + _hex(data),
            at,
        )
    return _unframe(body)


class FrameDecoder:
    """Streaming decoder: bytes in as they arrive, payloads of valid frames out.

    :meth:`feed` never raises. A frame that fails (bad COBS, too short, CRC mismatch) is
    dropped and counted, and decoding resumes at the next 0x00. At most ``max_frame`` bytes
    (COBS-encoded, between delimiters) are buffered: a longer run without a delimiter is
    dropped, counted as an overflow, and everything up to the next 0x00 is discarded, so a
    flood of noise cannot grow memory.

    Counters (plain ints, since construction):

    - ``frames_ok``: payloads returned;
    - ``crc_errors``: frames whose CRC did not match;
    - ``frame_errors``: frames with bad COBS, too short for a CRC or with a payload above
      ``MAX_PAYLOAD``;
    - ``overflows``: runs longer than ``max_frame`` without a delimiter;
    - ``bytes_discarded``: bytes of all the above, delimiters not counted.

    ``last_error`` holds the last error (a :class:`FrameError` or :class:`CrcError`), or None,
    for the caller to log. Empty frames (two delimiters in a row) are normal and not counted.
    """

    # A plain class with slots: this module runs on MicroPython.
    __slots__ = (
        "_buffer",
        "_discarding",
        "bytes_discarded",
        "crc_errors",
        "frame_errors",
        "frames_ok",
        "last_error",
        "max_frame",
        "overflows",
    )

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        if max_frame is True or not isinstance(max_frame, int) or max_frame < 3:
            raise FrameError("max_frame must be an integer of at least 3, got " + repr(max_frame))
        self.max_frame = max_frame
        self.frames_ok = 0
        self.crc_errors = 0
        self.frame_errors = 0
        self.overflows = 0
        self.bytes_discarded = 0
        self.last_error: FrameError | None = None
        self._buffer = bytearray()
        self._discarding = False

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held until its delimiter arrives."""
        return len(self._buffer)

    def reset(self) -> None:
        """Forget a partial frame (after reopening the port, say); the counters stay."""
        self._buffer = bytearray()
        self._discarding = False

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Take the next bytes from the line; return the payloads of the frames they complete."""
        if not isinstance(data, bytes):
            data = bytes(data)
        payloads: list[bytes] = []
        end = len(data)
        start = 0
        if self._discarding:
            stop = data.find(DELIMITER)
            if stop < 0:
                self.bytes_discarded += end
                return payloads
            self.bytes_discarded += stop
            self._discarding = False
            start = stop + 1
        while True:
            stop = data.find(DELIMITER, start)
            if stop < 0:
                break
            if self._buffer:
                body = bytes(self._buffer) + data[start:stop]
                # Reassigned, not cleared in place: MicroPython cannot delete bytearray slices.
                self._buffer = bytearray()
            else:
                body = data[start:stop]
            start = stop + 1
            if body:
                self._frame(body, payloads)
        if start < end:
            pending = len(self._buffer) + end - start
            if pending > self.max_frame:
                self._overflow(pending)
                self._buffer = bytearray()
                self._discarding = True
            else:
                self._buffer += data[start:]
        return payloads

    def _overflow(self, size: int) -> None:
        self.overflows += 1
        self.bytes_discarded += size
        self.last_error = FrameError(
            "more than "
            + str(self.max_frame)
            + " bytes without a 00 delimiter: dropped up to the next delimiter"
        )

    def _frame(self, body: bytes, payloads: list[bytes]) -> None:
        if len(body) > self.max_frame:
            self._overflow(len(body))
            return
        try:
            payloads.append(_unframe(body))
            self.frames_ok += 1
            return
        except CrcError as err:
            self.crc_errors += 1
            self.last_error = err
        except FrameError as err:
            self.frame_errors += 1
            self.last_error = err
        self.bytes_discarded += len(body)
