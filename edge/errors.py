"""The edge agent's errors: one subtree under :class:`~owlgate.codecs.errors.OwlgateError`.

Every error carries ``.message`` (for people and logs), like the codecs' errors.
"""

from __future__ import annotations

from ..codecs.concentrator import ErrorCode
from ..codecs.errors import OwlgateError


class EdgeError(OwlgateError):
    """Root of the errors the gateway agent raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RadioError(EdgeError):
    """A radio backend could not do what was asked: the port, the handshake, a request."""


class RadioTimeout(RadioError):
    """The radio did not answer a request in time (it may or may not have carried it out)."""


class RadioDisconnected(RadioError):
    """The radio is not connected now (or the connection was lost while a request waited);
    the backend keeps reconnecting by itself."""


class RadioRefused(RadioError):
    """The radio answered a request with a protocol ``ERROR`` (``code`` says why): nothing
    was applied or scheduled."""

    def __init__(self, message: str, code: ErrorCode) -> None:
        super().__init__(message)
        self.code = code


class ConfigError(EdgeError):
    """A configuration file the agent cannot run with: unreadable, not TOML, an unknown or
    missing key, a value out of range, a key file that does not hold the right key.

    ``file`` is the configuration file as given, ``section`` and ``key`` name the setting
    (None when the problem is the whole file or section), ``problem`` says what is wrong;
    ``message`` puts them on one line: ``edge.toml: [batch] max_readings: must be ...``.
    """

    def __init__(self, file: str, section: str | None, key: str | None, problem: str) -> None:
        where = file
        if section is not None:
            where += f": [{section}]"
        if key is not None:
            where += f" {key}" if section is not None else f": {key}"
        super().__init__(f"{where}: {problem}")
        self.file = file
        self.section = section
        self.key = key
        self.problem = problem
