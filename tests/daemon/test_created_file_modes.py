"""Security audit: nothing the daemon creates is group- or world-writable, even when it is
started with umask 000 (a careless init script, a shell with umask 0).

A real daemon manages a real ONNX Runtime process (so the journal, the event store and
the meta file are written), then every file and directory under its state dir and the
state-dir pointer it leaves beside its socket is checked while it runs and again after
it stopped. Sockets are the exception by design: the control socket is 0666 (who may do
what is checked per request from the caller's credentials), and is checked against
exactly that mode instead.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemon_helpers import ONNX_CHILD, Children, DaemonProc, needs_root

from ainative.daemon import statedir

pytestmark = needs_root


@pytest.fixture
def umask_zero(tmp_path: Path) -> Iterator[None]:
    """umask 000 for the daemon the test starts (it inherits it). The rule files the
    start_daemon fixture writes are made first with a sane mode: the daemon rightly
    refuses world-writable rules, and that is another test's subject."""
    for name in ("always-on0.toml", "rules0.toml"):
        (tmp_path / name).touch(mode=0o644)
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def writable_by_others(*tops: str) -> list[str]:
    """Each file or directory at or below ``tops`` that group or others may write."""
    bad = []
    for top in tops:
        walk = os.walk(top) if os.path.isdir(top) else [(top, [], [])]
        for root, dirs, files in walk:
            for name in [".", *dirs, *files]:
                p = os.path.normpath(os.path.join(root, name))
                try:
                    st = os.lstat(p)
                except FileNotFoundError:
                    continue  # a journal rotated or a socket closed meanwhile
                mode = stat.S_IMODE(st.st_mode)
                if stat.S_ISSOCK(st.st_mode) or stat.S_ISLNK(st.st_mode):
                    continue
                if mode & 0o022:
                    bad.append(f"{p}: {mode:04o}")
    return bad


def test_nothing_the_daemon_creates_is_group_or_world_writable(
        umask_zero: None, children: Children, start_daemon: Callable[..., DaemonProc],
        tmp_path: Path) -> None:
    child = children.python(ONNX_CHILD)
    d = start_daemon(metrics="127.0.0.1:0")
    d.wait_task(child.pid, cls="inference")
    # Beside its socket the daemon leaves a pointer to its state dir (for `ainative
    # restore`); the rest of that directory is the test's (its log, its rule files).
    pointer = statedir.pointer_path(d.sock)
    files = [p for p in Path(d.state_dir).rglob("*") if p.is_file()]
    assert any(p.name.startswith("journal") for p in files), files  # something was written
    assert os.path.exists(pointer)
    assert writable_by_others(d.state_dir, pointer) == []
    # The control socket: exactly its documented mode, not the umask's.
    assert stat.S_IMODE(os.stat(d.sock).st_mode) == 0o666
    assert d.stop() == 0
    assert writable_by_others(d.state_dir, pointer) == []
