"""The dashboard's colours meet WCAG 2.1 contrast on both themes.

The stylesheet keeps every colour in custom properties of two ``:root`` blocks (light, and
dark under ``prefers-color-scheme: dark``). Each pair of a text colour and the backgrounds it
is drawn on must reach 4.5:1 (success criterion 1.4.3, normal text); focus rings, chart lines
and state markers must reach 3:1 against the page (1.4.11, non-text contrast).
"""

from __future__ import annotations

import re
from importlib import resources

import pytest

#: (foreground, background) pairs that carry text, as the stylesheet uses them.
TEXT_PAIRS = [
    ("fg", "bg"),
    ("fg", "panel"),
    ("muted", "bg"),
    ("muted", "panel"),
    ("link", "bg"),
    ("link", "panel"),
    ("fg", "idle-bg"),
    ("ok", "ok-bg"),
    ("warn", "warn-bg"),
    ("bad", "bad-bg"),
    # Rows of an offline gateway or a critical alert keep their text and links.
    ("fg", "bad-bg"),
    ("link", "bad-bg"),
    ("fg", "warn-bg"),
    ("link", "warn-bg"),
    ("fg", "ok-bg"),
    # The "last updated" line when the fleet stops answering.
    ("bad", "bg"),
]
#: (colour, background) pairs of graphics that must be told apart from the page.
GRAPHIC_PAIRS = [
    ("focus", "bg"),
    ("focus", "panel"),
    *((f"s{index}", "bg") for index in range(5)),
    ("ok", "bg"),
    ("warn", "bg"),
    ("bad", "bg"),
    ("idle", "bg"),
]


def _themes() -> dict[str, dict[str, str]]:
    css = resources.files("owlgate.fleet.dashboard").joinpath("static/dashboard.css").read_text()
    blocks = [block for block in re.findall(r":root\s*\{([^}]*)\}", css) if "--bg:" in block]
    assert len(blocks) == 2, "expected a light and a dark :root block"
    themes = {}
    for name, block in zip(("light", "dark"), blocks, strict=True):
        themes[name] = dict(re.findall(r"--([a-z0-9-]+):\s*(#[0-9a-fA-F]{6})", block))
    return themes


def _luminance(colour: str) -> float:
    def channel(value: int) -> float:
        c = value / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def contrast(a: str, b: str) -> float:
    """The WCAG contrast ratio of two ``#rrggbb`` colours, 1 to 21."""
    high, low = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_the_ratio_matches_the_definition() -> None:
    assert contrast("#000000", "#ffffff") == pytest.approx(21.0)
    assert contrast("#777777", "#777777") == pytest.approx(1.0)
    # #767676 on white is the well-known lightest grey that passes 4.5:1.
    assert contrast("#767676", "#ffffff") == pytest.approx(4.54, abs=0.01)


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_text_and_graphics_meet_the_contrast_minimums(theme: str) -> None:
    colours = _themes()[theme]
    short = [
        f"{fg} on {bg}: {contrast(colours[fg], colours[bg]):.2f}"
        for fg, bg in TEXT_PAIRS
        if contrast(colours[fg], colours[bg]) < 4.5
    ]
    short += [
        f"{fg} against {bg}: {contrast(colours[fg], colours[bg]):.2f}"
        for fg, bg in GRAPHIC_PAIRS
        if contrast(colours[fg], colours[bg]) < 3.0
    ]
    assert not short, f"{theme} theme below the WCAG minimum: {short}"


def test_both_themes_define_the_same_colours() -> None:
    light, dark = _themes().values()
    assert set(light) == set(dark)
    assert {name for pair in TEXT_PAIRS + GRAPHIC_PAIRS for name in pair} <= set(light)
