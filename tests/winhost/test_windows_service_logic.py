"""The Windows service's sequencing (service.ServiceRunner) against a fake Service
Control Manager (a boundary this Linux machine cannot reach): STOPPED is reported only
after the daemon's loop has returned, i.e. after it undid every journaled change; a stop
that arrives while the daemon is still being built still stops it; a daemon that cannot
be built ends STOPPED with a service-specific error and its one-line reason. The real
SCM (sc create/start/query/stop) drives the real daemon under Wine in
tests/windows/test_wine_service.py.
"""

from __future__ import annotations

import threading

from ainative.platform.windows.service import (
    CONTROL_INTERROGATE,
    CONTROL_STOP,
    ERROR_CALL_NOT_IMPLEMENTED,
    ERROR_SERVICE_SPECIFIC_ERROR,
    NO_ERROR,
    RUNNING,
    SERVICE_ACCEPT_STOP,
    START_PENDING,
    STOP_PENDING,
    STOPPED,
    ServiceRunner,
)


class FakeScm:
    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.states: list[tuple[int, int, int]] = []
        self.running = threading.Event()

    def set_status(self, state: int, accepts: int, exit_code: int, wait_hint_ms: int) -> None:
        self.states.append((state, accepts, exit_code))
        self.log.append(f"scm:{state}")
        if state == RUNNING:
            self.running.set()


class FakeDaemon:
    """run() blocks until stop(), then 'undoes' (logs it) before returning, as
    ConsoleDaemon.run's finally does."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self._stop = threading.Event()

    def run(self) -> int:
        self.log.append("daemon:running")
        self._stop.wait(30)
        self.log.append("daemon:undone")
        return 0

    def stop(self) -> None:
        self._stop.set()


def test_stopped_is_reported_only_after_everything_is_undone() -> None:
    log: list[str] = []
    scm = FakeScm(log)
    runner = ServiceRunner(scm, lambda: FakeDaemon(log))
    t = threading.Thread(target=runner.main)
    t.start()
    assert scm.running.wait(10)
    assert runner.control(CONTROL_INTERROGATE) == NO_ERROR
    assert runner.control(200) == ERROR_CALL_NOT_IMPLEMENTED
    assert runner.control(CONTROL_STOP) == NO_ERROR
    t.join(10)
    assert not t.is_alive()
    states = [s for s, _, _ in scm.states]
    assert states == [START_PENDING, RUNNING, STOP_PENDING, STOPPED]
    assert scm.states[1][1] & SERVICE_ACCEPT_STOP
    assert scm.states[-1][2] == NO_ERROR
    assert log.index("daemon:undone") < log.index(f"scm:{STOPPED}")


def test_a_stop_during_the_build_stops_the_daemon_as_soon_as_it_exists() -> None:
    log: list[str] = []
    scm = FakeScm(log)
    building, release = threading.Event(), threading.Event()

    def build() -> FakeDaemon:
        building.set()
        release.wait(10)
        return FakeDaemon(log)

    runner = ServiceRunner(scm, build)
    t = threading.Thread(target=runner.main)
    t.start()
    assert building.wait(10)
    runner.control(CONTROL_STOP)
    release.set()
    t.join(10)
    assert not t.is_alive(), "the daemon kept running after a stop asked during its build"
    assert [s for s, _, _ in scm.states][-1] == STOPPED


def test_a_daemon_that_cannot_be_built_ends_stopped_with_its_reason() -> None:
    log: list[str] = []
    scm = FakeScm(log)

    def build() -> FakeDaemon:
        raise OSError("the pipe \\\\.\\pipe\\ainative already exists and is not this daemon's")

    runner = ServiceRunner(scm, build)
    assert runner.main() == 1
    assert [s for s, _, _ in scm.states] == [START_PENDING, STOPPED]
    assert scm.states[-1][2] == ERROR_SERVICE_SPECIFIC_ERROR
    assert runner.error is not None and "already exists" in runner.error
