"""Windows backend: psutil and Win32 (ctypes) for discovery, loaded modules, priority
classes, thread priorities and affinity; polling for process events.

Only ``ainative.platform`` imports this package; everything else reaches it through
``ainative.platform.get_platform()``. Checked under Wine with a real Windows CPython
(tests/windows, scripts/windows-tests); what Wine cannot show is in README.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ainative.platform import Platform


def windows_platform(*, poll_interval: float = 0.5) -> Platform:
    from ainative.platform import Platform
    from ainative.platform.windows.backend import WindowsBackend
    from ainative.platform.windows.events import WindowsPollSource
    from ainative.platform.windows.probe import probe_mechanisms

    backend = WindowsBackend()
    return Platform(
        name="windows",
        backend=backend,
        open_events=functools.partial(WindowsPollSource, poll_interval),
        probe=functools.partial(probe_mechanisms, backend.api),
    )
