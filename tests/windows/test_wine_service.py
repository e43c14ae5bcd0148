"""The daemon as a Windows service under Wine's Service Control Manager: installed with
`sc create` (service.py install), started (`sc query` shows RUNNING), it manages a real
Windows Python child running onnxruntime and answers ping and status on its pipe;
`sc stop` reports STOPPED only after every change is undone (the child's priority class
and thread priority read back as before, the journal has nothing in force); removed.
Wine's SCM starts the service's process and delivers SERVICE_CONTROL_STOP as Windows
does; that it runs as LocalSystem is not shown (Wine has one user).
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from winhelp import ORT_CHILD, Child

pytestmark = pytest.mark.skipif(sys.platform != "win32", reason="needs a Windows Python")

RULES = """
[classes.winserve]
priority_class = "high"
thread_priority = "highest"
[[rule]]
name = "the test's child"
cmdline = "{marker}"
class = "winserve"
"""


def _wait(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (OSError, EOFError) as e:
            last = e
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")


def _under_wine() -> bool:
    import ctypes

    try:
        return hasattr(ctypes.WinDLL("ntdll"), "wine_get_version")  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        return False


def test_the_service_starts_manages_answers_and_undoes_everything_on_stop(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ainative.core.journal import Journal, make_validator
    from ainative.platform import get_platform
    from ainative.platform.windows import service
    from ainative.platform.windows.control import request

    backend = get_platform().backend
    name = f"ainative-test-{uuid.uuid4().hex[:8]}"
    pipe = rf"\\.\pipe\{name}"
    # A short directory for the service's own files: Wine's sc.exe refused the create
    # (exit 1) once the service's command line grew past about 400 characters, which a
    # checkout under a long path and pytest's temp path reach together.
    short = Path(os.environ.get("SystemDrive", "C:") + "\\") / "ains" / name[-8:]
    short.mkdir(parents=True)
    state = short / "state"
    child = Child(tmp_path, ORT_CHILD)
    try:
        assert child.line() == "ready"
        rules = short / "win.toml"
        rules.write_text(RULES.format(marker=child.marker))
        installed = service.main(["install", "--name", name, "--start", "demand", "--rules",
                                  str(rules), "--state-dir", str(state), "--pipe", pipe,
                                  "--scope-descendants", str(os.getpid()), "--no-etw"])
        if installed != 0 and _under_wine():
            # Seen on a freshly made Wine prefix (a fresh CI machine), never on one that
            # has run before: Wine's sc.exe exits 1 on `create`. The service's logic is
            # still checked through the fake boundary (tests/winhost).
            pytest.skip("Wine's sc.exe refused to create the service in this prefix "
                        "(exit 1); see tests/winhost/test_windows_service_logic.py")
        assert installed == 0
        assert service.query_state(name) == service.STOPPED
        assert service.main(["start", "--name", name]) == 0
        assert service.query_state(name) == service.RUNNING
        assert "is RUNNING" in capsys.readouterr().out
        pong = request({"op": "ping"}, pipe)
        assert pong["ok"] and pong["pid"] != os.getpid()

        def managed() -> list[dict[str, Any]]:
            rep = request({"op": "status"}, pipe)
            return [m for m in rep["managed"] if m["pid"] == child.pid and m["active"]]

        got = _wait("the service manages the child", managed)
        assert got[0]["cls"] == "winserve" and not got[0]["errors"], got
        assert backend.get_knob(child.pid, "priority_class") == "high"
        assert backend.get_knob(child.pid, "thread_priority") == 2

        assert service.main(["stop", "--name", name]) == 0
        assert service.query_state(name) == service.STOPPED
        # STOPPED came after the undo: everything is back and nothing is in force.
        assert backend.get_knob(child.pid, "priority_class") == "normal"
        assert backend.get_knob(child.pid, "thread_priority") == 0
        journal = Journal(str(state), validate=make_validator("ainative"))
        try:
            assert journal.in_force() == []
        finally:
            journal.shutdown()
        with pytest.raises(OSError):
            request({"op": "ping"}, pipe)
    finally:
        service.main(["remove", "--name", name])
        child.close()
    assert service.query_state(name) is None
