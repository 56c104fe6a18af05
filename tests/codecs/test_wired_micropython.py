"""The node side of wired protocol v1 runs on real MicroPython and answers byte for byte as
on CPython.

One script, a node's main loop fed with the host's frames, runs on both interpreters; their
outputs are compared line by line, and the CPython run is checked against the protocol.
"""

from __future__ import annotations

import contextlib
import io

import pytest

from owlgate.codecs.node.framing import FrameDecoder
from owlgate.codecs.node.wired import (
    ERR_BAD_SETTING,
    Error,
    GetStatus,
    Nothing,
    Poll,
    Readings,
    Settings,
    SettingsAck,
    Status,
    WiredReading,
    decode_message,
    encode_message,
)
from tests.conftest import MicroPython

EUI = bytes.fromhex("70b3d57ed0001234")

# What the host sends, in order: frames for this node, for another node, line noise, and a
# frame that is not a message. The script prints every reply in hex ("-" for silence).
HOST_FRAMES = [
    encode_message(Poll(7, 0)),  # 1: readings 1..3
    encode_message(Poll(7, 0, 3)),  # 2: nothing new after 3
    encode_message(Poll(9, 0)),  # 3: another node's turn: silence
    encode_message(Poll(7, 2, 3)),  # 4: 1..2 stored: dropped
    encode_message(Settings(7, 11, {"interval_s": 15, "threshold": 3})),
    encode_message(Settings(7, 12, {"colour": 1})),  # refused
    encode_message(GetStatus(7)),
    encode_message(Poll(7, 3)),  # 3 stored too: buffer empty
    bytes.fromhex("8201"),  # no address: silence
]

SCRIPT = """
from owlgate.codecs.node.framing import FrameDecoder, encode_frame
from owlgate.codecs.node.wired import WiredNode, WiredError

class Clock:
    def __init__(self):
        self.now = 5000

    def __call__(self):
        return self.now

def hx(data):
    # MicroPython's b"".hex() returns b"", which prints differently.
    return data.hex() if data else ""

clock = Clock()
node = WiredNode(7, EUI, settings={"interval_s": 60, "threshold": 1.5, "on": True},
                 capacity=4, clock=clock)
print(node.add_reading({"temperature_c": 21.5, "door": False}))
clock.now += 7
print(node.add_reading({"temperature_c": -4.25, "battery_mv": 3012}))
clock.now += 3
print(node.add_reading({"count": 2 ** 40, "alarm": True}))
try:
    node.add_reading({"bad": "text"})
except WiredError as err:
    print("refused", err.message)

# The node's main loop: bytes from the UART in, framed replies out.
decoder = FrameDecoder()
line = b"".join(encode_frame(payload) for payload in PAYLOADS) + b"\\x00\\x13\\x37\\x00"
replies = []
for at in range(0, len(line), 5):
    for payload in decoder.feed(line[at:at + 5]):
        reply = node.handle(payload)
        replies.append(hx(encode_frame(reply)) if reply is not None else "-")
for reply in replies:
    print(reply)
print(node.pending(), node.acked_seq, node.settings_version, node.invalid, node.ignored)
print(decoder.frames_ok, decoder.crc_errors, decoder.frame_errors)
print(sorted(node.settings.items()))
for value in range(6):
    node.add_reading({"v": value})
print(node.pending(), node.dropped)
"""


def run_on_cpython(script: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(script, {"__name__": "wired_script"})
    return out.getvalue()


def full_script() -> str:
    payloads = ", ".join("bytes.fromhex('" + frame.hex() + "')" for frame in HOST_FRAMES)
    return f"EUI = bytes.fromhex('{EUI.hex()}')\nPAYLOADS = [{payloads}]\n{SCRIPT}"


def replies_of(output: str) -> list[str]:
    lines = output.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("refused"))) + 1
    return lines[start : start + len(HOST_FRAMES)]


def test_the_script_does_what_the_protocol_says_on_cpython() -> None:
    output = run_on_cpython(full_script())
    lines = output.splitlines()
    assert lines[:3] == ["1", "2", "3"]
    assert lines[3].startswith("refused values 'bad' must be")
    decoded = [
        None if reply == "-" else decode_message(FrameDecoder().feed(bytes.fromhex(reply))[0])
        for reply in replies_of(output)
    ]
    assert decoded[0] == Readings(
        7,
        EUI,
        0,
        False,
        [
            WiredReading(1, 10, {"temperature_c": 21.5, "door": False}),
            WiredReading(2, 3, {"temperature_c": -4.25, "battery_mv": 3012}),
            WiredReading(3, 0, {"count": 2**40, "alarm": True}),
        ],
    )
    assert decoded[1] == Nothing(7, EUI, 0)
    assert decoded[2] is None  # the POLL to node 9: silence
    assert decoded[3] == Nothing(7, EUI, 0)  # 1..2 dropped, 3 already received
    assert decoded[4] == SettingsAck(7, 11)
    assert decoded[5] == Error(7, ERR_BAD_SETTING, "unknown setting colour")
    assert decoded[6] == Status(7, EUI, 10, 1, 0, 4, 11)
    assert decoded[7] == Nothing(7, EUI, 11)
    assert decoded[8] is None  # no address: silence
    tail = lines[len(lines) - 4 :]
    assert tail[0] == "[] 3 11 1 1"
    assert tail[1] == f"{len(HOST_FRAMES)} 0 1"
    assert tail[2] == "[('interval_s', 15), ('on', True), ('threshold', 3.0)]"
    assert tail[3:] == ["[6, 7, 8, 9] 2"]


@pytest.mark.node
def test_micropython_node_answers_like_cpython(micropython: MicroPython) -> None:
    script = full_script()
    expected = run_on_cpython(script)
    got = micropython(script)
    assert got.splitlines() == expected.splitlines()
    # The ack dropped the stored readings on MicroPython too.
    assert "[] 3 11 1 1" in got.splitlines()
