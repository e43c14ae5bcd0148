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
import uuid
from pathlib import Path
from typing import Any

import pytest
from winhelp import ORT_CHILD, WINSERVE_RULES, Child, wait_for

pytestmark = pytest.mark.skipif(sys.platform != "win32", reason="needs a Windows Python")

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
    # A short directory for the service's own files: keeps the service's command line
    # short whatever the checkout's and pytest's temp paths.
    short = Path(os.environ.get("SystemDrive", "C:") + "\\") / "ains" / name[-8:]
    short.mkdir(parents=True)
    state = short / "state"
    child = Child(tmp_path, ORT_CHILD)
    try:
        assert child.line() == "ready"
        rules = short / "win.toml"
        rules.write_text(WINSERVE_RULES.format(marker=child.marker))
        installed = service.main(["install", "--name", name, "--start", "demand", "--rules",
                                  str(rules), "--state-dir", str(state), "--pipe", pipe,
                                  "--scope-descendants", str(os.getpid()), "--no-etw"])
        state_now = service.query_state(name) if installed == 0 else None
        if state_now is None and _under_wine():
            # Seen in a freshly made Wine prefix (as on a fresh CI machine), never in one
            # that had run services before: Wine's sc.exe `create` either exits 1 or
            # reports success and leaves no service behind. The service's logic is still
            # checked through the fake boundary (tests/winhost).
            pytest.skip(f"Wine's service manager did not keep the service in this prefix "
                        f"(sc.exe create: {'ok' if installed == 0 else 'exit 1'}, then no "
                        "such service); see tests/winhost/test_windows_service_logic.py")
        assert installed == 0
        assert state_now == service.STOPPED
        assert service.main(["start", "--name", name]) == 0
        assert service.query_state(name) == service.RUNNING
        assert "is RUNNING" in capsys.readouterr().out
        pong = request({"op": "ping"}, pipe)
        assert pong["ok"] and pong["pid"] != os.getpid()

        def managed() -> list[dict[str, Any]]:
            rep = request({"op": "status"}, pipe)
            return [m for m in rep["managed"] if m["pid"] == child.pid and m["active"]]

        got = wait_for("the service manages the child", managed, timeout=60.0)
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
