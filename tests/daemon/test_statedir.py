"""The state directory is trusted only when it deserves it: a directory another user made
first, one others can write, a symlink, or a file planted in it is refused, and what a
planted link points at is never written."""

from __future__ import annotations

import fcntl
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ainative.core.journal import Journal, JournalError
from ainative.daemon.statedir import (
    StateDirError,
    check_pointer,
    lock,
    open_in,
    pointer_path,
    read_pointer,
    secure_dir,
    write_pointer,
)
from ainative.platform.base import TaskId

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="chowns files to another user: needs root")
PRECIOUS = b"precious data, not the daemon's\n"


@pytest.fixture(scope="module")
def other_user() -> Iterator[tuple[int, str]]:
    """A real unprivileged user, created for these tests and removed after them."""
    if not ROOT:
        pytest.skip("creates a user with useradd: needs root")
    if not shutil.which("useradd") or not shutil.which("userdel"):
        pytest.skip("useradd/userdel are not installed")
    name = "ainative-t-" + secrets.token_hex(4)
    r = subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"useradd {name} failed: {r.stderr.strip()}")
    try:
        yield pwd.getpwnam(name).pw_uid, name
    finally:
        subprocess.run(["userdel", name], capture_output=True, check=False)


def _dir_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def _precious(tmp_path: Path, owner: int | None = None) -> Path:
    target = tmp_path / "elsewhere" / "precious"
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(PRECIOUS)
    os.chmod(target, 0o600)
    if owner is not None:
        os.chown(target, owner, owner)
    return target


def _unchanged(target: Path) -> None:
    assert target.read_bytes() == PRECIOUS
    assert target.stat().st_size == len(PRECIOUS)


# --- secure_dir ---


def test_creates_the_dir_and_its_parents(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        fd = secure_dir(str(tmp_path / "a" / "b" / "state"))
    finally:
        os.umask(old)
    try:
        assert _dir_path(fd) == str(tmp_path / "a" / "b" / "state")
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o700
        assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o755
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    finally:
        os.close(fd)
    # An existing good one is opened as is.
    os.close(secure_dir(str(tmp_path / "a" / "b" / "state"), create=False))


def test_created_dir_gets_exactly_its_mode_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        fd = secure_dir(str(tmp_path / "state"), mode=0o750)
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o750
    finally:
        os.close(fd)


def test_missing_dir_without_create(tmp_path: Path) -> None:
    with pytest.raises(StateDirError, match=r"does not exist"):
        secure_dir(str(tmp_path / "nope"), create=False)
    assert not (tmp_path / "nope").exists()


@needs_root
def test_dir_precreated_by_another_user_is_refused(tmp_path: Path,
                                                   other_user: tuple[int, str]) -> None:
    uid, name = other_user
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    os.chown(d, uid, uid)
    with pytest.raises(StateDirError) as e:
        secure_dir(str(d))
    assert str(e.value) == (
        f"state dir {d} is owned by uid {uid} ({name}), not by uid 0 (root): someone else "
        f"created it first; remove it or choose --state-dir elsewhere")


@needs_root
def test_tmp_is_a_fine_parent_but_not_a_dir_another_user_made_in_it(
        other_user: tuple[int, str]) -> None:
    uid, _ = other_user
    d = Path("/tmp") / f"ainative-state-{secrets.token_hex(4)}"
    try:
        os.close(secure_dir(str(d)))  # /tmp is world-writable but sticky: fine
        os.rmdir(d)
        d.mkdir(mode=0o700)  # now "the attacker" wins the race for the name
        os.chown(d, uid, uid)
        with pytest.raises(StateDirError, match=r"owned by uid \d+ \(ainative-t-"):
            secure_dir(str(d))
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777, 0o1777])
def test_group_or_other_writable_dir_is_refused(tmp_path: Path, mode: int) -> None:
    d = tmp_path / "state"
    d.mkdir()
    os.chmod(d, mode)
    with pytest.raises(StateDirError, match=rf"has mode {mode:04o} .*: chmod 700 it"):
        secure_dir(str(d))


def test_symlinked_state_dir_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    os.symlink(real, tmp_path / "state")
    with pytest.raises(StateDirError, match=r"state dir .*/state is a symbolic link"):
        secure_dir(str(tmp_path / "state"))


def test_regular_file_and_file_parent_are_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(StateDirError, match=rf"^state dir {tmp_path}/f is a regular file"):
        secure_dir(str(tmp_path / "f"))
    with pytest.raises(StateDirError,
                       match=rf"^a parent of the state dir, {tmp_path}/f, is not a directory"):
        secure_dir(str(tmp_path / "f" / "state"))


