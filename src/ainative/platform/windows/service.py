"""The Windows daemon as a Windows service: the same loop as the console daemon
(daemon.py), answering the Service Control Manager.

    python -m ainative.platform.windows.service install [--name ainative]
        [--start auto|demand] [daemon args: --rules FILE ... as daemon.py takes]
    python -m ainative.platform.windows.service start|stop|remove [--name ainative]
    (the SCM runs: python <this file> run [daemon args])

install registers an auto-start service running as LocalSystem through ``sc.exe create``
(the equivalent line is printed); stop waits until the SCM reports STOPPED.

Why plain ctypes against advapi32 (StartServiceCtrlDispatcherW,
RegisterServiceCtrlHandlerExW, SetServiceStatus) and not pywin32's ServiceFramework:
pywin32 needs its pythonservice.exe host and a post-install step, where a ctypes
dispatcher is ~60 lines with nothing to install. STOP and SHUTDOWN report STOP_PENDING,
ask the loop to stop, and STOPPED is reported only after the loop has undone every
journaled change (ConsoleDaemon.run's finally). The sequencing is ServiceRunner's, tested
on Linux with a fake SCM; the real SCM is exercised under Wine (tests/windows).

The SCM starts the service with this file's path, not ``-m``: a service gets the
system's environment, not an installing shell's PYTHONPATH, so run as a file the module
puts its own source root first on sys.path.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    sys.path[0] = str(Path(__file__).resolve().parents[3])  # src/, not this folder

import argparse
import ctypes
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

NAME = "ainative"
SERVICE_WIN32_OWN_PROCESS = 0x10
STOPPED, START_PENDING, STOP_PENDING, RUNNING = 1, 2, 3, 4
SERVICE_ACCEPT_STOP, SERVICE_ACCEPT_SHUTDOWN = 0x1, 0x4
CONTROL_STOP, CONTROL_INTERROGATE, CONTROL_SHUTDOWN = 1, 4, 5
NO_ERROR, ERROR_CALL_NOT_IMPLEMENTED = 0, 120
ERROR_SERVICE_SPECIFIC_ERROR = 1066
STATE_NAMES = {STOPPED: "STOPPED", START_PENDING: "START_PENDING",
               STOP_PENDING: "STOP_PENDING", RUNNING: "RUNNING"}


class Scm(Protocol):
    """The service side of the SCM: what ServiceRunner needs (the real one is
    AdvapiScm; tests use an in-memory one)."""

    def set_status(self, state: int, accepts: int, exit_code: int, wait_hint_ms: int) -> None:
        ...


class Daemon(Protocol):
    def run(self) -> int: ...
    def stop(self) -> None: ...


class ServiceRunner:
    """A service's life: START_PENDING, build the daemon, RUNNING, run until a STOP or
    SHUTDOWN control, STOPPED only once run() has returned (everything undone). A daemon
    that cannot be built (bad rules, squatted pipe) ends STOPPED with a service-specific
    exit code 1, its one-line reason kept in ``error``."""

    def __init__(self, scm: Scm, build: Callable[[], Daemon]) -> None:
        self.scm = scm
        self.build = build
        self.daemon: Daemon | None = None
        self.error: str | None = None
        self._stop_asked = threading.Event()
        self._lock = threading.Lock()

    def main(self) -> int:
        """ServiceMain's body (runs on the SCM's thread); the daemon's exit status."""
        self.scm.set_status(START_PENDING, 0, NO_ERROR, 30000)
        try:
            daemon = self.build()
        except Exception as e:  # whatever the reason, the SCM must hear STOPPED
            self.error = f"{type(e).__name__}: {e}" if not isinstance(e, OSError) else str(e)
            self.scm.set_status(STOPPED, 0, ERROR_SERVICE_SPECIFIC_ERROR, 0)
            return 1
        with self._lock:
            self.daemon = daemon
            if self._stop_asked.is_set():
                daemon.stop()
        self.scm.set_status(RUNNING, SERVICE_ACCEPT_STOP | SERVICE_ACCEPT_SHUTDOWN, NO_ERROR, 0)
        rc = 1
        try:
            rc = daemon.run()
        finally:
            self.scm.set_status(STOPPED, 0, NO_ERROR if rc == 0 else ERROR_SERVICE_SPECIFIC_ERROR,
                                0)
        return rc

    def control(self, code: int) -> int:
        """The control handler (runs on the dispatcher's thread); a Win32 error code."""
        if code in (CONTROL_STOP, CONTROL_SHUTDOWN):
            self.scm.set_status(STOP_PENDING, 0, NO_ERROR, 30000)
            with self._lock:
                self._stop_asked.set()
                if self.daemon is not None:
                    self.daemon.stop()
            return NO_ERROR
        if code == CONTROL_INTERROGATE:
            return NO_ERROR
        return ERROR_CALL_NOT_IMPLEMENTED


