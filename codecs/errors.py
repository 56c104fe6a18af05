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


class RollbackError(SignatureError):
    """A signed document whose sequence number is not above the last one applied.

    Anti-rollback in the manner of IETF SUIT (RFC 9124, REQ.SEC.SEQUENCE): a device refuses a
    document that is older than, or as old as, what it already runs, even when the signature
    is good, so an attacker cannot replay an old but validly signed configuration.
    ``seq`` is the refused document's number, ``last_applied`` the one in force.
    """

    def __init__(
        self, message: str, seq: "int | None" = None, last_applied: "int | None" = None
    ) -> None:
        super().__init__(message)
        self.seq = seq
        self.last_applied = last_applied
