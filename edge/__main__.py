"""``python -m owlgate.edge``: the agent's process (see :mod:`owlgate.edge.runtime`)."""

from __future__ import annotations

import sys

from .runtime import main

sys.exit(main())
