"""The daemon on Windows, in console (foreground) mode: the unchanged core (rules,
supervisor, engine, journal) over the Windows backend, process events by polling, the
control channel on a named pipe (control.py), and ETW for events (etw.py).

    python -m ainative.platform.windows.daemon [--rules FILE]... [--state-dir DIR]
        [--pipe \\\\.\\pipe\\ainative] [--scope-descendants PID] [--no-etw]

Ctrl+C (or Ctrl+Break) undoes every change and exits; a daemon killed outright leaves its
journal, and the next start undoes what it had in force before doing anything else.
Requests on the pipe: ping, status, register, restore (undo everything and pause), resume.

The same loop runs as a Windows service (service.py); stop() is what its STOP control
calls. The pipe's access (any local user may ask, the caller is identified) is
control.py's; who may ask for what is ops.py's.
"""

from __future__ import annotations

import argparse
import os
import select
import sys
import threading
import time

from ainative.core.journal import Journal, JournalError, make_validator
from ainative.core.rules import ConfigError, RuleSet, load_rules
from ainative.core.supervisor import Supervisor, SupervisorConfig
from ainative.platform import get_platform
from ainative.platform.windows.control import PIPE, ControlPipe
from ainative.platform.windows.ops import WindowsOps
from ainative.telemetry.sink import NULL_SINK, EventSink

RECONCILE_S = 1.0


def default_state_dir() -> str:
    return os.path.join(os.environ.get("PROGRAMDATA", r"C:\ProgramData"), "ainative")


class ConsoleDaemon:
    def __init__(self, rules: RuleSet, state_dir: str, *, pipe: str = PIPE,
                 scope_pid: int | None = None, poll_interval: float = 0.5,
                 sink: EventSink = NULL_SINK) -> None:
        self.platform = get_platform(poll_interval=poll_interval)
        api = self.platform.backend.api  # type: ignore[attr-defined]
        # The pipe first: a squatted name stops the start before any state is touched.
        self.pipe = ControlPipe(api, pipe)
        self.journal = Journal(state_dir, validate=make_validator("ainative"))
        self.sup = Supervisor(self.platform.backend, rules, self.journal,
                              SupervisorConfig(scope_pid=scope_pid), sink=sink)
        self.lock = threading.Lock()  # the pipe's thread and the loop share the supervisor
        self.stopping = threading.Event()
        self.ops = WindowsOps(self.sup, api, self.lock)

    def stop(self) -> None:
        """Ask run() to undo everything and return (the service's STOP control)."""
        self.stopping.set()

    # --- the control channel ---

    def _serve_pipe(self) -> None:
        while not self.stopping.is_set():
            try:
                self.pipe.serve_one(self.ops.handle)
            except OSError:
                if self.stopping.is_set():
                    return
                time.sleep(0.1)

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


def parser(prog: str = "python -m ainative.platform.windows.daemon") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog)
    ap.add_argument("--rules", action="append", default=[])
    ap.add_argument("--state-dir", default=default_state_dir())
    ap.add_argument("--pipe", default=PIPE)
    ap.add_argument("--scope-descendants", type=int, default=None)
    ap.add_argument("--no-etw", action="store_true")
    return ap


def build(args: argparse.Namespace) -> ConsoleDaemon:
    """The daemon the arguments describe. Raises ConfigError, JournalError or OSError
    (a squatted pipe is control.PipeSquatted) with a one-line message."""
    rules = load_rules(args.rules, rules_dir=None)
    sink: EventSink = NULL_SINK
    if not args.no_etw:
        from ainative.platform.windows.etw import EtwSink

        sink = EtwSink()
    return ConsoleDaemon(rules, args.state_dir, pipe=args.pipe,
                         scope_pid=args.scope_descendants, sink=sink)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if sys.platform != "win32":
        print("ainative: this is the Windows daemon; on Linux run `ainative daemon`",
              file=sys.stderr)
        return 2
    try:
        daemon = build(args)
    except (ConfigError, JournalError, OSError) as e:
        print(f"ainative: {e}", file=sys.stderr)
        return 1
    return daemon.run()


if __name__ == "__main__":
    sys.exit(main())
