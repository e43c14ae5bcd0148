"""What the Windows daemon answers on its pipe, and who may ask: the Linux daemon's
privilege model (daemon/api.py) with the caller that control.identify names.

- anyone may ping and read status;
- an ordinary user (a non-elevated caller, an administrator's filtered token included)
  may register only processes of their own account, never an elevated one (a
  medium-integrity caller must not steer a process it could not open itself), and only
  into classes the rule files' access policy allows them (Supervisor.register);
- only an elevated caller (uid 0) may restore or resume.

Kept apart from the daemon's loop so the decisions are tested on Linux through the fake
Win32 boundary (tests/winhost/test_windows_pipe_access.py): Wine runs every process
elevated, so a non-elevated caller cannot be shown there.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from ainative.core.supervisor import Refused, Supervisor
from ainative.ipc.protocol import (
    Peer,
    RequestError,
    int_field,
    reply_error,
    reply_ok,
    str_field,
)
from ainative.platform.base import ProcessGone
from ainative.platform.windows.win32 import Win32


class WindowsOps:
    def __init__(self, sup: Supervisor, api: Win32, lock: threading.Lock | None = None) -> None:
        self.sup = sup
        self.api = api
        self.lock = lock if lock is not None else threading.Lock()

    def handle(self, peer: Peer, req: dict[str, Any]) -> bytes:
        """One parsed request in, one reply out; a refusal is an error reply."""
        try:
            with self.lock:
                return self._dispatch(peer, req)
        except RequestError as e:
            return reply_error(str(e))

    def _dispatch(self, peer: Peer, req: dict[str, Any]) -> bytes:
        op = req["op"]
        if op == "ping":
            return reply_ok(pid=os.getpid())
        if op == "status":
            return reply_ok(paused=self.sup.engine.paused, managed=[
                {"pid": m.ident.pid, "name": m.name, "cls": m.cls, "active": m.active,
                 "knobs": m.applied_summary(), "errors": m.errors}
                for m in self.sup.engine.managed.values()])
        if op == "register":
            return self._register(peer, req)
        if op in ("restore", "resume"):
            if not peer.is_root:
                raise RequestError(f"{op} needs an administrator (an elevated caller); "
                                   "run it from an elevated prompt")
            if op == "restore":
                return reply_ok(**self.sup.restore().to_json())
            self.sup.resume()
            return reply_ok()
        raise RequestError(f"op {op!r} is not offered by the Windows daemon yet")

    def _register(self, peer: Peer, req: dict[str, Any]) -> bytes:
        pid, cls = int_field(req, "pid"), str_field(req, "class")
        if not peer.is_root:
            if peer.uid < 0:
                raise RequestError("your account could not be read (the daemon cannot "
                                   "query your process); register from an elevated prompt")
            try:
                elevated = self.api.process_elevated(pid)
            except ProcessGone as e:
                raise RequestError(f"no process {pid}") from e
            except OSError:
                elevated = True  # the daemon cannot read its token: treat it as protected
            if elevated:
                raise RequestError(f"process {pid} runs elevated (or protected); only an "
                                   "elevated caller may register it")
        try:
            m = self.sup.register(pid, cls, peer.uid)
        except Refused as e:
            raise RequestError(str(e)) from e
        return reply_ok(pid=pid, **{"class": cls}, applied=m.applied_summary(),
                        active=m.active, errors=m.errors)
