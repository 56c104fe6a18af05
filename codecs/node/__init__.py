"""The node-side codecs: this sub-package runs unchanged on MicroPython.

Rules that keep it so (MicroPython 1.2x): no ``typing`` or ``__future__`` imports (annotations
are parsed but never evaluated there), no dataclasses or enums, ``bool`` is not an ``int``,
and a ``bytearray`` slice cannot be deleted.
"""
