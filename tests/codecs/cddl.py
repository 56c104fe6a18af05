"""What the CDDL test modules share: the validator names and zcbor's command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ZCBOR = "zcbor"
PYCDDL = "pycddl"
BOTH = (ZCBOR, PYCDDL)


def zcbor_cli_accepts(spec: Path, entry: str, data: bytes, folder: Path) -> bool:
    """Run ``zcbor validate`` (the command engineers use) on ``data`` against rule ``entry``."""
    # Hex input: zcbor 0.9.1 fails to open a binary .cbor input file.
    source = folder / f"{entry}-{data[:8].hex()}-{len(data)}.cborhex"
    source.write_text(data.hex())
    zcbor = Path(sys.executable).parent / "zcbor"
    done = subprocess.run(
        [str(zcbor), "validate", "-c", str(spec), "-t", entry, "-i", str(source)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode == 0
