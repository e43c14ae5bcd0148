"""The Windows daemon in console mode under Wine, as a real process: it finds a Windows
Python child running onnxruntime, applies its class through the unchanged core, answers
status/restore/resume on its named pipe, and after being killed outright (a crash) the
next start undoes what the dead one left in force. (Scoped to this test's descendants:
nothing else in the Wine prefix is touched.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from winhelp import ORT_CHILD, WINSERVE_RULES, Child, wait_for

pytestmark = pytest.mark.skipif(sys.platform != "win32", reason="needs a Windows Python")

def test_console_daemon_applies_answers_on_its_pipe_and_recovers_after_a_crash(
        tmp_path: Path) -> None:
    from ainative.platform import get_platform
    from ainative.platform.windows.control import request

    backend = get_platform().backend
    child = Child(tmp_path, ORT_CHILD)
    assert child.line() == "ready"
    rules = tmp_path / "win.toml"
    rules.write_text(WINSERVE_RULES.format(marker=child.marker))
    pipe = rf"\\.\pipe\ainative-test-{uuid.uuid4().hex[:8]}"
    cmd = [sys.executable, "-m", "ainative.platform.windows.daemon", "--rules", str(rules),
           "--state-dir", str(tmp_path / "state"), "--pipe", pipe,
           "--scope-descendants", str(os.getpid())]
    daemons: list[subprocess.Popen[str]] = []

    def start() -> subprocess.Popen[str]:
        d = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        daemons.append(d)
        return d

    def managed() -> list[dict[str, Any]]:
        rep = request({"op": "status"}, pipe)
        return [m for m in rep["managed"] if m["pid"] == child.pid and m["active"]]

    try:
        d1 = start()
        got = wait_for("the daemon manages the child", managed)
        assert got[0]["cls"] == "winserve" and not got[0]["errors"], got
        assert backend.get_knob(child.pid, "priority_class") == "high"
        assert backend.get_knob(child.pid, "thread_priority") == 2
        # restore over the pipe: everything back, paused.
        rep = request({"op": "restore"}, pipe)
        assert rep["ok"] and rep["undone"] >= 2, rep
        assert backend.get_knob(child.pid, "priority_class") == "normal"
        assert request({"op": "status"}, pipe)["paused"] is True
        assert request({"op": "resume"}, pipe)["ok"]
        wait_for("re-applied after resume",
              lambda: backend.get_knob(child.pid, "priority_class") == "high")
        # A crash: TerminateProcess, nothing undone.
        d1.kill()
        d1.wait(timeout=20)
        assert backend.get_knob(child.pid, "priority_class") == "high"
        d2 = start()
        assert d2.stdout is not None
        first = d2.stdout.readline()
        assert "undid" in first and "previous run" in first, first
        wait_for("the second daemon manages the child", managed)
        rep = request({"op": "restore"}, pipe)
        assert rep["ok"], rep
        assert backend.get_knob(child.pid, "priority_class") == "normal"
        assert backend.get_knob(child.pid, "thread_priority") == 0
        bad = request({"op": "register", "pid": child.pid, "class": "no-such"}, pipe)
        assert bad["ok"] is False and "unknown class" in bad["error"], bad
    finally:
        for d in daemons:
            if d.poll() is None:
                d.kill()
            d.wait(timeout=20)
        child.close()
