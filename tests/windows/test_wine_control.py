"""The Windows control channel under Wine: a named pipe carrying the daemon's JSON
protocol, with the caller identified by the kernel (GetNamedPipeClientProcessId and its
token's elevation), not by what it says. A real Windows Python child is the caller.
Under Wine every process is an administrator, so a non-administrator caller (uid other
than 0) is not shown here; procs.uid_of is unit-tested on Linux.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from typing import Any

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "win32", reason="needs a Windows Python")


def test_the_pipe_names_its_caller_and_answers_in_the_daemon_s_protocol() -> None:
    from ainative.ipc.protocol import Peer, reply_ok
    from ainative.platform.windows.control import ControlPipe
    from ainative.platform.windows.win32 import Kernel32

    address = rf"\\.\pipe\ainative-test-{uuid.uuid4().hex[:8]}"
    pipe = ControlPipe(Kernel32(), address)
    seen: list[Peer] = []
    asked: list[dict[str, Any]] = []

    def handle(peer: Peer, req: dict[str, Any]) -> bytes:
        asked.append(req)
        return reply_ok(pid=peer.pid, uid=peer.uid)

    def serve() -> None:
        seen.append(pipe.serve_one(handle))
        seen.append(pipe.serve_one(handle))

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    code = ("import json, sys\n"
            "from ainative.platform.windows.control import request\n"
            "print(json.dumps(request({'op': 'ping'}, sys.argv[1])))\n"
            "print(json.dumps(request({'op': 'no-such-op'}, sys.argv[1])))\n")
    child = subprocess.Popen([sys.executable, "-c", code, address], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    out, err = child.communicate(timeout=60)
    t.join(timeout=30)
    pipe.close()
    assert child.returncode == 0, err
    first, second = out.splitlines()
    assert seen[0].pid == child.pid and seen[0].uid == 0  # elevated: Wine's everyone
    assert f'"pid": {child.pid}' in first and '"ok": true' in first
    assert asked == [{"op": "ping"}]  # the bad op never reached the handler
    assert '"ok": false' in second and "unknown op" in second
