"""The exception tree of owlgate.

Every error the package raises on bad input derives from :class:`OwlgateError`, so a caller
can catch one class at the boundary. This module runs unchanged on MicroPython (no
dataclasses, no typing imports), because the node-side codecs raise these errors too.
"""


class OwlgateError(Exception):
    """Root of every error owlgate raises on purpose."""


class CodecError(OwlgateError):
    """Bytes or values that do not follow a wire format.

    Not also a ``ValueError``: MicroPython cannot derive from two built-in exception bases.

    ``offset`` is where in the input the problem was found, when that is known.
    """

    def __init__(self, message: str, offset: "int | None" = None) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


class FrameError(CodecError):
    """A serial frame that cannot be decoded (bad COBS, too short, too long)."""


class CrcError(FrameError):
    """A serial frame whose CRC-16 does not match its content."""


class CborError(CodecError):
    """Bytes that are not well-formed CBOR, or CBOR this codec does not accept."""


class SchemaError(CodecError):
    """Well-formed CBOR whose structure is not the message it claims to be."""


class LorawanError(CodecError):
    """A LoRaWAN frame that cannot be parsed or built."""


class MicError(LorawanError):
    """A LoRaWAN frame whose message integrity code does not verify."""


class ReplayError(LorawanError):
    """A LoRaWAN frame counter that was already used (a replay)."""


class PayloadError(CodecError):
    """A device payload that is short, malformed, or out of range."""


class SignatureError(CodecError):
    """A signed document that does not verify: wrong key, bad signature, tampered, unknown alg."""