def test_writable_parent_is_refused_unless_sticky(tmp_path: Path) -> None:
    parent = tmp_path / "shared"
    parent.mkdir()
    os.chmod(parent, 0o777)
    with pytest.raises(StateDirError, match=r"a parent of the state dir, .*/shared, has mode "
                                            r"0777 .*no sticky bit"):
        secure_dir(str(parent / "state"))
    assert not (parent / "state").exists()
    os.chmod(parent, 0o1777)
    os.close(secure_dir(str(parent / "state")))


@needs_root
def test_parent_owned_by_another_user_is_refused(tmp_path: Path,
                                                 other_user: tuple[int, str]) -> None:
    uid, name = other_user
    parent = tmp_path / "theirs"
    parent.mkdir(mode=0o755)
    os.chown(parent, uid, uid)
    with pytest.raises(StateDirError, match=rf"a parent of the state dir, {parent}, is owned "
                                            rf"by uid {uid} \({name}\), not by root"):
        secure_dir(str(parent / "state"))


@needs_root
def test_symlinked_parent_is_followed_only_when_trusted(tmp_path: Path,
                                                        other_user: tuple[int, str]) -> None:
    uid, _ = other_user
    real = tmp_path / "real"
    real.mkdir(mode=0o755)
    os.symlink(real, tmp_path / "link")  # root's own link, like /var/run -> /run
    fd = secure_dir(str(tmp_path / "link" / "state"))
    assert _dir_path(fd) == str(real / "state")
    os.close(fd)
    os.symlink(real, tmp_path / "theirlink")
    os.lchown(tmp_path / "theirlink", uid, uid)
    with pytest.raises(StateDirError, match=r"theirlink, is a symbolic link owned by uid"):
        secure_dir(str(tmp_path / "theirlink" / "state2"))
    assert not (real / "state2").exists()


# --- files in the state dir ---


