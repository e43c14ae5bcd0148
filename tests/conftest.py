"""Session-wide fixtures.

Privilege tests run code as an unprivileged user that the tests create. That user must
reach this checkout (src/ and .venv/). A clone made with `mktemp -d` has a root
directory of mode 0700, so for the session the checkout's own root gains o+x (search,
not read) and gets its mode back afterwards. A directory above the checkout is never
changed: when one blocks the way, the tests that need it skip and say which.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[1]
# tests/windows runs in a Windows CPython under Wine (scripts/windows-tests, started by
# tests/winhost/test_windows_under_wine.py), never in this Python.
collect_ignore = ["windows"]


@pytest.fixture(scope="session")
def checkout_reachable() -> Iterator[str | None]:
    """None when other users can reach the checkout; else why not (for a skip)."""
    blocked = next((p for p in CHECKOUT.parents
                    if not os.stat(p).st_mode & stat.S_IXOTH), None)
    if blocked is not None:
        yield (f"{blocked} (above the checkout) is not searchable by other users, so a "
               "test user cannot run this checkout's code")
        return
    mode = stat.S_IMODE(os.stat(CHECKOUT).st_mode)
    changed = os.geteuid() == 0 and not mode & stat.S_IXOTH
    if changed:
        os.chmod(CHECKOUT, mode | stat.S_IXOTH)
    try:
        yield None if os.stat(CHECKOUT).st_mode & stat.S_IXOTH else (
            f"{CHECKOUT} is not searchable by other users")
    finally:
        if changed:
            os.chmod(CHECKOUT, mode)
