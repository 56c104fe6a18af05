"""TR005 labels: the QR text, PNG and SVG files whose modules are the code of exactly that
text, and the printable HTML sheet; through ``owlgate provision labels`` on a report."""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import pytest
import segno
from typer.testing import CliRunner

from owlgate.codecs.cli import app
from owlgate.provisioning.labels import qr, tr005
from owlgate.provisioning.node import NodeProvisionError, NodeResult, write_report

JOIN = "70b3d57ed0000001"
DEVICES = ("ac1f09fffe0a0b0c", "0004a30b001a2b3c")
SCALE, BORDER = 8, 4


def png_modules(path: Path) -> list[list[bool]]:
    """The dark modules of a QR code PNG that segno wrote at SCALE with BORDER (a small
    reader: greyscale or palette, bit depth 1 or 8, every PNG row filter)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    offset, chunks = 8, {}
    idat = b""
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        if kind == b"IDAT":
            idat += body
        else:
            chunks[kind] = body
        offset += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert depth in (1, 8)
    assert colour in (0, 3)
    raw = zlib.decompress(idat)
    stride = (width * depth + 7) // 8
    rows: list[bytes] = []
    previous = bytes(stride)
    position = 0
    for _ in range(height):
        row_filter, line = raw[position], bytearray(raw[position + 1 : position + 1 + stride])
        position += 1 + stride
        for i in range(stride):
            left = line[i - 1] if i else 0
            up, corner = previous[i], previous[i - 1] if i else 0
            if row_filter == 1:
                line[i] = (line[i] + left) & 0xFF
            elif row_filter == 2:
                line[i] = (line[i] + up) & 0xFF
            elif row_filter == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif row_filter == 4:
                estimate = left + up - corner
                best = min((abs(estimate - left), 0), (abs(estimate - up), 1),
                           (abs(estimate - corner), 2))[1]  # fmt: skip
                line[i] = (line[i] + (left, up, corner)[best]) & 0xFF
        rows.append(bytes(line))
        previous = bytes(line)
    palette = chunks.get(b"PLTE", b"")

    def dark(x: int, y: int) -> bool:
        value = rows[y][x // 8] >> 7 - x % 8 & 1 if depth == 1 else rows[y][x]
        if colour == 3:
            value = palette[3 * value]
            return value < 128
        return value < (1 if depth == 1 else 128)

    size = width // SCALE - 2 * BORDER
    centre = SCALE // 2
    return [
        [dark((BORDER + x) * SCALE + centre, (BORDER + y) * SCALE + centre) for x in range(size)]
        for y in range(size)
    ]


def matrix_of(code: segno.QRCode) -> list[list[bool]]:
    return [[bool(cell) for cell in row] for row in code.matrix]


def test_the_tr005_text_is_upper_case_and_checked() -> None:
    assert tr005(JOIN, DEVICES[0], "00a1b2c3") == (
        "LW:D0:70B3D57ED0000001:AC1F09FFFE0A0B0C:00A1B2C3"
    )
    with pytest.raises(NodeProvisionError, match="DevEUI 'ac1f' is not 16 hex digits"):
        tr005(JOIN, "ac1f")
    with pytest.raises(NodeProvisionError, match="ProfileID"):
        tr005(JOIN, DEVICES[0], "parking-v1")


def make_report(path: Path) -> None:
    results = [
        NodeResult(
            eui,
            f"/dev/ttyUSB{i}",
            "RAK3172",
            "RUI_4.0.6",
            "provisioned",
            "ok",
            "2026-12-02T00:00:00Z",
            JOIN,
            "parking-v1",
            "market square",
        )
        for i, eui in enumerate(DEVICES)
    ]
    results.append(
        NodeResult(
            "0004a30b001a2b3d",
            "/dev/ttyUSB9",
            "RN2483",
            "RN2483 1.0.5",
            "failed",
            "no reply",
            "2026-12-02T00:00:00Z",
        )
    )
    write_report(path, results)


def test_labels_from_a_report_hold_exactly_the_tr005_text(tmp_path: Path) -> None:
    report = tmp_path / "report.csv"
    make_report(report)
    out = tmp_path / "labels"
    result = CliRunner().invoke(
        app, ["provision", "labels", "--report", str(report), "--out", str(out),
              "--tr005-profile", "00A1B2C3"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "2 labels written" in result.output
    for eui in DEVICES:
        text = f"LW:D0:{JOIN.upper()}:{eui.upper()}:00A1B2C3"
        expected = matrix_of(qr(text))
        assert png_modules(out / f"{eui.upper()}.png") == expected
        # A text one character off is another code: the comparison sees content.
        assert matrix_of(qr(text[:-1] + "4")) != expected
        svg = (out / f"{eui.upper()}.svg").read_text()
        assert svg.startswith("<?xml")
        assert "<svg" in svg
    assert not (out / "0004A30B001A2B3D.png").exists()
    sheet = (out / "labels.html").read_text()
    assert "@page { size: A4" in sheet
    assert "@media print" in sheet
    assert sheet.count('<div class="label">') == 2
    assert sheet.count("<svg") == 2
    for eui in DEVICES:
        assert eui.upper() in sheet
    assert "parking-v1" in sheet
    assert "market square" in sheet
    assert re.search(r"<svg[^>]*xmlns=", sheet)


def test_a_report_without_provisioned_devices_is_bad_input(tmp_path: Path) -> None:
    report = tmp_path / "report.csv"
    report.write_text("something,else\n1,2\n")
    result = CliRunner().invoke(
        app, ["provision", "labels", "--report", str(report), "--out", str(tmp_path / "x")]
    )
    assert result.exit_code == 2
    assert "is not a provisioning report" in result.output
