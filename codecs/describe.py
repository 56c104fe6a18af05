"""What ``owlgate decode telemetry`` and ``owlgate decode health`` print: bytes -> JSON-ready dicts.

Either message comes plain (the CBOR itself) or signed (a COSE_Sign1 around it, tag 18, see
``docs/formats/signed-documents.md``). A signed one is unwrapped, its signature headers are
shown and its content decoded; the signature is NOT verified here (that takes the gateway's
registered key, which the fleet holds), so the description says ``"verified": false``.

Bad input raises the package's typed errors only (CborError, SchemaError), with a message that
says which of the two shapes was tried and what was wrong.
"""

from __future__ import annotations

from collections.abc import Callable

from .errors import CborError, CodecError, SchemaError
from .health import describe_health
from .node import cbor
from .node.telemetry import describe_batch
from .signed import ACCEPTED_ALGS, unwrap


def _signature_headers(data: bytes) -> tuple[dict[str, object], bytes]:
    message = unwrap(data)
    alg = message.alg
    return {
        "format": "COSE_Sign1 (RFC 9052)",
        "alg": alg,
        "alg_name": ACCEPTED_ALGS.get(alg) if isinstance(alg, int) else None,
        "kid": None if message.kid is None else message.kid.hex(),
        "kid_protected": message.kid_protected,
        "content_type": message.content_type,
        "signature": message.signature.hex(),
        "size_bytes": len(data),
        "verified": False,
    }, message.payload


def _again(err: CodecError, prefix: str) -> CodecError:
    # The same kind of error, saying which shape was tried.
    kind = CborError if isinstance(err, CborError) else SchemaError
    return kind(prefix + err.message, err.offset)


def _describe(
    data: bytes,
    what: str,
    plain: Callable[[bytes], dict[str, object]],
) -> dict[str, object]:
    raw = bytes(data)
    prefix = "not " + what + " nor a COSE_Sign1 around one: "
    if not raw:
        raise CborError(prefix + "the input is empty", 0)
    failed: CodecError | None = None
    try:
        if _looks_signed(raw):
            signed, payload = _signature_headers(raw)
            prefix = "a COSE_Sign1 whose payload is not " + what + ": "
            return {"signed": signed, **plain(payload)}
        return {"signed": None, **plain(raw)}
    except CodecError as err:
        failed = err
    raise _again(failed, prefix)


def _looks_signed(raw: bytes) -> bool:
    # Tag 18 is a COSE_Sign1. Another tag, or a four-element array that starts with a byte
    # string (an untagged COSE_Sign1), is no telemetry batch or health message either: unwrap
    # refuses it with a message that names what it is.
    shape = cbor.loads(raw)
    if isinstance(shape, cbor.Tag):
        return True
    return isinstance(shape, list) and len(shape) == 4 and isinstance(shape[0], bytes)


def describe_telemetry(data: bytes) -> dict[str, object]:
    """A telemetry batch, plain or signed, as a JSON-ready dict (``signed`` is None if plain)."""
    return _describe(data, "a telemetry batch", describe_batch)


def describe_health_message(data: bytes) -> dict[str, object]:
    """A gateway health message, plain or signed, as a JSON-ready dict."""
    return _describe(data, "a health message", describe_health)
