"""Bytes as hex text for error messages and descriptions, the same on CPython and MicroPython.

MicroPython's ``b"".hex()`` returns ``b""`` rather than ``""`` (seen on the 1.27 WebAssembly
port), so an error message that adds it to a string would itself raise ``TypeError``: every
node-side module shows bytes through :func:`hex_text` instead.
"""


def hex_text(data: bytes | bytearray | memoryview, limit: int = 0) -> str:
    """``data`` in lowercase hex; with ``limit``, at most that many bytes and then
    ``"... (N bytes)"``."""
    raw = bytes(data)
    if not raw:
        return ""
    if limit and len(raw) > limit:
        return raw[:limit].hex() + "... (" + str(len(raw)) + " bytes)"
    return raw.hex()
