"""Labels for provisioned modules: a LoRa Alliance TR005 QR code each, and a printable sheet.

TR005 ("LoRaWAN Device Identification QR Codes for Automated Onboarding", LoRa Alliance,
section 4) puts the identity of a device in one colon-separated text, hex in upper case::

    LW:D0:<JoinEUI, 16 hex>:<DevEUI, 16 hex>:<ProfileID, 8 hex>

``LW`` is the prefix, ``D0`` the schema, the ProfileID is the 4-hex-digit VendorID followed by
the vendor's 4-hex-digit profile number (optional extensions after another colon are not
used here). owlgate's device profiles have names (``parking-v1``); the TR005 ProfileID of a
label comes from :class:`Tr005Profiles` (``--tr005-profile``, per owlgate profile
``parking-v1=00A1B2C3`` and/or one for the rest), and the profile name is printed as text
beside the code.

:func:`write_labels` writes, per device, ``<DevEUI>.png`` and ``<DevEUI>.svg`` (segno, a
pure Python QR encoder; error correction M), and ``labels.html``: an A4 sheet with a grid of
labels (the QR code inline as SVG, DevEUI, profile and site) and print CSS.
"""

from __future__ import annotations

import html
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import segno

from .node import NodeProvisionError

_HEX16: Final = re.compile(r"[0-9A-Fa-f]{16}")
_HEX8: Final = re.compile(r"[0-9A-Fa-f]{8}")
#: The TR005 ProfileID used when none is given: VendorID 0000 with profile 0000.
DEFAULT_TR005_PROFILE: Final = "00000000"


def tr005(join_eui: str, dev_eui: str, profile_id: str = DEFAULT_TR005_PROFILE) -> str:
    """The TR005 text of one device (see the module text); a typed error for bad fields."""
    for name, value, pattern, size in (
        ("JoinEUI", join_eui, _HEX16, 16),
        ("DevEUI", dev_eui, _HEX16, 16),
        ("TR005 ProfileID", profile_id, _HEX8, 8),
    ):
        if not pattern.fullmatch(value):
            raise NodeProvisionError(
                f"{name} {value!r} is not {size} hex digits",
                "check the report's join_eui and dev_eui columns and --tr005-profile (8 hex)",
            )
    return f"LW:D0:{join_eui.upper()}:{dev_eui.upper()}:{profile_id.upper()}"


@dataclass(frozen=True, slots=True)
class Tr005Profiles:
    """Which TR005 ProfileID a label gets: ``by_profile`` per owlgate profile name, else
    ``default``. With a mapping and no default, a profile it does not name is refused (a
    wrong ProfileID would onboard the device with another vendor profile)."""

    by_profile: dict[str, str]
    default: str | None = DEFAULT_TR005_PROFILE

    @classmethod
    def parse(cls, values: Iterable[str]) -> Tr005Profiles:
        """From ``--tr005-profile`` values: ``HEX`` (the default) or ``PROFILE=HEX``."""
        by_profile: dict[str, str] = {}
        default: str | None = None
        for value in values:
            name, sep, hex_id = value.rpartition("=")
            if not _HEX8.fullmatch(hex_id) or (sep and not name.strip()):
                raise NodeProvisionError(
                    f"--tr005-profile {value!r} is neither 8 hex digits nor PROFILE=8 hex digits",
                    "give the TR005 ProfileID your vendor assigned, e.g. 00A1B2C3 or "
                    "parking-v1=00A1B2C3",
                )
            target = name.strip() if sep else None
            if (target is None and default is not None) or target in by_profile:
                raise NodeProvisionError(
                    f"--tr005-profile {value!r}: "
                    + (f"profile {target!r}" if target else "the default")
                    + " is given twice",
                    "give each profile's ProfileID once",
                )
            if target is None:
                default = hex_id.upper()
            else:
                by_profile[target] = hex_id.upper()
        if not by_profile and default is None:
            default = DEFAULT_TR005_PROFILE
        return cls(by_profile, default)

    def of(self, profile: str) -> str:
        """The TR005 ProfileID of a device of ``profile``."""
        found = self.by_profile.get(profile, self.default)
        if found is None:
            raise NodeProvisionError(
                f"no TR005 ProfileID for profile {profile!r} "
                f"(--tr005-profile names {', '.join(sorted(self.by_profile))})",
                f"add --tr005-profile {profile or 'PROFILE'}=<8 hex>, or one bare 8-hex "
                "ProfileID for every other profile",
            )
        return found


@dataclass(frozen=True, slots=True)
class Label:
    dev_eui: str
    join_eui: str
    profile: str
    site: str
    text: str


def qr(text: str) -> segno.QRCode:
    """The QR code of a label text (error correction M, no boosting: reproducible)."""
    return segno.make_qr(text, error="m", boost_error=False)


_CSS: Final = """
@page { size: A4; margin: 10mm; }
body { font-family: sans-serif; margin: 0; }
.sheet { display: grid; grid-template-columns: repeat(3, 1fr); gap: 4mm; }
.label { border: 0.3mm dashed #999; padding: 3mm; break-inside: avoid; text-align: center; }
.label svg { width: 40mm; height: 40mm; }
.eui { font-family: monospace; font-size: 10pt; font-weight: bold; }
.meta { font-size: 8pt; }
@media print { .label { border-color: #ccc; } h1 { display: none; } }
"""


def write_labels(rows: Iterable[dict[str, str]], out: Path, *, site: str | None = None,
                 tr005_profiles: Tr005Profiles | None = None) -> list[Label]:  # fmt: skip
    """Labels for the provisioned rows of a report (see the module text). Every label is
    checked before any file is written."""
    profiles = tr005_profiles or Tr005Profiles({})
    labels: list[Label] = []
    for row in rows:
        if row.get("result") not in ("provisioned", "skipped") or not row.get("dev_eui"):
            continue
        dev_eui, join_eui = row["dev_eui"].upper(), row.get("join_eui", "").upper()
        profile = row.get("profile_id", "")
        text = tr005(join_eui, dev_eui, profiles.of(profile))
        labels.append(Label(dev_eui, join_eui, profile, site or row.get("site", ""), text))
    if not labels:
        raise NodeProvisionError(
            "the report has no provisioned device to label",
            "give --report the CSV of a run that provisioned modules",
        )
    out.mkdir(parents=True, exist_ok=True)
    cells: list[str] = []
    for label in labels:
        dev_eui = label.dev_eui
        code = qr(label.text)
        code.save(str(out / f"{dev_eui}.png"), scale=8, border=4)
        code.save(str(out / f"{dev_eui}.svg"), scale=4, border=4)
        buffer = io.BytesIO()
        code.save(buffer, kind="svg", xmldecl=False, svgns=True, scale=4, border=4)
        cells.append(
            '<div class="label">'
            + buffer.getvalue().decode()
            + f'<div class="eui">{html.escape(dev_eui)}</div>'
            + f'<div class="meta">{html.escape(label.profile)}'
            + (f" &middot; {html.escape(label.site)}" if label.site else "")
            + "</div></div>"
        )
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>owlgate labels</title><style>{_CSS}</style></head><body>"
        f'<h1>{len(labels)} labels</h1><div class="sheet">{"".join(cells)}</div></body></html>\n'
    )
    (out / "labels.html").write_text(page)
    return labels
