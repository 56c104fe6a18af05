"""Wire formats of owlgate: pure functions, no I/O.

The sub-package ``owlgate.codecs.node`` (and ``errors``) run unchanged on MicroPython;
everything else here is CPython only.
"""
