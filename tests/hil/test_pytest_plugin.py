"""The owlgate pytest plugin, run the way an engineer runs it: ``pytester`` runs small test
files with pytest in the test's folder, the worked example of ``docs/hil.md`` among them, read
out of the document so that the two cannot drift apart.

Real hardware is stood in for by this test's own emulated RAK3172 (``hil_modem``, on a pty
like a USB adapter), whose path is given to the inner run as ``--hil-port``: what that
emulator received proves the hardware test talked to the port it was given.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable

import pytest

from owlgate.hil.pytest_plugin import ModemHandle
from owlgate.hil.scenario import SCENARIO_DIR, shipped_scenarios
from tests.conftest import REPO

pytest_plugins = ["pytester"]

DOCS = REPO / "docs" / "hil.md"
EXAMPLE = re.compile(
    r"<!-- pytest-plugin-example -->\n```python\n(?P<code>.*?)```\n<!-- /pytest-plugin-example -->",
    re.DOTALL,
)
#: Every inner run: warnings are errors, unknown markers too.
INNER_ARGS = ("-p", "no:cacheprovider", "--strict-markers", "-W", "error", "-rs")
#: An inner run is a fresh process, started in its own folder, as an engineer starts pytest:
#: in this process the repository root is on sys.path, where pytest would find the
#: ``owlgate.egg-info`` of the editable install and try to rewrite stdlib ``codecs``.
INNER_TIMEOUT_S = 120.0

Runner = Callable[..., pytest.RunResult]


def docs_example() -> str:
    """The worked example of docs/hil.md, as written there."""
    found = EXAMPLE.search(DOCS.read_text())
    assert found is not None, f"{DOCS}: no pytest-plugin-example block"
    return found.group("code")


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Runner:
    """Runs pytest in pytester's folder with the owlgate plugin only, named by its entry
    point (``-p owlgate``): the other installed plugins would triple the start-up time."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")

    def run(*args: str) -> pytest.RunResult:
        return pytester.runpytest_subprocess(
            *INNER_ARGS, "-p", "owlgate", *args, timeout=INNER_TIMEOUT_S
        )

    return run


def test_the_docs_example_passes_on_the_emulators(pytester: pytest.Pytester) -> None:
    # The one run with the fleet and the edge agent (real processes). Plugins load from their
    # entry points as in an engineer's run, so this proves the registration; the slow ones
    # to import that the example does not use are left out.
    pytester.makepyfile(test_owlgate_hil_example=docs_example())
    unused = ("hypothesispytest", "schemathesis", "labgrid", "anyio")
    result = pytester.runpytest_subprocess(
        *INNER_ARGS, *(f"-pno:{name}" for name in unused), timeout=INNER_TIMEOUT_S
    )
    result.assert_outcomes(passed=6)
    result.stdout.fnmatch_lines(["plugins: *owlgate-*"])


def test_hil_port_runs_the_hardware_test_on_the_port_and_skips_the_emulator_only_one(
    pytester: pytest.Pytester, inner: Runner, hil_modem: ModemHandle
) -> None:
    pytester.makepyfile(test_owlgate_hil_example=docs_example())
    # The embedded broker as well (the default, auto, takes Mosquitto where it is installed).
    args = ("--hil-port", hil_modem.port, "--hil-broker", "embedded", "-k", "modem or broker")
    result = inner(*args, "-v")
    result.assert_outcomes(passed=2, skipped=1)
    result.stdout.fnmatch_lines_random(
        [
            "*::test_modem_reports_its_firmware PASSED*",
            "*::test_broker_delivers PASSED*",
            "*::test_modem_answers_busy_once SKIPPED*",
            "SKIPPED*emulator-only test (not marked hil_hardware) skipped: --hil-port "
            f"{hil_modem.port} puts the modem fixture on real hardware",
        ]
    )
    # The hardware test's two commands reached the stand-in; the skipped test sent none.
    assert hil_modem.commands() == ["AT", "AT+VER=?"]


HARDWARE_TESTS = """
import pytest
import serial


@pytest.mark.hil_hardware
def test_fault_injection_is_emulator_only(hil_modem):
    assert not hil_modem.emulated
    assert hil_modem.path is None
    with serial.serial_for_url(hil_modem.port, baudrate=hil_modem.baudrate, timeout=2) as port:
        port.write(b"AT\\r\\n")
        assert port.read_until(b"OK\\r\\n") == b"\\r\\nOK\\r\\n"
    hil_modem.busy_next(1)
    raise AssertionError("busy_next() returned on real hardware")


@pytest.mark.hil_hardware
def test_concentrator_on_the_same_port(hil_concentrator):
    assert hil_concentrator.port == {port!r}
    assert (hil_concentrator.emulated, hil_concentrator.baudrate) == (False, 57600)
    hil_concentrator.inject(b"x")
"""


def test_an_emulator_only_helper_skips_a_hardware_test_with_the_reason(
    pytester: pytest.Pytester, inner: Runner, hil_modem: ModemHandle
) -> None:
    pytester.makepyfile(test_hardware=HARDWARE_TESTS.format(port=hil_modem.port))
    result = inner("--hil-port", hil_modem.port, "--hil-baud", "57600")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines_random(
        [
            f"SKIPPED*busy_next() needs the emulated modem: {hil_modem.port} is real hardware",
            "SKIPPED*inject() needs the emulated concentrator: *",
        ]
    )
    # The part before the helper ran against the port.
    assert hil_modem.commands() == ["AT"]


SCENARIO_TESTS = """
import pytest


@pytest.mark.hil_scenario("parking-street")
def test_parking(hil_world):
    # Deselected by --hil-scenario bins-and-outage.
    assert len(hil_world.expanded.sensors) == 200


@pytest.mark.hil_scenario("bins-and-outage")
def test_bins(hil_world):
    assert len(hil_world.expanded.gateways) == 4
    assert len(hil_world.world.gateways) == 4


def test_the_option_names_the_scenario(hil_world):
    assert hil_world.scenario.file.endswith("bins-and-outage.toml")


@pytest.mark.hil_scenario("my-street.toml", seed=3)
def test_a_file_beside_the_test(hil_world):
    assert hil_world.scenario.file.endswith("my-street.toml")
    assert hil_world.expanded.seed == 3
"""


def test_hil_scenario_selects_tests_and_names_the_world_of_each(
    pytester: pytest.Pytester, inner: Runner
) -> None:
    shutil.copy(SCENARIO_DIR / "parking-street.toml", pytester.path / "my-street.toml")
    pytester.makepyfile(test_scenarios=SCENARIO_TESTS)
    result = inner("--hil-scenario", "bins-and-outage")
    result.assert_outcomes(passed=2, deselected=2)
    # Without the option only the marker decides.
    # Without the option only the markers decide, and an unmarked test has no scenario: an
    # error that names the shipped ones.
    result = inner()
    result.assert_outcomes(passed=3, errors=1)
    shipped = ", ".join(path.stem for path in shipped_scenarios())
    assert "parking-street" in shipped
    result.stdout.fnmatch_lines(
        [
            "*test_the_option_names_the_scenario: hil_world needs a scenario: "
            f"@pytest.mark.hil_scenario(NAME) or --hil-scenario NAME (shipped: {shipped})*"
        ]
    )
