"""The daemon on Windows, in console (foreground) mode: the unchanged core (rules,
supervisor, engine, journal) over the Windows backend, process events by polling, the
control channel on a named pipe (control.py), and ETW for events (etw.py).

    python -m ainative.platform.windows.daemon [--rules FILE]... [--state-dir DIR]
        [--pipe \\\\.\\pipe\\ainative] [--scope-descendants PID] [--no-etw]

Ctrl+C (or Ctrl+Break) undoes every change and exits; a daemon killed outright leaves its
journal, and the next start undoes what it had in force before doing anything else.
Requests on the pipe: ping, status, restore (undo everything and pause), resume.

Not a Windows service: a service must answer the Service Control Manager, which needs
pywin32 or a native wrapper; run this under a supervisor such as NSSM or a scheduled task
meanwhile.
"""

from __future__ import annotations

import argparse
import os
import select
import sys
import threading
import time
from typing import Any

from ainative.core.journal import Journal, JournalError, make_validator
from ainative.core.rules import ConfigError, RuleSet, load_rules
from ainative.core.supervisor import Supervisor, SupervisorConfig
from ainative.ipc.protocol import Peer, RequestError, reply_error, reply_ok
from ainative.platform import get_platform
from ainative.platform.windows.control import PIPE, ControlPipe
from ainative.telemetry.sink import NULL_SINK, EventSink

RECONCILE_S = 1.0


def default_state_dir() -> str:
    return os.path.join(os.environ.get("PROGRAMDATA", r"C:\ProgramData"), "ainative")


class ConsoleDaemon:
    def __init__(self, rules: RuleSet, state_dir: str, *, pipe: str = PIPE,
                 scope_pid: int | None = None, poll_interval: float = 0.5,
                 sink: EventSink = NULL_SINK) -> None:
        self.platform = get_platform(poll_interval=poll_interval)
        self.journal = Journal(state_dir, validate=make_validator("ainative"))
        self.sup = Supervisor(self.platform.backend, rules, self.journal,
                              SupervisorConfig(scope_pid=scope_pid), sink=sink)
        self.lock = threading.Lock()  # the pipe's thread and the loop share the supervisor
        self.stopping = threading.Event()
        self.pipe = ControlPipe(self.platform.backend.api, pipe)  # type: ignore[attr-defined]

    # --- the control channel ---

    def handle(self, peer: Peer, req: dict[str, Any]) -> bytes:
        op = req["op"]
        with self.lock:
            if op == "ping":
                return reply_ok(pid=os.getpid())
            if op == "status":
                return reply_ok(paused=self.sup.engine.paused, managed=[
                    {"pid": m.ident.pid, "name": m.name, "cls": m.cls, "active": m.active,
                     "knobs": m.applied_summary(), "errors": m.errors}
                    for m in self.sup.engine.managed.values()])
            if op in ("restore", "resume"):
                if not peer.is_root:
                    raise RequestError(f"{op} needs an administrator (an elevated caller)")
                if op == "restore":
                    return reply_ok(**self.sup.restore().to_json())
                self.sup.resume()
                return reply_ok()
        raise RequestError(f"op {op!r} is not offered by the Windows daemon yet")

    def _serve_pipe(self) -> None:
        while not self.stopping.is_set():
            try:
                self.pipe.serve_one(self._safe_handle)
            except OSError:
                if self.stopping.is_set():
                    return
                time.sleep(0.1)

    def _safe_handle(self, peer: Peer, req: dict[str, Any]) -> bytes:
        try:
            return self.handle(peer, req)
        except RequestError as e:
            return reply_error(str(e))

    # --- the loop ---

    def run(self) -> int:
        rep = self.sup.recover()
        if rep is not None:
            print(f"ainative: undid {rep.undone} change(s) a previous run left in force",
                  flush=True)
        with self.lock:
            self.sup.full_scan()
        events = self.platform.open_events()
        threading.Thread(target=self._serve_pipe, name="ainative-pipe", daemon=True).start()
        print(f"ainative: running (pipe {self.pipe.address}); Ctrl+C undoes everything "
              "and stops", flush=True)
        next_reconcile = time.monotonic() + RECONCILE_S
        try:
            while not self.stopping.is_set():
                timeout = min(t for t in (next_reconcile, self.sup.next_timer())
                              if t is not None) - time.monotonic()
                ready, _, _ = select.select([events.fileno()], [], [], max(0.0, timeout))
                with self.lock:
                    if ready:
                        for ev in events.read():
                            self.sup.on_event(ev)
                    self.sup.run_timers()
                    if time.monotonic() >= next_reconcile:
                        self.sup.reconcile()
                        next_reconcile = time.monotonic() + RECONCILE_S
        except KeyboardInterrupt:
            pass
        finally:
            self.stopping.set()
            with self.lock:
                rep = self.sup.stop()
            events.close()
            self.pipe.close()
            self.journal.shutdown()
            print(f"ainative: stopped; undid {rep.undone} change(s)", flush=True)
        return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ainative.platform.windows.daemon")
    ap.add_argument("--rules", action="append", default=[])
    ap.add_argument("--state-dir", default=default_state_dir())
    ap.add_argument("--pipe", default=PIPE)
    ap.add_argument("--scope-descendants", type=int, default=None)
    ap.add_argument("--no-etw", action="store_true")
    args = ap.parse_args(argv)
    if sys.platform != "win32":
        print("ainative: this is the Windows daemon; on Linux run `ainative daemon`",
              file=sys.stderr)
        return 2
    try:
        rules = load_rules(args.rules, rules_dir=None)
        sink: EventSink = NULL_SINK
        if not args.no_etw:
            from ainative.platform.windows.etw import EtwSink

            sink = EtwSink()
        daemon = ConsoleDaemon(rules, args.state_dir, pipe=args.pipe,
                               scope_pid=args.scope_descendants, sink=sink)
    except (ConfigError, JournalError, OSError) as e:
        print(f"ainative: {e}", file=sys.stderr)
        return 1
    return daemon.run()


if __name__ == "__main__":
    sys.exit(main())
