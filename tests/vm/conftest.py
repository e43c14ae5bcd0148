"""The VM tests reuse the daemon tests' fixtures (a real daemon scoped to this test
process's children, real ONNX Runtime children): make tests/daemon importable."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "daemon"))

from daemon_helpers import children, start_daemon  # noqa: F401  (pytest fixtures)