class _SERVICE_STATUS(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("state", ctypes.c_uint32),
                ("accepts", ctypes.c_uint32), ("exit_code", ctypes.c_uint32),
                ("specific_exit_code", ctypes.c_uint32), ("checkpoint", ctypes.c_uint32),
                ("wait_hint", ctypes.c_uint32)]


class AdvapiScm:
    """StartServiceCtrlDispatcherW and friends through ctypes (Windows only)."""

    def __init__(self, name: str) -> None:
        from ctypes import wintypes as w

        _ct: Any = ctypes
        self._adv: Any = _ct.WinDLL("advapi32", use_last_error=True)
        self.name = name
        self._handle = None
        self._checkpoint = 0
        self._main_t = _ct.WINFUNCTYPE(None, w.DWORD, ctypes.POINTER(w.LPWSTR))
        self._handler_t = _ct.WINFUNCTYPE(w.DWORD, w.DWORD, w.DWORD, ctypes.c_void_p,
                                          ctypes.c_void_p)
        self._adv.RegisterServiceCtrlHandlerExW.restype = ctypes.c_void_p
        self._adv.RegisterServiceCtrlHandlerExW.argtypes = [w.LPCWSTR, self._handler_t,
                                                            ctypes.c_void_p]
        self._adv.SetServiceStatus.argtypes = [ctypes.c_void_p,
                                               ctypes.POINTER(_SERVICE_STATUS)]

    def set_status(self, state: int, accepts: int, exit_code: int, wait_hint_ms: int) -> None:
        pending = state in (START_PENDING, STOP_PENDING)
        self._checkpoint = self._checkpoint + 1 if pending else 0
        specific = 1 if exit_code == ERROR_SERVICE_SPECIFIC_ERROR else 0
        st = _SERVICE_STATUS(SERVICE_WIN32_OWN_PROCESS, state, accepts, exit_code, specific,
                             self._checkpoint, wait_hint_ms)
        if self._handle and not self._adv.SetServiceStatus(self._handle, ctypes.byref(st)):
            _ct: Any = ctypes
            raise OSError(f"SetServiceStatus: Win32 error {_ct.get_last_error()}")

    def dispatch(self, runner: ServiceRunner) -> None:
        """Hand this thread to the SCM until the service has stopped."""
        _ct: Any = ctypes

        def handler(code: int, _type: int, _data: Any, _ctx: Any) -> int:
            return runner.control(int(code))

        def service_main(_argc: int, _argv: Any) -> None:
            self._handle = self._adv.RegisterServiceCtrlHandlerExW(self.name, handler_c, None)
            if not self._handle:
                return
            runner.main()

        handler_c = self._handler_t(handler)
        main_c = self._main_t(service_main)

        class _ENTRY(ctypes.Structure):
            _fields_ = [("name", ctypes.c_wchar_p), ("proc", self._main_t)]

        table = (_ENTRY * 2)(_ENTRY(self.name, main_c), _ENTRY(None, self._main_t()))
        if not self._adv.StartServiceCtrlDispatcherW(table):
            raise OSError(f"StartServiceCtrlDispatcherW: Win32 error {_ct.get_last_error()} "
                          "(1063: not started by the Service Control Manager; use "
                          "`python -m ainative.platform.windows.daemon` in a console)")


