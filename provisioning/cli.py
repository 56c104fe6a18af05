"""``owlgate provision``: the field technician's commands.

``owlgate provision gateway`` claims a gateway with a one-time token from the fleet, writes
its keys and configuration, and checks that its heartbeat reaches the fleet
(:mod:`owlgate.provisioning.gateway`; the guide is ``docs/provisioning.md``). Every command
ends with one line saying what happened; exit code 0 on success, 1 when a step failed, 2 on
bad input.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, NoReturn
from urllib.parse import urlsplit

import typer
from rich.console import Console
from rich.markup import escape
from rich.status import Status

from .gateway import (
    DEFAULT_RADIO_PORT,
    ProvisionError,
    ProvisionRequest,
    ProvisionResult,
    StepResult,
    check_claim,
    machine_gateway_id,
    normalise_gateway_id,
    provision,
    read_claim_file,
)

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

provision_command = typer.Typer(
    name="provision",
    help="Provision gateways and sensor modules in the field.",
    no_args_is_help=True,
    add_completion=False,
)


@provision_command.callback()
def provision_group() -> None:
    """Provision gateways and sensor modules in the field (docs/provisioning.md)."""


def _refuse(error: ProvisionError, as_json: bool) -> NoReturn:
    if as_json:
        typer.echo(json.dumps({"ok": False, "error": _error_json(error), "line": error.line}))
    else:
        typer.echo(error.line, err=True)
    raise typer.Exit(EXIT_BAD_INPUT if error.bad_input else EXIT_FAILED)


def _error_json(error: ProvisionError) -> dict[str, str]:
    return {"step": error.step, "what": error.what, "todo": error.todo}


def _fleet_url(url: str) -> str:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as err:
        raise ProvisionError(
            "input", f"--fleet {url!r}: {err}", "give the fleet's API address", bad_input=True
        ) from err
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ProvisionError(
            "input",
            f"--fleet {url!r} is not an http:// or https:// address",
            "give the fleet's API address, e.g. --fleet https://fleet.city.example",
            bad_input=True,
        )
    return url.rstrip("/")


class _Display:
    """Each step as a spinner while it runs, then one line with its outcome and time."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._status: Status | None = None

    def started(self, step: str) -> None:
        self._status = self.console.status(f"{step} ...")
        self._status.start()

    def finished(self, result: StepResult) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
        mark = "[green]ok[/green]  " if result.ok else "[red]FAIL[/red]"
        self.console.print(
            f"{mark} {result.step:<13} {escape(result.detail)} [dim]({result.seconds:.2f} s)[/dim]",
            highlight=False,
            soft_wrap=True,
        )


@provision_command.command("gateway")
def gateway(
    fleet: Annotated[
        str, typer.Option("--fleet", metavar="URL", help="the fleet's API, e.g. https://fleet:8080")
    ],
    directory: Annotated[
        Path,
        typer.Option(
            "--dir",
            metavar="DIR",
            help="where the gateway's keys, edge.toml and password go (made 0700; on a "
            "re-run the keys there are reused)",
        ),
    ],
    claim: Annotated[
        str | None,
        typer.Option("--claim", metavar="TOKEN", help="the claim token (or --claim-file)"),
    ] = None,
    claim_file: Annotated[
        Path | None,
        typer.Option(
            "--claim-file",
            metavar="FILE",
            help="read the claim token from FILE (keeps it out of the shell history)",
        ),
    ] = None,
    gateway_id: Annotated[
        str | None,
        typer.Option(
            "--gateway-id",
            metavar="HEX",
            help="the gateway's EUI-64 (default: from this machine's first MAC address, FFFE "
            "inserted)",
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="a name for the fleet's lists (default: the id)")
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            "--state-dir", metavar="DIR", help="the agent's state folder (default: DIR/state)"
        ),
    ] = None,
    radio_port: Annotated[
        str,
        typer.Option("--radio-port", metavar="PATH", help="the concentrator's serial port"),
    ] = DEFAULT_RADIO_PORT,
    as_json: Annotated[
        bool, typer.Option("--json", help="print a machine-readable result instead")
    ] = False,
) -> None:
    """Claim this gateway with the fleet, write its keys and edge.toml, and check that its
    heartbeat reaches the fleet."""
    try:
        fleet_url = _fleet_url(fleet)
        if (claim is None) == (claim_file is None):
            raise ProvisionError(
                "input",
                "give the claim token with either --claim or --claim-file",
                "pass exactly one of them",
                bad_input=True,
            )
        token = read_claim_file(claim_file) if claim_file else check_claim(claim or "", "--claim")
        if gateway_id is not None:
            gid = normalise_gateway_id(gateway_id)
        else:
            found = machine_gateway_id()
            if found is None:
                raise ProvisionError(
                    "input",
                    "this machine has no network interface to derive the gateway id from",
                    "pass --gateway-id with the id printed on the gateway's label",
                    bad_input=True,
                )
            gid = found
        if not radio_port.strip():
            raise ProvisionError(
                "input", "--radio-port is empty", "give the concentrator's port", bad_input=True
            )
        if name is not None and not name.strip():
            raise ProvisionError("input", "--name is empty", "give a name or leave it out",
                                 bad_input=True)  # fmt: skip
    except ProvisionError as err:
        _refuse(err, as_json)
    request = ProvisionRequest(
        fleet_url=fleet_url,
        claim=token,
        gateway_id=gid,
        dir=directory.expanduser().absolute(),
        name=name,
        state_dir=None if state_dir is None else state_dir.expanduser().absolute(),
        radio_port=radio_port,
    )
    if as_json:
        result: ProvisionResult = asyncio.run(provision(request))
        typer.echo(json.dumps(result.to_json(), indent=1))
    else:
        console = Console(highlight=False)
        console.print(f"provisioning gateway {gid} with {escape(fleet_url)}")
        result = asyncio.run(provision(request, _Display(console)))
        # Plain, never wrapped: the last line is the one a script or a person looks for.
        typer.echo(result.line, err=not result.ok)
    if result.error is not None:
        raise typer.Exit(EXIT_BAD_INPUT if result.error.bad_input else EXIT_FAILED)


# The sensor-module commands (node, labels, bundle fetch, sync) live in their own module.
from .node_cli import add_node_commands  # noqa: E402

add_node_commands(provision_command)