@pytest.fixture
def state(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    d = tmp_path / "state"
    fd = secure_dir(str(d))
    try:
        yield d, fd
    finally:
        os.close(fd)


@pytest.mark.parametrize("name", ["journal.jsonl", "daemon.lock", "journal.jsonl.tmp"])
def test_planted_symlink_is_refused_and_its_target_unchanged(
        tmp_path: Path, state: tuple[Path, int], name: str) -> None:
    d, fd = state
    target = _precious(tmp_path)
    os.symlink(target, d / name)
    with pytest.raises((StateDirError, JournalError), match=rf"{d}/{name} is a symbolic link"):
        if name == "daemon.lock":
            os.close(lock(fd))
        else:
            Journal(str(d), dir_fd=fd).shutdown()
    with pytest.raises(StateDirError, match=r"is a symbolic link"):
        os.close(open_in(fd, name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC))
    _unchanged(target)


@needs_root
@pytest.mark.parametrize("name", ["journal.jsonl", "daemon.lock", "journal.jsonl.tmp"])
def test_planted_hard_link_to_another_users_file_is_refused(
        tmp_path: Path, state: tuple[Path, int], other_user: tuple[int, str],
        name: str) -> None:
    d, fd = state
    uid, _ = other_user
    target = _precious(tmp_path, owner=uid)
    os.link(target, d / name)
    with pytest.raises((StateDirError, JournalError), match=rf"{d}/{name} is owned by uid {uid}"):
        if name == "daemon.lock":
            os.close(lock(fd))
        else:
            Journal(str(d), dir_fd=fd).shutdown()
    _unchanged(target)


def test_planted_hard_link_to_our_own_file_is_refused(tmp_path: Path,
                                                      state: tuple[Path, int]) -> None:
    d, fd = state
    target = _precious(tmp_path)  # root's own file: only the link count gives it away
    os.link(target, d / "daemon.lock")
    with pytest.raises(StateDirError, match=r"daemon.lock has 2 hard links"):
        lock(fd)
    with pytest.raises(StateDirError, match=r"has 2 hard links"):
        open_in(fd, "daemon.lock", os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    _unchanged(target)


def test_open_in_refuses_paths(state: tuple[Path, int]) -> None:
    _, fd = state
    for bad in ("../x", "a/b", "", ".", ".."):
        with pytest.raises(StateDirError, match=r"must be a plain name"):
            open_in(fd, bad, os.O_RDONLY)


def test_open_in_creates_private_files(state: tuple[Path, int]) -> None:
    d, fd = state
    f = open_in(fd, "x", os.O_WRONLY | os.O_CREAT)
    os.write(f, b"hi")
    os.close(f)
    assert (d / "x").read_bytes() == b"hi"
    assert stat.S_IMODE((d / "x").stat().st_mode) == 0o600


def test_journal_through_secure_dir(state: tuple[Path, int]) -> None:
    d, fd = state
    j = Journal(str(d), dir_fd=fd)
    j.record([(TaskId(100, 5000), TaskId(100, 5000), "nice", 0, 5)])
    j.compact()
    j.shutdown()
    assert [c.new for c in Journal(str(d), dir_fd=fd).in_force()] == [5]


# --- the lock ---

_HOLDER = """
import sys
from ainative.daemon.statedir import lock, secure_dir
fd = lock(secure_dir(sys.argv[1]))
print("locked", flush=True)
sys.stdin.read()
"""


def test_lock_refuses_a_second_holder(state: tuple[Path, int]) -> None:
    d, fd = state
    child = subprocess.Popen([sys.executable, "-c", _HOLDER, str(d)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "locked\n"
        with pytest.raises(StateDirError) as e:
            lock(fd)
        assert str(e.value) == (f"another ainative daemon is using state dir {d} "
                                f"(pid {child.pid}): stop it first")
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=10)
    lfd = lock(fd)  # free again once the holder is gone
    try:
        assert (d / "daemon.lock").read_text() == f"{os.getpid()}\n"
        r = subprocess.run([sys.executable, "-c", _HOLDER, str(d)], input="",
                           capture_output=True, text=True, timeout=30)
        assert r.returncode != 0
        assert f"(pid {os.getpid()})" in r.stderr
    finally:
        os.close(lfd)


# --- the pointer ---


def test_pointer_round_trip(tmp_path: Path, state: tuple[Path, int]) -> None:
    d, _ = state
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    sock = str(run / "ainative.sock")
    assert pointer_path(sock) == sock + ".state"
    assert read_pointer(sock) is None and check_pointer(sock) == (None, None)
    write_pointer(sock, str(d))
    assert read_pointer(sock) == str(d)
    write_pointer(sock, str(tmp_path / "other"))  # replaced atomically
    assert read_pointer(sock) == str(tmp_path / "other")
    assert sorted(os.listdir(run)) == ["ainative.sock.state"]  # no temp file left


def test_pointer_write_does_not_follow_a_planted_link(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    target = _precious(tmp_path)
    os.symlink(target, run / "ainative.sock.state")
    write_pointer(str(run / "ainative.sock"), "/var/lib/ainative")
    _unchanged(target)  # the link was replaced, not written through
    assert read_pointer(str(run / "ainative.sock")) == "/var/lib/ainative"


def test_pointer_in_a_writable_dir_is_not_trusted(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    sock = str(run / "ainative.sock")
    write_pointer(sock, "/var/lib/ainative")
    os.chmod(run, 0o777)
    path, why = check_pointer(sock)
    assert path is None and why is not None
    assert why.startswith(f"not trusting {sock}.state: its directory {run} is owned by uid 0")
    assert "mode 0777" in why
    assert read_pointer(sock) is None


@needs_root
def test_pointer_owned_by_another_user_is_not_trusted(tmp_path: Path,
                                                      other_user: tuple[int, str]) -> None:
    uid, _ = other_user
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    sock = str(run / "ainative.sock")
    write_pointer(sock, "/var/lib/ainative")
    os.chown(sock + ".state", uid, uid)
    path, why = check_pointer(sock)
    assert path is None
    assert why == f"not trusting {sock}.state: it is owned by uid {uid} ({other_user[1]}), " \
                  f"not by root; remove it"
    os.chown(sock + ".state", 0, 0)
    os.chown(run, uid, uid)
    assert read_pointer(sock) is None
    assert "its directory" in str(check_pointer(sock)[1])


@pytest.mark.parametrize("content", [b"relative/path\n", b"/a\n/b\n", b"/no-newline",
                                     b"/\xff\n", b"/" + b"a" * 5000 + b"\n"])
def test_pointer_with_bad_content_is_not_trusted(tmp_path: Path, content: bytes) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    (run / "s.state").write_bytes(content)
    os.chmod(run / "s.state", 0o644)
    path, why = check_pointer(str(run / "s"))
    assert path is None and why is not None and why.startswith("not trusting")


def test_pointer_symlink_is_not_trusted(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    (tmp_path / "p").write_text("/var/lib/ainative\n")
    os.symlink(tmp_path / "p", run / "s.state")
    assert check_pointer(str(run / "s")) == (
        None, f"not trusting {run}/s.state: it is a symbolic link; remove it")