# --- install / remove / start / stop, through sc.exe ---


def _sc(*args: str) -> subprocess.CompletedProcess[str]:
    sc = shutil.which("sc.exe") or "sc.exe"
    return subprocess.run([sc, *args], capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL)


def bin_path(daemon_args: list[str]) -> str:
    """The command line the SCM runs: this Python, this file, ``run`` and the daemon's
    arguments, each quoted."""
    parts = [sys.executable, str(Path(__file__).resolve()), "run", *daemon_args]
    return subprocess.list2cmdline(parts)


def query_state(name: str) -> int | None:
    """The service's state as `sc query` reports it; None when it is not installed."""
    out = _sc("query", name)
    for line in out.stdout.splitlines():
        if "STATE" in line and ":" in line:
            return int(line.split(":", 1)[1].split()[0])
    return None


def wait_state(name: str, want: int, timeout: float = 60.0) -> int | None:
    deadline = time.monotonic() + timeout
    state = query_state(name)
    while state != want and time.monotonic() < deadline:
        time.sleep(0.25)
        state = query_state(name)
    return state


def _fail(what: str, out: subprocess.CompletedProcess[str]) -> int:
    text = " ".join((out.stdout + " " + out.stderr).split()) or f"exit status {out.returncode}"
    print(f"ainative: sc.exe {what} failed: {text}", file=sys.stderr)
    return 1


def manage(cmd: str, name: str, daemon_args: list[str], start: str = "auto") -> int:
    if cmd == "install":
        path = bin_path(daemon_args)
        print(f'ainative: sc.exe create {name} binPath= "{path}" start= {start}')
        out = _sc("create", name, "binPath=", path, "start=", start,
                  "DisplayName=", "ainative (AI process scheduling)")
        return _fail("create", out) if out.returncode else 0
    if cmd == "remove":
        if query_state(name) not in (None, STOPPED):
            manage("stop", name, [])
        out = _sc("delete", name)
        return _fail("delete", out) if out.returncode else 0
    if cmd == "start":
        out = _sc("start", name)
        if out.returncode:
            return _fail("start", out)
        state = wait_state(name, RUNNING)
        print(f"ainative: service {name} is {STATE_NAMES.get(state or 0, state)}")
        return 0 if state == RUNNING else 1
    if cmd == "stop":
        out = _sc("stop", name)
        if out.returncode and query_state(name) != STOPPED:
            return _fail("stop", out)
        state = wait_state(name, STOPPED)
        print(f"ainative: service {name} is {STATE_NAMES.get(state or 0, state)}")
        return 0 if state == STOPPED else 1
    raise ValueError(cmd)


def run_service(name: str, daemon_args: list[str]) -> int:
    from ainative.platform.windows.daemon import build, parser

    args = parser("ainative service").parse_args(daemon_args)
    scm = AdvapiScm(name)
    runner = ServiceRunner(scm, lambda: build(args))
    try:
        scm.dispatch(runner)
    except OSError as e:
        print(f"ainative: {e}", file=sys.stderr)
        return 1
    if runner.error:
        print(f"ainative: {runner.error}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ainative.platform.windows.service")
    ap.add_argument("command", choices=["install", "remove", "start", "stop", "run"])
    ap.add_argument("--name", default=NAME, help="the service's name (default ainative)")
    ap.add_argument("--start", choices=["auto", "demand"], default="auto",
                    help="install: start with Windows (auto, the default) or on request")
    args, daemon_args = ap.parse_known_args(argv)
    if sys.platform != "win32":
        print("ainative: Windows services exist only on Windows; on Linux run "
              "`ainative daemon` (or its systemd unit)", file=sys.stderr)
        return 2
    if args.command == "run":
        return run_service(args.name, daemon_args)
    return manage(args.command, args.name, daemon_args, args.start)


if __name__ == "__main__":
    sys.exit(main())
