"""The ``owlgate`` command, and its ``decode`` commands.

The root command is a plugin host: every part of owlgate (edge, fleet, hil, provisioning,
bench, ...) declares its command group under the entry-point group ``owlgate.commands`` in
``pyproject.toml``, and the root loads only the one named on the command line. So this module,
which lives in the root package every part may import, imports none of them, and a part's
heavy dependencies are only paid for when its command runs.

``owlgate decode`` turns captured bytes into JSON for engineers: a LoRaWAN PHYPayload, a serial
frame from a concentrator, a telemetry batch (signed or not), a health message. Bad input is
one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points, version
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from typer.core import TyperGroup

from .errors import OwlgateError

ENTRY_POINT_GROUP = "owlgate.commands"
EXIT_BAD_INPUT = 2


class PartsGroup(TyperGroup):
    """The root group: its sub-commands are the entry points of ``owlgate.commands``.

    Typer ships its own copy of click, so the group derives from Typer's and every part
    declares its commands with Typer; a part's group is converted when it is loaded.
    """

    @staticmethod
    def _points() -> dict[str, EntryPoint]:
        return {point.name: point for point in entry_points(group=ENTRY_POINT_GROUP)}

    def list_commands(self, ctx: Any) -> list[str]:
        return sorted(self._points())

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        point = self._points().get(cmd_name)
        if point is None:
            return None
        loaded = point.load()
        if not isinstance(loaded, typer.Typer):
            raise TypeError(f"entry point {cmd_name!r} ({point.value}) is not a Typer app")
        return typer.main.get_command(loaded)


app = typer.Typer(
    name="owlgate",
    cls=PartsGroup,
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"owlgate {version('owlgate')}")
        raise typer.Exit()


@app.callback()
def root(
    show_version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="print the version"),
    ] = False,
) -> None:
    """owlgate: gateways, sensors and the fleet manager of a city LoRaWAN sensor network."""


def main() -> None:
    """The console script ``owlgate``."""
    app()


# --- owlgate decode ---------------------------------------------------------------------------

decode_command = typer.Typer(
    name="decode",
    help=(
        "Decode captured bytes (hex) into JSON: LoRaWAN frames, serial frames, telemetry, "
        "health, device payloads."
    ),
    no_args_is_help=True,
    add_completion=False,
)


def fail(message: str) -> NoReturn:
    """One line on stderr, exit code 2: what a person gets for bad input."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_BAD_INPUT)


_HEX_NOISE = re.compile(r"[\s:_-]")


def parse_hex(text: str, what: str, length: int | None = None) -> bytes:
    """Hex with optional 0x prefix, spaces, colons or dashes; ``length`` in bytes if fixed."""
    cleaned = _HEX_NOISE.sub("", text.strip())
    if cleaned[:2].lower() == "0x":
        cleaned = cleaned[2:]
    try:
        data = bytes.fromhex(cleaned)
    except ValueError:
        fail(f"{what} is not hex: {text!r}")
    if length is not None and len(data) != length:
        fail(f"{what} must be {length} bytes ({2 * length} hex digits), got {len(data)}")
    return data


def _key(text: str | None, option: str) -> bytes | None:
    return None if text is None else parse_hex(text, option, 16)


def _emit(describe: Callable[..., dict[str, Any]], *args: Any) -> None:
    try:
        result = describe(*args)
    except OwlgateError as err:
        fail(str(err))
    json.dump(result, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def _input_bytes(source: str, what: str) -> bytes:
    """HEX on the command line, or a FILE holding raw bytes or hex text."""
    path = Path(source)
    if len(source) < 4096 and path.is_file():
        raw = path.read_bytes()
        text = raw.decode("ascii", errors="replace").strip()
        if text and _HEX_NOISE.sub("", text).isalnum():
            try:
                return bytes.fromhex(_HEX_NOISE.sub("", text))
            except ValueError:
                return raw
        return raw
    return parse_hex(source, what)


@decode_command.command("lorawan")
def decode_lorawan(
    phy_hex: Annotated[str, typer.Argument(metavar="HEX", help="the PHYPayload, in hex")],
    nwk_s_key: Annotated[
        str | None, typer.Option("--nwk-s-key", help="NwkSKey (32 hex): checks the MIC")
    ] = None,
    app_s_key: Annotated[
        str | None, typer.Option("--app-s-key", help="AppSKey (32 hex): decrypts FRMPayload")
    ] = None,
    app_key: Annotated[
        str | None, typer.Option("--app-key", help="AppKey (32 hex): join request/accept")
    ] = None,
) -> None:
    """A LoRaWAN 1.0.x frame: fields, MIC check and decrypted payload when keys are given."""
    from .lorawan import describe

    phy = parse_hex(phy_hex, "HEX")
    keys = (_key(nwk_s_key, "--nwk-s-key"), _key(app_s_key, "--app-s-key"))
    _emit(describe, phy, *keys, _key(app_key, "--app-key"))


@decode_command.command("frame")
def decode_frame(
    frame_hex: Annotated[
        str, typer.Argument(metavar="HEX", help="one serial frame (COBS, with or without 00)")
    ],
) -> None:
    """A serial frame from a concentrator: CRC check and the protocol message inside."""
    from .concentrator import describe_frame

    _emit(describe_frame, parse_hex(frame_hex, "HEX"))


@decode_command.command("telemetry")
def decode_telemetry(
    source: Annotated[
        str, typer.Argument(metavar="HEX|FILE", help="a telemetry batch, signed or not")
    ],
) -> None:
    """A telemetry batch (CBOR), or a signed one (COSE_Sign1 around the batch)."""
    from .describe import describe_telemetry

    _emit(describe_telemetry, _input_bytes(source, "HEX|FILE"))


@decode_command.command("health")
def decode_health(
    source: Annotated[str, typer.Argument(metavar="HEX|FILE", help="a health message")],
) -> None:
    """A gateway health message (CBOR), signed or not."""
    from .describe import describe_health_message

    _emit(describe_health_message, _input_bytes(source, "HEX|FILE"))


@decode_command.command("payload")
def decode_payload(
    profile: Annotated[
        str, typer.Argument(metavar="PROFILE", help="device profile id, e.g. parking-v1")
    ],
    f_port: Annotated[int, typer.Argument(metavar="FPORT", help="the LoRaWAN FPort")],
    payload_hex: Annotated[
        str, typer.Argument(metavar="HEX", help="the decrypted FRMPayload, in hex")
    ],
) -> None:
    """A device payload: an uplink of the profile, or a node-settings downlink (FPort 21)."""
    from .payloads import describe

    _emit(describe, profile, f_port, parse_hex(payload_hex, "HEX"))


if __name__ == "__main__":
    main()
