"""The daemon's state directory, trusted only when it deserves it.

The daemon runs as root and writes its journal, lock and pointer files there; an
unprivileged user may have created the directory first (a predictable name under /tmp),
made it writable, or planted symlinks and hard links in it. So:

- ``secure_dir`` walks the path from ``/`` one component at a time with O_NOFOLLOW
  directory fds, creating what is missing, and checks every directory it opens with
  fstat on that fd (no check/use race). Each ancestor must be owned by root or our euid
  and not writable by group or others unless it has the sticky bit (OpenSSH's
  StrictModes); the state dir itself must be a real directory owned by our euid and
  writable by no one else.
- ``open_in`` opens a file inside it with O_NOFOLLOW and refuses anything that is not a
  plain file of ours with one link.
- ``lock`` takes the daemon lock; ``write_pointer``/``read_pointer`` leave, beside the
  control socket, the path of the state dir the last daemon used, for ``ainative restore``.

Every refusal is a StateDirError with one line: the path, the problem, the fix.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import stat

from ainative.core.journal import JournalError, fd_path, open_private
from ainative.fsnames import file_kind, user_label

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_SYMLINKS = 40
_MAX_POINTER = 4096
LOCK_NAME = "daemon.lock"


class StateDirError(Exception):
    """The state directory (or a file in it) cannot be trusted; one line, with the fix."""


def _ancestor_problem(st: os.stat_result, shown: str) -> str | None:
    euid = os.geteuid()
    if st.st_uid not in (0, euid):
        return (f"a parent of the state dir, {shown}, is owned by {user_label(st.st_uid)}, not by "
                f"root: that user could replace the state dir; choose --state-dir elsewhere")
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        return (f"a parent of the state dir, {shown}, has mode {stat.S_IMODE(st.st_mode):04o} "
                f"(writable by group or others, no sticky bit): chmod go-w it or choose "
                f"--state-dir elsewhere")
    return None


def _final_problem(st: os.stat_result, shown: str) -> str | None:
    euid = os.geteuid()
    if st.st_uid != euid:
        return (f"state dir {shown} is owned by {user_label(st.st_uid)}, not by "
                f"{user_label(euid)}: someone else created it first; remove it or choose "
                "--state-dir elsewhere")
    if st.st_mode & 0o022:
        return (f"state dir {shown} has mode {stat.S_IMODE(st.st_mode):04o} (writable by group "
                f"or others): chmod 700 it")
    return None


def _join(base: str, name: str) -> str:
    return "/" + name if base == "/" else base + "/" + name


def secure_dir(path: str, *, create: bool = True, mode: int = 0o700,
               what: str = "state dir", option: str = "--state-dir") -> int:
    """An O_DIRECTORY|O_NOFOLLOW|O_CLOEXEC fd of the state dir at ``path``, created (with
    missing parents, 0o755) when absent, after checking it and every ancestor. ``what``
    and ``option`` name the directory and its option in messages (the control socket's
    directory is checked the same way)."""
    try:
        return _secure_dir(path, create=create, mode=mode)
    except StateDirError as e:
        if what == "state dir":
            raise
        raise StateDirError(str(e).replace("--state-dir", option).replace("state dir", what)
                            ) from None


def _secure_dir(path: str, *, create: bool, mode: int) -> int:
    want = os.path.abspath(path)
    todo = [c for c in want.split("/") if c]
    todo.reverse()  # a stack: the next component is at the end
    fd = os.open("/", _DIR_FLAGS)
    cur = "/"
    hops = 0
    try:
        why = _ancestor_problem(os.fstat(fd), cur) if todo else _final_problem(
            os.fstat(fd), cur)
        if why:
            raise StateDirError(why)
        while todo:
            name = todo.pop()
            last = not todo
            if name == ".":
                if last:
                    raise StateDirError(f"state dir {want} resolves to '.': name a directory")
                continue
            if name == "..":
                if last:
                    raise StateDirError(f"state dir {want} ends in '..': name a directory")
                nfd = os.open("..", _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd, cur = nfd, os.path.dirname(cur) or "/"
                continue
            shown = _join(cur, name)
            created = False
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                if not create:
                    raise StateDirError(f"state dir {want} does not exist ({shown} is "
                                        f"missing)") from None
                try:
                    os.mkdir(name, mode if last else 0o755, dir_fd=fd)
                    created = True
                except FileExistsError:
                    pass  # someone else made it meanwhile: checked below like any other
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                if last:
                    raise StateDirError(f"state dir {shown} is a symbolic link: use the real "
                                        f"directory's path, or remove the link")
                # A link among the ancestors (/var/run -> /run) is followed only when its
                # owner is trusted; the directory holding it was checked already.
                if st.st_uid not in (0, os.geteuid()):
                    raise StateDirError(
                        f"a parent of the state dir, {shown}, is a symbolic link owned by "
                        f"{user_label(st.st_uid)}: choose --state-dir elsewhere")
                hops += 1
                if hops > _MAX_SYMLINKS:
                    raise StateDirError(f"state dir {want}: too many symbolic links in its "
                                        f"path; choose --state-dir elsewhere")
                target = os.readlink(name, dir_fd=fd)
                if target.startswith("/"):
                    os.close(fd)
                    fd, cur = os.open("/", _DIR_FLAGS), "/"
                todo.extend(reversed([c for c in target.split("/") if c]))
                continue
            if not stat.S_ISDIR(st.st_mode):
                if last:
                    raise StateDirError(f"state dir {shown} is {file_kind(st.st_mode)}: remove it "
                                        f"or choose --state-dir elsewhere")
                raise StateDirError(f"a parent of the state dir, {shown}, is not a directory: "
                                    f"choose --state-dir elsewhere")
            nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd, cur = nfd, shown
            if created and last:
                os.fchmod(fd, mode)  # exactly this mode, whatever the umask
            st = os.fstat(fd)  # the checks that count: on the fd we will use
            why = _final_problem(st, cur) if last else _ancestor_problem(st, cur)
            if why:
                raise StateDirError(why)
        return fd
    except StateDirError:
        os.close(fd)
        raise
    except OSError as e:
        os.close(fd)
        where = e.filename if isinstance(e.filename, str) else want
        if e.errno == errno.ELOOP:
            raise StateDirError(f"state dir {want}: a component was replaced by a symbolic "
                                f"link while it was opened; check who can write {cur}") from None
        raise StateDirError(f"cannot open state dir {want} ({where}): {e.strerror}") from None


def open_in(dir_fd: int, name: str, flags: int, mode: int = 0o600) -> int:
    """os.open(name, flags | O_NOFOLLOW | O_CLOEXEC, mode, dir_fd=dir_fd) that refuses a
    name with '/', a symlink, and a file that is not a regular file owned by our euid with
    no group/other write and a single link (checked with fstat; O_TRUNC only after)."""
    if not name or "/" in name or name in (".", ".."):
        raise StateDirError(f"bad file name {name!r} in state dir {fd_path(dir_fd)}: "
                            f"must be a plain name")
    try:
        return open_private(dir_fd, name, flags, mode)
    except JournalError as e:
        raise StateDirError(str(e)) from None


def lock(dir_fd: int) -> int:
    """Take the exclusive lock on daemon.lock (non-blocking) and write our pid into it.
    Returns the fd, which holds the lock until closed."""
    fd = open_in(dir_fd, LOCK_NAME, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        try:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        except OSError:
            text = ""
        os.close(fd)
        pid = text if text.isdigit() else "unknown"
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise StateDirError(f"another ainative daemon is using state dir "
                                f"{fd_path(dir_fd)} (pid {pid}): stop it first") from None
        raise StateDirError(f"cannot lock {fd_path(dir_fd)}/{LOCK_NAME}: {e.strerror}") \
            from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as e:
        os.close(fd)
        raise StateDirError(f"cannot write {fd_path(dir_fd)}/{LOCK_NAME}: {e.strerror}") \
            from None
    return fd


# --- the pointer beside the socket ---


def pointer_path(socket_path: str) -> str:
    return socket_path + ".state"


def write_pointer(socket_path: str, state_dir: str) -> None:
    """Record the absolute state dir in <socket_path>.state, atomically (a temp file with
    O_EXCL|O_NOFOLLOW in the socket's directory, then rename)."""
    final = pointer_path(socket_path)
    d, base = os.path.split(os.path.abspath(final))
    tmp = f".{base}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    if "\n" in state_dir or "\0" in state_dir:
        raise StateDirError(f"state dir {state_dir!r} has a newline or NUL in its name")
    data = (os.path.abspath(state_dir) + "\n").encode()
    try:
        dfd = os.open(d or "/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise StateDirError(f"cannot write {final}: {e.strerror} ({d})") from None
    try:
        fd = open_in(dfd, tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.replace(tmp, base, src_dir_fd=dfd, dst_dir_fd=dfd)
        except OSError:
            os.unlink(tmp, dir_fd=dfd)
            raise
        os.fsync(dfd)
    except OSError as e:
        raise StateDirError(f"cannot write {final}: {e.strerror}") from None
    finally:
        os.close(dfd)


def check_pointer(socket_path: str) -> tuple[str | None, str | None]:
    """(state dir, None) when <socket_path>.state exists and can be trusted; (None, why)
    when it cannot (why is None when there simply is no pointer)."""
    final = pointer_path(socket_path)
    d, base = os.path.split(os.path.abspath(final))
    euid = os.geteuid()
    try:
        dfd = os.open(d or "/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, None
    except OSError as e:
        return None, f"cannot open {d}: {e.strerror}"
    try:
        dst = os.fstat(dfd)
        if dst.st_uid not in (0, euid) or dst.st_mode & 0o022:
            return None, (f"not trusting {final}: its directory {d} is owned by "
                          f"{user_label(dst.st_uid)} with mode {stat.S_IMODE(dst.st_mode):04o}; "
                          f"it must be owned by root and writable by no one else")
        try:
            fd = os.open(base, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=dfd)
        except FileNotFoundError:
            return None, None
        except OSError as e:
            if e.errno == errno.ELOOP:
                return None, f"not trusting {final}: it is a symbolic link; remove it"
            return None, f"cannot read {final}: {e.strerror}"
        try:
            st = os.fstat(fd)
            why = None
            if not stat.S_ISREG(st.st_mode):
                why = "it is not a regular file"
            elif st.st_uid not in (0, euid):
                why = f"it is owned by {user_label(st.st_uid)}, not by root"
            elif st.st_mode & 0o022:
                why = f"it has mode {stat.S_IMODE(st.st_mode):04o} (writable by others)"
            elif st.st_nlink != 1:
                why = f"it has {st.st_nlink} hard links"
            if why is not None:
                return None, f"not trusting {final}: {why}; remove it"
            raw = os.read(fd, _MAX_POINTER + 1)
        finally:
            os.close(fd)
    finally:
        os.close(dfd)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, f"not trusting {final}: it is not UTF-8; remove it"
    if len(raw) > _MAX_POINTER or not text.endswith("\n") or text.count("\n") != 1 \
            or "\0" in text or not text.startswith("/"):
        return None, f"not trusting {final}: it does not hold one absolute path; remove it"
    return text[:-1], None


def read_pointer(socket_path: str) -> str | None:
    """The state dir the last daemon on this socket used, or None when there is no
    pointer or it cannot be trusted (check_pointer says why)."""
    return check_pointer(socket_path)[0]
