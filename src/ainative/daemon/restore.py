"""`ainative restore` when no daemon answers: find the journal of the daemon that last
ran and undo what it left in force, with the same validation the daemon applies at
start-up, then remove ainative's empty groups.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from ainative.core.engine import Engine
from ainative.core.journal import JOURNAL_NAME, Journal, JournalError, make_validator
from ainative.daemon import statedir
from ainative.daemon.server import DEFAULT_STATE_DIR, META_FILE, StartupError
from ainative.platform import get_platform
from ainative.platform.base import TaskId


@dataclass(frozen=True)
class Found:
    state_dir: str
    how: str  # how it was found, for the user


def find_state_dir(socket_path: str, explicit: str | None) -> Found:
    """--state-dir when given; else the pointer the last daemon left beside its socket;
    else the default directory when it holds a journal. Fails saying where it looked."""
    if explicit:
        return Found(explicit, f"--state-dir {explicit}")
    looked = []
    ptr = statedir.read_pointer(socket_path)
    looked.append(statedir.pointer_path(socket_path))
    if ptr:
        return Found(ptr, f"the last daemon's pointer {statedir.pointer_path(socket_path)}")
    default_journal = os.path.join(DEFAULT_STATE_DIR, JOURNAL_NAME)
    looked.append(default_journal)
    if os.path.exists(default_journal):
        return Found(DEFAULT_STATE_DIR, DEFAULT_STATE_DIR)
    raise StartupError("no ainative journal found (looked at " + ", ".join(looked) +
                       "); pass the daemon's --state-dir")


def _meta(dir_fd: int) -> dict[str, Any]:
    try:
        fd = statedir.open_in(dir_fd, META_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return {}
    try:
        data = json.loads(os.read(fd, 1 << 16) or b"{}")
    except ValueError:
        return {}
    finally:
        os.close(fd)
    return data if isinstance(data, dict) else {}


def offline_restore(state_dir: str) -> dict[str, Any]:
    """Undo what a dead daemon left in force. Raises StartupError (one line) when it
    cannot: not root, an untrusted or missing state dir, a daemon still holding it."""
    if os.geteuid() != 0:
        raise StartupError("ainative restore without a running daemon needs root: it writes "
                           "other processes' priorities and cgroups (run it with sudo)")
    if not os.path.isdir(state_dir):
        raise StartupError(f"state dir {state_dir} does not exist; pass the daemon's --state-dir")
    try:
        dir_fd = statedir.secure_dir(state_dir, create=False)
    except statedir.StateDirError as e:
        raise StartupError(str(e)) from e
    try:
        try:
            lock_fd = statedir.lock(dir_fd)
        except statedir.StateDirError as e:
            raise StartupError(f"{e}; its socket did not answer: stop it (SIGTERM) and its "
                               "changes are undone") from e
        try:
            meta = _meta(dir_fd)
            root = str(meta.get("cgroup_root") or "ainative")
            platform = get_platform(cgroup_root=root)
            scope = meta.get("scope_pid")
            backend = platform.backend

            def in_scope(ident: TaskId) -> bool:
                # A dead scope's descendants cannot be told apart from anyone else's:
                # then the record's own identity check (pid and start time) is what holds.
                if not isinstance(scope, int) or not os.path.exists(f"/proc/{scope}"):
                    return True
                return backend.is_descendant(ident.pid, scope)

            try:
                journal = Journal(state_dir, dir_fd=dir_fd,
                                  validate=make_validator(root, in_scope))
            except (JournalError, statedir.StateDirError) as e:
                raise StartupError(str(e)) from e
            engine = Engine(backend, journal, {})
            rep = engine.restore_all()
            journal.shutdown()
            try:
                backend.cleanup()
            except OSError as e:
                rep.details.append(f"cannot remove ainative's empty groups: {e}")
            out = rep.to_json()
            out["unusable"] = journal.unusable_count
            out["details"] = list(journal.unusable[:20]) + out["details"]
            return out
        finally:
            os.close(lock_fd)
    finally:
        os.close(dir_fd)
