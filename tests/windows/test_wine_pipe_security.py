"""The control pipe's security under Wine (API contract: what the calls store and read
back; Wine runs every process elevated and checks no DACL against a caller, so the
access a non-administrator gets is not shown here: see
tests/winhost/test_windows_pipe_access.py for the decisions, made with a fake boundary).

Shown here: the explicit DACL built from SDDL is on the pipe and reads back through
GetSecurityInfo; a client opening with only CLIENT_ACCESS (no FILE_APPEND_DATA, i.e. no
right to create an instance) is served; a pipe name another process created first makes
the daemon refuse to start with one line, and an instance made over such a squatter
reads back the squatter's DACL, which check_readback refuses (Wine does not enforce
FILE_FLAG_FIRST_PIPE_INSTANCE; Windows does, with access denied).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "win32", reason="needs a Windows Python")

# A squatter: creates the name first with a DACL letting everyone in, holds it until
# stdin closes.
SQUATTER = r'''
import ctypes, sys, _winapi
from ainative.platform.windows.win32 import Kernel32
sa = Kernel32().security_attributes("D:(A;;GA;;;WD)")
h = _winapi.CreateNamedPipe(sys.argv[1], _winapi.PIPE_ACCESS_DUPLEX, 0, 255, 4096, 4096, 0,
                            sa.address)
print("squatting", flush=True)
sys.stdin.readline()
'''


def _address() -> str:
    return rf"\\.\pipe\ainative-test-{uuid.uuid4().hex[:8]}"


def test_the_pipe_carries_the_dacl_asked_for_and_serves_a_least_access_client() -> None:
    from ainative.ipc.protocol import Peer, reply_ok
    from ainative.platform.windows.control import (
        CLIENT_ACCESS,
        ControlPipe,
        request,
        trustees,
    )
    from ainative.platform.windows.win32 import Kernel32

    api = Kernel32()
    address = _address()
    pipe = ControlPipe(api, address)
    try:
        got = api.handle_dacl(pipe.listener.first_handle)
        assert got.startswith("D:P"), got
        assert trustees(got) == trustees(pipe.sddl)
        assert f"(A;;0x{CLIENT_ACCESS:x};;;AU)" in got and "(D;;GA;;;NU)" in got, got
        assert f"(A;;GA;;;{api.user_sid()})" in got, got
        seen: list[Peer] = []
        t = threading.Thread(target=lambda: seen.append(pipe.serve_one(
            lambda peer, req: reply_ok(echo=req["op"]))), daemon=True)
        t.start()
        assert request({"op": "ping"}, address) == {"ok": True, "echo": "ping"}
        t.join(30)
        assert seen and seen[0].pid > 0
    finally:
        pipe.close()


def test_a_squatted_name_is_refused_with_one_line(tmp_path: Path) -> None:
    from ainative.platform.windows.control import (
        ControlPipe,
        PipeSquatted,
        _listener_class,
        check_readback,
        pipe_sddl,
    )
    from ainative.platform.windows.win32 import Kernel32

    api = Kernel32()
    address = _address()
    script = tmp_path / "squat.py"
    script.write_text(SQUATTER)
    squatter = subprocess.Popen([sys.executable, str(script), address], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert squatter.stdout is not None and squatter.stdout.readline().strip() == "squatting"
        with pytest.raises(PipeSquatted, match="already exists"):
            ControlPipe(api, address)
        # The daemon as a process: exit status 1, one line, no traceback.
        rules = tmp_path / "none.toml"
        rules.write_text("")
        d = subprocess.run([sys.executable, "-m", "ainative.platform.windows.daemon",
                            "--rules", str(rules), "--state-dir", str(tmp_path / "state"),
                            "--pipe", address, "--no-etw"],
                           capture_output=True, text=True, timeout=60)
        assert d.returncode == 1, (d.stdout, d.stderr)
        lines = d.stderr.strip().splitlines()
        assert len(lines) == 1 and "already exists" in lines[0] and "--pipe" in lines[0], lines
        assert not (tmp_path / "state").exists()  # refused before any state was made
        # Past the name check (the race Windows closes with FIRST_PIPE_INSTANCE): the
        # instance joins the squatter's pipe, and its DACL reads back as the squatter's.
        sddl = pipe_sddl(api.user_sid())
        sa = api.security_attributes(sddl)
        listener = _listener_class()(address, sa.address)
        try:
            got = api.handle_dacl(listener.first_handle)
            assert "WD" in got, got
            with pytest.raises(PipeSquatted, match="its DACL reads"):
                check_readback(address, sddl, got)
        finally:
            listener.close()
            sa.free()
    finally:
        if squatter.stdin is not None:
            squatter.stdin.close()
        squatter.wait(timeout=20)
