"""Who may do what through the Windows daemon's pipe, decided against a fake at the
Win32 boundary (this Linux machine has no Windows, and Wine runs every process elevated,
so a non-elevated caller cannot be shown there): control.identify turns the kernel's
answers (GetNamedPipeClientProcessId, the token's elevation) into the privilege model's
Peer, and ops.WindowsOps, over the real Supervisor, classifier, access policy and
journal on the Windows backend, lets an ordinary user register only their own
non-elevated processes into classes the rules allow them, and refuses them restore.

The pipe's DACL itself, its read-back and the squatter refusal run under Wine in
tests/windows/test_wine_pipe_security.py; here only the string logic: the client
access never includes FILE_CREATE_PIPE_INSTANCE, and a read-back is compared by
trustee, since Windows maps generic rights on creation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_windows_fake_boundary import FakeTable, FakeWin32

from ainative.core.journal import Journal, make_validator
from ainative.core.rules import load_rules, parse_rules_text, validate
from ainative.core.supervisor import Supervisor, SupervisorConfig
from ainative.ipc.protocol import Peer
from ainative.platform.base import ProcessGone, ProcessInfo, TaskId
from ainative.platform.windows.backend import WindowsBackend
from ainative.platform.windows.control import (
    CLIENT_ACCESS,
    PipeSquatted,
    check_readback,
    first_instance_error,
    identify,
    pipe_sddl,
    trustees,
)
from ainative.platform.windows.ops import WindowsOps
from ainative.platform.windows.procs import uid_of
from ainative.platform.windows.win32 import PRIORITY_CLASS_VALUES

FILE_APPEND_DATA = 0x4  # == FILE_CREATE_PIPE_INSTANCE on a pipe
ALICE, BOB = "WIN\\alice", "WIN\\bob"


class PipeFakeWin32(FakeWin32):
    """The fake Win32 plus the two calls the pipe makes about its caller."""

    def __init__(self) -> None:
        super().__init__(admin=True)  # the daemon itself: a service, elevated
        self.client_pid = 0
        self.elevated: set[int] = set()

    def pipe_client_pid(self, pipe_handle: int) -> int:
        return self.client_pid

    def process_elevated(self, pid: int) -> bool:
        self._p(pid)  # ProcessGone for an unknown pid, as OpenProcess
        return pid in self.elevated


class AccountTable(FakeTable):
    """Processes of the fake with an owner account, an image and no modules."""

    def __init__(self, api: PipeFakeWin32) -> None:
        super().__init__(api)
        self.owner: dict[int, str] = {}

    def list_pids(self) -> list[int]:
        assert isinstance(self.api, FakeWin32)
        return list(self.api.procs)

    def read_process(self, pid: int) -> ProcessInfo:
        assert isinstance(self.api, FakeWin32)
        if pid not in self.api.procs:
            raise ProcessGone(pid)
        user = self.owner[pid]
        return ProcessInfo(ident=TaskId(pid, self.api.procs[pid].created), ppid=4,
                           comm="app", exe="C:\\app\\app.exe", cmdline=["app.exe"],
                           uid=uid_of(user), user=user,
                           num_threads=len(self.api.procs[pid].threads))

    def process_name(self, pid: int) -> str:
        return self.read_process(pid).comm

    def modules(self, pid: int) -> list[str]:
        return []

    def environ_value(self, pid: int, name: str) -> str | None:
        return None

    def cpu_times(self, pid: int) -> tuple[float, float]:
        return 0.0, 0.0

    def parent_pid(self, pid: int) -> int:
        return 4

    def rss_bytes(self, pid: int) -> int:
        return 1 << 20

    def listening_sockets(self, pid: int) -> list[str]:
        return []


RULES = """
[classes.quiet]
priority_class = "below_normal"
[classes.boost]
priority_class = "high"
thread_priority = "highest"
[access.boost]
users = [{granted}]
"""


@pytest.fixture
def world(tmp_path: Path) -> Any:
    api = PipeFakeWin32()
    table = AccountTable(api)
    for pid, owner in ((600, ALICE), (700, BOB), (800, ALICE)):
        api.add(pid, [pid + 4, pid + 8])
        table.owner[pid] = owner
    api.elevated.add(800)  # alice's elevated process
    rs = load_rules(rules_dir=None)
    parse_rules_text(RULES.format(granted=uid_of(BOB)), "win.toml", rs)
    validate(rs)
    journal = Journal(str(tmp_path), validate=make_validator("ainative"))
    sup = Supervisor(WindowsBackend(api, table), rs, journal, SupervisorConfig())
    yield api, sup, WindowsOps(sup, api), journal
    sup.stop()
    journal.shutdown()


def _ask(ops: WindowsOps, peer: Peer, **req: Any) -> dict[str, Any]:
    return dict(json.loads(ops.handle(peer, req)))


def _caller(api: PipeFakeWin32, pid: int, user: str | None, elevated: bool) -> Peer:
    api.add(pid, [pid + 4])
    if elevated:
        api.elevated.add(pid)
    api.client_pid = pid
    return identify(api, 1234, username=lambda p: user if p == pid else None)


def test_the_caller_is_named_by_the_kernel_and_only_elevation_is_root(world: Any) -> None:
    api = world[0]
    alice = _caller(api, 900, ALICE, elevated=False)
    assert alice.pid == 900 and alice.uid == uid_of(ALICE) and not alice.is_root
    admin = _caller(api, 910, ALICE, elevated=True)  # the same account, elevated
    assert admin.is_root
    unknown = _caller(api, 920, None, elevated=False)
    assert unknown.uid == -1 and not unknown.is_root


def test_an_ordinary_user_registers_only_their_own_non_elevated_processes(world: Any) -> None:
    api, _sup, ops, journal = world
    alice = _caller(api, 900, ALICE, elevated=False)
    rep = _ask(ops, alice, op="register", pid=600, **{"class": "quiet"})
    assert rep["ok"], rep
    assert api.procs[600].priority_class == PRIORITY_CLASS_VALUES["below_normal"]
    assert len(journal.in_force()) >= 1
    # Someone else's process: refused, nothing changed.
    rep = _ask(ops, alice, op="register", pid=700, **{"class": "quiet"})
    assert not rep["ok"] and "only register your own" in rep["error"], rep
    assert api.procs[700].priority_class == PRIORITY_CLASS_VALUES["normal"]
    # Her own elevated process: refused from a non-elevated caller.
    rep = _ask(ops, alice, op="register", pid=800, **{"class": "quiet"})
    assert not rep["ok"] and "runs elevated" in rep["error"], rep
    assert api.procs[800].priority_class == PRIORITY_CLASS_VALUES["normal"]
    # A class above normal needs a grant in the rules: alice has none.
    rep = _ask(ops, alice, op="register", pid=600, **{"class": "boost"})
    assert not rep["ok"] and "may not ask for class 'boost'" in rep["error"], rep
    assert api.procs[600].priority_class == PRIORITY_CLASS_VALUES["below_normal"]


def test_a_grant_in_the_rules_lets_that_user_boost_their_own_process(world: Any) -> None:
    api, _sup, ops, _journal = world
    bob = _caller(api, 930, BOB, elevated=False)
    rep = _ask(ops, bob, op="register", pid=700, **{"class": "boost"})
    assert rep["ok"], rep
    assert api.procs[700].priority_class == PRIORITY_CLASS_VALUES["high"]


def test_restore_and_resume_need_an_elevated_caller(world: Any) -> None:
    api, _sup, ops, journal = world
    admin = _caller(api, 910, ALICE, elevated=True)
    assert _ask(ops, admin, op="register", pid=700, **{"class": "boost"})["ok"]
    assert api.procs[700].priority_class == PRIORITY_CLASS_VALUES["high"]
    alice = _caller(api, 900, ALICE, elevated=False)
    for op in ("restore", "resume"):
        rep = _ask(ops, alice, op=op)
        assert not rep["ok"] and "needs an administrator" in rep["error"], rep
    assert api.procs[700].priority_class == PRIORITY_CLASS_VALUES["high"]
    # Anyone may read.
    status = _ask(ops, alice, op="status")
    assert status["ok"] and [m["pid"] for m in status["managed"]] == [700]
    rep = _ask(ops, admin, op="restore")
    assert rep["ok"] and rep["undone"] >= 2, rep
    assert api.procs[700].priority_class == PRIORITY_CLASS_VALUES["normal"]
    assert journal.in_force() == []


def test_a_caller_whose_account_cannot_be_read_registers_nothing(world: Any) -> None:
    api, _sup, ops, _journal = world
    nobody = _caller(api, 920, None, elevated=False)
    rep = _ask(ops, nobody, op="register", pid=600, **{"class": "quiet"})
    assert not rep["ok"] and "could not be read" in rep["error"], rep
    assert api.procs[600].priority_class == PRIORITY_CLASS_VALUES["normal"]


def test_the_dacl_gives_users_no_right_to_create_an_instance() -> None:
    sddl = pipe_sddl("S-1-5-21-1-2-3-1001")
    assert CLIENT_ACCESS & FILE_APPEND_DATA == 0
    assert sddl.startswith("D:P")  # protected: nothing inherited widens it
    assert f"(A;;0x{CLIENT_ACCESS:x};;;AU)" in sddl and "GA;;;AU" not in sddl
    assert trustees(sddl) == {("D", "NU"), ("A", "SY"), ("A", "BA"), ("A", "AU"),
                              ("A", "S-1-5-21-1-2-3-1001")}


def test_a_read_back_is_compared_by_trustee_and_a_squatter_s_is_refused() -> None:
    asked = pipe_sddl("S-1-5-18")
    # What Windows stores: generic rights mapped to the pipe's own (FA = file all).
    mapped = asked.replace("GA", "FA").replace("0x12018b", "0x12019b")
    check_readback(r"\\.\pipe\ainative", asked, mapped)
    with pytest.raises(PipeSquatted, match=r"already exists.*D:\(A;;GA;;;WD\).*--pipe"):
        check_readback(r"\\.\pipe\ainative", asked, "D:(A;;GA;;;WD)")


def test_a_refused_first_instance_is_a_squatted_name_in_one_line() -> None:
    denied = OSError(13, "Access is denied")
    denied.winerror = 5  # type: ignore[attr-defined]
    got = first_instance_error(r"\\.\pipe\ainative", denied)
    assert isinstance(got, PipeSquatted) and "\n" not in str(got)
    assert "Win32 error 5" in str(got) and "stop it" in str(got)
    other = OSError(22, "bad")
    other.winerror = 87  # type: ignore[attr-defined]
    assert first_instance_error(r"\\.\pipe\ainative", other) is other
