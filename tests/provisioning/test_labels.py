"""TR005 labels: the QR text, PNG and SVG files whose modules are the code of exactly that
text, and the printable HTML sheet; through ``owlgate provision labels`` on a report."""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import pytest
import segno
import zxingcpp
from PIL import Image
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


def provisioned(index: int, dev_eui: str, profile: str = "parking-v1") -> NodeResult:
    """A report row of a module provisioned at the market square."""
    return NodeResult(dev_eui, f"/dev/ttyUSB{index}", "RAK3172", "RUI_4.0.6", "provisioned",
                      "ok", "2026-12-02T00:00:00Z", JOIN, profile, "market square")  # fmt: skip


def make_report(path: Path) -> None:
    results = [provisioned(i, eui) for i, eui in enumerate(DEVICES)]
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


def decoded(png: Path) -> list[str]:
    """What a QR reader (ZXing, an independent decoder) reads in a label's PNG."""
    with Image.open(png) as image:
        codes = zxingcpp.read_barcodes(image.convert("L"))
    assert all(code.format == zxingcpp.BarcodeFormat.QRCode for code in codes)
    return [code.text for code in codes]


def mixed_report(path: Path) -> dict[str, str]:
    """A report of two parking bays and a bin; returns each DevEUI's profile."""
    profiles = {
        "ac1f09fffe0a0b0c": "parking-v1",
        "ac1f09fffe0a0b0d": "parking-v1",
        "0004a30b001a2b3c": "bin-v1",
    }
    write_report(path, [provisioned(i, eui, p) for i, (eui, p) in enumerate(profiles.items())])
    return profiles


def test_a_qr_reader_reads_each_label_as_its_profiles_tr005_text(tmp_path: Path) -> None:
    report = tmp_path / "report.csv"
    profiles = mixed_report(report)
    out = tmp_path / "labels"
    result = CliRunner().invoke(
        app, ["provision", "labels", "--report", str(report), "--out", str(out),
              "--tr005-profile", "parking-v1=00a1b2c3", "--tr005-profile", "00A10001"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "3 labels written" in result.output
    ids = {"parking-v1": "00A1B2C3", "bin-v1": "00A10001"}
    for eui, profile in profiles.items():
        expected = f"LW:D0:{JOIN.upper()}:{eui.upper()}:{ids[profile]}"
        assert decoded(out / f"{eui.upper()}.png") == [expected]


def test_without_a_profile_id_the_labels_read_as_the_zero_profile(tmp_path: Path) -> None:
    report = tmp_path / "report.csv"
    profiles = mixed_report(report)
    out = tmp_path / "labels"
    result = CliRunner().invoke(
        app, ["provision", "labels", "--report", str(report), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    for eui in profiles:
        assert decoded(out / f"{eui.upper()}.png") == [
            f"LW:D0:{JOIN.upper()}:{eui.upper()}:00000000"
        ]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["parking-v1=00A1B2C3"], "no TR005 ProfileID for profile 'bin-v1'"),
        (["parking-v1=xyz"], "neither 8 hex digits nor PROFILE=8 hex digits"),
        (["=00A1B2C3"], "neither 8 hex digits nor PROFILE=8 hex digits"),
        (["00A1B2C3", "00A1B2C4"], "the default is given twice"),
        (["bin-v1=00A1B2C3", "bin-v1=00A1B2C4"], "profile 'bin-v1' is given twice"),
    ],
)
def test_a_missing_or_bad_profile_id_is_refused_before_any_label_is_written(
    tmp_path: Path, values: list[str], message: str
) -> None:
    report = tmp_path / "report.csv"
    mixed_report(report)
    out = tmp_path / "labels"
    argv = ["provision", "labels", "--report", str(report), "--out", str(out)]
    for value in values:
        argv += ["--tr005-profile", value]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not out.exists()
