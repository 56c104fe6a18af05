"""``owlgate provision node | labels | bundle fetch | sync``: sensor modules at the workbench.

:func:`add_node_commands` adds them to the ``owlgate provision`` app
(:mod:`owlgate.provisioning.cli`). The guide is ``docs/provisioning-nodes.md``. Exit code 0
when every module is provisioned (or was already) and, with ``--join-test``, joined; 1 when
one failed, was refused or did not join (or a sync reported a conflict), 2 on bad input.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, NoReturn

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from .labels import DEFAULT_TR005_PROFILE, Tr005Profiles, write_labels
from .node import (
    DEFAULT_JOIN_TIMEOUT_S,
    DEFAULT_JOURNAL,
    HTTP_TIMEOUT_S,
    FleetKeys,
    Journal,
    KeySource,
    NodeProvisionError,
    NodeResult,
    NodeSettings,
    provision_all,
    read_expected,
    read_report,
    read_token_file,
    write_report,
)

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

bundle_app = typer.Typer(
    name="bundle", help="Keys reserved for this laptop, for offline work.", no_args_is_help=True
)


def _bad(error: NodeProvisionError) -> NoReturn:
    typer.echo(f"error: {error.what}; {error.todo}", err=True)
    raise typer.Exit(EXIT_BAD_INPUT)


def _hex_option(value: str | None, option: str) -> bytes | None:
    if value is None:
        return None
    try:
        raw = bytes.fromhex(value.replace(":", "").replace("-", ""))
    except ValueError:
        raw = b""
    if len(raw) != 8:
        _bad(NodeProvisionError(f"{option} {value!r} is not an EUI", "give 16 hex digits"))
    return raw


def _client(fleet: str, token_file: Path) -> httpx.Client:
    if not fleet.startswith(("http://", "https://")):
        _bad(
            NodeProvisionError(
                f"--fleet {fleet!r} is not an http(s) address", "give the fleet's API address"
            )
        )
    try:
        token = read_token_file(token_file)
    except NodeProvisionError as err:
        _bad(err)
    return httpx.Client(
        base_url=fleet.rstrip("/"),
        headers={"Authorization": f"Bearer {token}"},
        timeout=HTTP_TIMEOUT_S,
    )


def _prompted_ports(port: str, console: Console) -> Iterator[str]:
    while True:
        answer = console.input(f"connect the next module to {port} and press Enter (q to stop): ")
        if answer.strip().lower() in ("q", "quit"):
            return
        yield port


def node(
    port: Annotated[
        list[str] | None,
        typer.Option("--port", metavar="PATH", help="a module's serial port (repeat for several)"),
    ] = None,
    fleet: Annotated[
        str | None, typer.Option("--fleet", metavar="URL", help="the fleet's API address")
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option("--token-file", metavar="FILE", help="your fleet API token (technician)"),
    ] = None,
    profile: Annotated[
        str | None, typer.Option("--profile", help="the device profile, e.g. parking-v1")
    ] = None,
    join_eui: Annotated[
        str | None,
        typer.Option("--join-eui", metavar="HEX", help="the JoinEUI (default: the fleet's)"),
    ] = None,
    baud: Annotated[
        int, typer.Option("--baud", help="the host's baud rate (an RN2483 follows by auto-baud)")
    ] = 115200,
    site: Annotated[str | None, typer.Option("--site", help="the site the devices go to")] = None,
    next_module: Annotated[
        bool,
        typer.Option("--next", help="one port, one module after another (prompts; q stops)"),
    ] = False,
    expect: Annotated[
        Path | None,
        typer.Option("--expect", metavar="CSV", help="only DevEUIs listed here are provisioned"),
    ] = None,
    journal: Annotated[
        Path, typer.Option("--journal", metavar="FILE", help="the resumable record of steps")
    ] = Path(DEFAULT_JOURNAL),
    report: Annotated[
        Path | None, typer.Option("--report", metavar="FILE", help="write a CSV of every module")
    ] = None,
    labels: Annotated[
        Path | None, typer.Option("--labels", metavar="DIR", help="also write QR labels there")
    ] = None,
    offline: Annotated[
        bool, typer.Option("--offline", help="use keys from --bundle, queue for sync")
    ] = False,
    bundle: Annotated[
        Path | None, typer.Option("--bundle", metavar="FILE", help="the offline key bundle")
    ] = None,
    reply_timeout: Annotated[
        float, typer.Option("--reply-timeout", help="seconds a module has to answer a command")
    ] = 1.0,
    show_key: Annotated[
        bool, typer.Option("--show-key", help="print each module's AppKey (hidden by default)")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="print one JSON object per module")
    ] = False,
    join_test: Annotated[
        bool,
        typer.Option(
            "--join-test",
            help="after saving, join through a nearby gateway and confirm with the fleet",
        ),
    ] = False,
    join_timeout: Annotated[
        float,
        typer.Option(
            "--join-timeout", min=1.0, help="seconds the join test waits for the module's join"
        ),
    ] = DEFAULT_JOIN_TIMEOUT_S,
) -> None:
    """Detect each module, register it, write its keys, read them back and save; optionally
    test a join through a nearby gateway."""
    ports = list(port or [])
    if not ports:
        _bad(NodeProvisionError("no --port given", "give --port PATH (repeat it for several)"))
    if next_module and len(ports) != 1:
        _bad(NodeProvisionError("--next takes exactly one --port", "give one port with --next"))
    keys: KeySource
    client: httpx.Client | None = None
    fleet_keys: FleetKeys | None = None
    try:
        if join_test and offline:
            raise NodeProvisionError(
                "the join test needs the fleet online to confirm the join, and --offline has"
                " no fleet",
                "leave out --join-test offline; test the join after `owlgate provision sync`",
            )
        expected = read_expected(expect) if expect is not None else None
        if offline:
            if bundle is None:
                raise NodeProvisionError("--offline needs --bundle", "give the bundle you fetched")
            from .offline import BundleKeys

            offline_keys = BundleKeys(bundle)
            keys = offline_keys
            profile_id = offline_keys.bundle.profile_id
            if profile is not None and profile != profile_id:
                raise NodeProvisionError(
                    f"the bundle is for profile {profile_id}, not {profile}",
                    "use a bundle fetched for this profile, or leave --profile out",
                )
            site = site or offline_keys.bundle.site
        else:
            if fleet is None or token_file is None or profile is None:
                raise NodeProvisionError(
                    "online provisioning needs --fleet, --token-file and --profile",
                    "give all three (or --offline --bundle FILE)",
                )
            profile_id = profile
            client = _client(fleet, token_file)
            fleet_keys = FleetKeys(
                client, profile_id=profile, join_eui=_hex_option(join_eui, "--join-eui"), site=site
            )
            keys = fleet_keys
    except NodeProvisionError as err:
        _bad(err)
    settings = NodeSettings(
        profile_id=profile_id,
        site=site,
        baud=baud,
        expect=expected,
        reply_timeout_s=reply_timeout,
        join_test=join_test,
        join_timeout_s=join_timeout,
    )
    console = Console(highlight=False, stderr=as_json)
    record = Journal(journal)

    def show(item: NodeResult) -> None:
        if as_json:
            typer.echo(json.dumps(item.to_json(show_key=show_key)))
        else:
            colour = "green" if item.ok and item.join_ok else "red"
            console.print(
                f"[{colour}]{escape(item.line(show_key=show_key))}[/{colour}]", soft_wrap=True
            )

    try:
        if next_module:
            results = provision_all(
                _prompted_ports(ports[0], console),
                settings,
                keys,
                record,
                on_result=show,
                fleet=fleet_keys,
            )
        elif len(ports) > 1 and not as_json:
            with Progress(
                TextColumn("modules"), BarColumn(), MofNCompleteColumn(), console=console
            ) as progress:
                task = progress.add_task("modules", total=len(ports))

                def advance(item: NodeResult) -> None:
                    show(item)
                    progress.advance(task)

                results = provision_all(
                    ports, settings, keys, record, on_result=advance, fleet=fleet_keys
                )
        else:
            results = provision_all(ports, settings, keys, record, on_result=show, fleet=fleet_keys)
    finally:
        if client is not None:
            client.close()
    if report is not None:
        write_report(report, results)
    if labels is not None and any(item.ok for item in results):
        rows = [{**item.to_json(), "result": item.result} for item in results]
        write_labels(rows, labels, site=site)
    done = sum(item.ok for item in results)
    joined = sum(item.ok and item.join_ok for item in results)
    if not as_json:
        console.print(f"{done} of {len(results)} modules provisioned")
        if join_test:
            console.print(f"{joined} of {len(results)} modules joined")
    if done != len(results) or joined != len(results):
        raise typer.Exit(EXIT_FAILED)


def labels_command(
    report: Annotated[
        Path, typer.Option("--report", metavar="FILE", help="the CSV of a provisioning run")
    ],
    out: Annotated[Path, typer.Option("--out", metavar="DIR", help="where the labels go")],
    site: Annotated[
        str | None, typer.Option("--site", help="print this site on each label")
    ] = None,
    tr005_profile: Annotated[
        list[str] | None,
        typer.Option(
            "--tr005-profile",
            metavar="[PROFILE=]HEX",
            help="the TR005 ProfileID (VendorID + profile, 8 hex) of a profile's devices, or "
            f"bare for every other profile; repeatable [{DEFAULT_TR005_PROFILE}]",
        ),
    ] = None,
) -> None:
    """TR005 QR codes (PNG and SVG) per device and a printable A4 sheet (labels.html)."""
    try:
        profiles = Tr005Profiles.parse(tr005_profile or [])
        made = write_labels(read_report(report), out, site=site, tr005_profiles=profiles)
    except NodeProvisionError as err:
        _bad(err)
    typer.echo(f"{len(made)} labels written to {out} (print {out / 'labels.html'})")


@bundle_app.command("fetch")
def bundle_fetch(
    fleet: Annotated[str, typer.Option("--fleet", metavar="URL", help="the fleet's API address")],
    token_file: Annotated[
        Path, typer.Option("--token-file", metavar="FILE", help="your fleet API token")
    ],
    profile: Annotated[str, typer.Option("--profile", help="the device profile of the keys")],
    out: Annotated[Path, typer.Option("--out", metavar="FILE", help="the bundle file to write")],
    count: Annotated[int, typer.Option("--count", help="how many keys to reserve")] = 50,
    join_eui: Annotated[
        str | None,
        typer.Option("--join-eui", metavar="HEX", help="the JoinEUI (default: the fleet's)"),
    ] = None,
    site: Annotated[str | None, typer.Option("--site", help="the site the devices go to")] = None,
) -> None:
    """Reserve keys for this laptop: a sealed bundle and its private key (0600) beside it."""
    from .offline import fetch_bundle, key_path

    if count < 1:
        _bad(NodeProvisionError(f"--count {count}", "reserve at least one key"))
    with _client(fleet, token_file) as client:
        try:
            made = fetch_bundle(
                client,
                out,
                count=count,
                profile_id=profile,
                join_eui=_hex_option(join_eui, "--join-eui"),
                site=site,
            )
        except NodeProvisionError as err:
            typer.echo(f"error: {err.what}; {err.todo}", err=True)
            raise typer.Exit(EXIT_FAILED) from err
    typer.echo(
        f"bundle {made.bundle_id}: {len(made.reservations)} keys for {made.profile_id},"
        f" written to {out} (key {key_path(out)}, keep both on this laptop)"
    )


def sync_command(
    fleet: Annotated[str, typer.Option("--fleet", metavar="URL", help="the fleet's API address")],
    token_file: Annotated[
        Path, typer.Option("--token-file", metavar="FILE", help="your fleet API token")
    ],
    bundle: Annotated[
        Path, typer.Option("--bundle", metavar="FILE", help="the bundle used offline")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="print the results as JSON")] = False,
) -> None:
    """Upload the registrations made offline with a bundle; report conflicts."""
    from .offline import sync_bundle

    with _client(fleet, token_file) as client:
        try:
            results = sync_bundle(client, bundle)
        except NodeProvisionError as err:
            typer.echo(f"error: {err.what}; {err.todo}", err=True)
            raise typer.Exit(EXIT_FAILED) from err
    conflicts = [item for item in results if item.result == "conflict"]
    if as_json:
        typer.echo(json.dumps([dataclasses.asdict(item) for item in results]))
    else:
        for item in results:
            typer.echo(f"{item.dev_eui} (reservation {item.reservation}): {item.result}"
                       + (f": {item.detail}" if item.detail else ""))  # fmt: skip
        typer.echo(
            f"{len(results)} registrations synced, {len(conflicts)} conflicts"
            if results
            else "nothing to sync"
        )
    if conflicts:
        raise typer.Exit(EXIT_FAILED)


def add_node_commands(app: typer.Typer) -> None:
    """Add ``node``, ``labels``, ``bundle fetch`` and ``sync`` to ``owlgate provision``."""
    app.command("node")(node)
    app.command("labels")(labels_command)
    app.command("sync")(sync_command)
    app.add_typer(bundle_app, name="bundle")
